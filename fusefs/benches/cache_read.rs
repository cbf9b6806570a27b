//! Chunk cache read path: `pread` into a heap buffer vs `mmap` handed out as `Bytes`, on warm
//! page cache (the memory LRU disabled so every `get` goes to the file). Two consumers: one
//! touches the whole chunk (a file read end to end), one copies a 128 KiB window (one FUSE
//! read of a chunk not in memory). Run: `cargo bench -p fusefs --bench cache_read`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fusefs::cache::{CacheOptions, ChunkCache, ChunkKey, ReadMode};
use fusefs::metrics::Metrics;

const TOTAL: usize = 256 << 20;
const ROUNDS: usize = 5;

fn chunks(size: usize) -> Vec<(ChunkKey, Bytes)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ size as u64;
    (0..TOTAL / size)
        .map(|_| {
            let mut v = vec![0u8; size];
            for w in v.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                w.copy_from_slice(&state.to_le_bytes()[..w.len()]);
            }
            let b = Bytes::from(v);
            (ChunkKey::of(&b), b)
        })
        .collect()
}

fn open(dir: &std::path::Path, mode: ReadMode) -> ChunkCache {
    ChunkCache::open(
        CacheOptions {
            dir: dir.to_path_buf(),
            max_size: 0,
            memory_size: 0,
            read_mode: mode,
        },
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

fn touch_all(b: &[u8]) -> u64 {
    b.chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .fold(0, u64::wrapping_add)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("stl-cachebench-")
        .tempdir()
        .unwrap();
    println!(
        "chunk cache reads, {} MiB per round, median of {ROUNDS} rounds, warm page cache",
        TOTAL >> 20
    );
    println!(
        "{:>9} {:>6} {:>14} {:>12} {:>14} {:>12}",
        "chunk", "mode", "whole GB/s", "whole us/op", "128K-copy us", "window GB/s"
    );
    for size in [64 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20] {
        let data = chunks(size);
        {
            let cache = open(dir.path(), ReadMode::Pread);
            for (k, b) in &data {
                cache.insert_verified(k, b.clone()).unwrap();
            }
        }
        for mode in [ReadMode::Pread, ReadMode::Mmap, ReadMode::Auto] {
            let cache = open(dir.path(), mode);
            for (k, _) in &data {
                cache.get(k).unwrap().unwrap(); // first use verifies; not measured
            }
            let mut sink = 0u64;
            let whole = median(
                (0..ROUNDS)
                    .map(|_| {
                        let t = Instant::now();
                        for (k, _) in &data {
                            sink = sink.wrapping_add(touch_all(&cache.get(k).unwrap().unwrap()));
                        }
                        t.elapsed()
                    })
                    .collect(),
            );
            let mut out = vec![0u8; 128 << 10];
            let window = median(
                (0..ROUNDS)
                    .map(|_| {
                        let t = Instant::now();
                        for (i, (k, _)) in data.iter().enumerate() {
                            let b = cache.get(k).unwrap().unwrap();
                            let n = out.len().min(b.len());
                            let off = (i * 4096) % (b.len() - n + 1);
                            out[..n].copy_from_slice(&b[off..off + n]);
                            sink = sink.wrapping_add(out[7] as u64);
                        }
                        t.elapsed()
                    })
                    .collect(),
            );
            let ops = data.len() as f64;
            println!(
                "{:>8}K {:>6} {:>14.2} {:>12.1} {:>14.1} {:>12.2}{}",
                size >> 10,
                format!("{mode:?}").to_lowercase(),
                TOTAL as f64 / whole.as_secs_f64() / 1e9,
                whole.as_secs_f64() * 1e6 / ops,
                window.as_secs_f64() * 1e6 / ops,
                (ops * out.len().min(size) as f64) / window.as_secs_f64() / 1e9,
                if sink == 42 { " " } else { "" }
            );
        }
        std::fs::remove_dir_all(dir.path().join("sha256")).unwrap();
    }
}
