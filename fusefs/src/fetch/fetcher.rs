//! The fetch layer of one blob: the only writer into the chunk cache for it. Every chunk is
//! claimed in one in-flight table before it is fetched, so any two ways of asking for the
//! same chunk (reads, read-ahead, background fetch, a stream window, a region stream, a large
//! chunk) cause one fetch, and a caller arriving while a chunk is fetched joins that fetch.
//!
//! Three ways in, one way out:
//! - [`ChunkFetcher::get_many`]: chunks missing from the cache are fetched together from the
//!   source in few requests ([`BlobSource::read_ranges`]); chunks of
//!   [`STREAM_DECODE_MIN`] decoded bytes or more are streamed from the source, one request
//!   each, and decoded straight into their cache entry while their bytes arrive.
//! - [`ChunkFetcher::stream_chunks`]: a region of the blob read in one sequential request,
//!   its chunks decoded as they pass; the chunks a little ahead of the stream are claimed,
//!   so reads of them join the stream instead of fetching them again.
//! - either way, each fetched chunk is decoded with the layer's [`ChunkDecoder`], checked
//!   against its key, answered, cached and released ([`settle`]); chunks of
//!   [`STREAM_DECODE_MIN`] bytes or more are decoded into their cache entry and served
//!   from a mapping of it. A chunk that fails verification is fetched again (bounded by
//!   `fetch.max_retries`) and is never answered or cached.
//!
//! A chunk whose fetch failed is answered with the same error at once for
//! `fetch.failure_hold`, unless the source answered since ([`super::hold`]; such a read
//! starts one probe request in the background to find out): the kernel's retry of a
//! failed page, and readers retrying in a loop, do not wait `fetch.read_timeout` again.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use parking_lot::Mutex;
use registry::{Priority, RegistryError};
use tokio::sync::oneshot;

use super::decode::{ChunkDecoder, ChunkRequest, LARGE_CHUNK, STREAM_DECODE_MIN};
use super::error::{CorruptChunk, Corruption, FetchError};
use super::hold::{FailureHold, PROBE_WAIT};
use super::source::{BlobSource, SourceStream};
use crate::cache::{CacheError, ChunkCache, ChunkKey};
use crate::metrics::Metrics;

/// How far ahead of its position a stream claims chunks at least (bytes of the blob).
pub const STREAM_CLAIM_AHEAD: u64 = 4 << 20;
/// How far ahead, in time at the stream's measured rate, a stream claims chunks.
const STREAM_CLAIM_TIME: f64 = 2.0;
/// A stream hands decoded chunks to a blocking thread in batches of about this many bytes.
const STREAM_BATCH_BYTES: usize = 1 << 20;
const STREAM_BATCH_CHUNKS: usize = 256;

type Answer = Result<Bytes, FetchError>;
type Pending = Shared<BoxFuture<'static, Answer>>;

/// Fetches, verifies and caches the chunks of one blob. Cheap to clone.
#[derive(Clone)]
pub struct ChunkFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn BlobSource>,
    cache: ChunkCache,
    decoder: Arc<dyn ChunkDecoder>,
    /// Chunks being fetched: the claim that fetches each and what joiners wait on.
    inflight: Mutex<HashMap<ChunkKey, (u64, Pending)>>,
    next_claim: AtomicU64,
    /// Woken whenever chunks leave `inflight`.
    settled: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    max_retries: u32,
    backoff: Duration,
    /// Recently failed chunks, answered at once for `fetch.failure_hold`.
    hold: FailureHold,
}

/// A claimed chunk: its fetch is in flight under this claim. Answering sends the result to
/// everyone joined; dropping the job releases the claim (joiners still waiting then get
/// [`FetchError::Abandoned`]).
struct Job {
    inner: Arc<Inner>,
    claim: u64,
    request: ChunkRequest,
    reply: Option<oneshot::Sender<Answer>>,
}

impl Job {
    /// Answers everyone joined. The chunk stays claimed (answered) until the job is
    /// dropped, so callers arriving meanwhile get the answer without a new fetch.
    fn answer(&mut self, answer: Answer) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(answer);
        }
    }

    /// Releases the claim, then answers with `err`: a caller arriving afterwards gets the
    /// held failure at once (see [`super::hold`]) or fetches anew, instead of joining a
    /// failed fetch.
    fn fail(mut self, err: FetchError) {
        self.inner.hold.note(self.request.key, &err);
        self.release();
        self.answer(Err(err));
    }

    fn release(&mut self) {
        let mut inflight = self.inner.inflight.lock();
        if inflight
            .get(&self.request.key)
            .is_some_and(|(claim, _)| *claim == self.claim)
        {
            inflight.remove(&self.request.key);
        }
        drop(inflight);
        self.inner.settled.notify_waiters();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.release();
    }
}

