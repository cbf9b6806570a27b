//! From index chunks to fetcher requests: cache keys, the blob range to fetch for a chunk
//! (capped, since a chunk's compressed length runs to the next chunk's offset and a lying
//! TOC can stretch it), and the [`ChunkDecoder`] that decompresses a fetched range.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use estargz::{Chunk, LayerIndex};

use crate::cache::ChunkKey;
use crate::fetch::{ChunkDecoder, ChunkRequest, DecodeError, LARGE_CHUNK};

/// The cache key of a data chunk; `None` for a hole (`zeros`) chunk, which needs no fetch.
/// Indexes are built with digests required, so every data chunk has one.
pub(crate) fn key_of(chunk: &Chunk) -> Option<ChunkKey> {
    if chunk.zeros {
        return None;
    }
    chunk.digest.map(|d| ChunkKey::Digest(d.0))
}

/// The blob range to fetch for `chunk`: its compressed range, capped at what the member
/// holding `inner_offset + size` bytes can take (deflate and zstd expand incompressible
/// data by well under 1/16; headers and trailers fit in 64 KiB).
pub(crate) fn fetch_range(chunk: &Chunk) -> Range<u64> {
    let need = chunk.inner_offset.saturating_add(chunk.size);
    let cap = need.saturating_add(need / 16).saturating_add(64 << 10);
    let len = chunk.compressed_len.clamp(1, cap);
    chunk.compressed_offset..chunk.compressed_offset + len
}

/// The fetcher request of a data chunk.
pub(crate) fn request_of(chunk: &Chunk) -> Option<ChunkRequest> {
    Some(ChunkRequest {
        key: key_of(chunk)?,
        range: fetch_range(chunk),
    })
}

/// Finds a data chunk by the start of its fetch range and its key.
pub(crate) fn find_chunk(index: &LayerIndex, offset: u64, key: &ChunkKey) -> Option<Chunk> {
    let n = index.num_chunks() as u32;
    // Compressed offsets are non-decreasing in chunk id order.
    let (mut lo, mut hi) = (0u32, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let c = index.chunk(mid)?;
        if c.compressed_offset < offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo..n)
        .map_while(|id| index.chunk(id).filter(|c| c.compressed_offset == offset))
        .find(|c| key_of(c).as_ref() == Some(key))
}

/// First chunk id whose compressed offset is at least `offset`.
pub(crate) fn first_chunk_at(index: &LayerIndex, offset: u64) -> u32 {
    let n = index.num_chunks() as u32;
    let (mut lo, mut hi) = (0u32, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match index.chunk(mid) {
            Some(c) if c.compressed_offset < offset => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// Decodes fetched ranges of one layer's chunks (gzip member or zstd frame, skipping the
/// inner offset). The fetcher verifies the result against the key afterwards.
pub(crate) struct LayerDecoder {
    pub(crate) index: Arc<estargz::Layer>,
}

impl LayerDecoder {
    /// The layer's chunk that `request` asks for.
    fn chunk_of(&self, request: &ChunkRequest) -> Result<Chunk, DecodeError> {
        find_chunk(&self.index.index, request.range.start, &request.key)
            .ok_or(DecodeError::UnknownChunk)
    }
}

impl ChunkDecoder for LayerDecoder {
    fn decode(&self, request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError> {
        let chunk = self.chunk_of(request)?;
        if chunk.size > LARGE_CHUNK {
            return Err(DecodeError::TooLarge(chunk.size));
        }
        let mut out = vec![0u8; chunk.size as usize];
        let compression = self.index.index.compression();
        estargz::chunk::decompress(compression, &raw, chunk.inner_offset, &mut out)?;
        Ok(Bytes::from(out))
    }

    fn decoded_len(&self, request: &ChunkRequest) -> Option<u64> {
        self.chunk_of(request).ok().map(|c| c.size)
    }

    fn decode_to(
        &self,
        request: &ChunkRequest,
        raw: &mut dyn std::io::BufRead,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), DecodeError> {
        let chunk = self.chunk_of(request)?;
        estargz::chunk::decompress_stream(
            self.index.index.compression(),
            raw,
            chunk.inner_offset,
            chunk.size,
            sink,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(size: u64, compressed_len: u64) -> Chunk {
        Chunk {
            id: 0,
            entry: 1,
            file_offset: 0,
            size,
            compressed_offset: 100,
            compressed_len,
            inner_offset: 0,
            digest: Some(estargz::Sha256Digest([1; 32])),
            zeros: false,
        }
    }

    #[test]
    fn fetch_range_is_capped_for_stretched_chunks() {
        assert_eq!(fetch_range(&chunk(1000, 600)), 100..700);
        let r = fetch_range(&chunk(1000, 1 << 30));
        assert_eq!(r.start, 100);
        assert!(r.end - r.start < 70_000, "{r:?}");
        let mut z = chunk(10, 0);
        z.zeros = true;
        assert!(request_of(&z).is_none());
    }
}
