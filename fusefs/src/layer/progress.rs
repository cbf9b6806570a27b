//! How much of a layer is local: a bit per chunk (set once the chunk is in the cache), the
//! compressed bytes that stands for, the layer's fetch state, and the detector that decides
//! to switch a layer to streaming (by bytes read on demand, by files read in blob order, or
//! by the share of the layer's files read in any order: a bit per file). (When background fetch may run is decided per process,
//! in `quiet`.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use estargz::{EntryKind, LayerIndex};
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
/// Share of a layer's files with contents that, once read (in any order) while reads still
/// fetch, make the layer "read broadly": the rest of it is streamed. A start-up reads a few
/// percent of a layer's files (python importing scipy: 3 %); `tar`, `cp -a`, a checksum
/// walk or an indexer read them all, in directory order, which need not be blob order.
pub(crate) const BREADTH_SHARE: f64 = 0.25;
/// Files read, at least, before breadth counts (a layer of a handful of files is not read
/// "broadly" by reading three of them).
pub(crate) const BREADTH_MIN_FILES: u64 = 256;

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
    /// A bit per entry: read at least once (regular files with contents only).
    read: Box<[AtomicU64]>,
    files_read: AtomicU64,
    /// Files read that make the layer read broadly (`u64::MAX`: never).
    breadth: u64,
}

/// Why [`Progress::record_on_demand`] asks for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamCause {
    /// On-demand fetches reached the threshold share of the layer's bytes.
    Bytes,
    /// Files were fetched one after the other in blob order.
    Scan,
    /// A large share of the layer's files was read, in any order.
    Breadth,
}

