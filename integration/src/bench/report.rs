//! The results of a run (raw JSON) and their Markdown rendering: a summary table of total
//! times per image × workload × cell, starling's ratios paired round by round, and a detail
//! table per image with every measured quantity as median [min–max].

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use super::format::{fmt_summary, ratio, secs};
use super::plan::{self, Cell, Snapshotter, Variant};
pub use super::results::{
    FetchBreakdown, FileFetch, Results, RunInfo, SuiteResults, VariantReport,
};
use super::runner::Sample;
use super::stats::{paired_ratios, Summary};

impl SuiteResults {
    /// The combined report: each profile's goal tables and summary, then the regions read.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let Some(first) = self.profiles.first() else {
            return m;
        };
        let _ = writeln!(
            m,
            "# starling benchmark {} (all link profiles)\n",
            first.info.started
        );
        let _ = writeln!(m, "Command: `{}`\n", first.info.command);
        let _ = writeln!(
            m,
            "Each profile's full report (every cell, details, failures) is in its directory: {}.\n",
            self.profiles
                .iter()
                .filter_map(|r| r.info.profile.as_ref())
                .map(|p| format!("[{0}]({0}/results.md)", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in &self.profiles {
            r.header(&mut m, 2);
            super::goals::markdown(r, &mut m);
            super::goals::ab_markdown(r, &mut m);
            r.summary_table(&mut m);
        }
        super::goals::access_markdown(first, &mut m);
        m
    }
}

impl Results {
    /// Successful samples of one image × workload × cell.
    pub fn ok_samples<'a>(
        &'a self,
        image: &'a str,
        workload: &'a str,
        cell: Cell,
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.ok && !s.baseline && s.image == image && s.workload == workload && s.cell == cell
        })
    }

    /// Successful warm-overlayfs baseline samples of one image × workload.
    pub fn baseline_samples<'a>(
        &'a self,
        image: &'a str,
        workload: &'a str,
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.ok && s.baseline && s.image == image && s.workload == workload)
    }

    /// True for a `--suite broad` run.
    pub fn is_broad(&self) -> bool {
        self.info.suite == "broad"
    }

    /// Summary of one quantity.
    pub fn summary(
        &self,
        image: &str,
        workload: &str,
        cell: Cell,
        f: impl Fn(&Sample) -> Option<f64>,
    ) -> Option<Summary> {
        Summary::of(self.ok_samples(image, workload, cell).filter_map(f))
    }

    /// Total seconds by round.
    pub fn totals_by_round(&self, image: &str, workload: &str, cell: Cell) -> BTreeMap<usize, f64> {
        self.ok_samples(image, workload, cell)
            .map(|s| (s.round, s.total_s))
            .collect()
    }

    /// Ratios of `cell`'s total time to `base`'s, paired by round.
    pub fn ratio(&self, image: &str, workload: &str, cell: Cell, base: Cell) -> Option<Summary> {
        if !self.cells.contains(&base) {
            return None;
        }
        Summary::of(paired_ratios(
            &self.totals_by_round(image, workload, cell),
            &self.totals_by_round(image, workload, base),
        ))
    }

    /// The stargz and overlayfs cells a starling cell is compared with.
    pub fn bases(cell: Cell) -> (Cell, Cell) {
        (
            Cell::new(Snapshotter::Stargz, cell.variant.counterpart()),
            Cell::new(Snapshotter::Overlayfs, Variant::Orig),
        )
    }

    /// (image, workload) rows that have samples, in plan order.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for image in plan::IMAGES {
            for w in plan::WORKLOADS {
                if self
                    .samples
                    .iter()
                    .any(|s| s.image == *image && s.workload == w.name)
                {
                    rows.push((image.to_string(), w.name.to_string()));
                }
            }
        }
        rows
    }

    fn attempts(&self, image: &str, workload: &str, cell: Cell) -> (usize, usize) {
        let all: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| !s.baseline && s.image == image && s.workload == workload && s.cell == cell)
            .collect();
        (all.iter().filter(|s| s.ok).count(), all.len())
    }

    /// The run's heading, link, load and notes; `level` is the heading level.
    pub fn header(&self, m: &mut String, level: usize) {
        let i = &self.info;
        let load = |l: &[f64]| {
            l.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let hashes = "#".repeat(level);
        match &i.profile {
            Some(p) if level > 1 => {
                let _ = writeln!(m, "{hashes} Link profile `{}`: {}\n", p.name, p.describe());
            }
            _ => {
                let _ = writeln!(m, "{hashes} starling benchmark {}\n", i.started);
            }
        }
        let _ = writeln!(
            m,
            "Shaped link {} ms RTT, {} Mbit/s; {} run(s) per cell, snapshotters interleaved per round; \
             {} CPUs, kernel {}; load average (1/5/15 min) {} at start, {} at end; run took {:.0} min.\n",
            i.rtt_ms,
            i.rate_mbit,
            i.runs,
            i.cpus,
            i.kernel,
            load(&i.load_start),
            load(&i.load_end),
            i.duration_s / 60.0
        );
        if let Some(c) = &i.link_check {
            let _ = writeln!(
                m,
                "Link check at the start: a request on a fresh connection took {:.1} ms \
                 (RTT + registry), one stream fetched a {:.0} MB blob at {:.0} Mbit/s.\n",
                c.request_ms,
                c.blob_bytes as f64 / 1e6,
                c.mbit
            );
        }
        if let Some(l) = Summary::of(self.samples.iter().filter_map(|s| s.load1)) {
            let _ = writeln!(
                m,
                "1-minute load average at the end of each run: median {:.1}, range {:.1}–{:.1}.\n",
                l.median, l.min, l.max
            );
        }
        if level == 1 {
            let _ = writeln!(m, "Command: `{}`\n", i.command);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(m, "Notes:");
            for n in &self.notes {
                let _ = writeln!(m, "- {n}");
            }
            let _ = writeln!(m);
        }
    }

    /// The whole Markdown report.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        self.header(&mut m, 1);
        if self.is_broad() {
            super::goals::markdown(self, &mut m);
        }
        super::goals::ab_markdown(self, &mut m);
        self.summary_table(&mut m);
        self.ratio_table(&mut m);
        self.detail_tables(&mut m);
        if self.is_broad() {
            super::goals::access_markdown(self, &mut m);
        }
        self.variant_table(&mut m);
        if let Some(micro) = &self.micro {
            m.push_str(&micro.markdown());
        }
        m
    }

    /// The total-time table.
    pub fn summary_table(&self, m: &mut String) {
        let _ = writeln!(
            m,
            "## Total time (pull + create + run), seconds, median [min–max]\n"
        );
        let _ = write!(m, "| image | workload |");
        for c in &self.cells {
            let _ = write!(m, " {} |", c.label());
        }
        let _ = write!(m, "\n|---|---|");
        for _ in &self.cells {
            let _ = write!(m, "---|");
        }
        let _ = writeln!(m);
        for (image, w) in self.rows() {
            let _ = write!(m, "| {image} | {w} |");
            for c in &self.cells {
                let s = self.summary(&image, &w, *c, |s| Some(s.total_s));
                let (ok, n) = self.attempts(&image, &w, *c);
                let fail = if ok < n {
                    format!(" ({} failed)", n - ok)
                } else {
                    String::new()
                };
                let _ = write!(m, " {}{fail} |", fmt_summary(s, secs));
            }
            let _ = writeln!(m);
        }
        let _ = writeln!(m);
    }

    fn ratio_table(&self, m: &mut String) {
        let starling: Vec<Cell> = self
            .cells
            .iter()
            .copied()
            .filter(|c| c.snapshotter == Snapshotter::Starling)
            .collect();
        let _ = writeln!(
            m,
            "## starling ratios (total time, paired within each round), median [min–max]\n"
        );
        if starling.is_empty() {
            let _ = writeln!(m, "No starling column in this run.\n");
            return;
        }
        let _ = writeln!(
            m,
            "| image | workload | starling variant | starling / stargz peer | starling / overlayfs |\n|---|---|---|---|---|"
        );
        for (image, w) in self.rows() {
            for c in &starling {
                let (stargz, overlay) = Self::bases(*c);
                let _ = writeln!(
                    m,
                    "| {image} | {w} | {} | {} | {} |",
                    if c.bin == 0 {
                        c.variant.tag().to_string()
                    } else {
                        format!("{} ({})", c.variant.tag(), c.bin_letter())
                    },
                    fmt_summary(self.ratio(&image, &w, *c, stargz), ratio),
                    fmt_summary(self.ratio(&image, &w, *c, overlay), ratio)
                );
            }
        }
        let _ = writeln!(m);
    }

    fn detail_tables(&self, m: &mut String) {
        let _ = writeln!(
            m,
            "## Details, median [min–max]\n\n\
             pull: `ctr images pull` (overlayfs, incl. unpack) or the lazy pull; create: \
             `ctr containers create`; run: `ctr tasks start` until the task exits; first output: \
             from the start of the pull to the container's first stdout byte. MB: bytes over \
             the shaped link (veth rx+tx) until the task exited; requests: HTTP requests \
             through the link; RSS: the snapshotter daemon's peak (VmHWM; restarted before each \
             cold run); lazy: FUSE mounts under the daemon root after the pull.\n"
        );
        let mut images: Vec<String> = self.rows().into_iter().map(|r| r.0).collect();
        images.dedup();
        for image in images {
            let _ = writeln!(m, "### {image}\n");
            let _ = writeln!(
                m,
                "| workload | snapshotter | variant | pull s | create s | run s | first output s | total s | MB | requests | RSS MB | lazy | ok |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for (img, w) in self.rows().into_iter().filter(|r| r.0 == image) {
                let base: Vec<&Sample> = self.baseline_samples(&img, &w).collect();
                if !base.is_empty() {
                    let q = |f: &dyn Fn(&Sample) -> f64| {
                        fmt_summary(Summary::of(base.iter().map(|s| f(s))), secs)
                    };
                    let _ = writeln!(
                        m,
                        "| {w} | overlayfs (warm baseline) | orig | 0 | {} | {} | – | {} | – | – | – | – | {}/{} |",
                        q(&|s| s.create_s),
                        q(&|s| s.run_s),
                        q(&|s| s.total_s),
                        base.len(),
                        base.len()
                    );
                }
                for c in &self.cells {
                    let (ok, n) = self.attempts(&img, &w, *c);
                    if n == 0 {
                        continue;
                    }
                    let q = |f: &dyn Fn(&Sample) -> Option<f64>| self.summary(&img, &w, *c, f);
                    let mb = |x: f64| format!("{:.1}", x / 1e6);
                    let rss = |x: f64| format!("{:.0}", x / 1024.0);
                    let _ =
                        writeln!(
                        m,
                        "| {w} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {ok}/{n} |",
                        c.column(),
                        c.variant.tag(),
                        fmt_summary(q(&|s| Some(s.pull_s)), secs),
                        fmt_summary(q(&|s| Some(s.create_s)), secs),
                        fmt_summary(q(&|s| Some(s.run_s)), secs),
                        fmt_summary(q(&|s| s.first_output_s), secs),
                        fmt_summary(q(&|s| Some(s.total_s)), secs),
                        fmt_summary(q(&|s| Some(s.link_bytes as f64)), mb),
                        fmt_summary(q(&|s| Some(s.requests as f64)), |x| format!("{x:.0}")),
                        fmt_summary(q(&|s| s.rss_peak_kib.map(|k| k as f64)), rss),
                        fmt_summary(q(&|s| s.lazy_mounts.map(|k| k as f64)), |x| format!("{x:.0}")),
                    );
                }
            }
            let _ = writeln!(m);
        }
        let failures: Vec<&Sample> = self.samples.iter().filter(|s| !s.ok).collect();
        if !failures.is_empty() {
            let _ = writeln!(m, "### Failed runs\n");
            for s in failures {
                let e = s.error.as_deref().unwrap_or("").replace('\n', " ");
                let short: String = e.chars().take(300).collect();
                let _ = writeln!(
                    m,
                    "- round {} {} {} {}: {short}",
                    s.round,
                    s.image,
                    s.workload,
                    s.cell.label()
                );
            }
            let _ = writeln!(m);
        }
    }

    fn variant_table(&self, m: &mut String) {
        let _ = writeln!(
            m,
            "## Image variants\n\n| image | variant | made by | layers | compressed MB | made in s |\n|---|---|---|---|---|---|"
        );
        for (image, vs) in &self.variants {
            for (tag, v) in vs {
                let _ = writeln!(
                    m,
                    "| {image} | {tag} | {} | {} | {:.1} | {} |",
                    v.how,
                    v.layers,
                    v.compressed_bytes as f64 / 1e6,
                    if v.build_secs > 0.0 {
                        secs(v.build_secs)
                    } else {
                        "cached".into()
                    }
                );
            }
        }
        let _ = writeln!(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, cell: Cell, total: f64, ok: bool) -> Sample {
        Sample {
            round,
            image: "pydeb".into(),
            workload: "print".into(),
            cell,
            ok,
            error: (!ok).then(|| "boom".into()),
            pull_s: total / 2.0,
            create_s: 0.1,
            run_s: total / 2.0 - 0.1,
            first_output_s: Some(total - 0.01),
            total_s: total,
            link_bytes: 5_700_000,
            requests: 12,
            rss_peak_kib: Some(64 * 1024),
            lazy_mounts: Some(2),
            pull_method: "x".into(),
            load1: Some(9.0),
            baseline: false,
            fetches: Vec::new(),
        }
    }

    const OV: Cell = Cell::new(Snapshotter::Overlayfs, Variant::Orig);
    const PEER: Cell = Cell::new(Snapshotter::Stargz, Variant::Esgz);
    const STL: Cell = Cell::new(Snapshotter::Starling, Variant::StlEsgz);

    fn results() -> Results {
        Results {
            cells: vec![OV, STL, PEER],
            samples: vec![
                sample(0, OV, 8.8, true),
                sample(0, PEER, 1.2, true),
                sample(0, STL, 0.6, true),
                sample(1, OV, 9.0, true),
                sample(1, PEER, 1.0, true),
                sample(1, STL, 0.8, true),
                sample(2, STL, 0.1, false),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn ratios_use_counterpart_and_same_round() {
        let r = results();
        let (stargz, overlay) = Results::bases(STL);
        assert_eq!(stargz, PEER);
        let s = r.ratio("pydeb", "print", STL, stargz).unwrap();
        assert_eq!(s.n, 2);
        assert!((s.min - 0.5).abs() < 1e-9 && (s.max - 0.8).abs() < 1e-9);
        let o = r.ratio("pydeb", "print", STL, overlay).unwrap();
        assert!((o.median - (0.6 / 8.8 + 0.8 / 9.0) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn markdown_has_rows_columns_and_failures() {
        let md = results().markdown();
        assert!(md.contains("| image | workload | overlayfs / orig | starling / stl-esgz | stargz peer / esgz |"), "{md}");
        assert!(md.contains("| pydeb | print | 8.90 [8.80–9.00] |"), "{md}");
        assert!(md.contains("(1 failed)"), "{md}");
        assert!(
            md.contains("| pydeb | print | stl-esgz | 0.65× [0.50×–0.80×] |"),
            "{md}"
        );
        assert!(md.contains("| print | stargz peer | esgz |"), "{md}");
        assert!(md.contains("5.7 |"), "MB column: {md}");
        assert!(
            md.contains("load average at the end of each run: median 9.0"),
            "{md}"
        );
        assert!(
            md.contains("round 2 pydeb print starling / stl-esgz: boom"),
            "{md}"
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(secs(1.234), "1.23");
        assert_eq!(secs(27.34), "27.3");
        assert_eq!(secs(127.6), "128");
        assert_eq!(fmt_summary(None, secs), "–");
        let one = Summary::of([2.0]);
        assert_eq!(fmt_summary(one, secs), "2.00");
        let same = Summary::of([68_200_001.0, 68_249_000.0]);
        assert_eq!(fmt_summary(same, |x| format!("{:.1}", x / 1e6)), "68.2");
    }
}
