//! `[snapshotter]`: behaviour of the containerd-facing snapshotter service.

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

/// `[snapshotter]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterConfig {
    /// Mount eStargz layers lazily over FUSE when a lazy-pull client (`starling rpull`,
    /// `ctr-remote image rpull`, CRI) names them; false: every layer is downloaded and
    /// unpacked by containerd (plain overlayfs behaviour).
    pub lazy: bool,
    /// When a layer cannot be mounted lazily (not eStargz, registry unreachable, bad TOC), let
    /// containerd download and unpack it normally instead of failing the pull.
    pub allow_fallback: bool,
    /// On start, remount the lazy layers of existing snapshots (else they stay unavailable).
    pub restore_on_start: bool,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            lazy: true,
            allow_fallback: true,
            restore_on_start: true,
        }
    }
}
