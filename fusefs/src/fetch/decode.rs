//! What the fetch layer asks for and how it turns fetched bytes into chunk contents: a
//! [`ChunkRequest`] (cache key + the blob range holding the chunk's stored form) and the
//! [`ChunkDecoder`] of a layer (gunzip of an eStargz member, a zstd frame, or nothing at all
//! for [`RawChunks`]). The fetch layer checks every decoded chunk against its key.

use std::io::BufRead;
use std::ops::Range;

use bytes::Bytes;

use crate::cache::ChunkKey;

/// One chunk to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The chunk's cache key (digest of its decoded content, or an unverifiable key).
    pub key: ChunkKey,
    /// The bytes of the blob that hold the chunk's stored (e.g. compressed) form.
    pub range: Range<u64>,
}

/// Decoded size from which a chunk is fetched in a request of its own and streamed from
/// the source through the decoder into its cache entry, decoded while its bytes arrive,
/// and served from there (a mapping of the file) rather than through a heap buffer: a
/// cold container start fetches a few such chunks at once (a 4 MiB chunk of a program
/// next to its libraries), and holding them decoded in memory was most of the daemon's
/// peak.
pub const STREAM_DECODE_MIN: u64 = 1 << 20;

/// Decoded size above which a chunk is never held in memory, not even when the cache
/// refuses its entry (it then fails). Writers cut chunks at 4 MiB; only legacy layers
/// hold whole big files in one chunk.
pub const LARGE_CHUNK: u64 = 32 << 20;

/// Why a fetched chunk could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The request names no chunk the decoder knows.
    #[error("no such chunk in the layer")]
    UnknownChunk,
    /// The chunk is too large to be decoded into memory in one piece.
    #[error("chunk of {0} bytes is too large to decode in memory")]
    TooLarge(u64),
    /// The stored bytes are not a valid member or frame.
    #[error(transparent)]
    Format(#[from] estargz::chunk::DecodeError),
    /// Streaming the stored bytes through the decompressor failed.
    #[error(transparent)]
    Stream(#[from] estargz::chunk::StreamError),
    /// Reading the stored bytes or handing the decoded ones on failed.
    #[error("moving chunk bytes: {0}")]
    Io(#[source] std::io::Error),
}

/// Turns the stored form of a chunk into its content. The fetcher checks the result against
/// the chunk's key afterwards; a decode error counts as corruption (the chunk is fetched
/// again).
pub trait ChunkDecoder: Send + Sync + 'static {
    /// Decodes `raw` (the bytes of `request.range`).
    fn decode(&self, request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError>;

    /// The chunk's decoded size, if known before decoding. Chunks of
    /// [`STREAM_DECODE_MIN`] bytes or more are streamed from the source through
    /// [`ChunkDecoder::decode_to`] straight into their cache entry.
    fn decoded_len(&self, _request: &ChunkRequest) -> Option<u64> {
        None
    }

    /// Decodes the stored bytes read from `raw` into `sink`, piece by piece where the format
    /// allows (bounded memory).
    fn decode_to(
        &self,
        request: &ChunkRequest,
        raw: &mut dyn BufRead,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), DecodeError> {
        let mut stored = Vec::new();
        raw.read_to_end(&mut stored).map_err(DecodeError::Io)?;
        let data = self.decode(request, Bytes::from(stored))?;
        sink(&data).map_err(DecodeError::Io)
    }
}

/// The identity decoder: the blob range holds the chunk's content as is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawChunks;

impl ChunkDecoder for RawChunks {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError> {
        Ok(raw)
    }
}
