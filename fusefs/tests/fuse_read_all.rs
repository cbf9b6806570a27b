//! Bytes moved when a workload reads a whole lazy layer through FUSE (needs root, /dev/fuse
//! and docker-registry): after scattered reads made part of the layer local, a `tar`-like
//! pass over every file switches the layer to streaming the rest of the blob, and the
//! stream must not fetch again what is already local — each compressed byte crosses the
//! network about once. (Before the stream planned its windows around local chunks, this
//! pass moved 1.25× the blob.) And a pass in an order unrelated to the blob's (directory
//! order of a tree whose blob was written in another order) streams the whole blob once a
//! quarter of the files were read. Bytes and requests, not time: nothing here is timed.

mod common;
mod lazy;

use common::*;
use estargz::testutil::pattern;
use estargz::BuildOptions;
use fusefs::mount::MountManager;
use registry::Repository;

/// Files in the layer (names sort in blob order).
const FILES: u64 = 300;
/// Bytes per file (half of them random: about 20 KB compressed).
const FILE_SIZE: usize = 40_000;

fn name(i: u64) -> String {
    format!("d/f{i:03}")
}

#[test]
fn reading_every_file_fetches_each_byte_about_once() {
    require_registry!();
    if !lazy::fuse_available() {
        return;
    }
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = lazy::pattern_files_tar(FILES, FILE_SIZE, name);
    let built = lazy::build(&tar, &BuildOptions::default());
    let blob_size = built.blob.len() as u64;
    // Streaming on as by default; no prefetch or background fetch, so every byte moved is
    // either an on-demand read or the stream.
    let fetch = config::FetchConfig {
        stream_threshold: 0.5,
        ..lazy::on_demand_only(fetch_config())
    };
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch);
    let repo = Repository::new(reg.host(), "fuse/readall");
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx.clone());
    let before = metrics.snapshot();
    let _m = manager
        .mount(source, &dir.path().join("state"), &mp)
        .unwrap();

    // Scattered reads (every other file of the second half, backwards: no scan, a quarter
    // of the layer, under the streaming threshold).
    for i in (FILES / 2..FILES).rev().filter(|i| i % 2 == 1) {
        let data = std::fs::read(mp.join(name(i))).unwrap();
        assert_eq!(data, pattern(FILE_SIZE, i), "{}", name(i));
    }
    let scattered = metrics.snapshot().registry.bytes_fetched - before.registry.bytes_fetched;
    assert!(
        scattered > blob_size / 5,
        "the scattered reads fetched only {scattered} of {blob_size} bytes"
    );

    // Every file in blob order, as `tar` does: switches to streaming the rest.
    for i in 0..FILES {
        let data = std::fs::read(mp.join(name(i))).unwrap();
        assert_eq!(data, pattern(FILE_SIZE, i), "{}", name(i));
    }
    let after = metrics.snapshot();
    let fetched = after.registry.bytes_fetched - before.registry.bytes_fetched;
    let requests = after.registry.requests - before.registry.requests;
    eprintln!(
        "blob {blob_size} bytes; fetched {fetched} bytes ({:.3}x) in {requests} requests",
        fetched as f64 / blob_size as f64
    );
    assert!(
        requests < FILES,
        "{requests} requests for {FILES} files: the pass did not switch to streaming"
    );
    assert!(
        fetched as f64 <= 1.02 * blob_size as f64,
        "fetched {fetched} bytes for a {blob_size}-byte blob ({:.3}x): bytes fetched twice",
        fetched as f64 / blob_size as f64
    );
}

/// Files of the layer read out of blob order, in directories of 100.
const MANY: u64 = 1200;

fn spread_name(i: u64) -> String {
    format!("d{:02}/f{i:04}", i / 100)
}

#[test]
fn reading_every_file_in_another_order_than_the_blob_streams_the_whole_blob() {
    require_registry!();
    if !lazy::fuse_available() {
        return;
    }
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = lazy::pattern_files_tar(MANY, FILE_SIZE, spread_name);
    let built = lazy::build(&tar, &BuildOptions::default());
    let blob_size = built.blob.len() as u64;
    let fetch = config::FetchConfig {
        stream_threshold: 0.5,
        ..lazy::on_demand_only(fetch_config())
    };
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch);
    let repo = Repository::new(reg.host(), "fuse/readall-spread");
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx.clone());
    let before = metrics.snapshot();
    let _m = manager
        .mount(source, &dir.path().join("state"), &mp)
        .unwrap();

    // Files one after the other, each 389 files after the last (wrapping): never two in
    // blob order, so no scan is seen. Two fifths of them: more than the quarter that makes
    // the layer "read broadly", less than the bytes threshold (half the layer).
    let order: Vec<u64> = (0..MANY).map(|k| (k * 389) % MANY).collect();
    let (first, rest) = order.split_at(MANY as usize * 2 / 5);
    for &i in first {
        let data = std::fs::read(mp.join(spread_name(i))).unwrap();
        assert_eq!(data, pattern(FILE_SIZE, i), "{}", spread_name(i));
    }
    // The whole blob is streamed, wrapping round to its start (a bounded wait for the
    // stream's windows; nothing timed).
    let fetched = || metrics.snapshot().registry.bytes_fetched - before.registry.bytes_fetched;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fetched() < blob_size * 98 / 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        fetched() >= blob_size * 98 / 100,
        "after reading 2/5 of the files out of blob order only {} of {blob_size} bytes were fetched: the layer was not streamed whole",
        fetched()
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let streamed = metrics.snapshot();
    for &i in rest {
        let data = std::fs::read(mp.join(spread_name(i))).unwrap();
        assert_eq!(data, pattern(FILE_SIZE, i), "{}", spread_name(i));
    }
    let after = metrics.snapshot();
    let fetched = after.registry.bytes_fetched - before.registry.bytes_fetched;
    let requests = after.registry.requests - before.registry.requests;
    eprintln!(
        "blob {blob_size} bytes; fetched {fetched} bytes ({:.3}x) in {requests} requests for {MANY} files",
        fetched as f64 / blob_size as f64
    );
    assert_eq!(
        after.registry.requests - streamed.registry.requests,
        0,
        "the rest of the files were fetched again after the stream"
    );
    assert!(
        fetched as f64 <= 1.02 * blob_size as f64,
        "fetched {fetched} bytes for a {blob_size}-byte blob ({:.3}x): bytes fetched twice",
        fetched as f64 / blob_size as f64
    );
}
