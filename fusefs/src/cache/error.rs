//! Errors of the chunk cache.

use std::path::PathBuf;

use super::ChunkKey;

/// Errors of [`super::ChunkCache`].
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation on the cache directory failed.
    #[error("chunk cache: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "write", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Data offered to the cache does not match its key (digest or length).
    #[error("chunk cache: data for {key} does not match it (got {got} bytes{})",
        if *digest_checked { ", wrong digest" } else { "" })]
    Mismatch {
        /// The key.
        key: ChunkKey,
        /// Bytes offered.
        got: u64,
        /// Whether the digest was compared (verifiable keys).
        digest_checked: bool,
    },
}

impl CacheError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
