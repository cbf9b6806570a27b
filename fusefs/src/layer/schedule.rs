//! Fetching a layer ahead of reads: first the prioritized region (every chunk before the
//! `.prefetch.landmark`, in one streamed request; skipped with `.no.prefetch.landmark`),
//! then the rest in blob order at background priority: batches of
//! `fetch.background_batch_size`, at most `fetch.background_concurrency` requests over all
//! layers, each started only once the link has been quiet for
//! `fetch.background_pause_after_read` (no read waiting on the network, no prefetch, no
//! layer being opened or mounted, on any layer; see `quiet`) and while the layer does not
//! stream.
//!
//! The prefetch claims the layer's stream gate when fetching starts, before anything is
//! spawned: a read of a prefetched chunk that comes right after the mount waits for the
//! prefetch's request instead of fetching the chunk again. Starting also starts the
//! read-ahead of the configured start files and of the image's program.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use registry::Priority;

use super::ahead::ReadAhead;
use super::chunks::{key_of, request_of};
use super::core::LayerCore;
use super::progress::FetchState;
use super::quiet::Quiet;
use super::stream::{claim_region, Region};

/// Chunks per background request.
const BATCH_CHUNKS: usize = 128;
/// Longest pause after failed background fetches.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Resolves once the layer's prefetch is over (done, failed, or there was none).
pub struct Prefetch(watch::Receiver<bool>);

impl Prefetch {
    /// Waits for the prefetch, at most `timeout`; true if it finished.
    pub async fn wait(mut self, timeout: Duration) -> bool {
        let done = self.0.wait_for(|d| *d);
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(_)))
    }
}

/// The fetch scheduling of one layer: prefetch, then background fetch.
pub(crate) struct FetchSchedule {
    core: Arc<LayerCore>,
    ahead: Arc<ReadAhead>,
}

impl FetchSchedule {
    pub(crate) fn new(core: Arc<LayerCore>, ahead: Arc<ReadAhead>) -> Arc<Self> {
        Arc::new(FetchSchedule { core, ahead })
    }

