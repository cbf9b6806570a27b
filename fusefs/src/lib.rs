//! Lazy eStargz layers, layered like a storage stack:
//! registry client (byte ranges of a blob) → chunk fetcher and chunk cache (verified,
//! decompressed chunks) → layer (TOC index + chunk reads) → FUSE adapter and prefetch.
//!
//! - [`registry`]: OCI distribution client (references, manifests, auth, mirrors, retries,
//!   range and multi-range reads, streams, pushes) and the [`registry::ChunkFetcher`] that
//!   turns sets of chunk ranges into few, deduplicated, prioritized requests.
//! - [`cache`]: the content-addressed chunk cache on disk with an in-memory LRU in front,
//!   a disk cap with LRU eviction and pinning.
//! - [`metrics`]: counters shared by all of the above.

pub mod cache;
pub mod metrics;
pub mod registry;
