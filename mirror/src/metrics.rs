//! The mirror's counters: bytes served, bytes and requests sent upstream, block hits,
//! fetches and joins (single-flight), digest mismatches, cache size. Exposed at
//! `GET /metrics` (Prometheus text) and logged as one summary line at exit.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the server, the upstream and the block reader.
#[derive(Debug, Default)]
pub struct MirrorMetrics {
    /// HTTP requests answered.
    pub requests: AtomicU64,
    /// Body bytes sent to clients.
    pub served_bytes: AtomicU64,
    /// Blob bytes received from upstreams.
    pub upstream_bytes: AtomicU64,
    /// Requests sent upstream (blob ranges, blob HEADs, manifests).
    pub upstream_requests: AtomicU64,
    /// Blocks answered from the cache.
    pub block_hits: AtomicU64,
    /// Blocks fetched from an upstream.
    pub block_fetches: AtomicU64,
    /// Blocks a request waited for because another request was fetching them.
    pub block_joins: AtomicU64,
    /// Whole-blob reads whose bytes did not match the digest (their blocks were dropped).
    pub digest_mismatches: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A counter's value.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl MirrorMetrics {
    /// Prometheus text exposition; `cache_bytes` and `evicted` come from the block cache.
    pub fn encode(&self, cache_bytes: u64, evicted: u64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP starling_mirror_{name} {help}\n# TYPE starling_mirror_{name} counter\nstarling_mirror_{name} {v}\n"
            ));
        };
        counter(
            "requests_total",
            "HTTP requests answered",
            get(&self.requests),
        );
        counter(
            "served_bytes_total",
            "Body bytes sent to clients",
            get(&self.served_bytes),
        );
        counter(
            "upstream_bytes_total",
            "Blob bytes received from upstream registries",
            get(&self.upstream_bytes),
        );
        counter(
            "upstream_requests_total",
            "Requests sent to upstream registries (blob ranges, blob HEADs, manifests)",
            get(&self.upstream_requests),
        );
        counter(
            "block_hits_total",
            "Blocks answered from the cache",
            get(&self.block_hits),
        );
        counter(
            "block_fetches_total",
            "Blocks fetched from upstream registries",
            get(&self.block_fetches),
        );
        counter(
            "block_joins_total",
            "Blocks a request waited for while another request fetched them (single-flight)",
            get(&self.block_joins),
        );
        counter(
            "digest_mismatches_total",
            "Whole-blob reads whose bytes did not match the blob digest",
            get(&self.digest_mismatches),
        );
        counter(
            "evicted_blocks_total",
            "Blocks removed from the cache to stay under its cap",
            evicted,
        );
        out.push_str(&format!(
            "# HELP starling_mirror_cache_bytes Bytes in the block cache\n# TYPE starling_mirror_cache_bytes gauge\nstarling_mirror_cache_bytes {cache_bytes}\n"
        ));
        out
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "requests={} served_bytes={} upstream_bytes={} upstream_requests={} block_hits={} block_fetches={} block_joins={} digest_mismatches={}",
            get(&self.requests),
            get(&self.served_bytes),
            get(&self.upstream_bytes),
            get(&self.upstream_requests),
            get(&self.block_hits),
            get(&self.block_fetches),
            get(&self.block_joins),
            get(&self.digest_mismatches),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = MirrorMetrics::default();
        add(&m.block_joins, 3);
        add(&m.served_bytes, 10);
        let text = m.encode(42, 1);
        assert!(
            text.contains("starling_mirror_block_joins_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_mirror_served_bytes_total 10\n"),
            "{text}"
        );
        assert!(text.contains("starling_mirror_cache_bytes 42\n"), "{text}");
        assert!(
            text.contains("starling_mirror_evicted_blocks_total 1\n"),
            "{text}"
        );
        assert!(m.summary().contains("block_joins=3"));
    }
}
