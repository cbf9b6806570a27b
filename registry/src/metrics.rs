//! Counters of the registry client: plain atomics behind an `Arc<Metrics>` shared by every
//! clone of one client (and, through `fusefs`, by the daemon's exporter).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (monotonic).
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests sent to registries, mirrors, object storage and token endpoints.
    pub requests: AtomicU64,
    /// Of `requests`: blob range requests (single or multi-range).
    pub range_requests: AtomicU64,
    /// Of `range_requests`: requests asking for more than one range.
    pub multi_range_requests: AtomicU64,
    /// Response body bytes received from the network (including bytes of merged gaps).
    pub bytes_fetched: AtomicU64,
    /// Requests retried after a transient failure (connection, 5xx, 429, corrupted data).
    pub retries: AtomicU64,
    /// Bearer tokens fetched from token endpoints.
    pub token_fetches: AtomicU64,
}

/// A copy of [`Metrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`Metrics::requests`].
    pub requests: u64,
    /// See [`Metrics::range_requests`].
    pub range_requests: u64,
    /// See [`Metrics::multi_range_requests`].
    pub multi_range_requests: u64,
    /// See [`Metrics::bytes_fetched`].
    pub bytes_fetched: u64,
    /// See [`Metrics::retries`].
    pub retries: u64,
    /// See [`Metrics::token_fetches`].
    pub token_fetches: u64,
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: get(&self.requests),
            range_requests: get(&self.range_requests),
            multi_range_requests: get(&self.multi_range_requests),
            bytes_fetched: get(&self.bytes_fetched),
            retries: get(&self.retries),
            token_fetches: get(&self.token_fetches),
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_counters() {
        let m = Metrics::default();
        Metrics::inc(&m.requests);
        Metrics::add(&m.bytes_fetched, 10);
        let s = m.snapshot();
        assert_eq!((s.requests, s.bytes_fetched, s.retries), (1, 10, 0));
    }
}
