//! The cache-aware merge component: a snapshot whose content is the ordered merge of
//! other committed snapshots (BuildKit's MergeOp: `merge(A, B, C)` is every layer of A's
//! chain applied in order, then B's, then C's, with overlay diff semantics).
//!
//! # Requests
//! Through the snapshots API: `Prepare` or `View` with an empty parent and the label
//! [`SOURCES_LABEL`] (`containerd.io/snapshot/starling/merge.sources`) = comma-separated
//! input names, bottom first, and optionally [`MODE_LABEL`] = `auto` (default), `stack`,
//! `hardlink` or `copy` ([`intercept`] turns the labels into a [`MergeRequest`]). Behind
//! containerd a key reads `NS/ID/NAME`; an input name is looked up as an exact backend key
//! first, then as `NS/<id>/NAME` in the namespace of the key being created (the highest
//! id, committed ones first). Library users call [`Snapshots::merge`](crate::Snapshots::merge).
//!
//! Errors: unknown input → NotFound; input not committed, a merge naming itself, a
//! parent given with the label, a bad mode, an empty name, more than [`MAX_SOURCES`]
//! inputs → InvalidArgument (as containerd answers a non-committed parent); an input
//! removed or replaced while a flattened merge was built → NotFound or
//! FailedPrecondition; a layer using overlay `redirect_dir` cannot be flattened →
//! FailedPrecondition. Inputs must exist and be committed, so a merge can never depend
//! on itself (no cycles). Every failure leaves no record and no directory.
//!
//! # Strategies
//! - **Stack** ([`Strategy::Stack`]): the new snapshot's record lists the inputs as merge
//!   sources (`SnapshotRecord::merged`), so its mounts stack the layer directories of the
//!   inputs' chains as lowerdirs, each layer once at its topmost place (an input whose
//!   chain is a prefix of a later one adds nothing; keeping only the topmost copy of a
//!   repeated layer gives the same overlay view). Nothing is read or copied: lazy (FUSE)
//!   layers stay lazy. Used when the lowerdirs fit [`MergeOptions::max_lowers`] and the
//!   mount options fit [`MergeOptions::max_mount_options`]; otherwise a stack or auto
//!   request is flattened with hardlinks.
//! - **Hardlink** / **Copy**: [`flatten`] writes the overlay view of all layers into one
//!   new directory, hardlinking regular files (copying on EXDEV — another file system or
//!   a FUSE layer, which is then read and so fetched — on EMLINK, or always in copy mode).
//!   The result is an internal committed snapshot (a *merge node*) and the requested
//!   snapshot stands on it (its one merge source). Writes in the merged snapshot go to its
//!   own upper directory (overlay copy-up), so inputs sharing inodes with the node are
//!   never modified.
//!
//! # Merge nodes: cache and lifecycle
//! - A node's key is `.merge/<strategy>/<sha256 of the layer ids>` ([`node_key`]): the
//!   ordered identities of the deduplicated input layers (ids are never reused). A request
//!   whose layers and strategy match an existing node reuses it; a concurrent identical
//!   request waits for the first build and then reuses it.
//! - A node holds its inputs (`SnapshotRecord::holds`, the store's child links): they
//!   cannot be removed while it exists (FailedPrecondition, which containerd's GC
//!   tolerates). A stacked merge holds its inputs directly, as their child.
//! - Nodes are hidden from List, so containerd's GC (which removes every backend snapshot
//!   it does not know) never sees them; the snapshots standing on them are roots of the
//!   tree GC walks (their parent is empty, as containerd recorded it).
//! - Removing the last snapshot standing on a node removes the node in the same
//!   transaction ([`release_nodes`]), which releases its inputs. So a node lives while any
//!   snapshot made from it exists, including one its requester released that awaits
//!   containerd's GC; asking for the same merge meanwhile reuses it.
//! - List answers newest first, so containerd's GC prunes a merged snapshot before the
//!   older trees of its inputs and can remove those in the same pass.
//! - A flattened merge's Usage adds what its node owns (created directories, symlinks,
//!   nodes and copied files; hardlinked inodes are shared with the inputs and not
//!   counted); a stacked merge's Usage is its upper directory only.
//! - Crash safety: a node and its first user are recorded in one transaction; the node is
//!   built in `<root>/merging/` and renamed into `snapshots/<id>` inside that transaction.
//!   Cleanup removes stale build directories and (defensively) nodes without users.

pub(crate) mod flatten;
mod plan;
mod request;
mod snapshot;
mod state;

pub use flatten::{flatten, FlattenError, FlattenOptions, FlattenStats, LinkMode};
pub use plan::{node_key, stack_misfit, strategy, MergeOptions, OVERLAY_MAX_LOWERS};
pub use request::{
    check_client_key, intercept, is_node_key, namespace_of, parse_sources, resolve, MergeMode,
    MergeRequest, Resolved, Strategy, MAX_SOURCES, MODE_LABEL, NODE_PREFIX, SOURCES_LABEL,
    STRATEGY_LABEL,
};
pub use snapshot::{nodes_usage, orphan_nodes, release_nodes, Merged};
pub use state::MergeState;

use crate::error::Error;

impl From<FlattenError> for Error {
    fn from(e: FlattenError) -> Error {
        match e {
            FlattenError::Io { op, path, source } => Error::Io { op, path, source },
            FlattenError::Unsupported { .. } => Error::FailedPrecondition(e.to_string()),
            FlattenError::ShortCopy { .. } | FlattenError::NoLayers => Error::Flatten(e),
        }
    }
}

#[cfg(test)]
mod tests;
