//! Image tools: whole images in, whole images out, each a client of the registry and of
//! the eStargz format.
//!
//! - [`convert`]: an image (registry or OCI layout) to eStargz or zstd:chunked
//!   (`starling convert`), layers in parallel, deterministic output;
//! - [`optimize`]: workload profiling + prioritized conversion (`starling optimize`): the
//!   image's layers mounted lazily over FUSE (`fusefs`) and stacked with overlay
//!   (`linuxfs`), the workload run once with `runc`, the files it read placed first;
//! - [`extract`]: one layer blob written into a directory as an overlay-style diff
//!   (`starling estargz extract`).
//!
//! Errors are typed per tool ([`convert::ConvertError`], [`optimize::OptimizeError`],
//! [`extract::ExtractError`]); progress goes to callbacks the binary draws.

pub mod convert;
pub mod extract;
pub mod optimize;
