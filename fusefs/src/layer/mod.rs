//! A lazily fetched eStargz layer, independent of FUSE: the tree (the TOC's
//! [`LayerIndex`](estargz::LayerIndex)) is there as soon as the layer is opened; file
//! contents are read through the chunk cache and fetched on a miss; prefetch, background
//! fetch and streaming bring the rest; read-ahead fetches what reads will ask for next.
//!
//! Parts, each over the shared `core` (source, index, fetch layer, progress, stream gate):
//! - `remote`: [`RemoteLayer`], what users hold: open, restore, status, close;
//! - `early`: [`EarlyLayer`], a layer opened ahead of its Prepare and taken over by it;
//! - `read`: the read path (cache first, then one call to the fetch layer, waiting for a
//!   stream about to deliver);
//! - `schedule` and `stream`: fetch scheduling — prefetch, background fetch, region streams
//!   and the switch to streaming when reads look like a scan; `gate`, `progress` and
//!   `quiet` are their state;
//! - `ahead`: read-ahead — the next chunks of a file read in order, neighbouring small
//!   files and directories read file after file, the parts of ELF programs and libraries
//!   the loader touches (`elf`), across the image's layers (`set`);
//! - `context`: [`LayerContext`], what all layers of a process share;
//! - `source`, `state`, `chunks`, `access`, `error`: where a layer comes from, its saved
//!   state, chunk keys and ranges, the access log, errors.

mod access;
mod ahead;
mod chunks;
mod context;
mod core;
mod early;
mod elf;
mod error;
mod gate;
mod names;
mod progress;
mod quiet;
mod read;
mod remote;
mod schedule;
mod script;
mod set;
mod source;
mod state;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_early;
mod warm;

pub use context::{status_dir, ContextError, LayerContext, LayerSettings};
pub use early::EarlyLayer;
pub use error::{LayerError, ReadError};
pub use linuxfs::overlay::OpaqueXattr;
pub use progress::FetchState;
pub use remote::{LayerStatus, RemoteLayer};
pub use schedule::Prefetch;
pub use set::{LayerSet, Program, DEFAULT_PATH};
pub use source::{LayerHead, LayerSource};
pub use state::has_saved_state;
pub use warm::{WarmPlan, WarmSelection, WarmStats};
