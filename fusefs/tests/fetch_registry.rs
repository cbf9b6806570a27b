//! The fetch layer against a real docker-registry: concurrent reads of one chunk make one
//! request; a proxy flipping bytes never gets a corrupted chunk served or cached (small
//! chunks, chunks decoded straight into the cache, single and multi-range requests).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use fusefs::cache::{CacheOptions, ChunkCache, ChunkKey};
use fusefs::fetch::{
    ChunkDecoder, ChunkFetcher, ChunkRequest, DecodeError, FetchError, RawChunks, STREAM_DECODE_MIN,
};
use fusefs::metrics::Metrics;
use registry::testutil::proxy::{Proxy, ProxyMode};
use registry::{Priority, RegistryClient, Repository};

/// A chunk cache in `dir` with a memory tier of `memory` bytes, counting into `metrics`.
fn cache_in(dir: &std::path::Path, memory: u64, metrics: &Arc<Metrics>) -> ChunkCache {
    let options = CacheOptions {
        dir: dir.to_path_buf(),
        max_size: 0,
        memory_size: memory,
        read_mode: fusefs::cache::DEFAULT_READ_MODE,
    };
    ChunkCache::open(options, metrics.clone()).unwrap()
}

/// Blob `digest` of `host/repo` through `client`.
async fn blob_at(
    client: &RegistryClient,
    host: &str,
    repo: &str,
    digest: &oci_spec::image::Digest,
    size: u64,
) -> registry::Blob {
    let repo = Repository::new(host, repo);
    client.blob(&repo, digest, Some(size)).await.unwrap()
}