/// What one region stream did (see [`ChunkFetcher::stream_chunks`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Chunks the stream decoded, verified and cached.
    pub stored: u64,
    /// Chunks passed over: already local, fetched by someone else, or too large to stream
    /// with the others.
    pub skipped: u64,
}

/// Progress of a region stream, reported as it goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamProgress {
    /// Indexes (into the stream's requests) of chunks that are now local: cached by the
    /// stream, or found in the cache.
    pub local: Vec<usize>,
    /// Every chunk whose range starts before this offset has been dealt with.
    pub next: u64,
}

impl ChunkFetcher {
    /// A fetcher for the chunks of `source`, caching into `cache`, decoding with `decoder`,
    /// retrying corrupted chunks as `fetch` says (`max_retries`, `min_backoff`) and holding
    /// failures for `fetch.failure_hold`.
    pub fn new(
        source: Arc<dyn BlobSource>,
        cache: ChunkCache,
        decoder: Arc<dyn ChunkDecoder>,
        fetch: &config::FetchConfig,
    ) -> Self {
        ChunkFetcher {
            inner: Arc::new(Inner {
                metrics: cache.metrics().clone(),
                max_retries: fetch.max_retries,
                backoff: fetch.min_backoff,
                hold: FailureHold::new(fetch.failure_hold),
                source,
                cache,
                decoder,
                inflight: Mutex::new(HashMap::new()),
                next_claim: AtomicU64::new(1),
                settled: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The blob the chunks come from.
    pub fn source(&self) -> &Arc<dyn BlobSource> {
        &self.inner.source
    }

    /// The cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.inner.cache
    }

    /// The error of `key`'s fetch if it failed less than `fetch.failure_hold` ago and the
    /// source has not answered since: [`ChunkFetcher::get_many`] answers it at once.
    pub fn held_failure(&self, key: &ChunkKey) -> Option<FetchError> {
        let source = &self.inner.source;
        self.inner.hold.recent(key, |t| source.answered_since(t))
    }

    /// See [`FailureHold::set_retry_window`].
    #[cfg(test)]
    pub(crate) fn set_retry_window(&self, window: Duration) {
        self.inner.hold.set_retry_window(window);
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
    ) -> Vec<Answer> {
        runtime.block_on(self.get_many(requests, priority))
    }

    /// Reads one chunk.
    pub async fn get(&self, request: &ChunkRequest, priority: Priority) -> Answer {
        self.get_many(std::slice::from_ref(request), priority)
            .await
            .pop()
            .unwrap_or(Err(FetchError::Abandoned))
    }

    /// Reads chunks; answers come in the order of `requests`. Chunks missing from the cache
    /// and not in flight are fetched together (merged and multi-range where the source can;
    /// large chunks streamed into the cache); the fetch runs in its own task, so it
    /// completes (and caches) even if the caller stops waiting. A chunk whose fetch failed
    /// recently gets the held failure at once (see [`ChunkFetcher::held_failure`]).
    pub async fn get_many(&self, requests: &[ChunkRequest], priority: Priority) -> Vec<Answer> {
        let inner = &self.inner;
        let mut out: Vec<Option<Answer>> = vec![None; requests.len()];
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
            for (i, hit) in read_entries(&inner.cache, on_disk).await {
                cached[i] = hit;
            }
        }
        // A held failure that is not the kernel's immediate retry: ask the source whether
        // it is back (briefly) before answering with it.
        let stale_hold = requests.iter().zip(&cached).any(|(r, hit)| {
            hit.is_none()
                && !self.is_in_flight(&r.key)
                && self.held_failure(&r.key).is_some()
                && inner.hold.failed_before_retry_window(&r.key)
        });
        if stale_hold {
            Inner::probe_and_wait(inner, PROBE_WAIT).await;
        }
        let mut waits: Vec<(usize, Pending)> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        // Chunks stored between the look into the cache above and their claim below.
        let mut stored: Vec<usize> = Vec::new();
        for (i, (req, hit)) in requests.iter().zip(cached).enumerate() {
            if let Some(data) = hit {
                out[i] = Some(Ok(data));
                continue;
            }
            if !self.is_in_flight(&req.key) {
                if let Some(err) = self.held_failure(&req.key) {
                    Metrics::inc(&inner.metrics.fetch_fail_fast);
                    // Find out soon whether the source is back.
                    Inner::probe(inner);
                    out[i] = Some(Err(err));
                    continue;
                }
            }
            match Inner::claim(inner, req, true) {
                Claimed::New(job, pending) => {
                    waits.push((i, pending));
                    jobs.push(job);
                }
                Claimed::Joined(pending) => {
                    if !jobs.iter().any(|j| j.request.key == req.key) {
                        Metrics::inc(&inner.metrics.fetch_joins);
                    }
                    waits.push((i, pending));
                }
                Claimed::Stored => stored.push(i),
            }
        }
        if !stored.is_empty() {
            let keys: Vec<(usize, ChunkKey)> =
                stored.iter().map(|&i| (i, requests[i].key)).collect();
            for (i, hit) in read_entries(&inner.cache, keys).await {
                match hit {
                    Some(data) => out[i] = Some(Ok(data)),
                    // Evicted (or unreadable) in the meantime: fetched after all.
                    None => match Inner::claim(inner, &requests[i], false) {
                        Claimed::New(job, pending) => {
                            waits.push((i, pending));
                            jobs.push(job);
                        }
                        Claimed::Joined(pending) => waits.push((i, pending)),
                        Claimed::Stored => {}
                    },
                }
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

    /// Reads `span` of the blob in one sequential request and stores the chunks of
    /// `requests` (sorted by range, inside `span`) as their bytes pass: each chunk is
    /// claimed [`STREAM_CLAIM_AHEAD`] bytes (or about two seconds of the stream) before the
    /// stream reaches it, so a read of it joins the stream; chunks that are local or fetched
    /// by someone else are passed over (never fetched or stored twice); chunks larger than
    /// [`LARGE_CHUNK`] are left to [`ChunkFetcher::get_many`]. `progress` hears which
    /// chunks became local and how far the stream got.
    ///
    /// If the stream fails or is dropped, the chunks it claimed and had not stored yet are
    /// fetched by range in the background (their joiners get them); chunks failing
    /// verification are fetched again the same way.
    pub async fn stream_chunks(
        &self,
        span: Range<u64>,
        requests: &[ChunkRequest],
        priority: Priority,
        progress: &mut (dyn FnMut(StreamProgress) + Send),
    ) -> Result<StreamStats, FetchError> {
        let inner = &self.inner;
        let mut claims = StreamClaims {
            inner: inner.clone(),
            jobs: BTreeMap::new(),
            batch: Vec::new(),
            next: 0,
            priority,
        };
        let mut stats = StreamStats::default();
        let mut local = Vec::new();
        let started = Instant::now();
        // Claims the first stretch before the first byte is asked for.
        stats.skipped += claims.claim_until(requests, span.start + STREAM_CLAIM_AHEAD, &mut local);
        // Opened when the first claimed chunk needs its bytes, from that chunk on.
        let mut stream: Option<SourceStream> = None;
        let mut buf = BytesMut::new();
        let mut buf_start = span.start;
        let mut batch_bytes = 0usize;
        for (i, req) in requests.iter().enumerate() {
            let flush =
                batch_bytes >= STREAM_BATCH_BYTES || claims.batch.len() >= STREAM_BATCH_CHUNKS;
            let last_start = claims.batch.last().map(|(_, j, _)| j.request.range.start);
            if flush && last_start < Some(req.range.start) {
                // Every chunk before this one is dealt with once the batch is stored.
                let batch = std::mem::take(&mut claims.batch);
                let stored = settle_stream_batch(inner, batch, priority).await;
                stats.stored += stored.len() as u64;
                local.extend(stored);
                batch_bytes = 0;
                progress(StreamProgress {
                    local: std::mem::take(&mut local),
                    next: req.range.start,
                });
            }
            let ahead = claim_ahead(buf_start - span.start, started.elapsed());
            stats.skipped += claims.claim_until(requests, req.range.start + ahead, &mut local);
            if !claims.jobs.contains_key(&i) {
                continue;
            }
            let want_end = req.range.end.min(span.end);
            let pieces = stream.get_or_insert_with(|| {
                buf_start = req.range.start;
                inner
                    .source
                    .stream_range(req.range.start..span.end, priority)
            });
            while buf_start + (buf.len() as u64) < want_end {
                let failure = match pieces.next().await {
                    Some(Ok(b)) => {
                        inner.hold.answered();
                        buf.extend_from_slice(&b);
                        // Keep nothing before this chunk (gaps, chunks passed over).
                        let skip = req
                            .range
                            .start
                            .saturating_sub(buf_start)
                            .min(buf.len() as u64);
                        buf.advance(skip as usize);
                        buf_start += skip;
                        continue;
                    }
                    Some(Err(e)) => e,
                    None => RegistryError::Range {
                        target: inner.source.target(),
                        reason: format!("the blob stream ended before byte {want_end}"),
                    },
                };
                // What was claimed and not stored is fetched by range (`StreamClaims`).
                return Err(failure.into());
            }
            if req.range.start > buf_start {
                let skip = (req.range.start - buf_start).min(buf.len() as u64);
                buf.advance(skip as usize);
                buf_start += skip;
            }
            let len = (want_end - buf_start) as usize;
            let raw = Bytes::copy_from_slice(&buf[..len]);
            batch_bytes += raw.len();
            let job = claims.jobs.remove(&i).expect("claimed above");
            claims.batch.push((i, job, raw));
        }
        let batch = std::mem::take(&mut claims.batch);
        let stored = settle_stream_batch(inner, batch, priority).await;
        stats.stored += stored.len() as u64;
        local.extend(stored);
        progress(StreamProgress {
            local,
            next: u64::MAX,
        });
        Ok(stats)
    }
}

/// Reads the cache entries of `keys` (tagged with the caller's indexes) on a blocking
/// thread (disk reads and first-use verification stay off the async threads); `None` for
/// an entry that is gone or unreadable.
async fn read_entries(
    cache: &ChunkCache,
    keys: Vec<(usize, ChunkKey)>,
) -> Vec<(usize, Option<Bytes>)> {
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .map(|(i, k)| (i, cache.get(&k).ok().flatten()))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// How far ahead of the stream chunks are claimed, `done` bytes into it after `elapsed`.
fn claim_ahead(done: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs < 0.1 {
        return STREAM_CLAIM_AHEAD;
    }
    ((done as f64 / secs * STREAM_CLAIM_TIME) as u64).max(STREAM_CLAIM_AHEAD)
}

enum Claimed {
    /// The caller fetches the chunk under this job.
    New(Job, Pending),
    /// Someone else fetches it: wait for this.
    Joined(Pending),
    /// It was stored since the caller looked: read it from the cache.
    Stored,
}

impl Inner {
    /// Asks the source for one byte in the background (one probe at a time), so that a
    /// held failure is dropped soon after the source is back.
    fn probe(this: &Arc<Inner>) {
        if !this.hold.begin_probe() {
            return;
        }
        let inner = this.clone();
        tokio::spawn(async move {
            let end = inner.source.size().min(1);
            if inner
                .source
                .read_range(0..end, Priority::Background)
                .await
                .is_ok()
            {
                inner.hold.answered();
            }
            inner.hold.probe_done();
        });
    }

    /// Starts a probe (or joins the one running) and waits up to `wait` for it to end.
    async fn probe_and_wait(this: &Arc<Inner>, wait: Duration) {
        let end = this.hold.probe_end();
        tokio::pin!(end);
        end.as_mut().enable();
        Inner::probe(this);
        let _ = tokio::time::timeout(wait, end).await;
    }

    /// Claims `req`'s chunk for a fetch, or joins the fetch in flight; with `or_stored`,
    /// says so instead when the chunk was stored since the caller looked into the cache. (A
    /// fetch stores its chunk before it releases the claim, so under the claim lock a
    /// chunk is either in flight, or stored, or neither: without this look a caller that
    /// missed the cache just before a store and claimed just after the release fetched the
    /// chunk a second time.)
    fn claim(this: &Arc<Inner>, req: &ChunkRequest, or_stored: bool) -> Claimed {
        let mut inflight = this.inflight.lock();
        if let Some((_, p)) = inflight.get(&req.key) {
            return Claimed::Joined(p.clone());
        }
        if or_stored && this.cache.is_indexed(&req.key) {
            return Claimed::Stored;
        }
        let (tx, rx) = oneshot::channel();
        let pending: Pending = rx
            .map(|r| r.unwrap_or(Err(FetchError::Abandoned)))
            .boxed()
            .shared();
        let claim = this.next_claim.fetch_add(1, Ordering::Relaxed);
        inflight.insert(req.key, (claim, pending.clone()));
        Claimed::New(
            Job {
                inner: this.clone(),
                claim,
                request: req.clone(),
                reply: Some(tx),
            },
            pending,
        )
    }
}

/// The chunks a region stream has claimed and not stored yet. What is left when it is
/// dropped (the stream failed or was cancelled) is fetched by range in the background, so
/// nobody joined to it waits in vain.
struct StreamClaims {
    inner: Arc<Inner>,
    jobs: BTreeMap<usize, Job>,
    /// Claimed chunks whose bytes arrived, waiting to be settled together.
    batch: Vec<(usize, Job, Bytes)>,
    /// The next request to consider for a claim.
    next: usize,
    priority: Priority,
}

impl StreamClaims {
    /// Claims the chunks of `requests` starting before `until`; returns how many were passed
    /// over (local, in flight elsewhere, large), adding the local ones to `local`.
    fn claim_until(
        &mut self,
        requests: &[ChunkRequest],
        until: u64,
        local: &mut Vec<usize>,
    ) -> u64 {
        let mut skipped = 0;
        while let Some(req) = requests.get(self.next) {
            if req.range.start >= until {
                break;
            }
            let i = self.next;
            self.next += 1;
            let large = self
                .inner
                .decoder
                .decoded_len(req)
                .is_some_and(|n| n > LARGE_CHUNK);
            if large {
                skipped += 1;
            } else if self.inner.cache.contains(&req.key) {
                local.push(i);
                skipped += 1;
            } else {
                match Inner::claim(&self.inner, req, true) {
                    Claimed::New(job, _) => {
                        self.jobs.insert(i, job);
                    }
                    Claimed::Joined(_) => skipped += 1,
                    Claimed::Stored => {
                        local.push(i);
                        skipped += 1;
                    }
                }
            }
        }
        skipped
    }
}

impl Drop for StreamClaims {
    fn drop(&mut self) {
        let mut jobs: Vec<Job> = std::mem::take(&mut self.jobs).into_values().collect();
        jobs.extend(self.batch.drain(..).map(|(_, job, _)| job));
        if jobs.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(fetch_and_store(self.inner.clone(), jobs, self.priority));
            }
            Err(_) => drop(jobs),
        }
    }
}

/// Decodes, verifies and stores a stream's batch on a blocking thread; returns the indexes
/// of the chunks stored. Chunks failing verification are fetched again by range.
async fn settle_stream_batch(
    inner: &Arc<Inner>,
    batch: Vec<(usize, Job, Bytes)>,
    priority: Priority,
) -> Vec<usize> {
    if batch.is_empty() {
        return Vec::new();
    }
    let worker = inner.clone();
    let settled = tokio::task::spawn_blocking(move || {
        let mut stored = Vec::new();
        let mut bad = Vec::new();
        for (i, job, raw) in batch {
            match settle(&worker, job, raw) {
                None => stored.push(i),
                Some((job, reason)) => {
                    tracing::debug!(chunk = %job.request.key, error = %reason, "streamed chunk failed verification; fetching it again");
                    bad.push(job);
                }
            }
        }
        (stored, bad)
    })
    .await;
    let Ok((stored, bad)) = settled else {
        return Vec::new();
    };
    if !bad.is_empty() {
        tokio::spawn(fetch_and_store(inner.clone(), bad, priority));
    }
    stored
}

/// Fetches the claimed chunks of `jobs` from the source: chunks of [`STREAM_DECODE_MIN`]
/// decoded bytes or more one stream each, decoded while their bytes arrive (a 4 MiB chunk
/// takes about as long to inflate and verify as to cross a fast link: done one after the
/// other, the two add up on every read that waits for such a chunk; streamed, the chunk
/// is ready soon after its last byte, and several decode on as many threads); the others
/// together by range. Corrupted copies are fetched again.
async fn fetch_and_store(inner: Arc<Inner>, jobs: Vec<Job>, priority: Priority) {
    let (streamed, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
        inner
            .decoder
            .decoded_len(&j.request)
            .is_some_and(|n| n >= STREAM_DECODE_MIN)
    });
    let streamed = futures::future::join_all(
        streamed
            .into_iter()
            .map(|job| fetch_streamed(inner.clone(), job, priority)),
    );
    futures::future::join(streamed, fetch_ranges(inner.clone(), jobs, priority)).await;
}

async fn fetch_ranges(inner: Arc<Inner>, mut jobs: Vec<Job>, priority: Priority) {
    let mut attempts = 0u32;
    while !jobs.is_empty() {
        attempts += 1;
        let ranges: Vec<Range<u64>> = jobs.iter().map(|j| j.request.range.clone()).collect();
        let raws = match inner.source.read_ranges(&ranges, priority).await {
            Ok(r) => {
                inner.hold.answered();
                r
            }
            Err(e) => {
                for j in jobs {
                    j.fail(FetchError::from(e.clone()));
                }
                return;
            }
        };
        // One chunk at a time: decode, verify, answer, cache, forget. Only one decoded chunk
        // of the batch is in memory at once (a batch can hold several 4 MiB chunks).
        let worker = inner.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .zip(raws)
                .filter_map(|(job, raw)| settle(&worker, job, raw))
                .collect::<Vec<_>>()
        })
        .await;
        // A blocking task that did not run to its end dropped its jobs: their callers see
        // `Abandoned` and no chunk stays claimed.
        let Ok(bad) = verdicts else { return };
        jobs = retry_or_give_up(&inner, bad, attempts).await;
    }
}

/// The jobs to fetch again after `attempts` copies failed verification, after a backoff; the
/// others (out of retries) are answered with the corruption.
async fn retry_or_give_up(inner: &Inner, bad: Vec<(Job, Corruption)>, attempts: u32) -> Vec<Job> {
    if bad.is_empty() {
        return Vec::new();
    }
    // Whoever served them (a mirror) is skipped for a while: the copies fetched next come
    // from the next mirror or the origin.
    for (job, _) in &bad {
        inner.source.report_corrupt(job.request.range.clone());
    }
    if attempts > inner.max_retries {
        for (job, reason) in bad {
            let err = FetchError::Corrupt(Box::new(CorruptChunk {
                target: inner.source.target(),
                key: job.request.key,
                range: job.request.range.clone(),
                attempts,
                reason,
            }));
            tracing::warn!(error = %err, "giving up on a corrupted chunk");
            job.fail(err);
        }
        return Vec::new();
    }
    tracing::debug!(
        chunks = bad.len(),
        attempt = attempts,
        "refetching chunks that failed verification"
    );
    registry::Metrics::inc(&inner.metrics.registry.retries);
    tokio::time::sleep(inner.backoff * attempts).await;
    bad.into_iter().map(|(j, _)| j).collect()
}

/// Decodes and verifies one fetched chunk, answers its callers and caches it (chunks of
/// [`STREAM_DECODE_MIN`] bytes or more are decoded straight into the cache and served from
/// there), then releases its claim. Gives the job back, with the reason, when the chunk
/// failed decoding or verification. Runs on a blocking thread.
fn settle(inner: &Inner, mut job: Job, raw: Bytes) -> Option<(Job, Corruption)> {
    let key = job.request.key;
    let streamed = inner
        .decoder
        .decoded_len(&job.request)
        .is_some_and(|n| n >= STREAM_DECODE_MIN)
        .then(|| decode_into_cache(inner, &job.request, &mut &raw[..], false))
        .flatten();
    // Ok((data, already cached)).
    let verdict = match streamed {
        Some(result) => result.map(|data| (data, true)),
        None => decode_verify(inner, &job.request, raw).map(|d| (d, false)),
    };
    match verdict {
        Ok((data, true)) => job.answer(Ok(data)),
        Ok((data, false)) => {
            // Answer first; the chunk stays claimed (answered) until it is cached, so
            // callers arriving meanwhile get it without a new fetch.
            job.answer(Ok(data.clone()));
            if let Err(e) = inner.cache.insert_verified(&key, data) {
                tracing::warn!(chunk = %key, error = %e, "cannot cache chunk; it was served uncached");
            }
        }
        Err(reason) => {
            Metrics::inc(&inner.metrics.digest_mismatches);
            return Some((job, reason));
        }
    }
    None
}

/// Decodes one chunk read from `raw` straight into its cache entry (checked against its key
/// when it is committed) and reads it back from there (`map`: always as a mapping, never
/// into the heap). `None` when the cache cannot take it (the caller then decodes in memory
/// and serves the chunk uncached). Runs on a blocking thread.
fn decode_into_cache(
    inner: &Inner,
    req: &ChunkRequest,
    raw: &mut dyn BufRead,
    map: bool,
) -> Option<Result<Bytes, Corruption>> {
    let cache_failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(chunk = %req.key, error = %e, "cannot decode chunk into the cache; decoding it in memory");
    };
    let mut writer = inner
        .cache
        .writer(req.key)
        .map_err(|e| cache_failed(&e))
        .ok()?;
    let mut write_error = None;
    let decoded = inner.decoder.decode_to(req, raw, &mut |piece| {
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
    if let Err(e) = decoded {
        return Some(Err(Corruption::Decode(Arc::new(e))));
    }
    match writer.commit() {
        Ok(()) => {}
        Err(CacheError::Mismatch { got, .. }) => {
            return Some(Err(Corruption::mismatch(&req.key, got)))
        }
        Err(e) => {
            cache_failed(&e);
            return None;
        }
    }
    let read = if map {
        inner.cache.map_entry(&req.key)
    } else {
        inner.cache.read_back(&req.key)
    };
    match read {
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

/// Decodes one chunk and checks it against its key. Runs on a blocking thread.
fn decode_verify(inner: &Inner, req: &ChunkRequest, raw: Bytes) -> Result<Bytes, Corruption> {
    let data = inner
        .decoder
        .decode(req, raw)
        .map_err(|e| Corruption::Decode(Arc::new(e)))?;
    if !req.key.matches(&data) {
        return Err(Corruption::mismatch(&req.key, data.len() as u64));
    }
    Ok(data)
}

/// Fetches one chunk of [`STREAM_DECODE_MIN`] decoded bytes or more: its stored bytes
/// streamed from the source through the decoder into its cache entry (verified when
/// committed), answered with a mapping of the entry. Retries corrupted copies like
/// [`fetch_ranges`]. When the cache refuses the entry, a chunk that fits in memory is
/// fetched again by [`fetch_ranges`] (decoded in memory and served uncached); one of more
/// than [`LARGE_CHUNK`] fails.
async fn fetch_streamed(inner: Arc<Inner>, job: Job, priority: Priority) {
    let mut job = Some(job);
    let mut attempts = 0u32;
    while let Some(mut current) = job.take() {
        attempts += 1;
        let stream = inner
            .source
            .stream_range(current.request.range.clone(), priority);
        let (worker, handle) = (inner.clone(), tokio::runtime::Handle::current());
        let request = current.request.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::with_capacity(
                256 << 10,
                StreamReader {
                    stream,
                    handle,
                    current: Bytes::new(),
                    error: None,
                },
            );
            let result = decode_into_cache(&worker, &request, &mut reader, true);
            (result, reader.into_inner().error)
        })
        .await;
        let Ok((result, source_error)) = outcome else {
            return;
        };
        if source_error.is_none() {
            inner.hold.answered();
        }
        match (result, source_error) {
            (_, Some(e)) => current.fail(e.into()),
            (Some(Ok(data)), None) => current.answer(Ok(data)),
            (None, None)
                if inner
                    .decoder
                    .decoded_len(&current.request)
                    .is_none_or(|n| n <= LARGE_CHUNK) =>
            {
                fetch_ranges(inner.clone(), vec![current], priority).await;
            }
            (None, None) => {
                let err = CacheError::io(
                    "store a large chunk in",
                    inner.cache.dir(),
                    std::io::Error::other("the cache refused the entry"),
                );
                current.fail(FetchError::Cache(Arc::new(err)));
            }
            (Some(Err(reason)), None) => {
                Metrics::inc(&inner.metrics.digest_mismatches);
                job = retry_or_give_up(&inner, vec![(current, reason)], attempts)
                    .await
                    .pop();
            }
        }
    }
}

/// A blocking `Read` over a [`SourceStream`] (for decoders on blocking threads); keeps the
/// source's error apart from decoding errors.
struct StreamReader {
    stream: SourceStream,
    handle: tokio::runtime::Handle,
    current: Bytes,
    error: Option<RegistryError>,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for StreamReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    let io = std::io::Error::other(e.to_string());
                    self.error = Some(e);
                    return Err(io);
                }
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
    }
}
