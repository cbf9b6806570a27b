//! Lazy eStargz layers, layered like a storage stack (nydus's backend → cache → device):
//!
//! - [`fetch`]: the blob sources ([`fetch::BlobSource`]: a registry blob, or an in-memory
//!   blob in tests) and the one fetch layer ([`fetch::ChunkFetcher`]) that owns every write
//!   into the chunk cache: it answers from the cache, joins fetches in flight, fetches the
//!   rest in few requests (large chunks and region streams too), decodes, verifies and
//!   caches.
//! - [`cache`]: the content-addressed chunk cache on disk with an in-memory LRU in front,
//!   a disk cap with LRU eviction and pinning.
//! - [`layer`]: one lazily fetched layer ([`layer::RemoteLayer`]), independent of FUSE:
//!   its read path, its fetch scheduling (prefetch, background fetch, streams, progress)
//!   and its read-ahead (ELF dependencies, neighbouring files); opened from the registry
//!   or restored from its saved state without network; [`layer::LayerContext`] is what
//!   all layers of a process share (registry client, cache, runtime, settings).
//! - [`fuse`]: the read-only FUSE file system of one layer (fuser), with overlay
//!   semantics, passthrough of fully cached files and non-blocking reads.
//! - [`mount`]: mounting layers at paths, unmounting (lazily when busy), for the daemon
//!   and `starling mount` ([`mount::MountManager`]); the fd store that keeps FUSE
//!   connections across daemon restarts.
//! - [`status`]: per-layer status files read by `starling status`.
//! - [`memory`]: returning freed heap memory to the system after fetches.
//! - [`metrics`]: the counters of the registry client, fetch layer and cache.
//!
//! The OCI registry client itself is the `registry` crate; mountinfo and unmounting are
//! `linuxfs`.

pub mod cache;
pub mod fetch;
pub mod fuse;
pub mod layer;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod status;
