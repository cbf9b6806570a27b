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
use std::path::Path;
use std::time::{Duration, Instant};

use fusefs::mount::MountManager;
use registry::Repository;

/// Files in the layer (names sort in blob order).
const FILES: u64 = 300;
/// Bytes per file (half of them random: about 20 KB compressed).
const FILE_SIZE: usize = 40_000;

fn name(i: u64) -> String {
    format!("d/f{i:03}")
}

/// Bytes and requests a test layer has moved since it was mounted.
struct Moved {
    bytes: u64,
    requests: u64,
}

/// Builds a layer of `files` pattern files of [`FILE_SIZE`] bytes named by `name`, pushes it
/// to a fresh docker-registry as `repo`, mounts it with streaming on as by default and no
/// prefetch or background fetch (every byte moved is an on-demand read or a stream), and
/// runs `test` with the mountpoint, the blob's size and what was moved so far; does nothing
/// when FUSE is not available here.
fn with_layer(
    files: u64,
    name: fn(u64) -> String,
    repo: &str,
    test: impl FnOnce(&Path, u64, &dyn Fn() -> Moved),
) {
    if !lazy::fuse_available() {
        return;
    }
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = lazy::pattern_files_tar(files, FILE_SIZE, name);
    let built = lazy::build(&tar, &BuildOptions::default());
    let fetch = config::FetchConfig {
        stream_threshold: 0.5,
        ..lazy::on_demand_only(fetch_config())
    };
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch);
    let repo = Repository::new(reg.host(), repo);
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx.clone());
    let before = metrics.snapshot();
    let _m = manager
        .mount(source, &dir.path().join("state"), &mp)
        .unwrap();
    let moved = || {
        let now = metrics.snapshot();
        Moved {
            bytes: now.registry.bytes_fetched - before.registry.bytes_fetched,
            requests: now.registry.requests - before.registry.requests,
        }
    };
    test(&mp, built.blob.len() as u64, &moved);
}

/// Prints what reading `files` files moved and checks that each byte of the blob crossed
/// the network about once (at most 1.02× the blob); returns the requests.
fn each_byte_about_once(moved: &Moved, blob_size: u64, files: u64) -> u64 {
    let &Moved { bytes, requests } = moved;
    eprintln!(
        "blob {blob_size} bytes; fetched {bytes} bytes ({:.3}x) in {requests} requests for {files} files",
        bytes as f64 / blob_size as f64
    );
    assert!(
        bytes as f64 <= 1.02 * blob_size as f64,
        "fetched {bytes} bytes for a {blob_size}-byte blob ({:.3}x): bytes fetched twice",
        bytes as f64 / blob_size as f64
    );
    requests
}

fn read_file(mp: &Path, name: &str, i: u64) {
    let data = std::fs::read(mp.join(name)).unwrap();
    assert_eq!(data, pattern(FILE_SIZE, i), "{name}");
}

#[test]
fn reading_every_file_fetches_each_byte_about_once() {
    require_registry!();
    with_layer(FILES, name, "fuse/readall", |mp, blob_size, moved| {
        // Scattered reads (every other file of the second half, backwards: no scan, a
        // quarter of the layer, under the streaming threshold).
        for i in (FILES / 2..FILES).rev().filter(|i| i % 2 == 1) {
            read_file(mp, &name(i), i);
        }
        let scattered = moved().bytes;
        assert!(
            scattered > blob_size / 5,
            "the scattered reads fetched only {scattered} of {blob_size} bytes"
        );

        // Every file in blob order, as `tar` does: switches to streaming the rest.
        for i in 0..FILES {
            read_file(mp, &name(i), i);
        }
        let requests = each_byte_about_once(&moved(), blob_size, FILES);
        assert!(
            requests < FILES,
            "{requests} requests for {FILES} files: the pass did not switch to streaming"
        );
    });
}

/// Files of the layer read out of blob order, in directories of 100.
const MANY: u64 = 1200;

fn spread_name(i: u64) -> String {
    format!("d{:02}/f{i:04}", i / 100)
}

#[test]
fn reading_every_file_in_another_order_than_the_blob_streams_the_whole_blob() {
    require_registry!();
    with_layer(
        MANY,
        spread_name,
        "fuse/readall-spread",
        |mp, blob_size, moved| {
            // Files one after the other, each 389 files after the last (wrapping): never two
            // in blob order, so no scan is seen. Two fifths of them: more than the quarter that
            // makes the layer "read broadly", less than the bytes threshold (half the layer).
            let order: Vec<u64> = (0..MANY).map(|k| (k * 389) % MANY).collect();
            let (first, rest) = order.split_at(MANY as usize * 2 / 5);
            for &i in first {
                read_file(mp, &spread_name(i), i);
            }
            // The whole blob is streamed, wrapping round to its start (a bounded wait for the
            // stream's windows; nothing timed).
            let deadline = Instant::now() + Duration::from_secs(60);
            while moved().bytes < blob_size * 98 / 100 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                moved().bytes >= blob_size * 98 / 100,
                "after reading 2/5 of the files out of blob order only {} of {blob_size} bytes \
             were fetched: the layer was not streamed whole",
                moved().bytes
            );
            std::thread::sleep(Duration::from_millis(200));
            let streamed = moved();
            for &i in rest {
                read_file(mp, &spread_name(i), i);
            }
            let requests = each_byte_about_once(&moved(), blob_size, MANY);
            assert_eq!(
                requests - streamed.requests,
                0,
                "the rest of the files were fetched again after the stream"
            );
        },
    );
}
