//! A [`BlobSource`] in memory for tests (feature `testutil`, and this crate's unit tests):
//! serves its bytes, counts what it is asked for, and on demand answers slowly, holds every
//! request until released, fails requests, or flips bytes of some ranges.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use registry::{Priority, RegistryError, Target};
use tokio::sync::watch;

use super::source::{BlobSource, SourceStream};

/// Size of the pieces a [`MemoryBlob`] stream yields.
const STREAM_PIECE: usize = 64 << 10;

/// What a [`MemoryBlob`] was asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// Calls of [`BlobSource::read_ranges`] (one "range request", however many ranges).
    pub range_requests: u64,
    /// Ranges asked for in those calls.
    pub ranges: u64,
    /// Streams opened ([`BlobSource::stream_range`]).
    pub streams: u64,
    /// Bytes handed out (ranges and streams).
    pub bytes: u64,
}

#[derive(Default)]
struct Faults {
    delay: Duration,
    fail_next: u32,
    corrupt: Vec<Range<u64>>,
}

/// A blob held in memory; see the module doc.
pub struct MemoryBlob {
    state: Arc<State>,
}

struct State {
    data: Bytes,
    target: Target,
    faults: Mutex<Faults>,
    counts: Mutex<RequestCounts>,
    held: watch::Sender<bool>,
}

impl MemoryBlob {
    /// A blob with these bytes (errors name it `memory/blob@sha256:test`).
    pub fn new(data: impl Into<Bytes>) -> Arc<Self> {
        Arc::new(MemoryBlob {
            state: Arc::new(State {
                data: data.into(),
                target: Target::digest("memory", "blob", "sha256:test"),
                faults: Mutex::default(),
                counts: Mutex::default(),
                held: watch::channel(false).0,
            }),
        })
    }

    /// The blob's bytes.
    pub fn data(&self) -> &Bytes {
        &self.state.data
    }

    /// What it was asked for so far.
    pub fn counts(&self) -> RequestCounts {
        *self.state.counts.lock()
    }

    /// Every request waits `delay` before it is answered (a stream: before each piece).
    pub fn set_delay(&self, delay: Duration) {
        self.state.faults.lock().delay = delay;
    }

    /// The next `n` requests (range calls or streams) fail with a network error.
    pub fn fail_next(&self, n: u32) {
        self.state.faults.lock().fail_next = n;
    }

    /// Bytes of `range` are served flipped (wrong), until [`MemoryBlob::heal`].
    pub fn corrupt(&self, range: Range<u64>) {
        self.state.faults.lock().corrupt.push(range);
    }

    /// Serves every byte right again.
    pub fn heal(&self) {
        self.state.faults.lock().corrupt.clear();
    }

    /// Requests (and stream pieces) from now on wait, counted but unanswered, until
    /// [`MemoryBlob::release`].
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Lets held requests go on.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }
}

impl State {
    /// Waits while held, then the delay; fails if a failure is due (`consume`: this answer
    /// uses up one due failure).
    async fn gate(&self, consume: bool) -> Result<(), RegistryError> {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|h| !*h).await;
        let delay = self.faults.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut f = self.faults.lock();
        if consume && f.fail_next > 0 {
            f.fail_next -= 1;
            return Err(RegistryError::Network {
                target: self.target.clone(),
                endpoint: "memory".into(),
                cause: "injected failure".into(),
            });
        }
        Ok(())
    }

    /// `range` of the blob as currently served (flipped where corrupted), counted.
    fn bytes_of(&self, range: Range<u64>) -> Result<Bytes, RegistryError> {
        if range.start > range.end || range.end > self.data.len() as u64 {
            return Err(RegistryError::Range {
                target: self.target.clone(),
                reason: format!(
                    "range {}..{} is outside the blob (size {})",
                    range.start,
                    range.end,
                    self.data.len()
                ),
            });
        }
        let data = self.data.slice(range.start as usize..range.end as usize);
        self.counts.lock().bytes += data.len() as u64;
        let hits: Vec<Range<usize>> = self
            .faults
            .lock()
            .corrupt
            .iter()
            .filter(|c| c.start < range.end && range.start < c.end)
            .map(|c| {
                (c.start.max(range.start) - range.start) as usize
                    ..(c.end.min(range.end) - range.start) as usize
            })
            .collect();
        if hits.is_empty() {
            return Ok(data);
        }
        let mut v = data.to_vec();
        for h in hits {
            v[h].iter_mut().for_each(|b| *b ^= 0xff);
        }
        Ok(Bytes::from(v))
    }
}

impl BlobSource for MemoryBlob {
    fn size(&self) -> u64 {
        self.state.data.len() as u64
    }

    fn target(&self) -> Target {
        self.state.target.clone()
    }

    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [Range<u64>],
        _priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, RegistryError>> {
        {
            let mut c = self.state.counts.lock();
            c.range_requests += 1;
            c.ranges += ranges.len() as u64;
        }
        async move {
            self.state.gate(true).await?;
            ranges
                .iter()
                .map(|r| self.state.bytes_of(r.clone()))
                .collect()
        }
        .boxed()
    }

    fn stream_range(&self, range: Range<u64>, _priority: Priority) -> SourceStream {
        self.state.counts.lock().streams += 1;
        let state = self.state.clone();
        // (state, next offset, first piece)
        futures::stream::unfold((state, range.start, true), move |(state, at, first)| {
            let end = range.end;
            async move {
                if at >= end && !first {
                    return None;
                }
                if let Err(e) = state.gate(first).await {
                    return Some((Err(e), (state, end, false)));
                }
                let to = (at + STREAM_PIECE as u64).min(end);
                let piece = state.bytes_of(at..to);
                let next = if piece.is_ok() { to } else { end };
                Some((piece, (state, next, false)))
            }
        })
        .filter(|piece| futures::future::ready(!matches!(piece, Ok(b) if b.is_empty())))
        .boxed()
    }
}
