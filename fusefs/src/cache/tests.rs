//! Tests of the chunk cache: round trips, restart, corruption, eviction, pinning, writers.

use std::time::{Duration, SystemTime};

use super::*;

fn open(dir: &Path, max_size: u64, memory_size: u64) -> (ChunkCache, Arc<Metrics>) {
    open_mode(dir, max_size, memory_size, ReadMode::Pread)
}

fn open_mode(dir: &Path, max: u64, mem: u64, mode: ReadMode) -> (ChunkCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let cache = ChunkCache::open(
        CacheOptions {
            dir: dir.to_path_buf(),
            max_size: max,
            memory_size: mem,
            read_mode: mode,
        },
        metrics.clone(),
    )
    .unwrap();
    (cache, metrics)
}

fn chunk(i: u8, len: usize) -> (ChunkKey, Bytes) {
    let data = Bytes::from(vec![i; len]);
    (ChunkKey::of(&data), data)
}

#[test]
fn stored_chunks_come_back_from_memory_disk_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (k, data) = chunk(1, 1000);
    {
        let (cache, m) = open(dir.path(), 0, 1 << 20);
        assert_eq!(cache.get(&k).unwrap(), None);
        cache.insert(&k, data.clone()).unwrap();
        assert_eq!(cache.get(&k).unwrap().as_ref(), Some(&data));
        let s = m.snapshot();
        assert_eq!((s.misses, s.memory_hits, s.disk_hits), (1, 1, 0));
        assert_eq!(s.disk_bytes, 1000);
    }
    // The file holds exactly the raw bytes (usable as a passthrough backing file).
    let file = dir.path().join(k.relative_path());
    assert_eq!(std::fs::read(&file).unwrap(), data);
    for mode in [ReadMode::Pread, ReadMode::Mmap, ReadMode::Auto] {
        let (cache, m) = open_mode(dir.path(), 0, 0, mode);
        assert_eq!(cache.get(&k).unwrap().as_ref(), Some(&data), "{mode:?}");
        assert_eq!(m.snapshot().disk_hits, 1);
    }
}

#[test]
fn corrupted_or_torn_files_are_removed_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, d1) = chunk(1, 4096);
    let (k2, d2) = chunk(2, 4096);
    {
        let (cache, _) = open(dir.path(), 0, 0);
        cache.insert(&k1, d1).unwrap();
        cache.insert(&k2, d2).unwrap();
    }
    let p1 = dir.path().join(k1.relative_path());
    let mut bytes = std::fs::read(&p1).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&p1, &bytes).unwrap();
    let p2 = dir.path().join(k2.relative_path());
    std::fs::write(&p2, &std::fs::read(&p2).unwrap()[..1000]).unwrap();

    let (cache, m) = open(dir.path(), 0, 1 << 20);
    assert_eq!(cache.get(&k1).unwrap(), None);
    assert_eq!(cache.get(&k2).unwrap(), None);
    assert!(!p1.exists() && !p2.exists(), "bad files removed");
    assert_eq!(m.snapshot().corrupt_entries, 2);
    assert_eq!(cache.usage().entries, 0);
    assert_eq!(cache.open_entry(&k1).unwrap().map(|e| e.size), None);
}

#[test]
fn data_not_matching_its_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 0, 1 << 20);
    let (k, _) = chunk(1, 10);
    let err = cache.insert(&k, Bytes::from_static(b"other")).unwrap_err();
    assert!(matches!(err, CacheError::Mismatch { .. }), "{err}");
    assert_eq!(cache.get(&k).unwrap(), None);
    assert_eq!(cache.usage().entries, 0);
    let u = ChunkKey::Unverified {
        layer: [1; 32],
        offset: 0,
        size: 5,
    };
    assert!(cache.insert(&u, Bytes::from_static(b"four")).is_err());
    cache.insert(&u, Bytes::from_static(b"fives")).unwrap();
    assert_eq!(cache.get(&u).unwrap().unwrap(), &b"fives"[..]);
}

#[test]
fn eviction_removes_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, m) = open(dir.path(), 3000, 0);
    let c: Vec<_> = (1..=4).map(|i| chunk(i, 1000)).collect();
    for (k, d) in &c[..3] {
        cache.insert(k, d.clone()).unwrap();
    }
    cache.get(&c[0].0).unwrap().unwrap(); // 0 becomes most recent; 1 is now least recent
    cache.insert(&c[3].0, c[3].1.clone()).unwrap();
    assert!(!cache.contains(&c[1].0), "LRU entry evicted");
    for i in [0, 2, 3] {
        assert!(cache.contains(&c[i].0), "entry {i} kept");
    }
    assert!(!dir.path().join(c[1].0.relative_path()).exists());
    let s = m.snapshot();
    assert_eq!(
        (s.evictions, s.bytes_evicted, s.disk_bytes),
        (1, 1000, 3000)
    );
}

