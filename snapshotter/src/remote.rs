//! The remote-layer extension point: how a lazy file system (the FUSE layer of eStargz
//! images) plugs into the snapshotter. The core stays ignorant of registries and FUSE; it
//! calls a [`RemoteLayers`] implementation at four moments:
//!
//! 1. **Prepare** with a [`TARGET_REF`](crate::labels::TARGET_REF) label whose labels
//!    [name a layer](crate::labels::names_layer): the core first creates the active
//!    snapshot as usual (its `fs` directory exists and is empty), then calls
//!    [`RemoteLayers::prepare`]. If the hook answers [`LayerOutcome::Mounted`] (it has
//!    mounted the layer on `mountpoint`), the core commits the snapshot under the target
//!    name with the Prepare labels, the [`REMOTE`](crate::labels::REMOTE) label and the
//!    hook's extra labels, and answers AlreadyExists, as containerd expects from a remote
//!    snapshotter. If it answers [`LayerOutcome::Declined`] (not eStargz, TOC not
//!    verified, registry unreachable, ...), the Prepare goes on as a normal snapshot and
//!    containerd downloads and applies the layer; the reason is logged.
//! 2. **Remove** of a remote snapshot: [`RemoteLayers::remove`] unmounts and frees the
//!    layer before the core deletes the directory (a mount still there afterwards is
//!    detached by the core).
//! 3. **Start**: [`RemoteLayers::restore`] for every committed remote snapshot, to mount it
//!    again from its saved labels (without needing the registry before the first read).
//! 4. **Mounts** (Prepare, View, Mounts) of snapshots standing on remote layers:
//!    [`RemoteLayers::check`] for each remote lower; an error makes the call fail with
//!    Unavailable.
//!
//! Calls run on a blocking thread of the daemon's tokio runtime: a hook may block, or use
//! `tokio::runtime::Handle::current().block_on(..)` for async work. The default
//! snapshotter has no hook (`None`): every snapshot is a normal overlay snapshot.

use std::path::Path;

use crate::store::Labels;

/// Error type of hooks: anything with a message (the core logs it or wraps it).
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A Prepare that may be served by a remote layer.
#[derive(Debug)]
pub struct LayerRequest<'a> {
    /// The active snapshot's key (e.g. `default/12/extract-… sha256:…`).
    pub key: &'a str,
    /// Its parent's name, or empty.
    pub parent: &'a str,
    /// The name the layer is to be committed as (the `containerd.io/snapshot.ref` value).
    pub target: &'a str,
    /// All Prepare labels (layer digest, image ref, TOC digest, ...).
    pub labels: &'a Labels,
    /// The snapshot's id.
    pub id: u64,
    /// The snapshot's empty `fs` directory: mount the layer here.
    pub mountpoint: &'a Path,
}

/// The answer to a [`LayerRequest`].
#[derive(Debug)]
pub enum LayerOutcome {
    /// The layer is mounted at the mountpoint; commit it with these extra labels
    /// (e.g. what is needed to restore the mount after a restart).
    Mounted {
        /// Labels added to the committed snapshot.
        labels: Labels,
    },
    /// Not served remotely; the mountpoint is left empty and unmounted.
    Declined {
        /// Why, for the log line (e.g. "layer is not eStargz: no footer").
        reason: String,
    },
}

/// A committed remote snapshot, as restore/remove/check see it.
#[derive(Debug)]
pub struct RemoteSnapshot<'a> {
    /// Its name (the layer's ChainID as containerd sees it, namespaced).
    pub name: &'a str,
    /// Its id.
    pub id: u64,
    /// Its labels, including the ones the hook returned from `prepare`.
    pub labels: &'a Labels,
    /// Its `fs` directory, where the layer is (to be) mounted.
    pub mountpoint: &'a Path,
}

/// A lazily mounted layer source (see the module docs for when each method is called).
pub trait RemoteLayers: Send + Sync + 'static {
    /// Tries to mount the requested layer at `req.mountpoint`.
    fn prepare(&self, req: &LayerRequest<'_>) -> LayerOutcome;

    /// Mounts an existing remote snapshot again after a daemon start. A stale mount of a
    /// previous daemon may still be on the mountpoint; the hook decides what to do with it.
    fn restore(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError>;

    /// Unmounts the layer and frees what it holds; called before the directory is deleted.
    fn remove(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError>;

    /// Whether the layer can be served now; called before handing out mounts on it.
    fn check(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        let _ = snapshot;
        Ok(())
    }
}
