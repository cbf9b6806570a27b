//! Benchmark of warmed and imported nodes (ignored; figures in `docs/benchmarks.md`,
//! "Pre-warming and cache transfer"):
//!
//! ```sh
//! STARLING_BIN=$PWD/target/ci/starling cargo test --profile ci -p integration \
//!     --test warm_bench -- --ignored --nocapture
//! ```
//!
//! pydeb (converted by `starling estargz build`, cached) behind the shaped link (20 ms RTT,
//! 100 Mbit/s), one containerd + starling node; `python3 -c 'print(1)'`, each start =
//! `starling rpull` + `ctr run`, per round:
//!
//! - cold: empty chunk cache;
//! - warm restart: the image removed (GC) and started again on the node that ran it;
//! - warm, daemon restarted: the same after a restart of the daemon (cache kept): the
//!   pre-warmed and imported starts come right after one (emptying the cache needs the
//!   daemon stopped), so this is their like-for-like baseline;
//! - pre-warmed: empty cache, `starling prefetch --all` over the shaped link, then start;
//! - imported: `starling cache export` of the full cache to a file, empty cache,
//!   `starling cache import`, then start.
//!
//! Goals: pre-warmed and imported starts ≤ 1.2× the warm restart (paired per round);
//! export + import of the whole cache faster than pulling it over the shaped link (the
//! `prefetch --all` of the same round).

mod fuse_common;

use std::time::{Duration, Instant};

use integration::shaped::ShapedOptions;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};

const ROUNDS: usize = 3;
const CMD: &[&str] = &["python3", "-c", "print(1)"];

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What [`reset`] does besides removing the images.
#[derive(PartialEq)]
enum Reset {
    /// Nothing more.
    Images,
    /// Restarts the daemon (cache kept).
    Daemon,
    /// Restarts the daemon with an empty chunk cache.
    Cache,
}

