//! The containerd snapshotter: metadata store, overlay snapshots, the remote-snapshot
//! protocol for lazy eStargz layers, the merge component, and the gRPC service; plus the
//! command implementations behind the `starling` binary.

pub mod cli;
pub mod extract;
