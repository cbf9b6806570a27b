//! Names overlayfs gives meaning to, shared by whatever writes or serves layer trees for it
//! (the lazy FUSE layers, extraction, merges).

/// Which xattr marks an opaque directory (`.wh..wh..opq`) to overlayfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpaqueXattr {
    /// `trusted.overlay.opaque` (overlay mounted by root in the initial user namespace).
    #[default]
    Trusted,
    /// `user.overlay.opaque` (overlay mounted with `userxattr`, rootless).
    User,
}

impl OpaqueXattr {
    /// The attribute name.
    pub fn name(self) -> &'static str {
        match self {
            OpaqueXattr::Trusted => "trusted.overlay.opaque",
            OpaqueXattr::User => "user.overlay.opaque",
        }
    }
}