/// Removes every image and waits until GC removed the snapshots and mounts; then what
/// `how` says.
fn reset(s: &mut Stack, how: Reset) {
    let ctr = s.ctr().clone();
    ctr.remove_all_images().unwrap();
    integration::poll::wait_for("GC", Duration::from_secs(60), || {
        ctr.snapshots("starling").unwrap().is_empty()
    })
    .unwrap();
    if how != Reset::Images {
        let st = s.starling.as_mut().unwrap();
        st.stop().unwrap();
        if how == Reset::Cache {
            let _ = std::fs::remove_dir_all(st.root().join("cache"));
        }
        st.start_again().unwrap();
        ctr.wait_snapshotter("starling", Duration::from_secs(60))
            .unwrap();
        // containerd's other connections to the proxy come out of their reconnect
        // backoff a little later.
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// rpull + run; seconds and bytes fetched by the daemon. (`starling prefetch` and `cache
/// import` flush the cache before they return, so the starts after them do not compete
/// with the write-back of what they wrote: 1.4-1.6x a warm restart before, 1.1x after.)
fn start(s: &Stack, r: &str) -> (f64, f64) {
    let b0 = s.fetched_bytes().unwrap();
    let mut t = Instant::now();
    let mut tries = 0;
    while let Err(e) = client::rpull_ok(s.ctr(), r, "starling") {
        // (right after a daemon restart containerd may still be in reconnect backoff)
        tries += 1;
        assert!(tries < 10 && e.to_string().contains("Unavailable"), "{e}");
        std::thread::sleep(Duration::from_secs(1));
        t = Instant::now();
    }
    assert_eq!(s.ctr().run_ok(r, "starling", CMD).unwrap(), "1\n");
    (t.elapsed().as_secs_f64(), s.fetched_bytes().unwrap() - b0)
}

fn timed(args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = client::run(args, client::TIMEOUT).unwrap();
    assert!(out.success(), "starling {args:?}: {}", out.stderr);
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark (a few minutes): cargo test -p integration --test warm_bench -- --ignored --nocapture"]
fn warmed_and_imported_nodes_start_like_a_warm_restart() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::netns(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let cfg = StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.background_fetch", false);
    let mut s = Stack::start(
        "warm-bench",
        StackOptions {
            shaped: Some(ShapedOptions::default()),
            starling: Some(StarlingOptions {
                config: Some(cfg),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let img = fuse_common::pydeb_starling(false).unwrap();
    s.registry
        .push_layout(&img.layout, "latest", "py:esgz")
        .unwrap();
    let r = s.shaped.as_ref().unwrap().reference("py:esgz");
    let root = s.starling().unwrap().root().to_path_buf();
    let root_s = root.display().to_string();
    let archive = s.wd.join("pydeb-cache.tar");
    let archive_s = archive.display().to_string();
    eprintln!("load before: {}", loadavg());

    let mut rows: Vec<[f64; 10]> = Vec::new();
    for round in 0..ROUNDS {
        reset(&mut s, Reset::Cache);
        let (cold, cold_b) = start(&s, &r);
        reset(&mut s, Reset::Images);
        let (restart, restart_b) = start(&s, &r);
        reset(&mut s, Reset::Daemon);
        let (restarted, _) = start(&s, &r);
        reset(&mut s, Reset::Cache);
        let pull_all = timed(&[
            "prefetch",
            "--plain-http",
            "--root",
            &root_s,
            "--all",
            "-q",
            &r,
        ]);
        let (warmed, warmed_b) = start(&s, &r);
        let export = timed(&[
            "cache", "export", "--root", &root_s, "--all", "-q", "-o", &archive_s,
        ]);
        let size = std::fs::metadata(&archive).unwrap().len();
        reset(&mut s, Reset::Cache);
        let import = timed(&["cache", "import", "--root", &root_s, "-q", &archive_s]);
        let (imported, imported_b) = start(&s, &r);
        std::fs::remove_file(&archive).unwrap();
        eprintln!(
            "round {round}: cold {cold:.2}s ({:.1} MB), warm restart {restart:.2}s ({:.2} MB), \
             warm with the daemon restarted {restarted:.2}s, \
             pre-warmed {warmed:.2}s ({:.2} MB, ratio {:.2}, {:.2} to the restarted), imported {imported:.2}s \
             ({:.2} MB, ratio {:.2}, {:.2} to the restarted); prefetch --all over the link {pull_all:.2}s, export \
             {export:.2}s + import {import:.2}s = {:.2}s ({:.2}x), archive {:.1} MB; load {}",
            cold_b / 1e6,
            restart_b / 1e6,
            warmed_b / 1e6,
            warmed / restart,
            warmed / restarted,
            imported_b / 1e6,
            imported / restart,
            imported / restarted,
            export + import,
            (export + import) / pull_all,
            size as f64 / 1e6,
            loadavg()
        );
        rows.push([
            cold, restart, warmed, imported, pull_all, export, import, warmed_b, imported_b,
            restarted,
        ]);
    }
    let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
    let ratio = |a: usize, b: usize| median(rows.iter().map(|r| r[a] / r[b]).collect());
    let xfer: Vec<f64> = rows.iter().map(|r| (r[5] + r[6]) / r[4]).collect();
    eprintln!(
        "median of {ROUNDS}: cold {:.2}s, warm restart {:.2}s, pre-warmed {:.2}s \
         (x{:.2} paired; x{:.2} to warm with the daemon restarted, {:.2}s), imported {:.2}s \
         (x{:.2} paired; x{:.2} to the restarted); prefetch --all {:.2}s, \
         export {:.2}s, import {:.2}s, (export+import)/pull x{:.2}; load after: {}",
        median(col(0)),
        median(col(1)),
        median(col(2)),
        ratio(2, 1),
        ratio(2, 9),
        median(col(9)),
        median(col(3)),
        ratio(3, 1),
        ratio(3, 9),
        median(col(4)),
        median(col(5)),
        median(col(6)),
        median(xfer),
        loadavg()
    );
}
