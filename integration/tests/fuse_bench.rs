//! Benchmarks of the lazy layer filesystem (ignored by default; they print a table and
//! write it to `$STL_BENCH_OUT`, default `target/fuse-bench.md`). Ratios are measured pair
//! by pair in one run, on the realistic image (`pydeb`, unoptimized eStargz from
//! `ctr-remote image convert`):
//!
//! ```sh
//! cargo build --release -p starling
//! cargo test --release -p integration --test fuse_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `fuse_bench_local` (loopback registry): metadata walk (`find -printf` of every entry)
//!   and warm sequential read (`tar -cf - usr | cat`, page cache of the files dropped with
//!   `posix_fadvise`, and again warm), FUSE overlay stack vs the same layers extracted on
//!   overlayfs, and vs the stargz peer's mount when it can be built; RSS of the
//!   `starling mount` processes after the walk and after reading everything.
//! - `fuse_bench_shaped` (20 ms RTT, 100 Mbit/s link): cold read of the files
//!   `python3 -c 'print(1)'` opens (list from strace against an extracted copy): bytes over
//!   the link vs their compressed size plus the TOCs; and read-everything cold vs a full
//!   pull (download + extract) of the same layers.

mod fuse_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fuse_common::*;
use integration::extract::{extract_layer, ExtractOptions};
use integration::oci::OciImage;
use integration::overlay::OverlayStack;
use integration::process::run_cmd;
use integration::registry::Registry;
use integration::shaped::{ShapedLink, ShapedOptions};
use integration::workdir::Workdir;
use integration::{prereq, require};

const ROUNDS: usize = 3;

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn new(title: &str) -> Self {
        Report {
            lines: vec![format!("## {title}"), String::new()],
        }
    }
    fn line(&mut self, l: impl Into<String>) {
        let l = l.into();
        eprintln!("{l}");
        self.lines.push(l);
    }
    fn finish(self) {
        let out = std::env::var_os("STL_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                integration::starling::workspace_root().join("target/fuse-bench.md")
            });
        let mut text = std::fs::read_to_string(&out).unwrap_or_default();
        text.push_str(&self.lines.join("\n"));
        text.push_str("\n\n");
        let _ = std::fs::write(&out, text);
        eprintln!("(written to {})", out.display());
    }
}

/// Runs a shell command, returns its wall time.
fn timed(cmd: &str) -> Duration {
    let t = Instant::now();
    run_cmd(
        Command::new("sh").arg("-c").arg(cmd),
        Duration::from_secs(1800),
    )
    .unwrap()
    .check()
    .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Drops the page cache of every regular file under `dir` (`posix_fadvise(DONTNEED)`),
/// without touching the rest of the machine.
fn evict(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    let _ = nix::fcntl::posix_fadvise(
                        &f,
                        0,
                        0,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                }
            }
        }
    }
}

fn walk(dir: &Path) -> String {
    format!(
        "find '{}' -xdev -printf '%p %s %m %U %G %T@\\n' > /dev/null",
        dir.display()
    )
}

/// Four `tar | cat` of parts of /usr at once (readers the daemon serves side by side).
fn read_parallel(dir: &Path) -> String {
    let parts = [
        "usr/lib/python3.11",
        "usr/lib/x86_64-linux-gnu",
        "usr/share",
        "usr/bin",
    ];
    let jobs: Vec<String> = parts
        .iter()
        .map(|p| format!("tar -C '{}' -cf - {p} | cat > /dev/null &", dir.display()))
        .collect();
    format!("{} wait", jobs.join(" "))
}

/// FUSE opcodes counted per walk (the rest is summed as "other").
const COUNTED_OPS: [(&str, u32); 5] = [
    ("GETXATTR", 22),
    ("LISTXATTR", 23),
    ("IOCTL", 39),
    ("LOOKUP", 1),
    ("READDIRPLUS", 44),
];

/// Runs `cmd` under `perf stat` and returns the FUSE requests it caused, by opcode (the
/// `fuse:fuse_request_send` tracepoint fires in the requesting task).
fn fuse_requests(cmd: &str, out: &Path) -> Result<Vec<(&'static str, u64)>, String> {
    let mut args: Vec<String> = vec!["stat".into(), "-x,".into(), "-o".into()];
    args.push(out.display().to_string());
    for (_, op) in COUNTED_OPS {
        args.push("-e".into());
        args.push("fuse:fuse_request_send".into());
        args.push("--filter".into());
        args.push(format!("opcode == {op}"));
    }
    args.extend(["-e".into(), "fuse:fuse_request_send".into()]);
    args.extend(["--".into(), "sh".into(), "-c".into(), cmd.into()]);
    let r = run_cmd(Command::new("perf").args(&args), Duration::from_secs(600))
        .map_err(|e| format!("perf: {e}"))?;
    if !r.status.success() {
        return Err(format!("perf stat failed: {}", r.stderr.trim()));
    }
    let text = std::fs::read_to_string(out).map_err(|e| e.to_string())?;
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("fuse_request_send"))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    if counts.len() != COUNTED_OPS.len() + 1 {
        return Err(format!("unexpected perf output: {text}"));
    }
    let mut v: Vec<(&'static str, u64)> = COUNTED_OPS
        .iter()
        .zip(&counts)
        .map(|((name, _), n)| (*name, *n))
        .collect();
    let counted: u64 = counts[..COUNTED_OPS.len()].iter().sum();
    v.push(("other", counts[COUNTED_OPS.len()] - counted));
    Ok(v)
}

fn read_all(dir: &Path) -> String {
    format!("tar -C '{}' -cf - usr | cat > /dev/null", dir.display())
}