impl StreamCause {
    /// Whether the stream should also cover the blob before the read that triggered it
    /// (the workload reads all over the layer, not onwards from one place).
    pub(crate) fn whole_blob(self) -> bool {
        !matches!(self, StreamCause::Scan)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            StreamCause::Bytes => "bytes",
            StreamCause::Scan => "scan",
            StreamCause::Breadth => "breadth",
        }
    }
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
        let files = (0..index.len() as u32)
            .filter_map(|id| index.entry(id))
            .filter(|e| e.kind() == EntryKind::Reg && e.size() > 0)
            .count() as u64;
        let breadth = if files < BREADTH_MIN_FILES {
            u64::MAX
        } else {
            ((files as f64 * BREADTH_SHARE) as u64).max(BREADTH_MIN_FILES)
        };
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
            read: (0..index.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            files_read: AtomicU64::new(0),
            breadth,
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

    /// Records a read of file `id` (any read, served locally or fetched): counts the
    /// files of the layer read so far. True exactly once: when the count reaches the
    /// breadth that makes the layer "read broadly" (see [`Self::read_broadly`]) and no
    /// stream was asked for meanwhile (the caller then starts one, cause
    /// [`StreamCause::Breadth`]); a stream running at that moment takes the whole blob on
    /// when it ends.
    pub(crate) fn note_file_read(&self, id: u32) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        let Some(word) = self.read.get(w) else {
            return false;
        };
        if word.load(Ordering::Relaxed) & (1 << b) != 0 {
            return false;
        }
        if word.fetch_or(1 << b, Ordering::Relaxed) & (1 << b) != 0 {
            return false;
        }
        let n = self.files_read.fetch_add(1, Ordering::Relaxed) + 1;
        n == self.breadth
            && !self.complete()
            && !self.stream_requested.swap(true, Ordering::Relaxed)
    }

    /// True once [`BREADTH_SHARE`] of the layer's files (with contents) have been read, in
    /// any order: a workload reading the whole tree (`tar`, `cp -a`, a checksum walk, an
    /// indexer) in directory order, which need not be the blob's. A start-up reads a few
    /// percent of a layer's files.
    pub(crate) fn read_broadly(&self) -> bool {
        self.files_read() >= self.breadth
    }

    /// Files read at least once.
    pub(crate) fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Records an on-demand fetch of the compressed range `range` (of file `entry`) and says
    /// whether (and why) the layer should now switch to streaming: when on-demand fetches
    /// reached `threshold` of the layer's bytes; when the fetches of [`SCAN_RUN`] different
    /// files in a row came in blob order, each after a small gap or one whose chunks are
    /// all local or in flight already (`settled`: read ahead; a workload reading files in
    /// layer order; one big file read in order does not count); or when [`BREADTH_SHARE`] of the
    /// layer's files have been read, in any order, and reads still fetch (a workload
    /// reading the whole tree in directory order, which need not be the blob's). Says so
    /// once (until [`Self::rearm_stream`]). `threshold` 1.0 turns streaming off.
    pub(crate) fn record_on_demand(
        &self,
        range: std::ops::Range<u64>,
        entry: u32,
        threshold: f64,
        settled: impl FnOnce(std::ops::Range<u64>) -> bool,
    ) -> Option<StreamCause> {
        if threshold >= 1.0 || self.stream_requested.load(Ordering::Relaxed) {
            return None;
        }
        let bytes = self
            .on_demand_bytes
            .fetch_add(range.end - range.start, Ordering::Relaxed)
            + (range.end - range.start);
        let by_scan = {
            let mut s = self.scan.lock();
            let onwards = range.start >= s.last_end
                && (range.start - s.last_end <= SCAN_GAP || settled(s.last_end..range.start));
            if onwards {
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
        let cause = if (bytes as f64) >= threshold * self.total_bytes as f64 {
            StreamCause::Bytes
        } else if self.read_broadly() {
            StreamCause::Breadth
        } else if by_scan {
            StreamCause::Scan
        } else {
            return None;
        };
        (!self.stream_requested.swap(true, Ordering::Relaxed)).then_some(cause)
    }

    /// Allows a new switch to streaming (after a stream ended).
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
            if let Some(cause) = p.record_on_demand(r.clone(), i as u32, 0.99, |_| false) {
                fired.push((i, cause));
            }
        }
        assert_eq!(
            fired,
            vec![(SCAN_RUN as usize - 1, StreamCause::Scan)],
            "fires once, after the run"
        );
        // The same chunk ranges all attributed to one file do not fire (until the bytes
        // threshold).
        let p = Progress::new(idx);
        assert!(!ranges[..30]
            .iter()
            .any(|r| p.record_on_demand(r.clone(), 7, 0.99, |_| false).is_some()));
        // Streaming off.
        let p = Progress::new(idx);
        assert!(!ranges.iter().enumerate().any(|(i, r)| p
            .record_on_demand(r.clone(), i as u32, 1.0, |_| false)
            .is_some()));
        // By bytes: a threshold of 0 fires on the first fetch; once rearmed, again.
        let p = Progress::new(idx);
        assert_eq!(
            p.record_on_demand(ranges[5].clone(), 5, 0.0, |_| false),
            Some(StreamCause::Bytes)
        );
        assert_eq!(
            p.record_on_demand(ranges[6].clone(), 6, 0.0, |_| false),
            None
        );
        p.rearm_stream();
        assert_eq!(
            p.record_on_demand(ranges[7].clone(), 7, 0.0, |_| false),
            Some(StreamCause::Bytes)
        );
    }

    #[test]
    fn files_in_blob_order_past_stretches_already_read_ahead_still_make_a_scan() {
        let layer = index(40, 5_000);
        let p = Progress::new(&layer.index);
        // One file every 2 MiB of blob (the files between were read ahead): the gaps are too
        // large for a scan unless they are settled (local or in flight).
        let range = |k: u64| (k * (2 << 20))..(k * (2 << 20) + 1000);
        let fired = (0..40u64).find(|&k| {
            p.record_on_demand(range(k), k as u32, 0.99, |_| false)
                .is_some()
        });
        assert_eq!(fired, None, "unsettled gaps broke every run");
        let p = Progress::new(&layer.index);
        let mut gaps = Vec::new();
        let fired = (0..40u64).find(|&k| {
            let settled = |gap: std::ops::Range<u64>| {
                gaps.push(gap);
                true
            };
            p.record_on_demand(range(k), k as u32, 0.99, settled) == Some(StreamCause::Scan)
        });
        assert_eq!(fired, Some(SCAN_RUN as u64 - 1));
        assert_eq!(
            gaps[0],
            range(0).end..range(1).start,
            "asked about the gap only"
        );
    }

    /// Files of the layer, in an order far from the blob's (every 389th, wrapping).
    fn scattered(n: usize) -> Vec<usize> {
        (0..n).map(|i| (i * 389) % n).collect()
    }

    #[test]
    fn a_quarter_of_the_files_read_in_any_order_makes_the_layer_read_broadly() {
        let n = 2000;
        let layer = index(n as u64, 100);
        let idx = &layer.index;
        let p = Progress::new(idx);
        let chunk_of_file = |f: usize| {
            let id = idx.resolve(format!("f{f:03}").as_bytes()).unwrap();
            let c = idx.chunks_of(id).next().unwrap();
            (id, crate::layer::chunks::fetch_range(&c))
        };
        let order = scattered(n);
        let want = (n as f64 * BREADTH_SHARE) as usize;
        assert!(want as u64 > BREADTH_MIN_FILES);
        let mut fired = Vec::new();
        for (k, &f) in order.iter().enumerate() {
            let (id, range) = chunk_of_file(f);
            if p.note_file_read(id) {
                fired.push(k);
            }
            assert_eq!(p.read_broadly(), k + 1 >= want, "after {} files", k + 1);
            // Every other file fetched on demand (the others were read ahead): never a
            // scan, never the bytes threshold; the breadth was signalled by the read.
            if k % 2 == 0 && k < n / 2 {
                assert_eq!(
                    p.record_on_demand(range, id, 0.99, |_| false),
                    None,
                    "file {k}"
                );
            }
        }
        assert_eq!(fired, vec![want - 1], "signalled once, at the quarter");
        assert!(StreamCause::Breadth.whole_blob() && !StreamCause::Scan.whole_blob());
        // Reading a file again does not count twice.
        assert_eq!(p.files_read(), n as u64);
        p.note_file_read(chunk_of_file(order[0]).0);
        assert_eq!(p.files_read(), n as u64);
        // Once the stream ended (rearmed), an on-demand fetch of a layer read broadly asks
        // for the whole blob again.
        p.rearm_stream();
        let (id, range) = chunk_of_file(order[1]);
        assert_eq!(
            p.record_on_demand(range, id, 0.99, |_| false),
            Some(StreamCause::Breadth)
        );
    }

    #[test]
    fn a_local_layer_is_not_streamed_for_its_breadth() {
        let layer = index(1000, 100);
        let idx = &layer.index;
        let p = Progress::new(idx);
        for id in 0..idx.num_chunks() as u32 {
            p.mark(idx, id);
        }
        assert!(p.complete());
        let fired = (0..idx.len() as u32).any(|id| p.note_file_read(id));
        assert!(!fired && p.read_broadly());
    }

    #[test]
    fn a_small_layer_is_never_read_broadly_by_its_file_count() {
        let layer = index(BREADTH_MIN_FILES - 1, 100);
        let idx = &layer.index;
        let p = Progress::new(idx);
        let mut any = None;
        // Four fifths of the files (all of them would reach the bytes threshold).
        let files = BREADTH_MIN_FILES as usize - 1;
        for f in scattered(files).into_iter().take(files * 4 / 5) {
            let id = idx.resolve(format!("f{f:03}").as_bytes()).unwrap();
            p.note_file_read(id);
            let c = idx.chunks_of(id).next().unwrap();
            any =
                any.or(
                    p.record_on_demand(crate::layer::chunks::fetch_range(&c), id, 0.99, |_| false)
                );
        }
        assert_eq!(any, None);
        assert_eq!(p.files_read(), (files * 4 / 5) as u64);
    }
}
