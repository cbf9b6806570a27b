//! Fetching a region of the blob ahead of reads, in blob order. Two ways:
//!
//! - [`Region::run`]: one sequential request, chunks decoded and verified as they pass and
//!   stored in the cache. Used for the prefetch region (up to the landmark), which is fetched
//!   when the layer is mounted, before anything else of it is local.
//! - [`Region::run_windows`]: the rest of the blob when a workload reads most of a layer, in
//!   windows of [`WINDOW_BYTES`] of chunks that are neither local nor in flight, each one
//!   call to the layer's fetcher (merged into few requests, verified, cached), with
//!   [`WINDOWS_IN_FLIGHT`] windows in flight, staggered, so the link stays busy. Each window is planned
//!   right before it is sent, so chunks that reads fetched on their own meanwhile (and
//!   chunks still in flight in their requests) are not fetched again, and a read of a chunk
//!   of a window in flight joins that window's fetch. (A single request to the end of the
//!   blob, as before, moved every byte after its start, including chunks reads had already
//!   fetched: 6 MB of 69 MB twice when `tar` read a whole image.)
//!
//! The [`StreamGate`] tells reads whether to wait for the stream instead of fetching a
//! chunk themselves: only when the stream will reach the chunk soon (within about two
//! seconds at its measured rate), so a read never waits behind a long transfer. A stream
//! claims the gate ([`RemoteLayer::claim_region`]) before it is spawned, so a read that
//! comes right after a mount already waits for the prefetch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use estargz::Chunk;
use futures::stream::{FuturesOrdered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::chunks::{fetch_range, first_chunk_at, key_of, request_of, LARGE_CHUNK};
use super::RemoteLayer;
use crate::cache::ChunkKey;
use crate::fetch::{ChunkRequest, FetchError};
use registry::Priority;

/// Smallest look-ahead of a stream (bytes) within which reads wait for it.
const MIN_LOOKAHEAD: u64 = 4 << 20;
/// How far ahead, in time at the stream's rate, reads wait for it.
const LOOKAHEAD_TIME: f64 = 2.0;
/// Decoded chunks are handed to a blocking thread in batches of about this many raw bytes.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_CHUNKS: usize = 256;
/// Compressed bytes of chunks per window of [`Region::run_windows`].
pub(crate) const WINDOW_BYTES: u64 = 2 << 20;
/// Chunks per window at most.
const WINDOW_CHUNKS: usize = 512;
/// Windows in flight at once (while one is decoded and the next is asked for, the others
/// keep the link busy).
pub(crate) const WINDOWS_IN_FLIGHT: usize = 3;

/// Progress of the layer's current stream, shared with readers.
#[derive(Default)]
pub(crate) struct StreamGate {
    active: AtomicBool,
    /// Every chunk with a compressed offset below this has been dealt with.
    pos: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
    began: Mutex<Option<Instant>>,
    notify: Notify,
}

impl StreamGate {
    /// Claims the gate for a stream of `[from, end)`; false if a stream is running.
    fn begin(&self, from: u64, end: u64) -> bool {
        if self.active.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.pos.store(from, Ordering::SeqCst);
        self.start.store(from, Ordering::SeqCst);
        self.end.store(end, Ordering::SeqCst);
        *self.began.lock() = Some(Instant::now());
        true
    }

    fn advance(&self, pos: u64) {
        self.pos.fetch_max(pos, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn finish(&self) {
        self.active.store(false, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Wakes every waiter (they re-check and fall back to fetching).
    pub(crate) fn wake_all(&self) {
        self.notify.notify_waiters();
    }

    /// True while a stream runs.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Whether the running stream (or prefetch) will deliver the chunk at compressed
    /// `offset`, however far ahead: read-ahead leaves such chunks to it.
    pub(crate) fn will_cover(&self, offset: u64) -> bool {
        self.is_active()
            && offset >= self.pos.load(Ordering::SeqCst)
            && offset < self.end.load(Ordering::SeqCst)
    }

    /// Whether a read of the chunk at compressed `offset` should wait for the stream.
    pub(crate) fn should_wait(&self, offset: u64) -> bool {
        if !self.is_active() {
            return false;
        }
        let pos = self.pos.load(Ordering::SeqCst);
        if offset < pos || offset >= self.end.load(Ordering::SeqCst) {
            return false;
        }
        offset - pos <= self.lookahead(pos)
    }

    fn lookahead(&self, pos: u64) -> u64 {
        let elapsed = self
            .began
            .lock()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let done = pos.saturating_sub(self.start.load(Ordering::SeqCst)) as f64;
        if elapsed < 0.1 {
            return MIN_LOOKAHEAD;
        }
        ((done / elapsed * LOOKAHEAD_TIME) as u64).max(MIN_LOOKAHEAD)
    }

    /// Waits until the stream has dealt with the chunk at `offset`, has stopped, or
    /// `timeout` passed.
    pub(crate) async fn wait_past(&self, offset: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if !self.is_active() || self.pos.load(Ordering::SeqCst) > offset {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// A fetched chunk waiting to be decoded.
struct Pending {
    chunk: Chunk,
    key: ChunkKey,
    raw: Bytes,
}

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("another stream is running")]
    Busy,
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("the blob stream ended before byte {0}")]
    Truncated(u64),
    #[error("layer closed")]
    Closed,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("large chunk: {0}")]
    Large(String),
}

/// What [`Region::run_windows`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowStats {
    /// Windows sent to the fetcher.
    pub(crate) windows: u64,
    /// Chunks fetched.
    pub(crate) chunks: u64,
    /// Compressed bytes of the chunks fetched.
    pub(crate) bytes: u64,
    /// Compressed bytes of chunks passed over because they were local when their window was
    /// planned.
    pub(crate) skipped_local: u64,
    /// Compressed bytes of chunks passed over because they were in flight in another fetch.
    pub(crate) skipped_in_flight: u64,
}

/// The byte budget of the `n`-th window (from 0): the first [`WINDOWS_IN_FLIGHT`] windows
/// are sent together, so they grow in steps (1/3, 2/3, 3/3 of [`WINDOW_BYTES`]) to finish one
/// after the other; equal windows sent together finish together, and the link then idles
/// for a round trip plus a decode before the next ones arrive.
fn window_budget(n: u64) -> u64 {
    let k = WINDOWS_IN_FLIGHT as u64;
    WINDOW_BYTES * (n + 1).min(k) / k
}

/// One window: chunks to fetch in blob order (or one chunk too large for memory).
#[derive(Debug, Default)]
struct Window {
    requests: Vec<(u32, ChunkRequest)>,
    large: Option<Chunk>,
    /// Every chunk with a compressed offset below this is dealt with once the window is
    /// fetched (fetched by it, local, or in flight elsewhere).
    next: u64,
}

/// A region of the blob whose stream has claimed the layer's [`StreamGate`] (reads of its
/// chunks wait for it from now on); dropping it releases the gate.
pub(crate) struct Region {
    layer: Arc<RemoteLayer>,
    first: u32,
    last: u32,
    start: u64,
    end: u64,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.layer.stream.finish();
    }
}

impl Region {
    /// Streams the region in one sequential request; returns how many chunks it stored.
    pub(crate) async fn run(self, priority: Priority) -> Result<u64, StreamError> {
        // Prioritized traffic: background fetch of every layer waits while it runs.
        let _busy = self.layer.ctx.activity.begin();
        self.layer
            .run_stream(self.first, self.last, self.start, self.end, priority)
            .await
    }
}

impl Region {
    /// Fetches the region's chunks that are neither local nor in flight, in windows through
    /// the layer's fetcher (see the module doc), advancing the gate as windows complete.
    pub(crate) async fn run_windows(self) -> Result<WindowStats, StreamError> {
        let _busy = self.layer.ctx.activity.begin();
        self.layer.fetch_windows(self.first, self.last).await
    }
}

impl RemoteLayer {
    /// Claims the stream gate for every chunk whose compressed offset is in `[from, to)`
    /// and is not local yet: from now on reads of those chunks wait for the stream (within
    /// its look-ahead) instead of fetching them. `Ok(None)`: nothing to fetch.
    pub(crate) fn claim_region(
        self: &Arc<Self>,
        from: u64,
        to: u64,
    ) -> Result<Option<Region>, StreamError> {
        let index = &self.layer.index;
        let data_end = self.layer.footer.data_end();
        let n = index.num_chunks() as u32;
        let todo = |c: &Chunk| !c.zeros && !self.progress.is_done(c.id);
        let mut first = first_chunk_at(index, from);
        while first < n {
            let c = index.chunk(first).expect("in range");
            if c.compressed_offset >= to || todo(&c) {
                break;
            }
            first += 1;
        }
        let mut last = None;
        let mut end = 0u64;
        for id in first..n {
            let c = index.chunk(id).expect("in range");
            if c.compressed_offset >= to {
                break;
            }
            if todo(&c) {
                last = Some(id);
                end = end.max(fetch_range(&c).end.min(data_end));
            }
        }
        let Some(last) = last else { return Ok(None) };
        let start = index.chunk(first).expect("in range").compressed_offset;
        if !self.stream.begin(start, end) {
            return Err(StreamError::Busy);
        }
        Ok(Some(Region {
            layer: self.clone(),
            first,
            last,
            start,
            end,
        }))
    }

    async fn run_stream(
        self: &Arc<Self>,
        first: u32,
        last: u32,
        start: u64,
        end: u64,
        priority: Priority,
    ) -> Result<u64, StreamError> {
        let index = &self.layer.index;
        let mut closed = self.closed.subscribe();
        let mut stream = self.blob.stream_range(start..end, priority);
        let mut buf = BytesMut::new();
        let mut buf_start = start;
        let mut batch: Vec<Pending> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut stored = 0u64;
        for id in first..=last {
            if *closed.borrow_and_update() {
                return Err(StreamError::Closed);
            }
            let c = index.chunk(id).expect("in range");
            let Some(key) = key_of(&c) else { continue };
            let flush = batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_CHUNKS;
            if flush && batch.last().map(|p| p.chunk.compressed_offset) < Some(c.compressed_offset)
            {
                // Every chunk before this one is dealt with once the batch is stored.
                stored += self.store_batch(std::mem::take(&mut batch)).await;
                batch_bytes = 0;
                self.stream.advance(c.compressed_offset);
            }
            let range = fetch_range(&c);
            let want_end = range.end.min(end);
            while buf_start + (buf.len() as u64) < want_end {
                let piece = tokio::select! {
                    p = stream.next_chunk() => p,
                    _ = closed.changed() => return Err(StreamError::Closed),
                };
                match piece {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => {
                        self.store_batch(batch).await;
                        return Err(e.into());
                    }
                    None => {
                        self.store_batch(batch).await;
                        return Err(StreamError::Truncated(want_end));
                    }
                }
            }
            // Drop bytes before this chunk (gaps: tar headers of entries without data).
            if c.compressed_offset > buf_start {
                let skip = (c.compressed_offset - buf_start) as usize;
                buf.advance(skip.min(buf.len()));
                buf_start = c.compressed_offset;
            }
            if self.progress.is_done(id) || self.ctx.cache.contains(&key) {
                self.progress.mark(index, id);
                continue;
            }
            let len = (want_end - buf_start) as usize;
            let raw = Bytes::copy_from_slice(&buf[..len]);
            batch_bytes += raw.len();
            batch.push(Pending { chunk: c, key, raw });
        }
        stored += self.store_batch(batch).await;
        self.stream.advance(u64::MAX);
        Ok(stored)
    }

    async fn fetch_windows(
        self: &Arc<Self>,
        first: u32,
        last: u32,
    ) -> Result<WindowStats, StreamError> {
        let mut closed = self.closed.subscribe();
        let mut stats = WindowStats::default();
        let mut cursor = first;
        let mut inflight = FuturesOrdered::new();
        loop {
            while inflight.len() < WINDOWS_IN_FLIGHT && cursor <= last {
                if self.is_closed() {
                    return Err(StreamError::Closed);
                }
                let budget = window_budget(stats.windows);
                let w = self.plan_window(&mut cursor, last, budget, &mut stats);
                if !w.requests.is_empty() || w.large.is_some() {
                    stats.windows += 1;
                }
                inflight.push_back(self.clone().fetch_window(w));
            }
            let done = tokio::select! {
                d = inflight.next() => d,
                _ = closed.wait_for(|c| *c) => return Err(StreamError::Closed),
            };
            match done {
                Some(Ok(next)) => self.stream.advance(next),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        self.stream.advance(u64::MAX);
        Ok(stats)
    }

    /// The next window from chunk `*cursor` (at most `last`): chunks that are neither local
    /// nor in flight, up to `budget` compressed bytes; a chunk too large for memory makes a
    /// window of its own. Chunks sharing a compressed member are never split between
    /// windows.
    fn plan_window(
        &self,
        cursor: &mut u32,
        last: u32,
        budget: u64,
        stats: &mut WindowStats,
    ) -> Window {
        let index = &self.layer.index;
        let mut w = Window::default();
        let mut bytes = 0u64;
        let mut last_offset = None;
        while *cursor <= last {
            let Some(c) = index.chunk(*cursor) else { break };
            let full = bytes >= budget || w.requests.len() >= WINDOW_CHUNKS;
            if full && last_offset != Some(c.compressed_offset) {
                break;
            }
            if c.size > LARGE_CHUNK && !self.progress.is_done(c.id) {
                if !w.requests.is_empty() {
                    break;
                }
                *cursor += 1;
                if key_of(&c).is_some_and(|k| !self.ctx.cache.contains(&k)) {
                    w.large = Some(c);
                    break;
                }
                self.progress.mark(index, c.id);
                continue;
            }
            *cursor += 1;
            let Some(req) = request_of(&c) else { continue };
            let len = req.range.end - req.range.start;
            if self.progress.is_done(c.id) {
                stats.skipped_local += len;
                continue;
            }
            if self.ctx.cache.contains(&req.key) {
                self.progress.mark(index, c.id);
                stats.skipped_local += len;
                continue;
            }
            if self.fetcher.is_in_flight(&req.key) {
                stats.skipped_in_flight += len;
                continue;
            }
            stats.chunks += 1;
            stats.bytes += len;
            bytes += len;
            last_offset = Some(c.compressed_offset);
            w.requests.push((c.id, req));
        }
        w.next = match index.chunk(*cursor) {
            Some(c) if *cursor <= last => c.compressed_offset,
            _ => u64::MAX,
        };
        w
    }

    /// Fetches one window; returns its [`Window::next`].
    async fn fetch_window(self: Arc<Self>, w: Window) -> Result<u64, StreamError> {
        if let Some(c) = &w.large {
            self.fetch_large(c)
                .await
                .map_err(|e| StreamError::Large(e.to_string()))?;
        }
        if w.requests.is_empty() {
            return Ok(w.next);
        }
        let requests: Vec<ChunkRequest> = w.requests.iter().map(|(_, r)| r.clone()).collect();
        let answers = self.fetcher.get_many(&requests, Priority::OnDemand).await;
        let mut failed = None;
        for ((id, _), a) in w.requests.iter().zip(answers) {
            match a {
                Ok(_) => {
                    self.progress.mark(&self.layer.index, *id);
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(w.next),
        }
    }

    /// Decodes, verifies and stores a batch on a blocking thread; returns how many chunks
    /// were stored. Chunks failing verification are skipped (a read then fetches them and
    /// fails with EIO if they stay bad): nothing unverified is stored.
    async fn store_batch(self: &Arc<Self>, batch: Vec<Pending>) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let index = &this.layer.index;
            let mut stored = 0;
            for p in batch {
                if p.chunk.size > super::chunks::LARGE_CHUNK {
                    continue;
                }
                let mut out = vec![0u8; p.chunk.size as usize];
                let ok = estargz::chunk::decompress(
                    index.compression(),
                    &p.raw,
                    p.chunk.inner_offset,
                    &mut out,
                )
                .is_ok()
                    && p.key.matches(&out);
                if !ok {
                    crate::metrics::Metrics::inc(&this.ctx.metrics().digest_mismatches);
                    tracing::debug!(chunk = %p.key, "streamed chunk failed verification; left to on-demand fetch");
                    continue;
                }
                match this.ctx.cache.store_verified(&p.key, &out) {
                    Ok(()) => {
                        this.progress.mark(index, p.chunk.id);
                        stored += 1;
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %p.key, error = %e, "cannot cache a streamed chunk");
                    }
                }
            }
            stored
        })
        .await
        .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_windows_grow_so_they_finish_one_after_the_other() {
        let b: Vec<u64> = (0..5).map(window_budget).collect();
        assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
        assert!(b[0] < b[1] && b[1] < WINDOW_BYTES, "{b:?}");
        assert_eq!(b[WINDOWS_IN_FLIGHT - 1], WINDOW_BYTES);
        assert_eq!(b[4], WINDOW_BYTES);
    }
}
