//! Fetching a region of the blob ahead of reads, in blob order, under the layer's
//! [`StreamGate`] (claimed before the stream is spawned; see `gate`). Two ways:
//!
//! - [`Region::run`]: one sequential request through the fetch layer
//!   ([`crate::fetch::ChunkFetcher::stream_chunks`]): chunks decoded and verified as they
//!   pass and stored in the cache, chunks just ahead of the stream claimed so reads join it.
//!   Used for the prefetch region (up to the landmark), which is fetched when the layer is
//!   mounted, before anything else of it is local.
//! - [`Region::run_windows`]: the rest of the blob when a workload reads most of a layer, in
//!   windows of [`WINDOW_BYTES`] of chunks that are neither local nor in flight, each one
//!   call to the layer's fetcher (merged into few requests, verified, cached), with
//!   [`WINDOWS_IN_FLIGHT`] windows in flight, staggered, so the link stays busy. Each window
//!   is planned right before it is sent, so chunks that reads fetched on their own meanwhile
//!   (and chunks still in flight in their requests) are not fetched again, and a read of a
//!   chunk of a window in flight joins that window's fetch. (A single request to the end of
//!   the blob, as before, moved every byte after its start, including chunks reads had
//!   already fetched: 6 MB of 69 MB twice when `tar` read a whole image.)
//!
//! [`start_stream`] switches a layer to the windows when its reads look like a scan (onwards
//! from where it reads) or reach all over the layer (the whole blob, from where it reads,
//! wrapping round to the start).

use std::sync::Arc;

use estargz::Chunk;
use futures::stream::{FuturesOrdered, StreamExt};
use registry::Priority;

use super::chunks::{fetch_range, first_chunk_at, request_of};
use super::core::LayerCore;
use super::gate::StreamGate;
use super::progress::{FetchState, StreamCause};
use crate::fetch::{ChunkRequest, FetchError, StreamProgress, LARGE_CHUNK};

/// Compressed bytes of chunks per window of [`Region::run_windows`].
pub(crate) const WINDOW_BYTES: u64 = 2 << 20;
/// Chunks per window at most.
const WINDOW_CHUNKS: usize = 512;
/// Windows in flight at once (while one is decoded and the next is asked for, the others
/// keep the link busy).
pub(crate) const WINDOWS_IN_FLIGHT: usize = 3;

/// Why a stream stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("another stream is running")]
    Busy,
    #[error("layer closed")]
    Closed,
    #[error(transparent)]
    Fetch(#[from] FetchError),
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

impl WindowStats {
    fn add(self, o: WindowStats) -> WindowStats {
        WindowStats {
            windows: self.windows + o.windows,
            chunks: self.chunks + o.chunks,
            bytes: self.bytes + o.bytes,
            skipped_local: self.skipped_local + o.skipped_local,
            skipped_in_flight: self.skipped_in_flight + o.skipped_in_flight,
        }
    }
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
    /// Every chunk with a compressed offset below this is dealt with once the window is
    /// fetched (fetched by it, local, or in flight elsewhere).
    next: u64,
}

/// A region of the blob whose stream has claimed the layer's [`StreamGate`] (reads of its
/// chunks wait for it from now on); dropping it releases the gate.
pub(crate) struct Region {
    core: Arc<LayerCore>,
    first: u32,
    last: u32,
    start: u64,
    end: u64,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.core.gate.finish();
    }
}

