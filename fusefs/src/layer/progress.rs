//! How much of a layer is local: a bit per chunk (set once the chunk is in the cache), the
//! compressed bytes that stands for, the layer's fetch state, and the detector that decides
//! to switch a layer to streaming. (When background fetch may run is decided per process,
//! in `quiet`.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use estargz::LayerIndex;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What a layer's fetching is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchState {
    /// Fetching the prioritized files (up to the prefetch landmark).
    Prefetching,
    /// Fetching the rest of the layer at low priority.
    Background,
    /// Streaming the rest of the blob because a workload reads most of it.
    Streaming,
    /// Fetching only what is read (background fetch off, or waiting to retry).
    OnDemand,
    /// Every chunk is local.
    Complete,
}

impl FetchState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => FetchState::Prefetching,
            1 => FetchState::Background,
            2 => FetchState::Streaming,
            3 => FetchState::OnDemand,
            _ => FetchState::Complete,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            FetchState::Prefetching => "prefetching",
            FetchState::Background => "background",
            FetchState::Streaming => "streaming",
            FetchState::OnDemand => "on-demand",
            FetchState::Complete => "complete",
        }
    }
}

/// Consecutive on-demand fetches in blob order that make a scan (see [`Progress`]).
pub(crate) const SCAN_RUN: u32 = 24;
/// Largest compressed gap between two fetches still counted as one scan.
const SCAN_GAP: u64 = 1 << 20;

struct ScanDetector {
    last_end: u64,
    last_entry: u32,
    run: u32,
}

/// Per-chunk fetch progress of one layer.
pub(crate) struct Progress {
    done: Box<[AtomicU64]>,
    chunks: usize,
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
    total_bytes: u64,
    state: AtomicU8,
    on_demand_bytes: AtomicU64,
    scan: Mutex<ScanDetector>,
    stream_requested: AtomicBool,
}

/// Compressed bytes a chunk stands for: its range, once per compressed member (chunks
/// sharing a member count once); 0 for holes.
fn weight(index: &LayerIndex, id: u32) -> u64 {
    let Some(c) = index.chunk(id) else { return 0 };
    if c.zeros {
        return 0;
    }
    if id > 0 {
        if let Some(prev) = index.chunk(id - 1) {
            if !prev.zeros && prev.compressed_offset == c.compressed_offset {
                return 0;
            }
        }
    }
    super::chunks::fetch_range(&c).end - c.compressed_offset
}

impl Progress {
    pub(crate) fn new(index: &LayerIndex) -> Self {
        let n = index.num_chunks();
        let total_bytes = (0..n as u32).map(|id| weight(index, id)).sum();
        let p = Progress {
            done: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            chunks: n,
            fetched_chunks: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            total_bytes,
            state: AtomicU8::new(FetchState::OnDemand as u8),
            on_demand_bytes: AtomicU64::new(0),
            scan: Mutex::new(ScanDetector {
                last_end: 0,
                last_entry: u32::MAX,
                run: 0,
            }),
            stream_requested: AtomicBool::new(false),
        };
        for id in 0..n as u32 {
            if index.chunk(id).is_some_and(|c| c.zeros) {
                p.mark(index, id);
            }
        }
        p
    }