fn rss_sum(mounts: &[LazyMount]) -> (u64, Vec<u64>) {
    let each: Vec<u64> = mounts.iter().map(|m| m.rss_kib().unwrap_or(0)).collect();
    (each.iter().sum(), each)
}

fn pid_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until every status record under `root` says `complete`.
fn wait_complete(root: &Path, layers: usize, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let dir = root.join("status");
        let done = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        std::fs::read_to_string(e.path())
                            .map(|t| t.contains("\"state\": \"complete\""))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0);
        if done >= layers {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Sum of the compressed bytes the status files say are local.
fn fetched_bytes(root: &Path) -> u64 {
    std::fs::read_dir(root.join("status"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter_map(|v| v["fetched_bytes"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn extracted(image: &OciImage, dir: &Path) -> Vec<PathBuf> {
    image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = dir.join(i.to_string());
            extract_layer(&l.path, &d, &ExtractOptions::overlay()).unwrap();
            d
        })
        .collect()
}

/// One way of mounting the layers under test: the layer directories (bottom first).
struct Column {
    name: &'static str,
    lowers: Vec<PathBuf>,
}

/// Per-measure samples of one column.
#[derive(Default)]
struct Samples {
    by_measure: BTreeMap<&'static str, Vec<Duration>>,
}

impl Samples {
    fn push(&mut self, measure: &'static str, d: Duration) {
        self.by_measure.entry(measure).or_default().push(d);
    }
}

/// The measures, in report order, with their goal (ratio native/column).
const LOCAL_MEASURES: [(&str, &str, f64); 6] = [
    ("walk", "metadata walk, same overlay (warm)", 0.7),
    (
        "walk-fresh",
        "metadata walk, fresh overlay (as a new container)",
        0.7,
    ),
    (
        "read-cold",
        "read /usr, chunks local, page cache dropped",
        0.9,
    ),
    ("read", "read /usr, page cache warm, same overlay", 0.9),
    (
        "read-fresh",
        "read /usr, page cache warm, fresh overlay",
        0.9,
    ),
    (
        "read-fresh-pc",
        "read /usr, page cache dropped, fresh overlay",
        0.9,
    ),
];

/// Runs every measure once on `col` (a fresh overlay per measure where the name says so).
fn measure_round(wd: &Workdir, round: usize, col: &Column, cache: &Path, out: &mut Samples) {
    let fresh = |tag: &str| {
        OverlayStack::mount(
            &col.lowers,
            &wd.join(format!("ov-{}-{tag}-{round}", col.name.replace(' ', "_"))),
            &[],
        )
        .unwrap()
    };
    let same = fresh("same");
    timed(&walk(same.path()));
    out.push("walk", timed(&walk(same.path())));
    let ov = fresh("walk");
    out.push("walk-fresh", timed(&walk(ov.path())));
    drop(ov);
    evict(cache);
    for l in &col.lowers {
        evict(l);
    }
    out.push("read-cold", timed(&read_all(same.path())));
    out.push("read", timed(&read_all(same.path())));
    let ov = fresh("read");
    out.push("read-fresh", timed(&read_all(ov.path())));
    drop(ov);
    evict(cache);
    for l in &col.lowers {
        evict(l);
    }
    let ov = fresh("readpc");
    out.push("read-fresh-pc", timed(&read_all(ov.path())));
}

/// Median of each column's ratio native/column, paired by round.
fn paired(native: &[Duration], other: &[Duration]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = native
        .iter()
        .zip(other)
        .map(|(n, o)| n.as_secs_f64() / o.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    (r[r.len() / 2], r[0], r[r.len() - 1])
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn fuse_bench_local() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::debian_images(),
        prereq::binaries(&["skopeo", "tar", "find"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    let rounds: usize = std::env::var("STL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let mut rep = Report::new("fuse_bench_local: pydeb (ctr-remote eStargz), loopback registry");
    let esgz = pydeb_ctr_remote(false).unwrap();
    let original = integration::images::pydeb()
        .unwrap()
        .image("latest")
        .unwrap();
    let image = OciImage::open(&esgz.layout, "latest").unwrap();
    let wd = Workdir::new("fbench").unwrap();
    let registry = Registry::start(&wd).unwrap();
    let reference = push(&registry, &esgz.layout, "latest", "bench/py:latest").unwrap();
    let native_dirs = extracted(&original, &wd.join("native"));
    // Two sets of mounts, passthrough on (the default) and off, each with its own root.
    let mut sets = Vec::new();
    for (name, passthrough) in [("starling", true), ("starling no-passthrough", false)] {
        let tag = if passthrough { "pt" } else { "nopt" };
        let config = wd.join(format!("starling-{tag}.toml"));
        MountConfig {
            passthrough,
            threads: std::env::var("STL_BENCH_FUSE_THREADS")
                .ok()
                .and_then(|v| v.parse().ok()),
            ..Default::default()
        }
        .write(&config)
        .unwrap();
        let root = wd.join(format!("root-{tag}"));
        let t = Instant::now();
        let mounts = mount_all(
            &root,
            &config,
            &reference,
            &image,
            &wd.join(format!("mnt-{tag}")),
        )
        .unwrap();
        rep.line(format!(
            "- {name}: mount of {} layers {}",
            mounts.len(),
            secs(t.elapsed())
        ));
        sets.push((name, root, mounts));
    }
    let (rss0, _) = rss_sum(&sets[0].2);
    // "Warm" means every chunk is local: let background fetch finish first.
    for (name, root, mounts) in &sets {
        let complete = wait_complete(root, mounts.len(), Duration::from_secs(600));
        assert!(complete, "{name}: background fetch did not complete");
    }
    let mut cols = vec![Column {
        name: "native overlayfs",
        lowers: native_dirs.clone(),
    }];
    for (name, _, mounts) in &sets {
        cols.push(Column {
            name,
            lowers: mounts.iter().map(|m| m.mountpoint.clone()).collect(),
        });
    }
    // First walk of each fresh mount (kernel caches empty).
    for col in &cols {
        let ov = OverlayStack::mount(
            &col.lowers,
            &wd.join(format!("first-{}", col.name.replace(' ', "_"))),
            &[],
        )
        .unwrap();
        let d = timed(&walk(ov.path()));
        rep.line(format!("- first walk, {}: {}", col.name, secs(d)));
    }
    let mut samples: Vec<Samples> = cols.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        // Rotate the order each round so load drift hits every column alike.
        for k in 0..cols.len() {
            let i = (k + round) % cols.len();
            let cache = match i {
                0 => wd.join("native"),
                _ => sets[i - 1].1.join("cache"),
            };
            measure_round(&wd, round, &cols[i], &cache, &mut samples[i]);
        }
    }
    // FUSE requests of one walk through a fresh overlay (what a new container's first walk
    // costs in round trips), counted by the kernel's FUSE tracepoint when perf is here.
    for col in &cols[1..] {
        let ov = OverlayStack::mount(
            &col.lowers,
            &wd.join(format!("count-{}", col.name.replace(' ', "_"))),
            &[],
        )
        .unwrap();
        match fuse_requests(&walk(ov.path()), &wd.join("perf.txt")) {
            Ok(counts) => rep.line(format!(
                "- FUSE requests of one walk through a fresh overlay, {}: {}",
                col.name,
                counts
                    .iter()
                    .map(|(op, n)| format!("{op} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(why) => rep.line(format!("- FUSE request counts skipped: {why}")),
        }
    }
    let (rss_read, each_read) = rss_sum(&sets[0].2);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    rep.line(format!(
        "- {rounds} rounds; load average at the end: {}",
        load.trim()
    ));
    rep.line("");
    let mut head = "| measure (median s) |".to_string();
    let mut rule = "|---|".to_string();
    for c in &cols {
        head.push_str(&format!(" {} |", c.name));
        rule.push_str("---|");
    }
    for c in &cols[1..] {
        head.push_str(&format!(" native/{} [min-max] |", c.name));
        rule.push_str("---|");
    }
    head.push_str(" goal |");
    rule.push_str("---|");
    rep.line(head);
    rep.line(rule);
    for (key, label, goal) in LOCAL_MEASURES {
        let mut row = format!("| {label} |");
        for s in &samples {
            row.push_str(&format!(
                " {:.3} |",
                median(s.by_measure[key].clone()).as_secs_f64()
            ));
        }
        for s in &samples[1..] {
            let (m, lo, hi) = paired(&samples[0].by_measure[key], &s.by_measure[key]);
            row.push_str(&format!(" {m:.2} [{lo:.2}-{hi:.2}] |"));
        }
        row.push_str(&format!(" >= {goal} |"));
        rep.line(row);
    }
    rep.line("");
    rep.line(format!(
        "- `starling mount` RSS (passthrough set, one process per layer): after mount {:.1} MiB, after the rounds {:.1} MiB ({:?} KiB)",
        rss0 as f64 / 1024.0,
        rss_read as f64 / 1024.0,
        each_read
    ));
    drop(sets);
    let nw = median(samples[0].by_measure["walk"].clone());
    let nr = median(samples[0].by_measure["read"].clone());
    // The peer's mount of the same image, where it can be built.
    match integration::peer::peer_binary() {
        Ok(bin) => peer_local(&mut rep, &bin, &esgz.layout, &native_dirs, nw, nr),
        Err(why) => rep.line(format!("- stargz peer: skipped ({why})")),
    }
    rep.finish();
}

fn peer_local(
    rep: &mut Report,
    bin: &Path,
    layout: &Path,
    native: &[PathBuf],
    nw2: Duration,
    nr_warm: Duration,
) {
    use integration::peer::PeerOptions;
    use integration::stack::{Stack, StackOptions};
    let mut stack = Stack::start(
        "fbench-peer",
        StackOptions {
            peer: Some((bin.to_path_buf(), PeerOptions::default())),
            peer_name: Some("stargz".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = push(&stack.registry, layout, "latest", "bench/py:latest").unwrap();
    let pid = stack.peer.as_mut().map(|p| p.daemon().pid()).unwrap_or(0);
    let ctr = stack.ctr();
    ctr.rpull(&reference, "stargz").unwrap();
    let view = ctr
        .mount_image(&reference, "stargz", &stack.wd.join("peer-view"))
        .unwrap();
    let pw1 = timed(&walk(view.path()));
    let pw2 = median((0..ROUNDS).map(|_| timed(&walk(view.path()))).collect());
    let rss_walk = pid_rss_kib(pid);
    // Read everything twice (the first fetches what background fetch has not), then time.
    timed(&read_all(view.path()));
    let pr = median((0..ROUNDS).map(|_| timed(&read_all(view.path()))).collect());
    let rss_read = pid_rss_kib(pid);
    let _ = native;
    rep.line(format!(
        "- stargz peer mount: metadata walk first {} / warm {} (native/peer {:.2}); read /usr warm {} (native/peer {:.2}); peer RSS after walk {:.1} MiB, after reading everything {:.1} MiB",
        secs(pw1),
        secs(pw2),
        nw2.as_secs_f64() / pw2.as_secs_f64(),
        secs(pr),
        nr_warm.as_secs_f64() / pr.as_secs_f64(),
        rss_walk as f64 / 1024.0,
        rss_read as f64 / 1024.0
    ));
}

/// Files `python3 -c 'print(1)'` opens in the image (absolute, symlinks resolved, regular
/// files only), from strace against an extracted copy.
fn print1_files(rootfs: &Path, scratch: &Path) -> Vec<String> {
    let trace = scratch.join("print1.strace");
    run_cmd(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=open,openat,execve", "-o"])
            .arg(&trace)
            .arg("chroot")
            .arg(rootfs)
            .args(["/usr/bin/python3", "-c", "print(1)"]),
        Duration::from_secs(120),
    )
    .unwrap()
    .check()
    .unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut paths = BTreeSet::new();
    let mut order = Vec::new();
    for l in text.lines() {
        if l.contains("= -1") || l.contains("O_DIRECTORY") {
            continue;
        }
        let Some(start) = l.find('"') else { continue };
        let Some(len) = l[start + 1..].find('"') else {
            continue;
        };
        let p = &l[start + 1..start + 1 + len];
        if p.starts_with('/') && paths.insert(p.to_string()) {
            order.push(p.to_string());
        }
    }
    let out = run_cmd(
        Command::new("chroot")
            .arg(rootfs)
            .arg("realpath")
            .arg("-e")
            .args(&order),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for p in out.stdout.lines() {
        let host = rootfs.join(p.trim_start_matches('/'));
        if std::fs::metadata(&host)
            .map(|m| m.is_file())
            .unwrap_or(false)
            && seen.insert(p.to_string())
        {
            files.push(p.to_string());
        }
    }
    files
}

/// Compressed bytes per file path and the TOC size, from a gzip eStargz blob's TOC.
struct TocSizes {
    files: BTreeMap<String, u64>,
    toc_bytes: u64,
}

fn toc_sizes(blob: &Path) -> TocSizes {
    let data = std::fs::read(blob).unwrap();
    let tail = &data[data.len() - 51..];
    let pos = tail
        .windows(6)
        .position(|w| w == b"STARGZ")
        .expect("eStargz footer");
    let hex = std::str::from_utf8(&tail[pos - 16..pos]).unwrap();
    let toc_offset = u64::from_str_radix(hex, 16).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&data[toc_offset as usize..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut json = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == "stargz.index.json" {
            e.read_to_end(&mut json).unwrap();
        }
    }
    let toc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let entries = toc["entries"].as_array().unwrap();
    let mut offsets: Vec<u64> = entries
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .filter(|o| *o > 0)
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    let len_at = |o: u64| {
        let i = offsets.partition_point(|x| *x <= o);
        offsets.get(i).copied().unwrap_or(toc_offset) - o
    };
    let mut files = BTreeMap::new();
    let mut current = String::new();
    for e in entries {
        let ty = e["type"].as_str().unwrap_or("");
        let name = e["name"].as_str().unwrap_or("");
        if ty == "reg" {
            current = format!("/{}", name.trim_start_matches("./"));
        } else if ty != "chunk" {
            continue;
        }
        if let Some(o) = e["offset"].as_u64().filter(|o| *o > 0) {
            *files.entry(current.clone()).or_insert(0) += len_at(o);
        }
    }
    TocSizes {
        files,
        toc_bytes: data.len() as u64 - toc_offset,
    }
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn fuse_bench_shaped() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::netns(),
        prereq::starling_binary(),
        prereq::debian_images(),
        prereq::binaries(&["skopeo", "tar", "strace", "curl"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    let mut rep =
        Report::new("fuse_bench_shaped: pydeb (ctr-remote eStargz) over 20 ms RTT, 100 Mbit/s");
    let esgz = pydeb_ctr_remote(false).unwrap();
    let original = integration::images::pydeb()
        .unwrap()
        .image("latest")
        .unwrap();
    let image = OciImage::open(&esgz.layout, "latest").unwrap();
    let wd = Workdir::new("fbench-sh").unwrap();
    let registry = Registry::start(&wd).unwrap();
    push(&registry, &esgz.layout, "latest", "bench/py:latest").unwrap();
    let shaped = ShapedLink::start(&wd, &registry, ShapedOptions::default()).unwrap();
    let reference = shaped.reference("bench/py:latest");
    let native_dirs = extracted(&original, &wd.join("native"));
    let native = OverlayStack::mount(&native_dirs, &wd.join("merged-native"), &[]).unwrap();

    // 1. Cold read of the files print(1) opens: only those chunks cross the link.
    let files = print1_files(native.path(), wd.path());
    let sizes: Vec<TocSizes> = image.layers.iter().map(|l| toc_sizes(&l.path)).collect();
    let mut compressed = 0u64;
    for f in &files {
        // The topmost layer holding the file serves it.
        if let Some(s) = sizes.iter().rev().find_map(|s| s.files.get(f)) {
            compressed += s;
        }
    }
    let tocs: u64 = sizes.iter().map(|s| s.toc_bytes).sum();
    let config = wd.join("ondemand.toml");
    MountConfig {
        prefetch: false,
        background_fetch: false,
        ..Default::default()
    }
    .write(&config)
    .unwrap();
    let root = wd.join("root-cold");
    let before = shaped.link_bytes();
    let t = Instant::now();
    let mounts = mount_all(&root, &config, &reference, &image, &wd.join("mnt-cold")).unwrap();
    let dirs: Vec<&Path> = mounts.iter().map(|m| m.mountpoint.as_path()).collect();
    let fuse = OverlayStack::mount(&dirs, &wd.join("merged-cold"), &[]).unwrap();
    let mounted = t.elapsed();
    for f in &files {
        let _ = std::fs::read(fuse.path().join(f.trim_start_matches('/'))).unwrap();
    }
    let took = t.elapsed();
    let link = shaped.link_bytes().rx - before.rx;
    // Status files are rewritten at most once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let status = fetched_bytes(&root);
    rep.line(format!(
        "- print(1) opens {} files; their compressed size {:.2} MiB + TOCs {:.2} MiB = {:.2} MiB",
        files.len(),
        compressed as f64 / 1048576.0,
        tocs as f64 / 1048576.0,
        (compressed + tocs) as f64 / 1048576.0
    ));
    rep.line(format!(
        "- cold read of them through starling: {:.2} MiB over the link (IP level; status files: {:.2} MiB of chunks), ratio {:.2} (goal <= 1.2); mount {} , mount + reads {}",
        link as f64 / 1048576.0,
        status as f64 / 1048576.0,
        link as f64 / (compressed + tocs) as f64,
        secs(mounted),
        secs(took)
    ));
    // python itself, cold, on a fresh cache.
    drop(fuse);
    drop(mounts);
    let root = wd.join("root-py");
    let before = shaped.link_bytes();
    let t = Instant::now();
    let mounts = mount_all(&root, &config, &reference, &image, &wd.join("mnt-py")).unwrap();
    let dirs: Vec<&Path> = mounts.iter().map(|m| m.mountpoint.as_path()).collect();
    let fuse = OverlayStack::mount(&dirs, &wd.join("merged-py"), &[]).unwrap();
    let out = run_cmd(
        Command::new("chroot")
            .arg(fuse.path())
            .args(["/usr/bin/python3", "-c", "print(1)"]),
        Duration::from_secs(300),
    )
    .unwrap()
    .check()
    .unwrap();
    assert_eq!(out.stdout.trim(), "1");
    let took = t.elapsed();
    let link = shaped.link_bytes().rx - before.rx;
    // Status files are rewritten at most once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let status = fetched_bytes(&root);
    rep.line(format!(
        "- mount + `python3 -c 'print(1)'` (chroot on the FUSE overlay, cold cache): {}; {:.2} MiB over the link (status files: {:.2} MiB of chunks), ratio to compressed size + TOCs {:.2} (goal <= 1.2)",
        secs(took),
        link as f64 / 1048576.0,
        status as f64 / 1048576.0,
        link as f64 / (compressed + tocs) as f64
    ));
    drop(fuse);
    drop(mounts);

    // 2. Read everything, cold: starling (defaults: background fetch, streaming) vs a full
    //    pull (download + extract every layer, then read from overlayfs).
    let config = wd.join("default.toml");
    MountConfig::default().write(&config).unwrap();
    let root = wd.join("root-all");
    let before = shaped.link_bytes();
    let t = Instant::now();
    let mounts = mount_all(&root, &config, &reference, &image, &wd.join("mnt-all")).unwrap();
    let dirs: Vec<&Path> = mounts.iter().map(|m| m.mountpoint.as_path()).collect();
    let fuse = OverlayStack::mount(&dirs, &wd.join("merged-all"), &[]).unwrap();
    timed(&read_all(fuse.path()));
    let starling_all = t.elapsed();
    let starling_bytes = shaped.link_bytes().rx - before.rx;
    let (rss, each) = rss_sum(&mounts);
    drop(fuse);
    drop(mounts);

    let pull_dir = wd.join("pulled");
    let t = Instant::now();
    let mut dirs = Vec::new();
    for (i, l) in image.layers.iter().enumerate() {
        let d = pull_dir.join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        timed(&format!(
            "curl -sf http://{}/v2/bench/py/blobs/{} | tar -xzf - --numeric-owner --xattrs --xattrs-include='*' -C '{}'",
            shaped.host(),
            l.digest,
            d.display()
        ));
        dirs.push(d);
    }
    let pulled = OverlayStack::mount(&dirs, &wd.join("merged-pulled"), &[]).unwrap();
    timed(&read_all(pulled.path()));
    let pull_all = t.elapsed();
    rep.line(format!(
        "- read everything (`tar -cf - usr | cat`), cold: starling mount + read {} ({:.1} MiB over the link), full pull (download + extract) + read {}; ratio starling/full pull {:.2} (goal <= 1.0); `starling mount` RSS after it {:.1} MiB ({each:?} KiB)",
        secs(starling_all),
        starling_bytes as f64 / 1048576.0,
        secs(pull_all),
        starling_all.as_secs_f64() / pull_all.as_secs_f64(),
        rss as f64 / 1024.0
    ));
    drop(pulled);
    rep.finish();
}

/// Memory of a process: (VmRSS, VmHWM, RssAnon, RssFile) in KiB and its thread count.
fn proc_memory(pid: u32) -> (u64, u64, u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:"),
        field("VmHWM:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:"),
    )
}

fn memory_line(who: &str, when: &str, pid: u32) -> String {
    let (rss, hwm, anon, file, threads) = proc_memory(pid);
    format!(
        "| {who} | {when} | {:.1} | {:.1} | {:.1} | {:.1} | {threads} |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    )
}

/// The cached `ctr-remote image optimize` variant of pydeb made by `scripts/bench`, if any:
/// its layout and tag.
fn pydeb_optimized_layout() -> Option<(PathBuf, String)> {
    let root = integration::images::cache_root();
    let layout = std::fs::read_dir(&root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("bench-pydeb-") && n.contains("-esgz-opt-"))
                && p.join("layout/index.json").is_file()
        })?
        .join("layout");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()?
        .to_string();
    Some((layout, tag))
}

/// `starling rpull --plain-http` into containerd's `starling` snapshotter.
fn starling_rpull(ctr: &integration::containerd::Ctr, reference: &str) {
    let out = run_cmd(
        Command::new(integration::starling::starling_bin().unwrap())
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .args(["rpull", "--address"])
            .arg(&ctr.address)
            .args(["--namespace", &ctr.namespace])
            .args(["--snapshotter", "starling", "--plain-http", reference]),
        Duration::from_secs(600),
    )
    .unwrap();
    assert!(out.success(), "starling rpull {reference}: {out:?}");
}

/// Daemon memory with the same lazy layers mounted in the starling daemon and in the stargz
/// peer (one containerd, loopback registry): pydeb's ctr-remote eStargz image and, when
/// `scripts/bench` has cached it, its `ctr-remote image optimize` variant (4 layers), read
/// after the pulls, after walking every image and after reading every image's /usr.
#[test]
#[ignore = "benchmark: run with --ignored"]
fn fuse_bench_rss() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::debian_images(),
        prereq::binaries(&["skopeo", "tar", "find"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    use integration::peer::PeerOptions;
    use integration::stack::{Stack, StackOptions};
    use integration::starling::{StarlingConfig, StarlingOptions};
    let mut rep =
        Report::new("fuse_bench_rss: daemon memory, same lazy layers in starling and the peer");
    let esgz = pydeb_ctr_remote(false).unwrap();
    let mut layouts = vec![(esgz.layout.clone(), "latest".to_string())];
    layouts.extend(pydeb_optimized_layout());
    let peer = integration::peer::peer_binary().ok();
    let mut stack = Stack::start(
        "fbench-rss",
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(StarlingConfig::new()),
                ..Default::default()
            }),
            peer: peer.clone().map(|b| (b, PeerOptions::default())),
            peer_name: Some("stargz".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let refs: Vec<String> = layouts
        .iter()
        .enumerate()
        .map(|(i, (l, tag))| push(&stack.registry, l, tag, &format!("bench/py{i}:latest")).unwrap())
        .collect();
    let spid = stack.starling.as_mut().unwrap().daemon().pid();
    let ppid = stack.peer.as_mut().map(|p| p.daemon().pid());
    let ctr = stack.ctr().clone();
    let mut rows = vec![
        "| daemon | after | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | threads |"
            .to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut daemons = vec![("starling", "starling", spid)];
    if let Some(p) = ppid {
        daemons.push(("stargz peer", "stargz", p));
    }
    for (who, snapshotter, pid) in daemons {
        for r in &refs {
            if snapshotter == "starling" {
                starling_rpull(&ctr, r);
            } else {
                ctr.rpull(r, snapshotter).unwrap();
            }
        }
        rows.push(memory_line(
            who,
            &format!("lazy pull of {} images", refs.len()),
            pid,
        ));
        let views: Vec<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ctr.mount_image(
                    r,
                    snapshotter,
                    &stack.wd.join(format!("view-{snapshotter}-{i}")),
                )
                .unwrap()
            })
            .collect();
        for v in &views {
            timed(&walk(v.path()));
        }
        rows.push(memory_line(who, "walk of every image", pid));
        for v in &views {
            timed(&read_all(v.path()));
        }
        rows.push(memory_line(who, "reading every image's /usr", pid));
        std::thread::sleep(Duration::from_secs(5));
        rows.push(memory_line(who, "5 s later", pid));
        drop(views);
        ctr.remove_all_images().unwrap();
    }
    if peer.is_none() {
        rows.push("(stargz peer not built: no peer rows)".into());
    }
    for r in rows {
        rep.line(r);
    }
    let lazy = integration::mounts::mounts_under(stack.starling.as_ref().unwrap().root())
        .map(|m| m.iter().filter(|m| m.fs_type.starts_with("fuse")).count())
        .unwrap_or(0);
    rep.line(format!("- starling FUSE mounts at the end: {lazy}"));
    rep.finish();
}

/// Mean time of one `lgetxattr(2)` of an attribute `file` does not have, over `n` calls,
/// and the errno of the last call.
fn getxattr_cost(file: &Path, n: u32) -> (Duration, String) {
    let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let name = c"trusted.overlay.metacopy";
    let mut errno = 0;
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: both strings are NUL-terminated and outlive the call; a null buffer of
        // size 0 asks for the value's size only.
        let r = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if r < 0 {
            errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        }
    }
    let answer = match errno {
        0 => "ok".to_string(),
        e => format!("{:?}", nix::errno::Errno::from_raw(e)),
    };
    (t.elapsed() / n, answer)
}

/// The regular files directly in `dir`.
fn regular_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_file()))
        })
        .count()
}

/// One way of mounting pydeb's layers for [`fuse_bench_xattr`].
struct XattrColumn {
    name: String,
    lowers: Vec<PathBuf>,
    /// Overlay mount options.
    options: Vec<&'static str>,
    /// Where its file contents live (dropped from the page cache before each cold read),
    /// or `None` when the column shares its mounts with another (no read measured).
    cache: Option<PathBuf>,
}

/// What answering overlayfs' xattr questions costs: a walk through a *fresh* overlay (a
/// new container's first look at its image; overlayfs asks `trusted.overlay.*` of every
/// lower entry it looks up and FUSE caches no xattr) over pydeb's FUSE layers, against the
/// same walk on native overlayfs in the same run, with the FUSE requests it caused
/// (`perf`). Columns: this binary with `[fuse] threads` 4, 2 and 1, the overlay
/// option `redirect_dir=nofollow` (overlayfs then skips the opaque/redirect questions of
/// directories whose parent lives in one layer), and, when `STL_BENCH_BASELINE_BIN` names
/// another starling binary (e.g. one answering GETXATTR with ENOSYS), that binary; the
/// cost per GETXATTR is the walk's time difference to it over the request difference.
/// Also: the mean time of one getxattr(2) straight on a lower file (the round trip alone),
/// and the FUSE requests of copy-ups (touching every file of /usr/bin through a writable
/// overlay).
#[test]
#[ignore = "benchmark: run with --ignored"]
fn fuse_bench_xattr() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::debian_images(),
        prereq::binaries(&["skopeo", "find"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    let rounds: usize = std::env::var("STL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rep =
        Report::new("fuse_bench_xattr: walk through a fresh overlay, pydeb (ctr-remote eStargz)");
    let esgz = pydeb_ctr_remote(false).unwrap();
    let original = integration::images::pydeb()
        .unwrap()
        .image("latest")
        .unwrap();
    let image = OciImage::open(&esgz.layout, "latest").unwrap();
    let wd = Workdir::new("fxattr").unwrap();
    let registry = Registry::start(&wd).unwrap();
    let reference = push(&registry, &esgz.layout, "latest", "bench/py:latest").unwrap();
    let native = extracted(&original, &wd.join("native"));
    let this = integration::starling::starling_bin().unwrap();
    let mut sets: Vec<(String, PathBuf, usize)> = vec![
        ("starling".into(), this.clone(), 4),
        ("starling threads=2".into(), this.clone(), 2),
        ("starling threads=1".into(), this, 1),
    ];
    if let Some(b) = std::env::var_os("STL_BENCH_BASELINE_BIN") {
        sets.push(("baseline binary".into(), PathBuf::from(b), 4));
    }
    let mut all_mounts = Vec::new();
    let mut cols = vec![
        XattrColumn {
            name: "native".into(),
            lowers: native.clone(),
            options: vec![],
            cache: Some(wd.join("native")),
        },
        XattrColumn {
            name: "native redirect_dir=nofollow".into(),
            lowers: native.clone(),
            options: vec!["redirect_dir=nofollow"],
            cache: None,
        },
    ];
    for (i, (name, bin, threads)) in sets.iter().enumerate() {
        let config = wd.join(format!("starling-{i}.toml"));
        std::fs::write(
            &config,
            format!("[fuse]\npassthrough = false\nthreads = {threads}\n[fetch]\nbackground_fetch = true\n"),
        )
        .unwrap();
        let root = wd.join(format!("root-{i}"));
        let mounts: Vec<LazyMount> = image
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                LazyMount::start_with(
                    bin,
                    &root,
                    &config,
                    &reference,
                    &layer.digest,
                    &wd.join(format!("mnt-{i}/{l}")),
                )
                .unwrap()
            })
            .collect();
        assert!(
            wait_complete(&root, mounts.len(), Duration::from_secs(600)),
            "{name}: background fetch did not complete"
        );
        let lowers: Vec<PathBuf> = mounts.iter().map(|m| m.mountpoint.clone()).collect();
        cols.push(XattrColumn {
            name: name.clone(),
            lowers: lowers.clone(),
            options: vec![],
            cache: Some(root.join("cache")),
        });
        if i == 0 {
            cols.push(XattrColumn {
                name: format!("{name} redirect_dir=nofollow"),
                lowers,
                options: vec!["redirect_dir=nofollow"],
                cache: None,
            });
        }
        all_mounts.push(mounts);
    }
    let fresh = |c: &XattrColumn, tag: &str| {
        OverlayStack::mount(
            &c.lowers,
            &wd.join(format!("ov-{}-{tag}", c.name.replace([' ', '='], "_"))),
            &c.options,
        )
        .unwrap()
    };
    // Warm the FUSE caches (entries, attributes) as a layer in use has them.
    for c in &cols {
        timed(&walk(fresh(c, "warm").path()));
    }
    // Reads through one overlay per column (a container reading its files while the
    // daemon serves them from the chunk cache: where the worker count matters).
    let kept: Vec<Option<OverlayStack>> = cols
        .iter()
        .map(|c| c.cache.as_ref().map(|_| fresh(c, "read")))
        .collect();
    let mut samples: Vec<Vec<Duration>> = cols.iter().map(|_| Vec::new()).collect();
    let mut reads: Vec<Vec<Duration>> = cols.iter().map(|_| Vec::new()).collect();
    let mut parallel: Vec<Vec<Duration>> = cols.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..cols.len() {
            let i = (k + round) % cols.len();
            let ov = fresh(&cols[i], &format!("r{round}"));
            samples[i].push(timed(&walk(ov.path())));
            drop(ov);
            if let (Some(cache), Some(ov)) = (&cols[i].cache, &kept[i]) {
                evict(cache);
                for l in &cols[i].lowers {
                    evict(l);
                }
                reads[i].push(timed(&read_all(ov.path())));
                evict(cache);
                for l in &cols[i].lowers {
                    evict(l);
                }
                parallel[i].push(timed(&read_parallel(ov.path())));
            }
        }
    }
    drop(kept);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    rep.line(format!(
        "- {rounds} rounds; load average at the end: {}",
        load.trim()
    ));
    rep.line("");
    rep.line("| column | median walk s | native/column [min-max] | read /usr, page cache dropped: median s, native/column [min-max] | 4 readers at once, page cache dropped: median s, native/column [min-max] | FUSE requests of one walk |");
    rep.line("|---|---|---|---|---|---|");
    let mut getxattrs = Vec::new();
    for (i, c) in cols.iter().enumerate() {
        let counts = if i < 2 {
            String::from("-")
        } else {
            let ov = fresh(c, "count");
            match fuse_requests(&walk(ov.path()), &wd.join("perf.txt")) {
                Ok(v) => {
                    getxattrs.push((
                        i,
                        v.iter().find(|(n, _)| *n == "GETXATTR").map_or(0, |x| x.1),
                    ));
                    v.iter()
                        .map(|(op, n)| format!("{op} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                Err(why) => why,
            }
        };
        let base = if c.options.is_empty() { 0 } else { 1 };
        let (m, lo, hi) = paired(&samples[base], &samples[i]);
        let ratio = |v: &[Vec<Duration>]| {
            if v[i].is_empty() {
                String::from("-")
            } else {
                let (rm, rlo, rhi) = paired(&v[0], &v[i]);
                format!(
                    "{:.3}, {rm:.2} [{rlo:.2}-{rhi:.2}]",
                    median(v[i].clone()).as_secs_f64()
                )
            }
        };
        let (read, par) = (ratio(&reads), ratio(&parallel));
        rep.line(format!(
            "| {} | {:.3} | {m:.2} [{lo:.2}-{hi:.2}] | {read} | {par} | {counts} |",
            c.name,
            median(samples[i].clone()).as_secs_f64()
        ));
    }
    // What a container start asks: python3 -c 'print(1)' in a chroot on a fresh overlay.
    if let Some(c) = cols.iter().find(|c| c.name == "starling") {
        let ov = fresh(c, "print1");
        let cmd = format!(
            "chroot '{}' /usr/bin/python3 -c 'print(1)' > /dev/null",
            ov.path().display()
        );
        match fuse_requests(&cmd, &wd.join("perf.txt")) {
            Ok(v) => rep.line(format!(
                "- FUSE requests of python3 -c 'print(1)' in a chroot on a fresh overlay: {}",
                v.iter()
                    .map(|(op, n)| format!("{op} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(why) => rep.line(format!("- print(1) request counts skipped: {why}")),
        }
    }
    // One getxattr straight on a file of the bottom layer (no overlay): the round trip
    // alone, per column with its own mounts.
    let probe_cols: Vec<usize> = (0..cols.len())
        .filter(|&i| cols[i].cache.is_some())
        .collect();
    let mut per_call: Vec<Vec<Duration>> = cols.iter().map(|_| Vec::new()).collect();
    let mut answers: Vec<String> = cols.iter().map(|_| String::new()).collect();
    for round in 0..rounds {
        for k in 0..probe_cols.len() {
            let i = probe_cols[(k + round) % probe_cols.len()];
            let file = cols[i].lowers[0].join("etc/debian_version");
            let (d, answer) = getxattr_cost(&file, 20_000);
            per_call[i].push(d);
            answers[i] = answer;
        }
    }
    rep.line("");
    rep.line("| column | lgetxattr(trusted.overlay.metacopy) of a bottom-layer file, mean of 20000 calls, median over rounds us [min-max] | answer |");
    rep.line("|---|---|---|");
    for &i in &probe_cols {
        let v = &per_call[i];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        rep.line(format!(
            "| {} | {:.2} [{:.2}-{:.2}] | {} |",
            cols[i].name,
            us(median(v.clone())),
            us(*v.iter().min().unwrap()),
            us(*v.iter().max().unwrap()),
            answers[i]
        ));
    }
    // Copy-ups (a container changing files of its image): the FUSE requests of touching
    // every file of /usr/bin through a writable overlay whose lookups are already done.
    rep.line("");
    for c in cols.iter().filter(|c| {
        c.cache.is_some() && c.name != "starling threads=2" && c.name != "starling threads=1"
    }) {
        let dir = wd.join(format!("cu-{}", c.name.replace([' ', '='], "_")));
        let (merged, _upper) = integration::overlay::container(&c.lowers, &dir).unwrap();
        let bin = merged.path().join("usr/bin");
        timed(&format!("find '{}' > /dev/null", bin.display()));
        let n = regular_files(&bin);
        let touch = format!(
            "find '{}' -maxdepth 1 -type f -exec touch -c -m {{}} +",
            bin.display()
        );
        let line = if c.name == "native" {
            format!("{:.3} s", timed(&touch).as_secs_f64())
        } else {
            let t = Instant::now();
            match fuse_requests(&touch, &wd.join("perf.txt")) {
                Ok(v) => format!(
                    "{:.3} s (under perf); FUSE requests per copy-up: {}",
                    t.elapsed().as_secs_f64(),
                    v.iter()
                        .map(|(op, k)| format!("{op} {:.2}", *k as f64 / n as f64))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(why) => why,
            }
        };
        rep.line(format!(
            "- copy-up of {n} files of /usr/bin, {}: {line}",
            c.name
        ));
        drop(merged);
    }
    // Cost of one GETXATTR round trip: this binary vs the baseline binary.
    if let (Some(&(a, na)), Some(&(b, nb))) = (
        getxattrs.iter().find(|(i, _)| cols[*i].name == "starling"),
        getxattrs
            .iter()
            .find(|(i, _)| cols[*i].name == "baseline binary"),
    ) {
        if na > nb {
            let dt =
                median(samples[a].clone()).as_secs_f64() - median(samples[b].clone()).as_secs_f64();
            rep.line(format!(
                "- per GETXATTR: {:.1} us ({:.3} s more for {} more requests)",
                dt / (na - nb) as f64 * 1e6,
                dt,
                na - nb
            ));
        }
    }
    drop(all_mounts);
    rep.finish();
}
