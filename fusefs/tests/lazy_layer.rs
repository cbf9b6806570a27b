//! The lazy layer API without FUSE, against a real docker-registry: every file reads back
//! verified and equal to the tar; a layer restores from its state directory without the
//! registry; prefetch brings the landmark region in one request, and reads that come while
//! it runs wait for it; background fetch
//! completes the layer; a scan in layer order switches to streaming; the access log keeps
//! first reads in order; bad input is a typed error.

mod common;
mod lazy;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use estargz::testutil::{edge_case_tar, manifest_from_tar, pattern};
use estargz::{BuildOptions, EntryKind, Sha256Digest};
use fusefs::layer::LayerContext;
use fusefs::layer::{FetchState, LayerError, ReadError, RemoteLayer};
use fusefs::metrics::Metrics;
use registry::Repository;

use common::*;

/// Reads a whole file through the layer in `piece`-sized reads.
async fn read_all(layer: &Arc<RemoteLayer>, id: u32, piece: u32) -> Result<Vec<u8>, ReadError> {
    let size = layer.index().entry(id).unwrap().size();
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let part = layer.read(id, out.len() as u64, piece).await?;
        assert!(!part.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// Files `f00`..`f39` of 30,000 pattern bytes each.
fn forty_files() -> Vec<u8> {
    lazy::pattern_files_tar(40, 30_000, |i| format!("f{i:02}"))
}

/// [`forty_files`] with `f07`, `f31` and `f12` prioritized, pushed to `reg` as `repo` and
/// opened with prefetch on (no background fetch, no streaming); state and cache in `dir`.
fn prioritized_layer(
    rt: &tokio::runtime::Runtime,
    reg: &RegistryProc,
    dir: &Path,
    repo: &str,
) -> (Arc<LayerContext>, Arc<Metrics>, Arc<RemoteLayer>) {
    let built = lazy::build(
        &forty_files(),
        &BuildOptions {
            prioritized_files: vec![b"f07".to_vec(), b"f31".to_vec(), b"f12".to_vec()],
            ..Default::default()
        },
    );
    let fetch = config::FetchConfig {
        prefetch: true,
        background_fetch: false,
        stream_threshold: 1.0,
        ..fetch_config()
    };
    let (ctx, metrics) = lazy::fetch_context(dir, rt, reg.dir.path(), fetch);
    let repo = Repository::new(reg.host(), repo);
    let layer = lazy::push_and_open(rt, &ctx, &repo, &built, &dir.join("state"));
    (ctx, metrics, layer)
}

fn small_chunks() -> BuildOptions {
    BuildOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    }
}

#[test]
fn reads_verified_files_and_restores_without_registry() {
    require_registry!();
    let rt = lazy::runtime();
    let mut reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = edge_case_tar();
    let expected = manifest_from_tar(&tar);
    let built = lazy::build(&tar, &small_chunks());
    let fetch = lazy::on_demand_only(fetch_config());
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch.clone());
    let repo = Repository::new(reg.host(), "lazy/edge");
    let state = dir.path().join("state");
    let layer = lazy::push_and_open(&rt, &ctx, &repo, &built, &state);
    assert_eq!(layer.toc_digest(), built.out.toc_digest);
    assert_eq!(layer.status().state, FetchState::OnDemand);
    let index = layer.index();
    let mut files = 0;
    for id in 0..index.len() as u32 {
        let e = index.entry(id).unwrap();
        if e.kind() != EntryKind::Reg {
            continue;
        }
        let path = index.path_of(id);
        let data = rt.block_on(read_all(&layer, id, 50_000)).unwrap();
        let want = expected
            .nodes
            .get(&path)
            .unwrap_or_else(|| panic!("{path:?} not in the tar"));
        assert_eq!(Some(Sha256Digest::of(&data)), want.digest, "{path:?}");
        files += 1;
    }
    assert!(files >= 10, "only {files} files");
    let st = layer.status();
    assert_eq!(st.state, FetchState::Complete, "{st:?}");
    assert_eq!((st.fetched_bytes, st.percent), (st.total_bytes, 100.0));
    assert!(metrics.snapshot().digest_mismatches == 0);
    // Past the end of a file: empty; a directory: not a file.
    let passwd = index.resolve(b"etc/passwd").unwrap();
    assert!(rt
        .block_on(layer.read(passwd, 1 << 20, 10))
        .unwrap()
        .is_empty());
    assert!(matches!(
        rt.block_on(layer.read(0, 0, 10)),
        Err(ReadError::NotAFile)
    ));
    layer.close();
    drop(layer);

    // Without the registry: the tree is there, cached contents read, nothing else.
    reg.kill();
    // A chunk is answered just before it is written to the cache, and reads bring some
    // neighbours along: the last writes may still be under way, so look again briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let restored = loop {
        let r = rt.block_on(RemoteLayer::restore(&ctx, &state)).unwrap();
        if r.status().state == FetchState::Complete || std::time::Instant::now() > deadline {
            break r;
        }
        drop(r);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(restored.toc_digest(), built.out.toc_digest);
    assert_eq!(restored.status().state, FetchState::Complete);
    let big = restored.index().resolve(b"etc/big").unwrap();
    let cached = restored.read_cached(big, 0, 1 << 20).unwrap().unwrap();
    assert_eq!(
        Some(Sha256Digest::of(&cached)),
        expected.nodes[&b"etc/big".to_vec()].digest
    );

    // A fresh cache: the read fails (EIO) within the read timeout, with the registry gone.
    let dir2 = tempfile::tempdir().unwrap();
    let short = config::FetchConfig {
        read_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(1),
        ..fetch
    };
    let (ctx2, _) = lazy::fetch_context(dir2.path(), &rt, reg.dir.path(), short);
    let cold = rt.block_on(RemoteLayer::restore(&ctx2, &state)).unwrap();
    assert!(cold.read_cached(big, 0, 100).unwrap().is_none());
    let t = Instant::now();
    let err = rt.block_on(cold.read(big, 0, 100)).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert!(!matches!(err, ReadError::NotAFile), "{err}");

    // A damaged state directory is an error, never a wrong tree.
    let toc = state.join("toc");
    let mut bytes = std::fs::read(&toc).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&toc, &bytes).unwrap();
    let e = rt
        .block_on(RemoteLayer::restore(&ctx2, &state))
        .unwrap_err();
    assert!(matches!(e, LayerError::State { .. }), "{e}");
}

