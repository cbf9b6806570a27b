//! Everything overlayfs-specific: where snapshot directories live on disk ([`layout`]),
//! which kernel features to use ([`features`], containerd's `overlayutils`), the mounts
//! containerd gets back ([`mounts`]), disk usage of an upper dir ([`usage`]), and the few
//! mount syscalls the snapshotter makes itself ([`sys`]).

pub mod features;
pub mod layout;
pub mod mounts;
pub mod sys;
pub mod usage;

pub use features::OverlayFeatures;
pub use layout::Layout;
pub use mounts::Mount;
