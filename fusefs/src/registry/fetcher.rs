//! The chunk fetcher the lazy filesystem calls: given chunks (cache key + byte range of the
//! blob holding the chunk's stored form), it answers from the chunk cache, joins fetches
//! already in flight for the same key (one fetch per chunk at a time), fetches the rest from
//! the blob in few requests (see [`Blob::read_ranges`]), decodes each chunk with the layer's
//! [`ChunkDecoder`], verifies it against its key, caches it and returns it. A chunk that fails
//! verification is fetched again (bounded by `fetch.max_retries`) and is never returned or
//! cached. A chunk whose fetch failed is answered with the same error at once for
//! `fetch.failure_hold`, unless a request to the registry succeeds meanwhile (see
//! [`FailedChunks`]): the kernel's retry of the failed page, and readers retrying in a
//! loop, do not wait `fetch.read_timeout` again.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Blob, Priority, RegistryError, Target};
use crate::cache::{CacheError, ChunkCache, ChunkKey};
use crate::metrics::Metrics;

/// One chunk to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The chunk's cache key (digest of its decoded content, or an unverifiable key).
    pub key: ChunkKey,
    /// The bytes of the blob that hold the chunk's stored (e.g. compressed) form.
    pub range: Range<u64>,
}

/// Turns the stored form of a chunk into its content (e.g. gunzip of an eStargz chunk). The
/// fetcher checks the result against the chunk's key afterwards.
pub trait ChunkDecoder: Send + Sync + 'static {
    /// Decodes `raw` (the bytes of `request.range`). Errors are treated like corruption.
    fn decode(&self, request: &ChunkRequest, raw: Bytes) -> Result<Bytes, String>;

    /// The chunk's decoded size, if known before decoding. Chunks of
    /// [`STREAM_DECODE_MIN`] bytes or more are decoded with [`ChunkDecoder::decode_to`]
    /// straight into their cache entry.
    fn decoded_len(&self, _request: &ChunkRequest) -> Option<u64> {
        None
    }

    /// Decodes `raw` into `sink`, piece by piece where the format allows (bounded memory).
    fn decode_to(
        &self,
        request: &ChunkRequest,
        raw: Bytes,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let data = self.decode(request, raw)?;
        sink(&data).map_err(|e| e.to_string())
    }
}

/// Decoded size from which a chunk is decoded into its cache entry and served from there
/// (a mapping of the file) rather than through a heap buffer: a cold container start
/// fetches a few such chunks at once (a 4 MiB chunk of a program next to its libraries),
/// and holding them decoded in memory was most of the daemon's peak.
pub const STREAM_DECODE_MIN: u64 = 1 << 20;

/// The identity decoder: the blob range holds the chunk's content as is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawChunks;

impl ChunkDecoder for RawChunks {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, String> {
        Ok(raw)
    }
}

/// Why a chunk could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The registry could not deliver the bytes.
    #[error(transparent)]
    Registry(Box<RegistryError>),
    /// Every fetched copy of the chunk failed decoding or verification.
    #[error(transparent)]
    Corrupt(Box<CorruptChunk>),
    /// The fetch task ended without an answer (runtime shutting down).
    #[error("chunk fetch abandoned")]
    Abandoned,
}

/// Details of [`FetchError::Corrupt`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: chunk {key} at bytes {}..{} failed verification {attempts} time(s): {reason}", range.start, range.end)]
pub struct CorruptChunk {
    /// The blob.
    pub target: Target,
    /// The chunk.
    pub key: ChunkKey,
    /// Its range in the blob.
    pub range: Range<u64>,
    /// Copies fetched.
    pub attempts: u32,
    /// The last decoder or verification failure.
    pub reason: String,
}

impl From<RegistryError> for FetchError {
    fn from(e: RegistryError) -> Self {
        FetchError::Registry(Box::new(e))
    }
}

type Pending = Shared<BoxFuture<'static, Result<Bytes, FetchError>>>;

/// Most failed chunks remembered at once; past that the oldest half is forgotten.
const MAX_FAILED: usize = 4096;

/// Chunks whose fetch failed recently, with the error, so reads of them fail at once.
#[derive(Default)]
pub(crate) struct FailedChunks {
    map: Mutex<HashMap<ChunkKey, (Instant, FetchError)>>,
}

