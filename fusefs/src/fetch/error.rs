//! Why a chunk could not be read through the fetch layer.

use std::ops::Range;
use std::sync::Arc;

use registry::{RegistryError, Target};

use super::decode::DecodeError;
use crate::cache::{CacheError, ChunkKey};

/// Why a chunk could not be read. Cheap to clone (every caller joined to one fetch gets it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The source could not deliver the bytes.
    #[error(transparent)]
    Registry(Box<RegistryError>),
    /// Every fetched copy of the chunk failed decoding or verification.
    #[error(transparent)]
    Corrupt(Box<CorruptChunk>),
    /// The chunk cache could not take a chunk that is only served from it (a large chunk).
    #[error(transparent)]
    Cache(Arc<CacheError>),
    /// The fetch task ended without an answer (runtime shutting down).
    #[error("chunk fetch abandoned")]
    Abandoned,
}

impl From<RegistryError> for FetchError {
    fn from(e: RegistryError) -> Self {
        FetchError::Registry(Box::new(e))
    }
}

/// Details of [`FetchError::Corrupt`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: chunk {key} at bytes {}..{} failed verification {attempts} time(s)", range.start, range.end)]
pub struct CorruptChunk {
    /// The blob.
    pub target: Target,
    /// The chunk.
    pub key: ChunkKey,
    /// Its range in the blob.
    pub range: Range<u64>,
    /// Copies fetched.
    pub attempts: u32,
    /// What was wrong with the last copy.
    #[source]
    pub reason: Corruption,
}

/// What was wrong with a fetched copy of a chunk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Corruption {
    /// The decoder refused the stored bytes.
    #[error("cannot decode: {0}")]
    Decode(#[source] Arc<DecodeError>),
    /// The decoded content does not match the chunk digest.
    #[error("content does not match the chunk digest")]
    Digest,
    /// The decoded content does not have the chunk's (unverifiable) size.
    #[error("decoded {got} bytes, expected {expected:?}")]
    Size {
        /// Bytes decoded.
        got: u64,
        /// The key's size.
        expected: Option<u64>,
    },
}

impl Corruption {
    /// The verdict on `got` decoded bytes that do not match `key`.
    pub(crate) fn mismatch(key: &ChunkKey, got: u64) -> Self {
        if key.is_verifiable() {
            Corruption::Digest
        } else {
            Corruption::Size {
                got,
                expected: key.size(),
            }
        }
    }
}
