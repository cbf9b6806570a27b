//! Merge benchmark (root): three chains of three layers, ~10k files each with a realistic
//! size distribution (most files small, a few large; mean ≈ 50 KB) in about a thousand
//! directories per chain under shared top-level trees, overwrites and whiteouts in the
//! upper layers. Measures, on one snapshotter root:
//! - stack: time to create a stacked merged snapshot of the three chains (goal ≤ 50 ms);
//! - hardlink vs copy: time to flatten (goal: hardlink ≥ 10× faster), and the extra bytes
//!   on disk a hardlinked result owns relative to the inputs' data (goal ≤ 1 %);
//! - reuse: time to create a second merged snapshot on an existing flattened result.
//!
//! `cargo bench -p snapshotter --bench merge` (set `STL_MERGE_BENCH_FILES` for another
//! file count per chain, `STL_MERGE_BENCH_DIR` for another scratch directory). Copies
//! read inputs from the page cache (they were just written); caches are not dropped (the
//! machine is shared).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use snapshotter::merge::{MergeMode, MergeRequest, Merged};
use snapshotter::store::{Kind, Labels};
use snapshotter::{Options, Snapshots};

/// xorshift64*: deterministic, good enough for sizes and names.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A file size: 60 % < 4 KiB, 30 % 4–64 KiB, 9 % 64–512 KiB, 1 % 0.5–2 MiB.
    fn file_size(&mut self) -> usize {
        let (lo, hi) = match self.below(100) {
            0..=59 => (0, 4 << 10),
            60..=89 => (4 << 10, 64 << 10),
            90..=98 => (64 << 10, 512 << 10),
            _ => (512 << 10, 2 << 20),
        };
        (lo + self.below(hi - lo)) as usize
    }
}

struct Chain {
    name: String,
    files: usize,
    bytes: u64,
}

/// A chain's directories: about one per ten files, under top-level trees all chains share
/// (`usr/lib/p17/...` exists in several chains, as in real images).
fn dir_pool(rng: &mut Rng, files: usize) -> Vec<PathBuf> {
    const TOPS: [&str; 8] = [
        "usr/lib",
        "usr/share",
        "usr/bin",
        "usr/include",
        "etc",
        "var/lib",
        "opt",
        "lib",
    ];
    let mut dirs = Vec::new();
    for _ in 0..(files / 10).max(1) {
        let mut p = PathBuf::from(TOPS[rng.below(TOPS.len() as u64) as usize]);
        p.push(format!("p{}", rng.below(200)));
        for _ in 0..rng.below(3) {
            p.push(format!("s{}", rng.below(6)));
        }
        dirs.push(p);
    }
    dirs
}

/// Writes one layer: `n` files in the chain's directories (a quarter of them overwriting
/// paths of `existing`), plus `whiteouts` deletions of existing paths.
#[allow(clippy::too_many_arguments)]
fn fill_layer(
    dir: &Path,
    rng: &mut Rng,
    data: &[u8],
    dirs: &[PathBuf],
    n: usize,
    existing: &mut Vec<PathBuf>,
    whiteouts: usize,
    stats: &mut (usize, u64),
) {
    for i in 0..n {
        let rel = if !existing.is_empty() && rng.below(4) == 0 {
            existing[rng.below(existing.len() as u64) as usize].clone()
        } else {
            // Skewed: low-numbered directories get more files.
            let upto = rng.below(dirs.len() as u64) + 1;
            let d = rng.below(upto) as usize;
            let p = dirs[d].join(format!("f{i}-{}", rng.below(1 << 20)));
            existing.push(p.clone());
            p
        };
        let path = dir.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let size = rng.file_size();
        let start = rng.below((data.len() - size) as u64) as usize;
        fs::write(&path, &data[start..start + size]).unwrap();
        stats.0 += 1;
        stats.1 += size as u64;
    }
    for _ in 0..whiteouts.min(existing.len()) {
        let idx = rng.below(existing.len() as u64) as usize;
        let rel = existing.swap_remove(idx);
        let path = dir.join(&rel);
        if path.exists() {
            continue; // written in this very layer
        }
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
    }
}

fn build_chain(s: &Snapshots, name: &str, seed: u64, files: usize, data: &[u8]) -> Chain {
    let mut rng = Rng(seed);
    let mut existing = Vec::new();
    let mut stats = (0usize, 0u64);
    let dirs = dir_pool(&mut rng, files);
    let shares = [(70, 0), (20, 100), (10, 100)];
    let mut parent = String::new();
    for (i, (share, whiteouts)) in shares.iter().enumerate() {
        let key = format!("{name}-{i}-active");
        let layer = format!("{name}-{i}");
        s.prepare(&key, &parent, Labels::new()).unwrap();
        let dir = s.layers(&key).unwrap()[0].dir.clone();
        fill_layer(
            &dir,
            &mut rng,
            data,
            &dirs,
            files * share / 100,
            &mut existing,
            *whiteouts,
            &mut stats,
        );
        s.commit(&layer, &key, Labels::new()).unwrap();
        parent = layer;
    }
    Chain {
        name: parent,
        files: stats.0,
        bytes: stats.1,
    }
}

