//! Smoke test of the benchmark suite: `scripts/bench --quick` in-process (one round, pydeb,
//! `python3 -c 'print(1)'`) against the real registry, shaped link, containerd and whatever
//! snapshotters can run here; checks every expected column has its row and a good sample,
//! and that the JSON, Markdown and (with feature `chart`) PNG files are written. Also runs
//! the broad suite's extras on pydeb: the warm overlayfs baseline, the regions-read trace
//! (cached after the first run) and the attribution of fetched bytes. Takes 1-3 minutes
//! (more on the first run, which converts pydeb with ctr-remote and caches it).

use integration::bench::plan::{BenchOptions, Snapshotter, Variant};
use integration::bench::report::Results;
use integration::prereq;
use integration::require;
use integration::workdir::Workdir;

#[test]
#[ignore = "runs the quick benchmark (1-3 min): cargo test -p integration --test bench -- --ignored"]
fn quick_benchmark_has_every_expected_row() {
    require!(
        prereq::root(),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::netns(),
        prereq::fuse(),
        prereq::debian_images()
    );
    let wd = Workdir::new("bquick").unwrap();
    let out = wd.join("out");
    let mut opts = BenchOptions::quick(out.clone());
    opts.warm_baseline = true;
    opts.access_trace = true;
    opts.keep_fetches = true;
    let peer = integration::peer::peer_binary().is_ok();
    let starling = integration::starling::starling_bin().is_ok();
    opts.snapshotters = vec![Snapshotter::Overlayfs];
    if peer {
        opts.snapshotters.push(Snapshotter::Stargz);
    }
    if starling {
        opts.snapshotters.push(Snapshotter::Starling);
    }
    let r = integration::bench::run(&opts, "test quick").unwrap();

    let mut expected = vec![(Snapshotter::Overlayfs, Variant::Orig)];
    if starling {
        expected.extend([
            (Snapshotter::Starling, Variant::Esgz),
            (Snapshotter::Starling, Variant::EsgzOpt),
        ]);
    }
    if peer {
        expected.extend([
            (Snapshotter::Stargz, Variant::Esgz),
            (Snapshotter::Stargz, Variant::EsgzOpt),
        ]);
    }
    for (s, v) in &expected {
        assert!(
            r.cells
                .iter()
                .any(|c| c.snapshotter == *s && c.variant == *v),
            "missing column {s} / {v} in {:?}",
            r.cells
        );
    }
    assert_eq!(
        r.samples.len(),
        r.cells.len() + 1,
        "one sample per column and the warm baseline"
    );
    let warm: Vec<_> = r.samples.iter().filter(|s| s.baseline).collect();
    assert_eq!(warm.len(), 1);
    assert_eq!(warm[0].cell.snapshotter, Snapshotter::Overlayfs);
    assert!(warm[0].ok && warm[0].pull_s == 0.0, "{:?}", warm[0]);
    assert_eq!(
        r.info.profile.as_ref().map(|p| p.name.as_str()),
        Some("wan")
    );
    let link = r.info.link_check.as_ref().expect("link checked");
    assert!(link.mbit > 0.0 && link.request_ms > 0.0, "{link:?}");
    let access = &r.access["pydeb"]["print"];
    assert!(
        access
            .files
            .iter()
            .any(|f| f.path == "usr/bin/python3.11" && f.read_bytes > 0 && f.chunks > 0),
        "python3.11 is read: {access:?}"
    );
    assert!(
        access.read_bytes > 1_000_000 && access.chunk_bytes > 0,
        "{access:?}"
    );
    assert_eq!(access.resident_before_pages, 0);
    for b in &r.fetch {
        assert!(b.needed > 0 && b.blob_bytes >= b.needed, "{b:?}");
    }
    if starling || peer {
        assert!(!r.fetch.is_empty(), "fetched bytes attributed");
    }
    for s in r.samples.iter().filter(|s| !s.baseline) {
        assert!(s.ok, "{} failed: {:?}", s.cell.label(), s.error);
        assert_eq!(s.workload, "print");
        assert!(s.total_s > 0.0 && s.pull_s > 0.0);
        assert!(s.first_output_s.is_some_and(|f| f <= s.total_s));
        assert!(s.link_bytes > 0 && s.requests > 0, "{s:?}");
        if s.cell.snapshotter == Snapshotter::Overlayfs {
            assert!(s.rss_peak_kib.is_none());
        } else {
            assert!(s.rss_peak_kib.is_some_and(|k| k > 0));
        }
    }
    if let Some(peer_sample) = r
        .samples
        .iter()
        .find(|s| s.cell.snapshotter == Snapshotter::Stargz)
    {
        assert!(
            peer_sample.lazy_mounts.is_some_and(|n| n >= 2),
            "the peer mounted pydeb's layers lazily: {peer_sample:?}"
        );
    }

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| pydeb | print |"), "{md}");
    for c in &r.cells {
        assert!(md.contains(&format!(" {} |", c.label())), "{md}");
        assert!(
            md.contains(&format!(
                "| print | {} | {} |",
                c.snapshotter.label(),
                c.variant.tag()
            )),
            "detail row of {}: {md}",
            c.label()
        );
    }
    let json: Results =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.samples.len(), r.samples.len());
    #[cfg(feature = "chart")]
    {
        let png = std::fs::read(out.join("chart-pydeb.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
