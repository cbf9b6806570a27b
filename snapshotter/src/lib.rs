//! The containerd snapshotter: metadata store, overlay snapshots, the remote-snapshot
//! protocol for lazy eStargz layers, the merge component, and the gRPC service; plus the
//! command implementations behind the `starling` binary.
//!
//! Layers, bottom up:
//! - [`store`]: the transactional metadata store (redb) and containerd's snapshot rules;
//! - [`overlay`]: on-disk layout, overlay kernel features, mounts, disk usage;
//! - [`filter`]: containerd's filter language for List;
//! - [`snapshots`]: [`Snapshots`], the operations, tying store, overlay and hooks together;
//! - [`remote`] and [`labels`]: the remote-layer extension point and its label protocol;
//!   [`lazy`]: its implementation over the lazy eStargz file system (`fusefs`);
//! - [`metrics`]: the daemon's Prometheus metrics and their HTTP endpoint;
//! - [`merge`]: merged snapshots (stacked, hardlinked or copied; cache-aware);
//! - [`service`] and [`server`]: the gRPC adapter (errors → gRPC codes) and the unix
//!   socket server the daemon runs ([`authority`]: its connections accept any HTTP/2
//!   `:authority`);
//! - [`clip`]: client-supplied strings cut short for logs and errors;
//! - [`rpull`]: the lazy-pull client (`starling rpull`), a containerd client that unpacks
//!   images into a snapshotter with the remote-snapshot labels.
//! - [`convert`]: the image converter behind `starling convert`.
//! - [`optimize`]: workload profiling + prioritized conversion (`starling optimize`).

pub mod authority;
pub mod cli;
pub mod clip;
pub mod convert;
pub mod error;
pub mod extract;
pub mod filter;
pub mod labels;
pub mod lazy;
pub mod merge;
pub mod metrics;
pub mod optimize;
pub mod overlay;
pub mod remote;
pub mod rpull;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub use snapshots::{Layer, NewSnapshot, Options, RestoreReport, Snapshots};