fn merge(s: &Snapshots, key: &str, chains: &[Chain], mode: MergeMode) -> (Duration, Merged) {
    let req = MergeRequest {
        kind: Kind::Active,
        key: key.into(),
        sources: chains.iter().map(|c| c.name.clone()).collect(),
        mode: Some(mode),
        labels: Labels::new(),
    };
    let t = Instant::now();
    let m = s.merge(&req).unwrap();
    (t.elapsed(), m)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("merge bench skipped: needs root (whiteouts are device nodes)");
        return;
    }
    let files: usize = std::env::var("STL_MERGE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let base = std::env::var_os("STL_MERGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("stl-merge-bench-")
        .tempdir_in(base)
        .unwrap();
    let s = Snapshots::open(tmp.path().join("root"), Options::default()).unwrap();
    let mut data = vec![0u8; 4 << 20];
    let mut rng = Rng(0x5eed);
    for chunk in data.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let t = Instant::now();
    let chains: Vec<Chain> = (0..3)
        .map(|i| build_chain(&s, &format!("c{i}"), 1 + i as u64, files, &data))
        .collect();
    let (in_files, in_bytes): (usize, u64) = chains
        .iter()
        .fold((0, 0), |(f, b), c| (f + c.files, b + c.bytes));
    println!(
        "inputs: 3 chains x 3 layers, {in_files} files written, {:.1} MB of file data (built in {:.1} s)",
        in_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Stack.
    let mut stack = Vec::new();
    for i in 0..21 {
        let key = format!("stack-{i}");
        let (d, m) = merge(&s, &key, &chains, MergeMode::Stack);
        assert_eq!(m.strategy.as_str(), "stack");
        stack.push(d);
        s.remove(&key).unwrap();
    }
    let stack = median(stack);

    // Hardlink and copy, each built afresh (removing the user releases the result).
    let mut hardlink = Vec::new();
    let mut hl_stats = None;
    for i in 0..3 {
        let key = format!("hl-{i}");
        let (d, m) = merge(&s, &key, &chains, MergeMode::Hardlink);
        assert!(!m.reused);
        hardlink.push(d);
        hl_stats = m.stats;
        if i < 2 {
            s.remove(&key).unwrap();
        }
    }
    let hardlink = median(hardlink);
    let hl = hl_stats.unwrap();
    let (reuse_time, reused) = merge(&s, "hl-again", &chains, MergeMode::Hardlink);
    assert!(reused.reused);
    let hl_usage = s.usage("hl-2").unwrap();
    let mut copy = Vec::new();
    let mut cp_stats = None;
    for i in 0..2 {
        let key = format!("cp-{i}");
        let (d, m) = merge(&s, &key, &chains, MergeMode::Copy);
        copy.push(d);
        cp_stats = m.stats;
        s.remove(&key).unwrap();
    }
    let copy = median(copy);
    let cp = cp_stats.unwrap();

    let visible_data = cp.copied_bytes;
    let extra_pct = 100.0 * hl.owned.size as f64 / visible_data.max(1) as f64;
    let data_pct = 100.0 * hl.copied_bytes as f64 / visible_data.max(1) as f64;
    let ratio = copy.as_secs_f64() / hardlink.as_secs_f64();
    println!(
        "merged view: {} regular files, {:.1} MB, {} directories",
        hl.linked + hl.copied + hl.relinked,
        visible_data as f64 / 1e6,
        hl.dirs
    );
    println!(
        "stack:    {:8.2} ms (median of 21)           goal <= 50 ms: {}",
        ms(stack),
        if ms(stack) <= 50.0 { "met" } else { "MISSED" }
    );
    println!(
        "hardlink: {:8.2} ms (median of 3), {} linked, {} copied",
        ms(hardlink),
        hl.linked,
        hl.copied
    );
    println!(
        "copy:     {:8.2} ms (median of 2), {} copied",
        ms(copy),
        cp.copied
    );
    println!(
        "hardlink is {ratio:.1}x faster than copy       goal >= 10x: {}",
        if ratio >= 10.0 { "met" } else { "MISSED" }
    );
    println!(
        "hardlink result owns {:.2} MB on disk ({} inodes: dirs, root) = {extra_pct:.2} % of the merged data; \
         file data copied: {} bytes = {data_pct:.3} %   goal <= 1 %: {}",
        hl.owned.size as f64 / 1e6,
        hl.owned.inodes,
        hl.copied_bytes,
        if data_pct <= 1.0 { "met" } else { "MISSED" }
    );
    println!(
        "usage of the hardlinked merge (upper + owned): {} bytes, {} inodes",
        hl_usage.size, hl_usage.inodes
    );
    println!(
        "reuse (same inputs, existing result): {:.2} ms",
        ms(reuse_time)
    );
}