    /// True if chunk `id` is known to be local.
    pub(crate) fn is_done(&self, id: u32) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        self.done
            .get(w)
            .is_some_and(|a| a.load(Ordering::Relaxed) & (1 << b) != 0)
    }

    /// Records chunk `id` as local; true if it was not yet.
    pub(crate) fn mark(&self, index: &LayerIndex, id: u32) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        let Some(word) = self.done.get(w) else {
            return false;
        };
        let old = word.fetch_or(1 << b, Ordering::Relaxed);
        if old & (1 << b) != 0 {
            return false;
        }
        self.fetched_chunks.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes
            .fetch_add(weight(index, id), Ordering::Relaxed);
        true
    }

    /// True once every chunk is local.
    pub(crate) fn complete(&self) -> bool {
        self.fetched_chunks.load(Ordering::Relaxed) as usize >= self.chunks
    }

    pub(crate) fn state(&self) -> FetchState {
        if self.complete() {
            return FetchState::Complete;
        }
        FetchState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, s: FetchState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub(crate) fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn fetched_chunks(&self) -> u64 {
        self.fetched_chunks.load(Ordering::Relaxed)
    }

    pub(crate) fn chunks(&self) -> usize {
        self.chunks
    }

    /// Records an on-demand fetch of the compressed range `range` (of file `entry`) and says
    /// whether the layer should now switch to streaming: when on-demand fetches reached
    /// `threshold` of the layer's bytes, or the fetches of [`SCAN_RUN`] different files in a
    /// row came in blob order with small gaps (a workload reading files in layer order, e.g.
    /// `tar` or `cp -a`; one big file read in order does not count). Says so once.
    pub(crate) fn record_on_demand(
        &self,
        range: std::ops::Range<u64>,
        entry: u32,
        threshold: f64,
    ) -> bool {
        if threshold >= 1.0 || self.stream_requested.load(Ordering::Relaxed) {
            return false;
        }
        let bytes = self
            .on_demand_bytes
            .fetch_add(range.end - range.start, Ordering::Relaxed)
            + (range.end - range.start);
        let by_bytes = (bytes as f64) >= threshold * self.total_bytes as f64;
        let by_scan = {
            let mut s = self.scan.lock();
            if range.start >= s.last_end && range.start - s.last_end <= SCAN_GAP {
                if entry != s.last_entry {
                    s.run += 1;
                }
            } else {
                s.run = 1;
            }
            s.last_end = range.end;
            s.last_entry = entry;
            s.run >= SCAN_RUN
        };
        (by_bytes || by_scan) && !self.stream_requested.swap(true, Ordering::Relaxed)
    }

    /// Allows a new switch to streaming (after a stream ended early).
    pub(crate) fn rearm_stream(&self) {
        self.scan.lock().run = 0;
        self.stream_requested.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estargz::testutil::{pattern, Meta, TarBuilder};

    fn index(files: u64, size: usize) -> estargz::Layer {
        let mut t = TarBuilder::new();
        for i in 0..files {
            t.file(
                format!("f{i:03}").as_bytes(),
                &Meta::default(),
                &pattern(size, i),
            );
        }
        let mut blob = Vec::new();
        estargz::build(&t.finish()[..], &mut blob, &Default::default()).unwrap();
        estargz::open(&blob, &Default::default()).unwrap()
    }

    #[test]
    fn marks_count_once_and_complete_the_layer() {
        let layer = index(3, 10_000);
        let idx = &layer.index;
        let p = Progress::new(idx);
        assert_eq!((p.fetched_bytes(), p.chunks()), (0, 3));
        assert!(p.total_bytes() > 0);
        assert!(p.mark(idx, 0));
        assert!(!p.mark(idx, 0));
        assert!(p.is_done(0) && !p.is_done(1));
        assert_eq!(p.state(), FetchState::OnDemand);
        p.mark(idx, 1);
        p.mark(idx, 2);
        assert!(p.complete());
        assert_eq!(p.fetched_bytes(), p.total_bytes());
        assert_eq!(p.state(), FetchState::Complete);
    }

    #[test]
    fn files_fetched_in_blob_order_make_a_scan_but_one_big_file_does_not() {
        let layer = index(40, 5_000);
        let idx = &layer.index;
        let p = Progress::new(idx);
        let ranges: Vec<_> = idx
            .chunks_in_blob_order()
            .map(|c| crate::layer::chunks::fetch_range(&c))
            .collect();
        let mut fired = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            if p.record_on_demand(r.clone(), i as u32, 0.99) {
                fired.push(i);
            }
        }
        assert_eq!(
            fired,
            vec![SCAN_RUN as usize - 1],
            "fires once, after the run"
        );
        // The same chunk ranges all attributed to one file do not fire (until the bytes
        // threshold).
        let p = Progress::new(idx);
        assert!(!ranges[..30]
            .iter()
            .any(|r| p.record_on_demand(r.clone(), 7, 0.99)));
        // Streaming off.
        let p = Progress::new(idx);
        assert!(!ranges.iter().enumerate().any(|(i, r)| p.record_on_demand(
            r.clone(),
            i as u32,
            1.0
        )));
        // By bytes: a threshold of 0 fires on the first fetch.
        let p = Progress::new(idx);
        assert!(p.record_on_demand(ranges[5].clone(), 5, 0.0));
    }
}
