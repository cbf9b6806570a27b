//! `[cache]`: where verified, decompressed chunks are kept on disk, the disk cap and the
//! in-memory LRU in front of it.

use std::path::{Path, PathBuf};

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// The smallest non-zero `cache.max_size` accepted (a few default-sized chunks).
pub const MIN_MAX_SIZE: u64 = 16 << 20;

/// `[cache]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Directory of the chunk cache (content-addressed by chunk digest, shared by all layers and
    /// images, kept across restarts). "" means "<root>/cache".
    pub dir: PathBuf,
    /// Disk cap for the chunk cache; least recently used chunks are evicted beyond it (chunks in
    /// use by a mounted layer's open files are kept). A size such as "20GiB"; 0 = unbounded.
    #[serde(with = "crate::units::size")]
    pub max_size: u64,
    /// Bytes of hot chunks kept in memory in front of the disk cache (LRU). 0 turns it off
    /// (the default: mounted layers keep file contents in the kernel's page cache, so an
    /// in-process copy only costs memory).
    #[serde(with = "crate::units::size")]
    pub memory_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::new(),
            max_size: 20 << 30,
            memory_size: 0,
        }
    }
}

impl CacheConfig {
    /// The cache directory, resolving "" to `<root>/cache`.
    pub fn resolved_dir(&self, root: &Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            root.join("cache")
        } else {
            self.dir.clone()
        }
    }

    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if !self.dir.as_os_str().is_empty() && !self.dir.is_absolute() {
            return Err(Invalid::new(
                at.key("dir"),
                "must be an absolute path (or \"\")",
            ));
        }
        if self.max_size != 0 && self.max_size < MIN_MAX_SIZE {
            return Err(Invalid::new(
                at.key("max_size"),
                "is too small to hold even one chunk; use at least \"16MiB\" or 0 (unbounded)",
            ));
        }
        Ok(())
    }
}