/// A client whose counters are part of a fusefs [`Metrics`] (what the cache counts too).
fn fetch_client(
    fetch: &config::FetchConfig,
    registry: &config::RegistryConfig,
) -> (RegistryClient, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let c = RegistryClient::with_settings(fetch, registry, metrics.registry.clone()).unwrap();
    (c, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_chunk_reads_make_one_request() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let regcfg = registry_config(reg.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(reg.host(), "test/dedup");
    let blob_data = data(3, 1 << 20);
    let digest = push(&pusher, &repo, &blob_data).await;

    let (c, metrics) = fetch_client(&fetch_config(), &regcfg);
    let blob = c
        .blob(&repo, &digest, Some(blob_data.len() as u64))
        .await
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_in(cache_dir.path(), 16 << 20, &metrics);
    let fetcher = ChunkFetcher::new(
        Arc::new(blob),
        cache.clone(),
        Arc::new(RawChunks),
        &fetch_config(),
    );
    let range = 100_000..300_000u64;
    let chunk = blob_data.slice(range.start as usize..range.end as usize);
    let req = ChunkRequest {
        key: ChunkKey::of(&chunk),
        range: range.clone(),
    };
    let before = metrics.snapshot().registry.requests;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (f, r) = (fetcher.clone(), req.clone());
        tasks.push(tokio::spawn(
            async move { f.get(&r, Priority::OnDemand).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), chunk);
    }
    let m = metrics.snapshot();
    assert_eq!(
        m.registry.requests - before,
        1,
        "one HTTP request for 16 concurrent reads: {m:?}"
    );
    assert!(m.fetch_joins >= 1 || m.memory_hits >= 1, "{m:?}");
    fetcher.wait_idle().await;
    assert!(cache.contains(&req.key));
    // Cached now: no further request.
    assert_eq!(fetcher.get(&req, Priority::OnDemand).await.unwrap(), chunk);
    assert_eq!(metrics.snapshot().registry.requests - before, 1);
}

/// Serves a blob range as the chunk (like [`RawChunks`]) and tells its size up front, so the
/// fetcher decodes chunks of [`STREAM_DECODE_MIN`] bytes or more straight into the cache.
struct SizedRaw;

impl ChunkDecoder for SizedRaw {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError> {
        Ok(raw)
    }

    fn decoded_len(&self, request: &ChunkRequest) -> Option<u64> {
        Some(request.range.end - request.range.start)
    }
}

/// Chunks of 16-64 KiB (like an eStargz layer's small files), or, with `large`, of
/// 1-1.5 MiB (decoded into the cache, see [`SizedRaw`]).
async fn corrupted_fetch(multi_range: bool, seed: u64, large: bool) {
    let reg = RegistryProc::start(RegistryAuth::None);
    let regcfg = registry_config(reg.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo_name = "faults/flip";
    let blob_data = data(40 + seed, if large { 10 << 20 } else { 4 << 20 });
    let (base, spread) = if large {
        (STREAM_DECODE_MIN, STREAM_DECODE_MIN / 2)
    } else {
        (16_384, 49_152)
    };
    let decoder: Arc<dyn ChunkDecoder> = if large {
        Arc::new(SizedRaw)
    } else {
        Arc::new(RawChunks)
    };
    let digest = push(&pusher, &Repository::new(reg.host(), repo_name), &blob_data).await;
    // Contiguous chunks.
    let mut chunks = Vec::new();
    let mut off = 0u64;
    let mut i = 0u64;
    while off < blob_data.len() as u64 {
        let len = (base + (i * 7919) % spread).min(blob_data.len() as u64 - off);
        let bytes = &blob_data[off as usize..(off + len) as usize];
        chunks.push(ChunkRequest {
            key: ChunkKey::of(bytes),
            range: off..off + len,
        });
        off += len;
        i += 1;
    }
    // Every other chunk, so that they cannot merge into one range.
    let chunks: Vec<ChunkRequest> = chunks.into_iter().step_by(2).collect();

    let proxy = Proxy::start(reg.addr(), ProxyMode::FlipBodies { percent: 50, seed });
    let mut fetch = fetch_config();
    fetch.multi_range = multi_range;
    fetch.max_retries = 2;
    fetch.coalesce_gap = 0;
    let (c, metrics) = fetch_client(&fetch, &regcfg);
    let size = blob_data.len() as u64;
    let blob = blob_at(&c, &proxy.host(), repo_name, &digest, size).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_in(cache_dir.path(), 0, &metrics);
    let fetcher = ChunkFetcher::new(Arc::new(blob), cache.clone(), decoder.clone(), &fetch);
    let results = fetcher.get_many(&chunks, Priority::OnDemand).await;
    fetcher.wait_idle().await;
    let (mut ok, mut failed) = (0, 0);
    for (req, res) in chunks.iter().zip(&results) {
        match res {
            Ok(data) => {
                // What the caller gets always matches the chunk digest.
                assert!(
                    req.key.matches(data),
                    "corrupted chunk {:?} returned",
                    req.range
                );
                assert_eq!(
                    data.as_ref(),
                    &blob_data[req.range.start as usize..req.range.end as usize]
                );
                ok += 1;
            }
            Err(FetchError::Corrupt(c)) => {
                assert_eq!(c.key, req.key);
                failed += 1;
            }
            Err(e) => {
                // Corruption in multipart framing surfaces as a protocol error after retries.
                assert!(multi_range, "unexpected error: {e}");
                failed += 1;
            }
        }
    }
    // Nothing corrupted reached the cache.
    let mut files = 0;
    for e in walk(cache_dir.path()) {
        let name = e.file_name().unwrap().to_string_lossy().to_string();
        if e.parent().unwrap().parent().unwrap().ends_with("sha256") {
            assert_eq!(
                sha256_hex(&std::fs::read(&e).unwrap()),
                name,
                "cache file {name} corrupted"
            );
            files += 1;
        }
    }
    let m = metrics.snapshot();
    let flipped = proxy.stats.corrupted.load(Ordering::SeqCst);
    eprintln!(
        "multi_range={multi_range} large={large}: {} chunks, {ok} ok, {failed} failed, {flipped} responses corrupted, {} digest mismatches, {files} cached",
        chunks.len(),
        m.digest_mismatches
    );
    assert!(flipped > 0);
    assert_eq!(files, ok, "exactly the verified chunks were cached");
    assert!(ok > 0);
    if !multi_range {
        assert!(
            m.digest_mismatches > 0,
            "flipped bytes detected by digest: {m:?}"
        );
    }
    // Through a clean path every chunk is served.
    let (direct, _) = client(&fetch_config(), &regcfg);
    let blob = blob_at(&direct, &reg.host(), repo_name, &digest, size).await;
    let fetcher = ChunkFetcher::new(Arc::new(blob), cache, decoder, &fetch_config());
    for (req, res) in chunks
        .iter()
        .zip(fetcher.get_many(&chunks, Priority::OnDemand).await)
    {
        assert!(req.key.matches(&res.unwrap()));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_never_served_or_cached_single_range() {
    require_registry!();
    corrupted_fetch(false, 1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_never_served_or_cached_multi_range() {
    require_registry!();
    corrupted_fetch(true, 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_of_large_chunks_are_never_served_or_cached() {
    require_registry!();
    corrupted_fetch(false, 3, true).await;
}

/// A mirror (from `registry.hosts_dir`) whose answers are all corrupted, the origin clean:
/// every chunk is served right (from the origin), the mirror is blamed by chunk verification
/// and skipped for `registry.mirror_skip`, and nothing wrong is cached.
async fn wrong_bytes_from_a_mirror(large: bool) {
    let origin = RegistryProc::start(RegistryAuth::None);
    let mirror = RegistryProc::start(RegistryAuth::None);
    let mut regcfg = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo_name = "faults/mirror";
    let blob_data = data(
        if large { 60 } else { 61 },
        if large { 8 << 20 } else { 2 << 20 },
    );
    let digest = push(
        &pusher,
        &Repository::new(origin.host(), repo_name),
        &blob_data,
    )
    .await;
    push(
        &pusher,
        &Repository::new(mirror.host(), repo_name),
        &blob_data,
    )
    .await;
    let flipper = Proxy::start(
        mirror.addr(),
        ProxyMode::FlipBodies {
            percent: 100,
            seed: 7,
        },
    );
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts
        .path()
        .join(config::hosts_dir::port_dir_name(&origin.host()).unwrap());
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("[host.\"http://{}\"]\n", flipper.host()),
    )
    .unwrap();
    regcfg.hosts_dir = hosts.path().to_path_buf();

    let len = if large {
        STREAM_DECODE_MIN + 4096
    } else {
        32_768
    };
    let chunks: Vec<ChunkRequest> = (0..blob_data.len() as u64 / len)
        .step_by(2)
        .map(|i| {
            let range = i * len..(i + 1) * len;
            ChunkRequest {
                key: ChunkKey::of(&blob_data[range.start as usize..range.end as usize]),
                range,
            }
        })
        .collect();
    let decoder: Arc<dyn ChunkDecoder> = if large {
        Arc::new(SizedRaw)
    } else {
        Arc::new(RawChunks)
    };
    let mut fetch = fetch_config();
    fetch.coalesce_gap = 0;
    fetch.max_retries = 2;
    let (c, metrics) = fetch_client(&fetch, &regcfg);
    let blob = blob_at(
        &c,
        &origin.host(),
        repo_name,
        &digest,
        blob_data.len() as u64,
    )
    .await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_in(cache_dir.path(), 0, &metrics);
    let fetcher = ChunkFetcher::new(Arc::new(blob), cache, decoder, &fetch);
    let (first, rest) = chunks.split_at(2);
    for (req, res) in first
        .iter()
        .zip(fetcher.get_many(first, Priority::OnDemand).await)
    {
        assert!(req.key.matches(&res.unwrap()), "served right");
    }
    let from_mirror = flipper.stats.responses.load(Ordering::SeqCst);
    assert!(from_mirror >= 1 && flipper.stats.corrupted.load(Ordering::SeqCst) >= 1);
    assert!(metrics.snapshot().digest_mismatches >= 1);
    for (req, res) in rest
        .iter()
        .zip(fetcher.get_many(rest, Priority::OnDemand).await)
    {
        assert!(req.key.matches(&res.unwrap()), "served right");
    }
    fetcher.wait_idle().await;
    assert_eq!(
        flipper.stats.responses.load(Ordering::SeqCst),
        from_mirror,
        "the mirror is skipped after its bytes failed verification"
    );
    let cached: Vec<_> = walk(cache_dir.path())
        .into_iter()
        .filter(|e| e.parent().unwrap().parent().unwrap().ends_with("sha256"))
        .collect();
    assert_eq!(cached.len(), chunks.len(), "every chunk cached once");
    for e in cached {
        let name = e.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            sha256_hex(&std::fs::read(&e).unwrap()),
            name,
            "nothing wrong cached"
        );
    }
    eprintln!(
        "large={large}: {} chunks, {from_mirror} mirror answers (corrupted), {} digest mismatches",
        chunks.len(),
        metrics.snapshot().digest_mismatches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serving_wrong_bytes_is_skipped() {
    require_registry!();
    wrong_bytes_from_a_mirror(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serving_wrong_large_chunks_is_skipped() {
    require_registry!();
    wrong_bytes_from_a_mirror(true).await;
}