impl FailedChunks {
    /// Remembers that `key`'s fetch failed now with `err`.
    pub fn note(&self, key: ChunkKey, err: &FetchError) {
        if matches!(err, FetchError::Abandoned) {
            return;
        }
        let mut m = self.map.lock();
        if m.len() >= MAX_FAILED {
            let mut ages: Vec<Instant> = m.values().map(|(t, _)| *t).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            m.retain(|_, (t, _)| *t > cut);
        }
        m.insert(key, (Instant::now(), err.clone()));
    }

    /// The error of `key`'s failed fetch if it is less than `hold` old and `back` (called
    /// with the failure's time) says the registry has not answered since; forgets it
    /// otherwise.
    pub fn recent(
        &self,
        key: &ChunkKey,
        hold: std::time::Duration,
        back: impl Fn(Instant) -> bool,
    ) -> Option<FetchError> {
        let mut m = self.map.lock();
        let (at, err) = m.get(key)?;
        if at.elapsed() < hold && !back(*at) {
            return Some(err.clone());
        }
        m.remove(key);
        None
    }
}

/// Fetches, verifies and caches the chunks of one blob. Cheap to clone.
#[derive(Clone)]
pub struct ChunkFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    blob: Blob,
    cache: ChunkCache,
    decoder: Arc<dyn ChunkDecoder>,
    inflight: Mutex<HashMap<ChunkKey, Pending>>,
    /// Woken whenever chunks leave `inflight`.
    settled: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    max_retries: u32,
    backoff: std::time::Duration,
    /// Recently failed chunks (answered at once for `failure_hold`).
    failed: FailedChunks,
    failure_hold: std::time::Duration,
}

struct Job {
    request: ChunkRequest,
    reply: oneshot::Sender<Result<Bytes, FetchError>>,
}

