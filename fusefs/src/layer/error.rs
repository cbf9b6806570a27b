//! Errors of opening and reading lazy layers.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cache::CacheError;
use crate::fetch::FetchError;
use registry::RegistryError;

/// Why a layer could not be opened (or restored).
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The reference or digests given are malformed.
    #[error("invalid layer source: {0}")]
    Source(String),
    /// The registry could not deliver the footer or TOC.
    #[error("layer {digest}: {source}")]
    Registry {
        /// The layer blob.
        digest: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
    /// The blob is not an eStargz / zstd:chunked layer, or its TOC is invalid or does not
    /// match the expected digest.
    #[error("layer {digest} is not a usable eStargz layer: {source}")]
    Format {
        /// The layer blob.
        digest: String,
        /// Why.
        #[source]
        source: estargz::Error,
    },
    /// The layer's saved state could not be written or read.
    #[error("layer state in {dir}: {reason}")]
    State {
        /// The state directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl LayerError {
    /// True when the layer is simply not lazily mountable (not eStargz, bad TOC): a caller
    /// should fall back to a normal pull. False for transient or local problems.
    pub fn is_not_estargz(&self) -> bool {
        matches!(self, LayerError::Format { .. })
    }
}

/// Why a read failed. Every variant makes the FUSE read answer EIO.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The entry is not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// A chunk could not be fetched or verified.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The read did not finish within `fetch.read_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The local chunk cache failed.
    #[error(transparent)]
    Cache(Arc<CacheError>),
    /// The layer is being unmounted.
    #[error("layer closed")]
    Closed,
}

impl From<CacheError> for ReadError {
    fn from(e: CacheError) -> Self {
        ReadError::Cache(Arc::new(e))
    }
}
