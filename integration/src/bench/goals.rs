//! The goal tables of the broad set (issue 14), rendered from a run's [`Results`]: the time
//! lazy pulling adds over a warm overlayfs start (image pulled and unpacked, fresh
//! container) against what it adds with the stargz peer; total time against the peer;
//! bytes over the link against the bytes of the file regions the workload reads; the
//! print(1)-vs-overlayfs and read-everything goals; and where the bytes went.

use std::fmt::Write as _;

use super::access::AccessReport;
use super::format::{fmt_summary, ratio, secs};
use super::plan::{Cell, Snapshotter, Variant};
use super::results::Results;
use super::stats::Summary;

/// Goal: added time ≤ this × the peer's (reference-converted variant).
pub const ADDED_GOAL: f64 = 0.5;
/// Goal: total time ≤ this × the peer's.
pub const TOTAL_GOAL: f64 = 1.0;
/// Goal: bytes over the link ≤ this × the bytes of the regions read.
pub const BYTES_GOAL: f64 = 1.5;
/// Goal: pydeb print(1) ≤ this × overlayfs (full pull + run).
pub const PRINT_GOAL: f64 = 0.08;
/// Goal: reading everything of the large image ≤ this × a full pull.
pub const READ_ALL_GOAL: f64 = 0.8;
/// Goal: daemon peak RSS ≤ this × the peer's when reading everything.
pub const RSS_GOAL: f64 = 0.5;

const OVERLAY: Cell = Cell::new(Snapshotter::Overlayfs, Variant::Orig);
const PEER: Cell = Cell::new(Snapshotter::Stargz, Variant::Esgz);
const STARLING: [Cell; 2] = [
    Cell::new(Snapshotter::Starling, Variant::Esgz),
    Cell::new(Snapshotter::Starling, Variant::StlEsgz),
];

fn mb(x: f64) -> String {
    if x < 10e6 {
        format!("{:.2}", x / 1e6)
    } else {
        format!("{:.1}", x / 1e6)
    }
}

fn verdict(s: Option<Summary>, goal: f64) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.median <= goal => "pass".into(),
        Some(s) => format!("**miss** ({:.2}× the goal)", s.median / goal),
    }
}

/// Added-time ratios of `cell` to the peer, paired per round: (cell − warm) / (peer − warm).
pub fn added_ratio(r: &Results, image: &str, workload: &str, cell: Cell) -> Option<Summary> {
    added_ratio_to(r, image, workload, cell, PEER)
}

/// Added-time ratios of `cell` to `base`, paired per round: (cell − warm) / (base − warm).
fn added_ratio_to(
    r: &Results,
    image: &str,
    workload: &str,
    cell: Cell,
    base: Cell,
) -> Option<Summary> {
    let warm: std::collections::BTreeMap<usize, f64> = r
        .baseline_samples(image, workload)
        .map(|s| (s.round, s.total_s))
        .collect();
    let a = r.totals_by_round(image, workload, cell);
    let p = r.totals_by_round(image, workload, base);
    Summary::of(a.iter().filter_map(|(round, x)| {
        let w = warm.get(round)?;
        let y = p.get(round)?;
        (y - w > 0.0).then(|| (x - w) / (y - w))
    }))
}