impl ChunkFetcher {
    /// A fetcher for `blob`'s chunks, caching into `cache`, decoding with `decoder`.
    pub fn new(blob: Blob, cache: ChunkCache, decoder: Arc<dyn ChunkDecoder>) -> Self {
        let fetch = blob.client_fetch_config();
        ChunkFetcher {
            inner: Arc::new(Inner {
                metrics: cache.metrics().clone(),
                max_retries: fetch.max_retries,
                backoff: fetch.min_backoff,
                failed: FailedChunks::default(),
                failure_hold: fetch.failure_hold,
                blob,
                cache,
                decoder,
                inflight: Mutex::new(HashMap::new()),
                settled: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The blob.
    pub fn blob(&self) -> &Blob {
        &self.inner.blob
    }

    /// The cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.inner.cache
    }

    /// The error of `key`'s fetch if it failed less than `fetch.failure_hold` ago and the
    /// registry has not answered since (a read of it fails at once; [`ChunkFetcher::get_many`]
    /// then probes the registry in the background).
    pub fn recent_failure(&self, key: &ChunkKey) -> Option<FetchError> {
        let blob = &self.inner.blob;
        self.inner.failed.recent(key, self.inner.failure_hold, |t| {
            blob.host_answered_since(t)
        })
    }

    /// True while a fetch of `key` is in flight (asked for, or answered and not yet
    /// cached): a caller of [`ChunkFetcher::get_many`] would join it rather than fetch it
    /// again.
    pub fn is_in_flight(&self, key: &ChunkKey) -> bool {
        self.inner.inflight.lock().contains_key(key)
    }

    /// Waits until no fetch is in flight and every fetched chunk has been written to the
    /// cache (chunks are answered before they are cached).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.settled.notified();
            if self.inner.inflight.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// [`ChunkFetcher::get_many`] for threads outside the runtime (FUSE workers); must not be
    /// called from inside it.
    pub fn get_many_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        requests: &[ChunkRequest],
        priority: Priority,
    ) -> Vec<Result<Bytes, FetchError>> {
        runtime.block_on(self.get_many(requests, priority))
    }

    /// Reads one chunk.
    pub async fn get(
        &self,
        request: &ChunkRequest,
        priority: Priority,
    ) -> Result<Bytes, FetchError> {
        self.get_many(std::slice::from_ref(request), priority)
            .await
            .pop()
            .unwrap_or(Err(FetchError::Abandoned))
    }

    /// Reads chunks; answers come in the order of `requests`. Chunks missing from the cache
    /// are fetched together (merged and multi-range where possible); the fetch runs in its
    /// own task, so it completes (and caches) even if the caller stops waiting.
    pub async fn get_many(
        &self,
        requests: &[ChunkRequest],
        priority: Priority,
    ) -> Vec<Result<Bytes, FetchError>> {
        let inner = &self.inner;
        let mut out: Vec<Option<Result<Bytes, FetchError>>> = vec![None; requests.len()];
        // Memory hits are answered here; disk lookups (and first-use verification) run off
        // the async threads.
        let mut cached: Vec<Option<Bytes>> = requests
            .iter()
            .map(|r| inner.cache.get_memory(&r.key))
            .collect();
        let on_disk: Vec<(usize, ChunkKey)> = cached
            .iter()
            .enumerate()
            .filter(|(i, hit)| hit.is_none() && inner.cache.contains(&requests[*i].key))
            .map(|(i, _)| (i, requests[i].key))
            .collect();
        if !on_disk.is_empty() {
            let cache = inner.cache.clone();
            let found = tokio::task::spawn_blocking(move || {
                on_disk
                    .into_iter()
                    .map(|(i, k)| (i, cache.get(&k).ok().flatten()))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (i, hit) in found {
                cached[i] = hit;
            }
        }
        let mut waits: Vec<(usize, Pending)> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        {
            let mut inflight = inner.inflight.lock();
            for (i, (req, hit)) in requests.iter().zip(cached).enumerate() {
                if let Some(data) = hit {
                    out[i] = Some(Ok(data));
                    continue;
                }
                if let Some(p) = inflight.get(&req.key) {
                    if !jobs.iter().any(|j| j.request.key == req.key) {
                        Metrics::inc(&inner.metrics.fetch_joins);
                    }
                    waits.push((i, p.clone()));
                    continue;
                }
                if let Some(err) = self.recent_failure(&req.key) {
                    Metrics::inc(&inner.metrics.fetch_fail_fast);
                    // Find out soon whether the registry is back.
                    inner.blob.probe_host();
                    out[i] = Some(Err(err));
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                let pending: Pending = rx
                    .map(|r| r.unwrap_or(Err(FetchError::Abandoned)))
                    .boxed()
                    .shared();
                inflight.insert(req.key, pending.clone());
                waits.push((i, pending));
                jobs.push(Job {
                    request: req.clone(),
                    reply: tx,
                });
            }
        }
        if !jobs.is_empty() {
            tokio::spawn(fetch_and_store(inner.clone(), jobs, priority));
        }
        for (i, p) in waits {
            out[i] = Some(p.await);
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(FetchError::Abandoned)))
            .collect()
    }
}

async fn fetch_and_store(inner: Arc<Inner>, mut jobs: Vec<Job>, priority: Priority) {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let ranges: Vec<Range<u64>> = jobs.iter().map(|j| j.request.range.clone()).collect();
        let raws = match inner.blob.read_ranges(&ranges, priority).await {
            Ok(r) => r,
            Err(e) => {
                for j in jobs {
                    finish(&inner, j, Err(FetchError::from(e.clone())));
                }
                return;
            }
        };
        // One chunk at a time: decode, verify, answer, cache, forget. Only one decoded chunk
        // of the batch is in memory at once (a batch can hold several 4 MiB chunks).
        let keys: Vec<ChunkKey> = jobs.iter().map(|j| j.request.key).collect();
        let worker = inner.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .zip(raws)
                .filter_map(|(job, raw)| settle(&worker, job, raw))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(bad) = verdicts else {
            // The blocking task did not run to its end: its replies were dropped (callers see
            // `Abandoned`); make sure no chunk stays marked in flight.
            let mut inflight = inner.inflight.lock();
            for k in &keys {
                inflight.remove(k);
            }
            drop(inflight);
            inner.settled.notify_waiters();
            return;
        };
        if bad.is_empty() {
            return;
        }
        if attempts > inner.max_retries {
            for (job, reason) in bad {
                let err = FetchError::Corrupt(Box::new(CorruptChunk {
                    target: inner.blob.target(),
                    key: job.request.key,
                    range: job.request.range.clone(),
                    attempts,
                    reason,
                }));
                tracing::warn!(error = %err, "giving up on a corrupted chunk");
                finish(&inner, job, Err(err));
            }
            return;
        }
        tracing::debug!(
            chunks = bad.len(),
            attempt = attempts,
            "refetching chunks that failed verification"
        );
        Metrics::inc(&inner.metrics.retries);
        tokio::time::sleep(inner.backoff * attempts).await;
        jobs = bad.into_iter().map(|(j, _)| j).collect();
    }
}

/// Decodes and verifies one fetched chunk, answers its callers and caches it (chunks of
/// [`STREAM_DECODE_MIN`] bytes or more are decoded straight into the cache and served from
/// there). Gives the job back, with the reason, when the chunk failed decoding or
/// verification. Runs on a blocking thread.
fn settle(inner: &Inner, job: Job, raw: Bytes) -> Option<(Job, String)> {
    let key = job.request.key;
    let streamed = inner
        .decoder
        .decoded_len(&job.request)
        .is_some_and(|n| n >= STREAM_DECODE_MIN)
        .then(|| decode_into_cache(inner, &job.request, &raw))
        .flatten();
    // Ok((data, already cached)).
    let verdict = match streamed {
        Some(result) => result.map(|data| (data, true)),
        None => decode_verify(inner, &job.request, raw).map(|d| (d, false)),
    };
    match verdict {
        Ok((data, true)) => {
            let _ = job.reply.send(Ok(data));
        }
        Ok((data, false)) => {
            // Answer first; the chunk stays "in flight" (answered) until it is cached, so
            // callers arriving meanwhile get it without a new fetch.
            let _ = job.reply.send(Ok(data.clone()));
            if let Err(e) = inner.cache.insert_verified(&key, data) {
                tracing::warn!(chunk = %key, error = %e, "cannot cache chunk; it was served uncached");
            }
        }
        Err(reason) => {
            Metrics::inc(&inner.metrics.digest_mismatches);
            return Some((job, reason));
        }
    }
    inner.inflight.lock().remove(&key);
    inner.settled.notify_waiters();
    None
}

/// Decodes one chunk straight into its cache entry (checked against its key when it is
/// committed) and reads it back from there. `None` when the cache cannot take it (the
/// caller then decodes in memory and serves the chunk uncached). Runs on a blocking thread.
fn decode_into_cache(
    inner: &Inner,
    req: &ChunkRequest,
    raw: &Bytes,
) -> Option<Result<Bytes, String>> {
    let cache_failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(chunk = %req.key, error = %e, "cannot decode chunk into the cache; decoding it in memory");
    };
    let mut writer = inner
        .cache
        .writer(req.key)
        .map_err(|e| cache_failed(&e))
        .ok()?;
    let mut write_error = None;
    let decoded = inner.decoder.decode_to(req, raw.clone(), &mut |piece| {
        writer.write(piece).map_err(|e| {
            let message = e.to_string();
            write_error = Some(e);
            std::io::Error::other(message)
        })
    });
    if let Some(e) = write_error {
        cache_failed(&e);
        return None;
    }
    if let Err(reason) = decoded {
        return Some(Err(reason));
    }
    match writer.commit() {
        Ok(()) => {}
        Err(CacheError::Mismatch { .. }) => return Some(Err(mismatch_reason(&req.key))),
        Err(e) => {
            cache_failed(&e);
            return None;
        }
    }
    match inner.cache.read_back(&req.key) {
        Ok(Some(data)) => Some(Ok(data)),
        Ok(None) => {
            cache_failed(&"the entry vanished right after it was written");
            None
        }
        Err(e) => {
            cache_failed(&e);
            None
        }
    }
}

/// Why a decoded chunk does not match its key.
fn mismatch_reason(key: &ChunkKey) -> String {
    if key.is_verifiable() {
        "content does not match the chunk digest".to_string()
    } else {
        format!("decoded size differs from the expected {:?}", key.size())
    }
}

/// Decodes one chunk and checks it against its key. Runs on a blocking thread.
fn decode_verify(inner: &Inner, req: &ChunkRequest, raw: Bytes) -> Result<Bytes, String> {
    let data = inner.decoder.decode(req, raw)?;
    if !req.key.matches(&data) {
        return Err(if req.key.is_verifiable() {
            "content does not match the chunk digest".to_string()
        } else {
            format!(
                "decoded {} bytes, expected {:?}",
                data.len(),
                req.key.size()
            )
        });
    }
    Ok(data)
}

fn finish(inner: &Inner, job: Job, result: Result<Bytes, FetchError>) {
    if let Err(e) = &result {
        inner.failed.note(job.request.key, e);
    }
    inner.inflight.lock().remove(&job.request.key);
    inner.settled.notify_waiters();
    let _ = job.reply.send(result);
}
