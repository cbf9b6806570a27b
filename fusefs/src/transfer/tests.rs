//! Tests of cache export and import: round trip, tampered, cut and foreign archives, the cap.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::cache::{CacheOptions, ReadMode};
use crate::metrics::Metrics;

fn open(dir: &Path, max_size: u64) -> ChunkCache {
    ChunkCache::open(
        CacheOptions {
            dir: dir.to_path_buf(),
            max_size,
            memory_size: 0,
            read_mode: ReadMode::Pread,
        },
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

/// Chunks of distinct content, 1000 bytes each.
fn chunks(n: u8) -> Vec<(ChunkKey, Bytes)> {
    (0..n)
        .map(|i| {
            let data = Bytes::from(vec![i; 1000]);
            (ChunkKey::of(&data), data)
        })
        .collect()
}

/// A cache holding `chunks` and the archive of all of them (one layer named).
fn exported(dir: &Path, chunks: &[(ChunkKey, Bytes)]) -> Vec<u8> {
    let cache = open(dir, 0);
    for (k, d) in chunks {
        cache.insert(k, d.clone()).unwrap();
    }
    let unverified = ChunkKey::Unverified {
        layer: [1; 32],
        offset: 0,
        size: 3,
    };
    cache
        .insert(&unverified, Bytes::from_static(b"abc"))
        .unwrap();
    let mut keys: Vec<ChunkKey> = chunks.iter().map(|c| c.0).collect();
    keys.push(unverified);
    keys.push(ChunkKey::of(b"not in the cache"));
    let layer = ArchivedLayer {
        digest: format!("sha256:{}", "e".repeat(64)),
        repository: "reg/app".into(),
        chunks: keys.iter().map(|k| k.to_string()).collect(),
    };
    let mut seen = 0;
    let (stats, out) = export(&cache, vec![layer], &keys, Vec::new(), |n| seen += n).unwrap();
    assert_eq!(
        stats,
        ExportStats {
            chunks: chunks.len() as u64,
            bytes: 1000 * chunks.len() as u64,
            missing: 1,
        }
    );
    assert_eq!(seen, stats.bytes);
    out
}

#[test]
fn an_archive_carries_verified_chunks_and_their_layers_to_another_cache() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = chunks(3);
    let archive = exported(a.path(), &c);
    let cache = open(b.path(), 0);
    let report = import(&cache, &archive[..], |_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.imported, report.imported_bytes), (3, 3000));
    let m = report.manifest.unwrap();
    assert_eq!((m.chunks, m.bytes, m.layers.len()), (3, 3000, 1));
    assert_eq!(m.layers[0].digest, format!("sha256:{}", "e".repeat(64)));
    assert_eq!(
        m.layers[0].chunks.len(),
        3,
        "only chunks in the archive are listed"
    );
    for (k, d) in &c {
        assert_eq!(cache.get(k).unwrap().as_ref(), Some(d));
    }
    // Again: nothing to do.
    let again = import(&cache, &archive[..], |_| {}).unwrap();
    assert_eq!((again.imported, again.present), (0, 3));
    // A fresh process sees the same entries.
    drop(cache);
    assert_eq!(open(b.path(), 0).usage().entries, 3);
}

#[test]
fn a_tampered_chunk_is_skipped_and_never_cached() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = chunks(3);
    let mut archive = exported(a.path(), &c);
    // Chunk 1 is 1000 bytes of 0x01: flip one of them.
    let at = archive
        .windows(1000)
        .position(|w| w.iter().all(|&b| b == 1))
        .unwrap();
    archive[at + 500] = 0xff;
    let cache = open(b.path(), 0);
    let report = import(&cache, &archive[..], |_| {}).unwrap();
    assert_eq!(report.imported, 2);
    assert_eq!(report.skipped_count, 1);
    assert!(report.skipped[0].name.ends_with(&hex::encode(match c[1].0 {
        ChunkKey::Digest(d) => d,
        _ => unreachable!(),
    })));
    assert!(
        report.skipped[0].reason.contains("does not match"),
        "{report:?}"
    );
    assert!(report.truncated.is_none() && !report.is_clean());
    assert!(!cache.contains(&c[1].0));
    assert!(cache.contains(&c[0].0) && cache.contains(&c[2].0));
}

#[test]
fn a_cut_archive_imports_what_came_before_and_says_so() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = chunks(3);
    let archive = exported(a.path(), &c);
    // Cut in the middle of chunk 1's data.
    let at = archive
        .windows(1000)
        .position(|w| w.iter().all(|&b| b == 1))
        .unwrap();
    let cache = open(b.path(), 0);
    let report = import(&cache, &archive[..at + 400], |_| {}).unwrap();
    assert_eq!(report.imported, 1);
    assert!(
        report.truncated.as_deref().unwrap().contains("cut short"),
        "{report:?}"
    );
    assert!(cache.contains(&c[0].0) && !cache.contains(&c[1].0));
    assert_eq!(cache.usage().entries, 1);
    // Cut at an entry boundary, before the manifest: a valid but shorter tar.
    let boundary = at + 1024; // chunk 1's data padded to 512-byte blocks
    let d2 = tempfile::tempdir().unwrap();
    let cache2 = open(d2.path(), 0);
    let report = import(&cache2, &archive[..boundary], |_| {}).unwrap();
    assert_eq!(report.imported, 2);
    assert!(
        report
            .truncated
            .as_deref()
            .unwrap()
            .contains("without its manifest"),
        "{report:?}"
    );
}

#[test]
fn foreign_entries_and_garbage_are_reported_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 0);
    let mut tar = tar::Builder::new(Vec::new());
    let data = b"hello";
    let name = format!("chunks/sha256/00/{}", "0".repeat(64));
    append(&mut tar, &name, data).unwrap();
    append(&mut tar, "etc/passwd", data).unwrap();
    let archive = tar.into_inner().unwrap();
    let report = import(&cache, &archive[..], |_| {}).unwrap();
    assert_eq!(report.skipped_count, 2, "{report:?}");
    assert_eq!(cache.usage().entries, 0);
    let report = import(&cache, &b"this is not a tar archive at all"[..], |_| {}).unwrap();
    assert!(report.truncated.is_some() && report.imported == 0);
    assert_eq!(cache.usage().entries, 0);
}

#[test]
fn an_import_keeps_the_cache_cap() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = chunks(5);
    let archive = exported(a.path(), &c);
    let cache = open(b.path(), 2500);
    let report = import(&cache, &archive[..], |_| {}).unwrap();
    assert_eq!(report.imported, 5);
    assert_eq!(report.evicted, 3);
    assert!(cache.usage().disk_bytes <= 2500);
    assert_eq!(c.iter().filter(|(k, _)| cache.contains(k)).count(), 2);
}
