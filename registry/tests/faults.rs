//! Failure behaviour against a real docker-registry: a frozen or stopped registry makes reads
//! fail within `read_timeout` with a clear error and work again once it is back; a stream
//! resumes across a registry restart; mirrors that are down fall through to the origin; a
//! proxy flipping bytes never gets a corrupted chunk returned or cached.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::{Proxy, ProxyMode};
use common::*;
use fusefs::cache::{CacheOptions, ChunkCache, ChunkKey};
use fusefs::registry::{
    ChunkDecoder, ChunkFetcher, ChunkRequest, FetchError, Priority, RawChunks, RegistryError,
    Repository, STREAM_DECODE_MIN,
};

fn fast_failing() -> config::FetchConfig {
    config::FetchConfig {
        request_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(3),
        max_retries: 20,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_registry_fails_within_read_timeout_then_recovers() {
    require_registry!();
    let mut reg = RegistryProc::start(RegistryAuth::None);
    let fetch = fast_failing();
    let (c, _) = client(&fetch, &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "faults/stop");
    let blob_data = data(20, 1 << 20);
    let digest = push(&c, &repo, &blob_data).await;
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    blob.read_range(0..1000, Priority::OnDemand).await.unwrap();
    let guard = fetch.read_timeout * 5; // a hang guard, not a timing assertion

    for (what, freeze) in [("frozen (SIGSTOP)", true), ("killed", false)] {
        if freeze {
            reg.pause();
        } else {
            reg.kill();
        }
        let started = Instant::now();
        let res = tokio::time::timeout(guard, blob.read_range(1000..200_000, Priority::OnDemand))
            .await
            .unwrap_or_else(|_| panic!("{what}: read hung past {guard:?}"));
        let err = res.unwrap_err();
        eprintln!("{what}: failed after {:?}: {err}", started.elapsed());
        assert!(
            matches!(err, RegistryError::Timeout { .. }),
            "{what}: {err}"
        );
        let msg = err.to_string();
        for part in [reg.host().as_str(), "faults/stop", digest.digest()] {
            assert!(msg.contains(part), "{what}: error lacks {part}: {msg}");
        }
        if freeze {
            reg.resume();
        } else {
            reg.restart(); // same port, same storage
        }
        let again = blob
            .read_range(1000..200_000, Priority::OnDemand)
            .await
            .unwrap();
        assert_eq!(again, blob_data.slice(1000..200_000), "{what}: works again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_across_a_registry_restart() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let mut fetch = fast_failing();
    fetch.request_timeout = Duration::from_secs(5);
    let (c, metrics) = client(&fetch, &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "faults/stream");
    let blob_data = data(21, 48 << 20);
    let digest = push(&c, &repo, &blob_data).await;
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    let mut stream = blob.stream(0, Priority::Background);
    let mut got = Vec::with_capacity(blob_data.len());
    got.extend_from_slice(&stream.next_chunk().await.unwrap().unwrap());
    // Kill the registry mid-transfer; bring it back on the same port a little later.
    let mut reg = reg;
    reg.kill();
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        reg.restart();
        reg
    });
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.next_chunk())
        .await
        .expect("stream hung")
    {
        got.extend_from_slice(&chunk.unwrap());
    }
    let _reg = restarter.await.unwrap();
    assert_eq!(got.len(), blob_data.len());
    assert!(
        got == blob_data,
        "resumed stream content (digest also checked by the stream)"
    );
    assert!(
        metrics.snapshot().retries >= 1,
        "the stream was interrupted and resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_down_fall_through_to_the_origin() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    let mirror = RegistryProc::start(RegistryAuth::None);
    let mut frozen = RegistryProc::start(RegistryAuth::None);
    frozen.pause(); // accepts connections, never answers
    let plain = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &plain);
    let on_origin = data(30, 100_000);
    let on_mirror = data(31, 100_000);
    let d_origin = push(
        &pusher,
        &Repository::new(origin.host(), "m/repo"),
        &on_origin,
    )
    .await;
    let d_mirror = push(
        &pusher,
        &Repository::new(mirror.host(), "m/repo"),
        &on_mirror,
    )
    .await;

    let closed = format!("127.0.0.1:{}", free_port());
    let mut regcfg = plain.clone();
    regcfg.hosts.insert(
        origin.host(),
        config::HostConfig {
            mirrors: [closed.clone(), frozen.host(), mirror.host()]
                .into_iter()
                .map(|h| config::MirrorConfig {
                    host: h,
                    request_timeout: Some(Duration::from_millis(500)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    );
    let (c, metrics) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(origin.host(), "m/repo");
    // Only the working mirror has this blob: it must be served from there.
    let b = c.blob(&repo, &d_mirror, None).await.unwrap();
    assert_eq!(
        b.read_range(0..50_000, Priority::OnDemand).await.unwrap(),
        on_mirror.slice(0..50_000)
    );
    // Only the origin has this one: the mirror's 404 falls through.
    let b = c.blob(&repo, &d_origin, None).await.unwrap();
    assert_eq!(
        b.read_range(5..60_000, Priority::OnDemand).await.unwrap(),
        on_origin.slice(5..60_000)
    );
    // Dead mirrors are skipped for a while instead of being tried on every request.
    let before = metrics.snapshot().requests;
    b.read_range(60_000..70_000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(
        metrics.snapshot().requests - before,
        2,
        "live mirror (404) + origin only"
    );
    frozen.resume();
}

/// Serves a blob range as the chunk (like [`RawChunks`]) and tells its size up front, so the
/// fetcher decodes chunks of [`STREAM_DECODE_MIN`] bytes or more straight into the cache.
struct SizedRaw;

impl ChunkDecoder for SizedRaw {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, String> {
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
    let (c, metrics) = client(&fetch, &regcfg);
    let blob = c
        .blob(
            &Repository::new(proxy.host(), repo_name),
            &digest,
            Some(blob_data.len() as u64),
        )
        .await
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(
        CacheOptions {
            dir: cache_dir.path().to_path_buf(),
            max_size: 0,
            memory_size: 0,
            read_mode: fusefs::cache::DEFAULT_READ_MODE,
        },
        metrics.clone(),
    )
    .unwrap();
    let fetcher = ChunkFetcher::new(blob, cache.clone(), decoder.clone());
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
    let blob = direct
        .blob(
            &Repository::new(reg.host(), repo_name),
            &digest,
            Some(blob_data.len() as u64),
        )
        .await
        .unwrap();
    let fetcher = ChunkFetcher::new(blob, cache, decoder);
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