impl Region {
    /// Streams the region in one sequential request; returns how many chunks it stored.
    pub(crate) async fn run(self, priority: Priority) -> Result<u64, StreamError> {
        let core = &self.core;
        // Prioritized traffic: background fetch of every layer waits while it runs.
        let _busy = core.ctx.activity.begin();
        let index = core.index();
        let mut ids = Vec::new();
        let mut requests = Vec::new();
        for id in self.first..=self.last {
            let c = index.chunk(id).expect("in range");
            if core.progress.is_done(id) {
                continue;
            }
            if let Some(r) = request_of(&c) {
                ids.push(id);
                requests.push(r);
            }
        }
        let gate: &StreamGate = &core.gate;
        let mut report = |p: StreamProgress| {
            for i in p.local {
                core.mark(ids[i]);
            }
            gate.advance(p.next);
        };
        let mut closed = core.closed.subscribe();
        let stream =
            core.fetcher
                .stream_chunks(self.start..self.end, &requests, priority, &mut report);
        let stats = tokio::select! {
            s = stream => s?,
            _ = closed.wait_for(|c| *c) => return Err(StreamError::Closed),
        };
        Ok(stats.stored)
    }

    /// Fetches the region's chunks that are neither local nor in flight, in windows through
    /// the layer's fetcher (see the module doc), advancing the gate as windows complete.
    pub(crate) async fn run_windows(self) -> Result<WindowStats, StreamError> {
        let _busy = self.core.ctx.activity.begin();
        fetch_windows(&self.core, self.first, self.last).await
    }
}

/// Claims the stream gate for every chunk whose compressed offset is in `[from, to)` and
/// is not local yet: from now on reads of those chunks wait for the stream (within its
/// look-ahead) instead of fetching them. `Ok(None)`: nothing to fetch.
pub(crate) fn claim_region(
    core: &Arc<LayerCore>,
    from: u64,
    to: u64,
) -> Result<Option<Region>, StreamError> {
    let this = core;
    let index = core.index();
    let data_end = core.layer.footer.data_end();
    let n = index.num_chunks() as u32;
    let todo = |c: &Chunk| !c.zeros && !this.progress.is_done(c.id);
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
    if !this.gate.begin(start, end) {
        return Err(StreamError::Busy);
    }
    Ok(Some(Region {
        core: this.clone(),
        first,
        last,
        start,
        end,
    }))
}