    /// Starts prefetch and background fetch as configured (`[fetch] prefetch`,
    /// `background_fetch`) on the context's runtime; returns a handle on the prefetch.
    /// When it returns, reads of the prefetched region already wait for the prefetch.
    /// Later calls start nothing.
    pub fn start_fetching(self: &Arc<Self>) -> Prefetch {
        let (tx, rx) = watch::channel(false);
        let core = &self.core;
        if core
            .fetching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tx.send_replace(true);
            return Prefetch(rx);
        }
        // A mount is activity: background fetch (of every layer) waits a silence window.
        core.ctx.activity.touch();
        self.ahead.fetch_start_files();
        let region = self.claim_prefetch();
        core.ctx.layers.start_program(self.ahead.clone());
        let this = self.clone();
        core.ctx
            .runtime
            .spawn(async move { this.fetch_task(region, tx).await });
        Prefetch(rx)
    }

    /// Claims the stream gate for the prefetch region, if the layer has one to fetch.
    fn claim_prefetch(&self) -> Option<Region> {
        let core = &self.core;
        let index = core.index();
        if !core.ctx.settings.fetch.prefetch || index.has_no_prefetch_landmark() {
            return None;
        }
        let landmark = index.prefetch_landmark()?;
        match claim_region(core, 0, landmark) {
            Ok(Some(region)) => {
                core.progress.set_state(FetchState::Prefetching);
                Some(region)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(layer = %core.source.digest, error = %e, "no prefetch");
                None
            }
        }
    }

    async fn fetch_task(self: Arc<Self>, region: Option<Region>, done: watch::Sender<bool>) {
        let core = &self.core;
        let fetch = &core.ctx.settings.fetch;
        if let Some(region) = region {
            match region.run(Priority::Prefetch).await {
                Ok(n) => {
                    tracing::debug!(layer = %core.source.digest, chunks = n, "prefetch done")
                }
                Err(e) => {
                    tracing::warn!(layer = %core.source.digest, error = %e, "prefetch stopped")
                }
            }
        }
        // The state after the prefetch is set before waiters are told it is done.
        if !fetch.background_fetch || core.is_closed() {
            core.progress.set_state(FetchState::OnDemand);
            done.send_replace(true);
            return;
        }
        core.progress.set_state(FetchState::Background);
        done.send_replace(true);
        self.background().await;
        if !core.progress.complete() {
            core.progress.set_state(FetchState::OnDemand);
        }
    }

    /// Sleeps `d` unless the layer closes first; false if it closed.
    async fn nap(&self, closed: &mut watch::Receiver<bool>, d: Duration) -> bool {
        let closing = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = closed.wait_for(|c| *c) => true,
        };
        !closing && !*closed.borrow()
    }

    async fn background(&self) {
        let core = &self.core;
        let fetch = &core.ctx.settings.fetch;
        let (window, batch_bytes) = (
            fetch.background_pause_after_read,
            fetch.background_batch_size.max(1),
        );
        let index = core.index();
        let mut closed = core.closed.subscribe();
        let n = index.num_chunks() as u32;
        let mut cursor = 0u32;
        let mut failures = 0u32;
        let mut fetched_this_pass = false;
        loop {
            if *closed.borrow() || core.progress.complete() {
                return;
            }
            if core.gate.is_active() {
                if !self.nap(&mut closed, Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
            if !core.ctx.activity.wait_quiet(window, &mut closed).await {
                return;
            }
            // The next batch of chunks that are not local, in blob order.
            let batch_start = cursor;
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            while cursor < n && batch.len() < BATCH_CHUNKS && bytes < batch_bytes {
                let c = index.chunk(cursor).expect("in range");
                cursor += 1;
                if core.progress.is_done(c.id) {
                    continue;
                }
                let Some(key) = key_of(&c) else { continue };
                if core.ctx.cache.contains(&key) {
                    core.mark(c.id);
                    continue;
                }
                if let Some(r) = request_of(&c) {
                    bytes += r.range.end - r.range.start;
                    batch.push((c.id, r));
                }
            }
            if batch.is_empty() {
                if cursor < n {
                    continue;
                }
                // End of a pass: chunks left over failed; retry them later.
                cursor = 0;
                if !fetched_this_pass {
                    failures += 1;
                }
                fetched_this_pass = false;
                let backoff = Duration::from_secs(1 << failures.min(5)).min(MAX_BACKOFF);
                if !self.nap(&mut closed, backoff).await {
                    return;
                }
                continue;
            }
            let permit = tokio::select! {
                p = core.ctx.background.clone().acquire_owned() => p,
                _ = closed.wait_for(|c| *c) => return,
            };
            let Ok(_permit) = permit else { return };
            // Waiting for the permit may have taken long: go only if the link is still quiet.
            if core.ctx.activity.check_at(Instant::now(), window) != Quiet::Yes {
                cursor = batch_start;
                continue;
            }
            let mut ok = true;
            let requests: Vec<_> = batch.iter().map(|(_, r)| r.clone()).collect();
            let answers = tokio::select! {
                a = core.fetcher.get_many(&requests, Priority::Background) => a,
                _ = closed.wait_for(|c| *c) => return,
            };
            for ((id, _), a) in batch.iter().zip(answers) {
                match a {
                    Ok(_) => {
                        core.mark(*id);
                    }
                    Err(e) => {
                        if ok {
                            tracing::debug!(layer = %core.source.digest, error = %e, "background fetch failed");
                        }
                        ok = false;
                    }
                }
            }
            if ok {
                failures = 0;
                fetched_this_pass = true;
            } else {
                failures += 1;
                if failures == 3 {
                    tracing::warn!(layer = %core.source.digest, "background fetch keeps failing; retrying with backoff");
                }
                let backoff = Duration::from_millis(250 << failures.min(7)).min(MAX_BACKOFF);
                if !self.nap(&mut closed, backoff).await {
                    return;
                }
            }
        }
    }
}
