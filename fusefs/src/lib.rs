//! Lazy eStargz layers, layered like a storage stack:
//! registry client (byte ranges of a blob) → chunk fetcher and chunk cache (verified,
//! decompressed chunks) → layer (TOC index + chunk reads, prefetch, background fetch,
//! streaming) → FUSE adapter → mounts.
//!
//! - [`registry`]: OCI distribution client (references, manifests, auth, mirrors, retries,
//!   range and multi-range reads, streams, pushes) and the [`registry::ChunkFetcher`] that
//!   turns sets of chunk ranges into few, deduplicated, prioritized requests.
//! - [`cache`]: the content-addressed chunk cache on disk with an in-memory LRU in front,
//!   a disk cap with LRU eviction and pinning.
//! - [`context`]: what all layers of a process share (client, cache, runtime, settings).
//! - [`layer`]: one lazily fetched layer ([`layer::RemoteLayer`]), independent of FUSE:
//!   opened from the registry or restored from its saved state without network.
//! - [`fuse`]: the read-only FUSE file system of one layer (fuser), with overlay
//!   semantics, passthrough of fully cached files and non-blocking reads.
//! - [`mount`]: mounting layers at paths, unmounting (lazily when busy), for the daemon
//!   and `starling mount` ([`mount::MountManager`]).
//! - [`status`]: per-layer status files read by `starling status`.
//! - [`memory`]: returning freed heap memory to the system after fetches.
//! - [`metrics`]: counters shared by all of the above.

pub mod cache;
pub mod context;
pub mod fuse;
pub mod layer;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod registry;
pub mod status;
