//! The [`StreamGate`]: progress of a layer's current stream (the prefetch region, or the
//! rest of the blob when a workload reads most of it), shared with its readers. It tells
//! reads whether to wait for the stream instead of fetching a chunk themselves — only when
//! the stream will reach the chunk soon (within about two seconds at its measured rate), so
//! a read never waits behind a long transfer — and read-ahead which chunks the stream will
//! deliver anyway. A stream claims the gate before it is spawned, so a read that comes
//! right after a mount already waits for the prefetch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Smallest look-ahead of a stream (bytes) within which reads wait for it.
const MIN_LOOKAHEAD: u64 = 4 << 20;
/// How far ahead, in time at the stream's rate, reads wait for it.
const LOOKAHEAD_TIME: f64 = 2.0;

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
    pub(crate) fn begin(&self, from: u64, end: u64) -> bool {
        if self.active.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.pos.store(from, Ordering::SeqCst);
        self.start.store(from, Ordering::SeqCst);
        self.end.store(end, Ordering::SeqCst);
        *self.began.lock() = Some(Instant::now());
        true
    }

    pub(crate) fn advance(&self, pos: u64) {
        self.pos.fetch_max(pos, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn finish(&self) {
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