#[test]
fn pinned_entries_survive_eviction_until_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 2000, 0);
    let c: Vec<_> = (1..=3).map(|i| chunk(i, 1000)).collect();
    let pin = cache.pin(&c[0].0);
    for (k, d) in &c {
        cache.insert(k, d.clone()).unwrap();
    }
    assert!(cache.contains(&c[0].0), "pinned oldest entry kept");
    assert!(
        !cache.contains(&c[1].0),
        "next unpinned one evicted instead"
    );
    assert_eq!(cache.usage().pinned, 1);
    let entry = cache.open_entry(&c[2].0).unwrap().unwrap();
    assert_eq!(std::fs::read(&entry.path).unwrap(), c[2].1);
    drop(pin);
    // Still at the cap; c[0] is now evictable, c[2] pinned by its open entry.
    let (k4, d4) = chunk(4, 1000);
    cache.insert(&k4, d4).unwrap();
    assert!(!cache.contains(&c[0].0));
    assert!(cache.contains(&c[2].0) && cache.contains(&k4));
    drop(entry);
    assert_eq!(cache.usage().pinned, 0);
}

#[test]
fn access_order_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c: Vec<_> = (1..=3).map(|i| chunk(i, 1000)).collect();
    {
        let (cache, _) = open(dir.path(), 0, 0);
        for (k, d) in &c {
            cache.insert(k, d.clone()).unwrap();
        }
    }
    // Give the files distinct use times: entry 1 oldest, then 0, then 2.
    let base = SystemTime::now() - Duration::from_secs(1000);
    for (i, age) in [(1usize, 0u64), (0, 10), (2, 20)] {
        let f = File::open(dir.path().join(c[i].0.relative_path())).unwrap();
        f.set_modified(base + Duration::from_secs(age)).unwrap();
    }
    let (cache, _) = open(dir.path(), 2000, 0);
    assert!(!cache.contains(&c[1].0), "oldest by mtime evicted on open");
    assert!(cache.contains(&c[0].0) && cache.contains(&c[2].0));
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp/partial"), b"half").unwrap();
    let (cache, _) = open(dir.path(), 0, 0);
    assert!(!dir.path().join("tmp/partial").exists());
    assert_eq!(cache.usage().entries, 0);
}

#[test]
fn writer_commits_only_matching_content() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 0, 0);
    let whole: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let key = ChunkKey::of(&whole);
    let mut w = cache.writer(key).unwrap();
    for part in whole.chunks(3000) {
        w.write(part).unwrap();
    }
    w.commit().unwrap();
    assert_eq!(cache.get(&key).unwrap().unwrap(), &whole[..]);

    let other = ChunkKey::of(b"x");
    let mut w = cache.writer(other).unwrap();
    w.write(b"y").unwrap();
    assert!(matches!(w.commit(), Err(CacheError::Mismatch { .. })));
    assert!(!cache.contains(&other));
    assert_eq!(temp_files(dir.path()), 0);
}

/// Files under `tmp/` other than the areas' lock files.
fn temp_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("tmp")).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += std::fs::read_dir(e.path()).unwrap().count();
        } else if !e.file_name().to_string_lossy().ends_with(".lock") {
            n += 1;
        }
    }
    n
}

#[test]
fn a_second_process_keeps_the_first_ones_temp_files_and_sees_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = open(dir.path(), 0, 0);
    let (k, data) = chunk(9, 5000);
    let mut w = first.writer(k).unwrap();
    w.write(&data[..2000]).unwrap();
    // Another process opens the same directory while the first is writing.
    let (second, _) = open(dir.path(), 0, 0);
    assert_eq!(temp_files(dir.path()), 1, "the writer's temp file survives");
    w.write(&data[2000..]).unwrap();
    w.commit().unwrap();
    // The second one finds the entry the first wrote after it opened the directory.
    assert!(second.contains(&k));
    assert_eq!(second.get(&k).unwrap().unwrap(), data);
    assert_eq!(second.usage().disk_bytes, 5000);
    // A corrupted entry written behind its back is not served.
    let (k2, data2) = chunk(10, 100);
    first.insert(&k2, data2).unwrap();
    std::fs::write(dir.path().join(k2.relative_path()), vec![0u8; 100]).unwrap();
    assert!(second.get(&k2).unwrap().is_none());
    drop(first);
    drop(second);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(
        left.is_empty(),
        "areas removed when their caches go: {left:?}"
    );
}

#[test]
fn temp_areas_of_dead_processes_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(tmp.join("123-dead")).unwrap();
    std::fs::write(tmp.join("123-dead.lock"), b"").unwrap();
    std::fs::write(tmp.join("123-dead/partial"), b"half").unwrap();
    std::fs::create_dir_all(tmp.join("no-lock")).unwrap();
    let (_cache, _) = open(dir.path(), 0, 0);
    assert!(!tmp.join("123-dead").exists() && !tmp.join("123-dead.lock").exists());
    assert!(!tmp.join("no-lock").exists());
}

#[test]
fn adopted_entries_count_against_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _) = open(dir.path(), 2500, 0);
    let (other, _) = open(dir.path(), 2500, 0);
    let c: Vec<_> = (0..3).map(|i| chunk(20 + i, 1000)).collect();
    daemon.insert(&c[0].0, c[0].1.clone()).unwrap();
    other.insert(&c[1].0, c[1].1.clone()).unwrap();
    other.insert(&c[2].0, c[2].1.clone()).unwrap();
    // The daemon adopts both entries the other wrote: 3000 bytes > 2500, its oldest goes.
    assert!(daemon.contains(&c[1].0) && daemon.contains(&c[2].0));
    assert!(daemon.usage().disk_bytes <= 2500);
    assert!(!dir.path().join(c[0].0.relative_path()).exists());
}
