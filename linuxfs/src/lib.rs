//! The Linux file system calls that several of starling's crates make, in one place:
//!
//! - [`mountinfo`]: the mounts of this namespace from `/proc/self/mountinfo` (the one
//!   parser of its escaped fields), mount points and their types;
//! - [`mount`]: containerd-style [`mount::Mount`]s, mounting them, unmounting and
//!   detaching (the snapshotter's overlay, the FUSE mounts, the image optimizer);
//! - [`overlay`]: names overlayfs gives meaning to ([`overlay::OpaqueXattr`]).
//!
//! No policy lives here: callers decide what to mount where and wrap the `io::Error`s in
//! their own error types.

pub mod mount;
pub mod mountinfo;
pub mod overlay;

pub use mount::{Mount, MountGuard, Unmounted};
