//! Choosing how to build a merge: whether a stack fits overlay's limits, which strategy a
//! mode ends up with, and the identity (cache key) of a flattened result.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::request::{MergeMode, Strategy, NODE_PREFIX};
use crate::overlay::mounts::MountPlan;
use crate::overlay::{Layout, OverlayFeatures};
use crate::store::Kind;

/// overlayfs' limit on lowerdirs (`OVL_MAX_STACK`).
pub const OVERLAY_MAX_LOWERS: usize = 500;

/// Merge settings of a snapshotter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOptions {
    /// Mode of requests that do not name one.
    pub default_mode: MergeMode,
    /// Most lowerdirs a stacked merge may have; more → flatten.
    pub max_lowers: usize,
    /// Longest overlay mount option string (all options, comma joined) a stacked merge
    /// may need; longer → flatten. Default: one page less the terminating NUL, what
    /// `mount(2)` copies (containerd can shorten longer ones, other clients cannot).
    pub max_mount_options: usize,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            default_mode: MergeMode::Auto,
            max_lowers: OVERLAY_MAX_LOWERS,
            max_mount_options: page_size().saturating_sub(1),
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Why a stack does not fit, if it does not.
pub fn stack_misfit(
    options: &MergeOptions,
    layout: &Layout,
    features: &OverlayFeatures,
    kind: Kind,
    lowers: &[PathBuf],
) -> Option<String> {
    if lowers.len() > options.max_lowers {
        return Some(format!(
            "{} layers exceed the {} lowerdir limit",
            lowers.len(),
            options.max_lowers
        ));
    }
    // The new snapshot's id is not known yet: measure with the widest one.
    let plan = MountPlan {
        kind,
        upper: layout.fs_dir(u64::MAX),
        work: layout.work_dir(u64::MAX),
        lowers: lowers.to_vec(),
    };
    let longest = plan
        .mounts(features)
        .iter()
        .map(|m| m.options.join(",").len())
        .max()
        .unwrap_or(0);
    (longest > options.max_mount_options).then(|| {
        format!(
            "mount options of {} bytes exceed the {}-byte limit",
            longest, options.max_mount_options
        )
    })
}

/// The strategy for `mode` given whether the stack fits.
pub fn strategy(mode: MergeMode, stack_fits: bool) -> Strategy {
    match mode {
        MergeMode::Auto | MergeMode::Stack if stack_fits => Strategy::Stack,
        MergeMode::Auto | MergeMode::Stack | MergeMode::Hardlink => Strategy::Hardlink,
        MergeMode::Copy => Strategy::Copy,
    }
}

/// The internal key of the flattened result of `layers` (ids, topmost first) built with
/// `strategy`: `.merge/<strategy>/<sha256 of the ids>`. Ids are never reused, so equal
/// keys mean equal inputs.
pub fn node_key(strategy: Strategy, layers: &[u64]) -> String {
    let mut h = Sha256::new();
    h.update(b"starling merge v1\n");
    h.update(strategy.as_str().as_bytes());
    for id in layers {
        h.update(b"\n");
        h.update(id.to_string().as_bytes());
    }
    format!(
        "{NODE_PREFIX}{}/{}",
        strategy.as_str(),
        hex::encode(h.finalize())
    )
}
