//! The daemon's library: the containerd snapshotter with its metadata store, overlay
//! snapshots, the remote-snapshot protocol for lazy eStargz layers, the merge component,
//! the gRPC service and the daemon's metrics. No command-line parsing and no `anyhow`: the
//! `starling` binary drives it.
//!
//! Layers, bottom up:
//! - [`store`]: the transactional metadata store (redb) and containerd's snapshot rules;
//! - [`overlay`]: on-disk layout, overlay kernel features, mounts, disk usage;
//! - [`filter`]: containerd's filter language for List;
//! - [`snapshots`]: [`Snapshots`], the operations, tying store, overlay and hooks together;
//! - [`remote`] and [`labels`]: the remote-layer extension point and its label protocol;
//!   [`lazy`]: its implementation over the lazy eStargz file system (`fusefs`);
//! - [`kubernetes`]: the daemon's Kubernetes side: pods' pull credentials and credential
//!   provider plugins as a credential source of the lazy layers, the CRI image service;
//! - [`metrics`]: the daemon's Prometheus metrics and their HTTP endpoint;
//! - [`merge`]: merged snapshots (stacked, hardlinked or copied; cache-aware);
//! - [`service`] and [`server`]: the gRPC adapter (errors → gRPC codes) and the unix
//!   socket server the daemon runs ([`authority`]: its connections accept any HTTP/2
//!   `:authority`); [`control`]: the daemon's control socket (live layer status and
//!   fallbacks for `starling status` and `starling doctor`);
//! - [`clip`]: client-supplied strings cut short for logs and errors.
//!
//! Mount syscalls and mountinfo are `linuxfs`'s; lazy layers themselves are `fusefs`'s.

pub mod authority;
pub mod clip;
pub mod control;
pub mod error;
pub mod filter;
pub mod kubernetes;
pub mod labels;
pub mod lazy;
pub mod merge;
pub mod metrics;
pub mod overlay;
pub mod remote;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub use snapshots::{Layer, NewSnapshot, Options, RestoreReport, Snapshots};