#[test]
fn prefetch_brings_the_landmark_region_in_one_request() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (_ctx, metrics, layer) = prioritized_layer(&rt, &reg, dir.path(), "lazy/prefetch");
    let before = metrics.snapshot();
    assert!(rt.block_on(layer.start_fetching().wait(Duration::from_secs(30))));
    let after = metrics.snapshot();
    assert_eq!(
        after.registry.requests - before.registry.requests,
        1,
        "prefetch must be one request"
    );
    let index = layer.index();
    for name in ["f07", "f31", "f12"] {
        let id = index.resolve(name.as_bytes()).unwrap();
        let data = layer.read_cached(id, 0, 1 << 20).unwrap();
        assert_eq!(
            data,
            Some(pattern(30_000, name[1..].parse().unwrap())),
            "{name}"
        );
    }
    let other = index.resolve(b"f20").unwrap();
    assert!(layer.read_cached(other, 0, 10).unwrap().is_none());
    assert_eq!(layer.status().state, FetchState::OnDemand);
}

#[test]
fn reads_right_after_fetching_starts_wait_for_the_prefetch_request() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (_ctx, metrics, layer) = prioritized_layer(&rt, &reg, dir.path(), "lazy/prefetch-reads");
    let before = metrics.snapshot();
    // Not waited for: the reads below come while the prefetch is (about to be) in flight.
    let prefetch = layer.start_fetching();
    let index = layer.index();
    for name in ["f12", "f07", "f31"] {
        let id = index.resolve(name.as_bytes()).unwrap();
        let data = rt.block_on(layer.read(id, 0, 1 << 20)).unwrap();
        assert_eq!(data, pattern(30_000, name[1..].parse().unwrap()), "{name}");
    }
    assert!(rt.block_on(prefetch.wait(Duration::from_secs(30))));
    let after = metrics.snapshot();
    assert_eq!(
        after.registry.requests - before.registry.requests,
        1,
        "the reads waited for the prefetch's single request"
    );
}

