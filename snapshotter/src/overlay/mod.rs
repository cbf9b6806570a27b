//! Everything overlayfs-specific: where snapshot directories live on disk ([`layout`]),
//! which kernel features to use ([`features`], containerd's `overlayutils`), the mounts
//! containerd gets back ([`mounts`]) and disk usage of an upper dir ([`usage`]). The mount
//! syscalls themselves are `linuxfs`'s.

pub mod features;
pub mod layout;
pub mod mounts;
pub mod usage;

pub use features::OverlayFeatures;
pub use layout::Layout;
pub use linuxfs::Mount;