async fn fetch_windows(
    core: &Arc<LayerCore>,
    first: u32,
    last: u32,
) -> Result<WindowStats, StreamError> {
    let mut closed = core.closed.subscribe();
    let mut stats = WindowStats::default();
    let mut cursor = first;
    let mut inflight = FuturesOrdered::new();
    loop {
        while inflight.len() < WINDOWS_IN_FLIGHT && cursor <= last {
            if core.is_closed() {
                return Err(StreamError::Closed);
            }
            let budget = window_budget(stats.windows);
            let w = plan_window(core, &mut cursor, last, budget, &mut stats);
            if !w.requests.is_empty() {
                stats.windows += 1;
            }
            inflight.push_back(fetch_window(core.clone(), w));
        }
        let done = tokio::select! {
            d = inflight.next() => d,
            _ = closed.wait_for(|c| *c) => return Err(StreamError::Closed),
        };
        match done {
            Some(Ok(next)) => core.gate.advance(next),
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    core.gate.advance(u64::MAX);
    Ok(stats)
}

/// The next window from chunk `*cursor` (at most `last`): chunks that are neither local
/// nor in flight, up to `budget` compressed bytes; a chunk too large for memory makes a
/// window of its own. Chunks sharing a compressed member are never split between
/// windows.
fn plan_window(
    core: &LayerCore,
    cursor: &mut u32,
    last: u32,
    budget: u64,
    stats: &mut WindowStats,
) -> Window {
    let index = core.index();
    let mut w = Window::default();
    let mut bytes = 0u64;
    let mut last_offset = None;
    while *cursor <= last {
        let Some(c) = index.chunk(*cursor) else { break };
        let full = bytes >= budget || w.requests.len() >= WINDOW_CHUNKS;
        if full && last_offset != Some(c.compressed_offset) {
            break;
        }
        let large = c.size > LARGE_CHUNK;
        if large && !core.progress.is_done(c.id) && !w.requests.is_empty() {
            break;
        }
        *cursor += 1;
        let Some(req) = request_of(&c) else { continue };
        let len = req.range.end - req.range.start;
        if core.progress.is_done(c.id) {
            stats.skipped_local += len;
            continue;
        }
        if core.ctx.cache.contains(&req.key) {
            core.mark(c.id);
            stats.skipped_local += len;
            continue;
        }
        if core.fetcher.is_in_flight(&req.key) {
            stats.skipped_in_flight += len;
            continue;
        }
        stats.chunks += 1;
        stats.bytes += len;
        bytes += len;
        last_offset = Some(c.compressed_offset);
        w.requests.push((c.id, req));
        if large {
            break;
        }
    }
    w.next = match index.chunk(*cursor) {
        Some(c) if *cursor <= last => c.compressed_offset,
        _ => u64::MAX,
    };
    w
}

/// Fetches one window; returns its [`Window::next`].
async fn fetch_window(core: Arc<LayerCore>, w: Window) -> Result<u64, StreamError> {
    if w.requests.is_empty() {
        return Ok(w.next);
    }
    let requests: Vec<ChunkRequest> = w.requests.iter().map(|(_, r)| r.clone()).collect();
    let answers = core.fetcher.get_many(&requests, Priority::OnDemand).await;
    let mut failed = None;
    for ((id, _), a) in w.requests.iter().zip(answers) {
        match a {
            Ok(_) => {
                core.mark(*id);
            }
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(w.next),
    }
}

/// Switches the layer to streaming the rest of the blob from `from` (in windows), and for a
/// `cause` that reads all over the layer ([`StreamCause::whole_blob`]) then the part before
/// `from` too; a scan's stream that ends with the layer read broadly meanwhile goes on with
/// the whole blob. Once the stream ends the detector is armed again, so reads that still
/// fetch afterwards (behind a scan's start, say) can start another one. Callable from any
/// thread (FUSE workers included): the stream runs on the layer's runtime.
pub(crate) fn start_stream(core: &Arc<LayerCore>, from: u64, cause: StreamCause) {
    if core.is_closed() {
        return;
    }
    let core = core.clone();
    let end = core.layer.footer.data_end();
    core.ctx.runtime().clone().spawn(async move {
        let before = core.progress.state();
        core.progress.set_state(FetchState::Streaming);
        let (mut from, mut cause) = (from, cause);
        let r = loop {
            tracing::info!(layer = %core.source.digest, from, cause = cause.name(), "workload reads most of the layer: streaming the rest of the blob");
            let r = stream_parts(&core, from, end, cause).await;
            let broad = cause == StreamCause::Scan && core.progress.read_broadly();
            if r.is_ok() && broad && !core.progress.complete() {
                (from, cause) = (0, StreamCause::Breadth);
                continue;
            }
            break r;
        };
        core.progress.set_state(before);
        match r {
            Ok(s) => tracing::info!(
                layer = %core.source.digest,
                windows = s.windows,
                chunks = s.chunks,
                bytes = s.bytes,
                skipped_local = s.skipped_local,
                skipped_in_flight = s.skipped_in_flight,
                "stream finished"
            ),
            Err(StreamError::Busy) => {}
            Err(e) => {
                tracing::warn!(layer = %core.source.digest, error = %e, "stream stopped; reads fetch chunk by chunk");
            }
        }
        core.progress.rearm_stream();
    });
}

/// Streams `[from, end)`, then for a whole-blob `cause` `[0, from)`.
async fn stream_parts(
    core: &Arc<LayerCore>,
    from: u64,
    end: u64,
    cause: StreamCause,
) -> Result<WindowStats, StreamError> {
    let mut parts = vec![(from, end)];
    if cause.whole_blob() && from > 0 {
        parts.push((0, from));
    }
    let mut total = WindowStats::default();
    for (a, b) in parts {
        total = total.add(match claim_region(core, a, b)? {
            Some(region) => region.run_windows().await?,
            None => WindowStats::default(),
        });
    }
    Ok(total)
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
