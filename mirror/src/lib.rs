//! The cluster blob mirror behind `starling mirror`: the read side of the OCI distribution
//! API in front of upstream registries, for a fleet of lazy-pulling nodes (containerd and
//! starling name it as a mirror in `hosts.toml`). Blobs are cached in fixed, aligned blocks;
//! a range request is answered from the blocks, and missing blocks are fetched from the
//! upstream **by range** (neighbours in one request), once for any number of concurrent
//! requests (single-flight). Manifests are proxied (by digest remembered).
//!
//! Layers, bottom up: `blocks` (block math), `range` (the `Range` header), `store` (the
//! bounded on-disk block cache), `flight` (single-flight claims), `metrics` (counters),
//! `upstream` (starling's registry client: hosts allowed, sizes, ranges, manifests) →
//! `fetch` (blocks through cache, flights and upstream, as a stream) → `api` (paths),
//! `reply` (responses, registry JSON errors) → `server` (hyper, graceful shutdown).
//!
//! Integrity: a block cannot be verified alone. Nodes verify every chunk they read against
//! the layer's TOC and skip a mirror that served wrong bytes (`registry.mirror_skip`); a
//! whole-blob read through the mirror is checked against the blob digest at its end (a
//! mismatch drops the blob's cached blocks and cuts the response off).

mod api;
mod blocks;
mod error;
mod fetch;
mod flight;
mod metrics;
mod range;
mod reply;
mod server;
mod store;
mod upstream;

pub use blocks::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
pub use error::MirrorError;
pub use server::{Mirror, Settings};
pub use upstream::UpstreamHosts;