/// The A/B table of a run with several starling binaries (`--starling-bins A,B`): each
/// later binary's cells against the first binary's same variant, paired per round. Writes
/// nothing for a run of one binary.
pub fn ab_markdown(r: &Results, m: &mut String) {
    let later: Vec<Cell> = r.cells.iter().copied().filter(|c| c.bin > 0).collect();
    if later.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "## starling binaries compared (A/B)\n\n\
         Each binary's cells against binary A's on the same variant, paired per round, \
         median [min–max]; below 1× means the later binary is faster / moves fewer bytes. \
         Added = time to ready − warm overlayfs (broad suite only). Binaries: {}.\n",
        r.info
            .versions
            .iter()
            .filter(|(k, _)| k.starts_with("starling"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        m,
        "| image | workload | cell | total / A | added / A | link bytes / A | requests / A | A total s | total s |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (image, w) in r.rows() {
        for c in &later {
            let a = c.with_bin(0);
            let _ = writeln!(
                m,
                "| {image} | {w} | {} | {} | {} | {} | {} | {} | {} |",
                c.label(),
                fmt_summary(r.ratio(&image, &w, *c, a), ratio),
                fmt_summary(added_ratio_to(r, &image, &w, *c, a), ratio),
                fmt_summary(
                    paired(r, &image, &w, *c, a, |s| Some(s.link_bytes as f64)),
                    ratio
                ),
                fmt_summary(
                    paired(r, &image, &w, *c, a, |s| Some(s.requests as f64)),
                    ratio
                ),
                fmt_summary(r.summary(&image, &w, a, |s| Some(s.total_s)), secs),
                fmt_summary(r.summary(&image, &w, *c, |s| Some(s.total_s)), secs),
            );
        }
    }
    let _ = writeln!(m);
}

/// Median seconds lazy pulling adds to `cell` (total − warm baseline, per round).
fn added_secs(r: &Results, image: &str, workload: &str, cell: Cell) -> Option<Summary> {
    let warm: std::collections::BTreeMap<usize, f64> = r
        .baseline_samples(image, workload)
        .map(|s| (s.round, s.total_s))
        .collect();
    Summary::of(
        r.totals_by_round(image, workload, cell)
            .iter()
            .filter_map(|(round, x)| warm.get(round).map(|w| x - w)),
    )
}

/// Ratio of a per-sample quantity of `a` to `b`, paired per round.
fn paired(
    r: &Results,
    image: &str,
    workload: &str,
    a: Cell,
    b: Cell,
    f: impl Fn(&super::runner::Sample) -> Option<f64>,
) -> Option<Summary> {
    let by = |c: Cell| -> std::collections::BTreeMap<usize, f64> {
        r.ok_samples(image, workload, c)
            .filter_map(|s| f(s).map(|v| (s.round, v)))
            .collect()
    };
    Summary::of(super::stats::paired_ratios(&by(a), &by(b)))
}

/// The goal tables (times, ratios, bytes, special goals).
pub fn markdown(r: &Results, m: &mut String) {
    let rows = r.rows();
    let starling: Vec<Cell> = STARLING
        .iter()
        .copied()
        .filter(|c| r.cells.contains(c))
        .collect();
    let _ = writeln!(
        m,
        "## Goals of the broad set\n\n\
         Time to ready = pull + create + run until the workload's marker (the container \
         exits right after it). Warm = the same workload on the image already pulled and \
         unpacked by overlayfs, a fresh container. Added = time to ready − warm, per round. \
         Ratios are paired per round, median [min–max]. Goals: added ≤ {ADDED_GOAL}× the \
         peer's and total ≤ {TOTAL_GOAL}× the peer's on the ctr-remote variant (`esgz`).\n"
    );
    let _ = write!(
        m,
        "| image | workload | warm s | overlayfs s | peer esgz s |"
    );
    for c in &starling {
        let _ = write!(m, " starling {} s |", c.variant.tag());
    }
    let _ = write!(m, " added: peer s |");
    for c in &starling {
        let _ = write!(m, " added: starling {} s |", c.variant.tag());
    }
    let _ = writeln!(m);
    let _ = writeln!(m, "|{}", "---|".repeat(6 + 2 * starling.len()));
    for (image, w) in &rows {
        let total = |c: Cell| fmt_summary(r.summary(image, w, c, |s| Some(s.total_s)), secs);
        let warm = Summary::of(r.baseline_samples(image, w).map(|s| s.total_s));
        let _ = write!(
            m,
            "| {image} | {w} | {} | {} | {} |",
            fmt_summary(warm, secs),
            total(OVERLAY),
            total(PEER)
        );
        for c in &starling {
            let _ = write!(m, " {} |", total(*c));
        }
        let _ = write!(m, " {} |", fmt_summary(added_secs(r, image, w, PEER), secs));
        for c in &starling {
            let _ = write!(m, " {} |", fmt_summary(added_secs(r, image, w, *c), secs));
        }
        let _ = writeln!(m);
    }
    let _ = writeln!(m);

    let _ = writeln!(
        m,
        "| image | workload | added: starling esgz / peer | added: stl-esgz / peer | total: starling esgz / peer | total: stl-esgz / peer | goal (esgz) |\n|---|---|---|---|---|---|---|"
    );
    for (image, w) in &rows {
        let added: Vec<Option<Summary>> = STARLING
            .iter()
            .map(|c| added_ratio(r, image, w, *c))
            .collect();
        let total: Vec<Option<Summary>> = STARLING
            .iter()
            .map(|c| r.ratio(image, w, *c, PEER))
            .collect();
        let goal = match (added[0], total[0]) {
            (Some(a), Some(t)) if a.median <= ADDED_GOAL && t.median <= TOTAL_GOAL => {
                "pass".to_string()
            }
            (Some(a), Some(t)) => {
                let mut why = Vec::new();
                if a.median > ADDED_GOAL {
                    why.push(format!("added {}", ratio(a.median)));
                }
                if t.median > TOTAL_GOAL {
                    why.push(format!("total {}", ratio(t.median)));
                }
                format!("**miss** ({})", why.join(", "))
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            m,
            "| {image} | {w} | {} | {} | {} | {} | {goal} |",
            fmt_summary(added[0], ratio),
            fmt_summary(added[1], ratio),
            fmt_summary(total[0], ratio),
            fmt_summary(total[1], ratio),
        );
    }
    let _ = writeln!(m);

    bytes_table(r, &rows, m);
    special_goals(r, &rows, m);
}

fn bytes_table(r: &Results, rows: &[(String, String)], m: &mut String) {
    let _ = writeln!(
        m,
        "### Bytes over the link against the regions read\n\n\
         Read = bytes of the 4 KiB pages of image files the workload (and the runtime) \
         reads, measured on a local copy with readahead off (`mincore` after the run); \
         est. compressed = those bytes scaled by their chunks' compression ratio; chunk \
         floor = compressed bytes of every eStargz chunk (ctr-remote variant) a read page \
         falls in. Link = bytes over the shaped link (veth, with headers) until the task \
         exited, median. Goal: link ≤ {BYTES_GOAL}× read.\n\n\
         | image | workload | files read | read MB | est. compressed MB | chunk floor MB | \
         starling esgz MB | starling stl-esgz MB | peer esgz MB | starling esgz / read | \
         stl-esgz / read | peer / read | goal (esgz) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (image, w) in rows {
        let a = r.access.get(image).and_then(|x| x.get(w));
        let link = |c: Cell| {
            r.summary(image, w, c, |s| Some(s.link_bytes as f64))
                .map(|s| s.median)
        };
        let per_read = |c: Cell| -> Option<Summary> {
            let read = a?.read_bytes as f64;
            (read > 0.0).then_some(())?;
            Summary::of(
                r.ok_samples(image, w, c)
                    .map(|s| s.link_bytes as f64 / read),
            )
        };
        let fm = |x: Option<f64>| x.map(mb).unwrap_or_else(|| "–".into());
        let goal = match per_read(STARLING[0]) {
            None => "–".into(),
            s => verdict(s, BYTES_GOAL),
        };
        let _ = writeln!(
            m,
            "| {image} | {w} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {goal} |",
            a.map(|a| format!("{} of {}", a.files_read, a.files_total))
                .unwrap_or_else(|| "–".into()),
            fm(a.map(|a| a.read_bytes as f64)),
            fm(a.map(|a| a.est_compressed as f64)),
            fm(a.map(|a| a.chunk_bytes as f64)),
            fm(link(STARLING[0])),
            fm(link(STARLING[1])),
            fm(link(PEER)),
            fmt_summary(per_read(STARLING[0]), ratio),
            fmt_summary(per_read(STARLING[1]), ratio),
            fmt_summary(per_read(PEER), ratio),
        );
    }
    let _ = writeln!(m);
}

fn special_goals(r: &Results, rows: &[(String, String)], m: &mut String) {
    let mut lines = Vec::new();
    for (image, w) in rows {
        if image == "pydeb" && w == "print" {
            let s = r.ratio(image, w, STARLING[0], OVERLAY);
            lines.push(format!(
                "| pydeb print(1): starling esgz / overlayfs (full pull + run) ≤ {PRINT_GOAL}× | {} | {} |",
                fmt_summary(s, ratio),
                verdict(s, PRINT_GOAL)
            ));
        }
        if w == "read-all" {
            for c in STARLING {
                if !r.cells.contains(&c) {
                    continue;
                }
                let s = r.ratio(image, w, c, OVERLAY);
                lines.push(format!(
                    "| {image} read everything: starling {} / overlayfs ≤ {READ_ALL_GOAL}× | {} | {} |",
                    c.variant.tag(),
                    fmt_summary(s, ratio),
                    verdict(s, READ_ALL_GOAL)
                ));
                let rss = paired(r, image, w, c, PEER, |s| s.rss_peak_kib.map(|k| k as f64));
                lines.push(format!(
                    "| {image} read everything: daemon peak RSS, starling {} / peer ≤ {RSS_GOAL}× | {} | {} |",
                    c.variant.tag(),
                    fmt_summary(rss, ratio),
                    verdict(rss, RSS_GOAL)
                ));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "### Other goals\n\n| goal | measured | result |\n|---|---|---|"
    );
    for l in lines {
        let _ = writeln!(m, "{l}");
    }
    let _ = writeln!(m);
}

fn access_rows(a: &AccessReport, m: &mut String, n: usize) {
    let _ = writeln!(
        m,
        "| file (layer) | size MB | read MB | runs of pages | chunks | chunk MB |\n|---|---|---|---|---|---|"
    );
    for f in a.files.iter().take(n) {
        let _ = writeln!(
            m,
            "| `{}` ({}) | {} | {} | {} | {} | {} |",
            f.path,
            f.layer,
            mb(f.size as f64),
            mb(f.read_bytes as f64),
            f.runs.len(),
            f.chunks,
            mb(f.chunk_bytes as f64)
        );
    }
    let _ = writeln!(m);
}

/// "Where the bytes go": per image × workload, the regions read (costliest files) and the
/// breakdown of each lazy cell's fetched bytes.
pub fn access_markdown(r: &Results, m: &mut String) {
    if r.access.is_empty() && r.fetch.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "## Where the bytes go\n\n\
         Per image × workload: the files whose read pages cost the most eStargz chunk bytes \
         (regions read, measured on a local copy), then, for the median run of each lazy \
         cell, the bytes its blob requests asked for: in chunks the workload touches \
         (needed), in chunks it does not touch (unneeded), outside chunks (TOC, footer, tar \
         headers), and the files most fetched.\n"
    );
    for (image, w) in r.rows() {
        let a = r.access.get(&image).and_then(|x| x.get(&w));
        let fetch: Vec<_> = r
            .fetch
            .iter()
            .filter(|b| b.image == image && b.workload == w)
            .collect();
        if a.is_none() && fetch.is_empty() {
            continue;
        }
        let _ = writeln!(m, "### {image} / {w}\n");
        if let Some(a) = a {
            let _ = writeln!(
                m,
                "Read {} files of {} ({} MB of {} MB of file data); their pages fall in {} \
                 chunks = {} MB compressed ({} MB uncompressed); est. compressed bytes of \
                 the pages themselves {} MB.\n",
                a.files_read,
                a.files_total,
                mb(a.read_bytes as f64),
                mb(a.image_bytes as f64),
                a.chunks,
                mb(a.chunk_bytes as f64),
                mb(a.chunk_raw_bytes as f64),
                mb(a.est_compressed as f64)
            );
            access_rows(a, m, 8);
        }
        if !fetch.is_empty() {
            let _ = writeln!(
                m,
                "| cell | requests (range / whole blob) | blob MB asked | needed MB | unneeded MB | other MB | floor MB | most fetched files: fetched / read MB |\n|---|---|---|---|---|---|---|---|"
            );
            for b in fetch {
                let files = b
                    .top_files
                    .iter()
                    .take(4)
                    .map(|f| {
                        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
                        format!("`{name}` {} / {}", mb(f.fetched as f64), mb(f.read as f64))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    m,
                    "| {} | {} ({} / {}) | {} | {} | {} | {} | {} | {files} |",
                    b.cell.map(|c| c.label()).unwrap_or_default(),
                    b.requests,
                    b.range_requests,
                    b.whole_blob_requests,
                    mb(b.blob_bytes as f64),
                    mb(b.needed as f64),
                    mb(b.unneeded as f64),
                    mb((b.other + b.unknown) as f64),
                    mb(b.needed_total as f64),
                );
            }
            let _ = writeln!(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::runner::Sample;

    fn sample(round: usize, cell: Cell, total: f64, baseline: bool) -> Sample {
        Sample {
            round,
            image: "node".into(),
            workload: "node".into(),
            cell,
            ok: true,
            error: None,
            pull_s: 0.0,
            create_s: 0.1,
            run_s: total - 0.1,
            first_output_s: None,
            total_s: total,
            link_bytes: 30_000_000,
            requests: 10,
            rss_peak_kib: Some(1000),
            lazy_mounts: None,
            pull_method: String::new(),
            load1: None,
            baseline,
            fetches: Vec::new(),
        }
    }

    #[test]
    fn added_time_is_paired_against_the_warm_baseline() {
        let r = Results {
            info: super::super::results::RunInfo {
                suite: "broad".into(),
                ..Default::default()
            },
            cells: vec![OVERLAY, STARLING[0], PEER],
            samples: vec![
                sample(0, OVERLAY, 5.0, false),
                sample(0, OVERLAY, 0.5, true),
                sample(0, STARLING[0], 1.5, false),
                sample(0, PEER, 2.5, false),
                sample(1, OVERLAY, 5.0, false),
                sample(1, OVERLAY, 1.0, true),
                sample(1, STARLING[0], 2.0, false),
                sample(1, PEER, 2.0, false),
            ],
            ..Default::default()
        };
        let a = added_ratio(&r, "node", "node", STARLING[0]).unwrap();
        // round 0: (1.5-0.5)/(2.5-0.5) = 0.5; round 1: (2-1)/(2-1) = 1
        assert_eq!((a.min, a.max), (0.5, 1.0));
        let mut md = String::new();
        markdown(&r, &mut md);
        assert!(md.contains("| node | node | 0.75× [0.50×–1.00×] |"), "{md}");
        assert!(md.contains("**miss** (added 0.75×"), "{md}");
        let full = r.markdown();
        assert!(full.contains("overlayfs (warm baseline)"), "{full}");
        // the baseline is not a sample of the overlayfs cell
        assert_eq!(r.ok_samples("node", "node", OVERLAY).count(), 2);
    }
}
