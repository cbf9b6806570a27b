//! Counters of the fetch layer and chunk cache, next to the registry client's
//! ([`registry::Metrics`], held in [`Metrics::registry`]): plain atomics, shared through an
//! `Arc<Metrics>` by every component of one daemon (or one test). A Prometheus exporter
//! reads [`Metrics::snapshot`] later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Live counters (monotonic unless noted).
        #[derive(Debug, Default)]
        pub struct Metrics {
            /// The registry client's counters (requests, bytes, retries, tokens).
            pub registry: Arc<registry::Metrics>,
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            /// The registry client's counters.
            pub registry: registry::MetricsSnapshot,
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Metrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    registry: self.registry.snapshot(),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Fetched chunks whose content did not match their digest (never served or cached).
    digest_mismatches,
    /// Chunk reads that joined a fetch already in flight for the same chunk.
    fetch_joins,
    /// Chunk reads answered at once with the error of the chunk's fetch that failed less
    /// than `fetch.failure_hold` ago (the registry has not answered since).
    fetch_fail_fast,
    /// Chunk lookups answered from the in-memory LRU.
    memory_hits,
    /// Chunk lookups answered from the disk cache.
    disk_hits,
    /// Chunk lookups found in neither.
    misses,
    /// Disk cache files found torn or corrupted (removed, then refetched).
    corrupt_entries,
    /// Entries evicted from the disk cache to stay under its cap.
    evictions,
    /// Bytes evicted from the disk cache.
    bytes_evicted,
    /// Bytes currently in the disk cache (a gauge).
    disk_bytes,
    /// Bytes currently in the in-memory LRU (a gauge).
    memory_bytes,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_counters() {
        let m = Metrics::default();
        registry::Metrics::inc(&m.registry.requests);
        registry::Metrics::add(&m.registry.bytes_fetched, 10);
        Metrics::set(&m.disk_bytes, 7);
        let s = m.snapshot();
        assert_eq!(
            (s.registry.requests, s.registry.bytes_fetched, s.disk_bytes),
            (1, 10, 7)
        );
        assert_eq!(s.misses, 0);
    }
}