#[test]
fn background_fetch_completes_the_layer() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = edge_case_tar();
    let built = lazy::build(&tar, &small_chunks());
    let fetch = config::FetchConfig {
        prefetch: true,
        background_fetch: true,
        background_pause_after_read: Duration::from_millis(100),
        ..fetch_config()
    };
    let status_dir = dir.path().join("status");
    let (ctx, _) = lazy::context(
        dir.path(),
        rt.handle().clone(),
        reg.dir.path(),
        lazy::settings(fetch, false, Some(&status_dir)),
    );
    let repo = Repository::new(reg.host(), "lazy/background");
    let layer = lazy::push_and_open(&rt, &ctx, &repo, &built, &dir.path().join("state"));
    let _ = layer.start_fetching();
    let end = Instant::now() + Duration::from_secs(60);
    while layer.status().state != FetchState::Complete {
        assert!(
            Instant::now() < end,
            "background fetch did not finish: {:?}",
            layer.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let index = layer.index();
    for id in 0..index.len() as u32 {
        if index.entry(id).unwrap().kind() == EntryKind::Reg {
            assert!(layer.read_cached(id, 0, 1 << 30).unwrap().is_some());
        }
    }
}

#[test]
fn reading_files_in_layer_order_switches_to_streaming() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let n = 300u64;
    let tar = lazy::pattern_files_tar(n, 8_000, |i| format!("d/f{i:03}"));
    let built = lazy::build(&tar, &BuildOptions::default());
    let fetch = config::FetchConfig {
        stream_threshold: 0.9,
        ..lazy::on_demand_only(fetch_config())
    };
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch);
    let repo = Repository::new(reg.host(), "lazy/stream");
    let layer = lazy::push_and_open(&rt, &ctx, &repo, &built, &dir.path().join("state"));
    let before = metrics.snapshot().registry.requests;
    let index = layer.index();
    for i in 0..n {
        let id = index.resolve(format!("d/f{i:03}").as_bytes()).unwrap();
        let data = rt.block_on(layer.read(id, 0, 1 << 20)).unwrap();
        assert_eq!(data, pattern(8_000, i), "f{i:03}");
    }
    let requests = metrics.snapshot().registry.requests - before;
    assert!(
        requests < 60,
        "{requests} requests for {n} files: the scan did not switch to streaming"
    );
    assert_eq!(layer.status().state, FetchState::Complete);
}

#[test]
fn access_log_keeps_first_reads_in_order() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let built = lazy::build(&edge_case_tar(), &BuildOptions::default());
    let mut settings = lazy::settings(lazy::on_demand_only(fetch_config()), false, None);
    settings.fuse.access_log = true;
    let (ctx, _) = lazy::context(dir.path(), rt.handle().clone(), reg.dir.path(), settings);
    let repo = Repository::new(reg.host(), "lazy/access");
    let state = dir.path().join("state");
    let layer = lazy::push_and_open(&rt, &ctx, &repo, &built, &state);
    let index = layer.index();
    let order = [
        "etc/big",
        "etc/passwd",
        "etc/big",
        "bin/busybox",
        "etc/passwd",
    ];
    for p in order {
        let id = index.resolve(p.as_bytes()).unwrap();
        rt.block_on(layer.read(id, 0, 4096)).unwrap();
    }
    let want: Vec<Vec<u8>> = ["/etc/big", "/etc/passwd", "/bin/busybox"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(layer.accessed_files().unwrap(), want);
    let text = std::fs::read_to_string(state.join("access.log")).unwrap();
    assert_eq!(text, "/etc/big\n/etc/passwd\n/bin/busybox\n");
}

#[test]
fn a_blob_that_is_not_estargz_is_a_format_error() {
    require_registry!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch_config());
    let repo = Repository::new(reg.host(), "lazy/plain");
    let blob = data(7, 100_000);
    let err = rt
        .block_on(async {
            let d = push(ctx.client(), &repo, &blob).await;
            let source = fusefs::layer::LayerSource {
                repository: repo.clone(),
                digest: d,
                size: None,
                toc_digest: None,
            };
            RemoteLayer::open(&ctx, source, &dir.path().join("state")).await
        })
        .unwrap_err();
    assert!(err.is_not_estargz(), "{err}");

    // A TOC digest that does not match is refused too.
    let built = lazy::build(&edge_case_tar(), &BuildOptions::default());
    let err = rt
        .block_on(async {
            let mut source = lazy::push(ctx.client(), &repo, &built).await;
            source.toc_digest = Some(Sha256Digest::of(b"another toc"));
            RemoteLayer::open(&ctx, source, &dir.path().join("state2")).await
        })
        .unwrap_err();
    assert!(err.is_not_estargz(), "{err}");
}
