//! What every part of a lazy layer shares ([`LayerCore`]): where it comes from, its index,
//! its fetch layer, which chunks are local ([`Progress`]), its stream gate and whether it is
//! closed; and the local side of reading: which chunks a read needs ([`LayerCore::plan`])
//! and copying the local ones out of the cache. The read path (`read`), fetch scheduling
//! (`schedule`, `stream`) and read-ahead (`ahead`) are built on it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use estargz::{Chunk, EntryId, EntryKind, LayerIndex};
use registry::Priority;
use tokio::sync::watch;

use super::chunks::{key_of, request_of};
use super::context::LayerContext;
use super::error::ReadError;
use super::gate::StreamGate;
use super::progress::Progress;
use super::source::LayerSource;
use crate::fetch::ChunkFetcher;

/// Chunks [`LayerCore::is_settled`] looks at, at most.
const SETTLED_CHUNKS: usize = 4096;

/// The shared state of one lazy layer.
pub(crate) struct LayerCore {
    pub(crate) ctx: Arc<LayerContext>,
    pub(crate) source: LayerSource,
    pub(crate) layer: Arc<estargz::Layer>,
    pub(crate) fetcher: ChunkFetcher,
    pub(crate) progress: Progress,
    pub(crate) gate: StreamGate,
    pub(crate) closed: watch::Sender<bool>,
    /// Set once prefetch and background fetch were started.
    pub(crate) fetching: AtomicBool,
}

/// One chunk's share of a read: where its bytes go in the output buffer.
pub(crate) struct Piece {
    pub(crate) chunk: Chunk,
    /// Offset in the chunk.
    pub(crate) from: u64,
    /// Offset in the output buffer.
    pub(crate) at: usize,
    pub(crate) len: usize,
}

impl LayerCore {
    /// The layer's tree and chunks.
    pub(crate) fn index(&self) -> &LayerIndex {
        &self.layer.index
    }

    /// True once the layer was closed (prefetch, background fetch and streams stop).
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Marks chunk `id` local; true the first time.
    pub(crate) fn mark(&self, id: u32) -> bool {
        self.progress.mark(&self.layer.index, id)
    }

    /// True if every data chunk whose compressed offset lies in `gap` is local or in
    /// flight (read ahead, say), looking at [`SETTLED_CHUNKS`] chunks at most (false
    /// beyond): a read past such a stretch still reads the blob in order.
    pub(crate) fn is_settled(&self, gap: std::ops::Range<u64>) -> bool {
        let index = self.index();
        let first = super::chunks::first_chunk_at(index, gap.start);
        (first..index.num_chunks() as u32)
            .map_while(|id| index.chunk(id).filter(|c| c.compressed_offset < gap.end))
            .take(SETTLED_CHUNKS + 1)
            .enumerate()
            .all(|(n, c)| {
                n < SETTLED_CHUNKS
                    && (self.progress.is_done(c.id)
                        || key_of(&c).is_none_or(|k| self.fetcher.is_in_flight(&k)))
            })
    }

    /// The chunks holding `[offset, offset + size)` of file `id`, clipped to the file, and
    /// the length of the read.
    pub(crate) fn plan(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<(usize, Vec<Piece>), ReadError> {
        let index = &self.layer.index;
        let entry = index
            .entry(id)
            .filter(|e| e.kind() == EntryKind::Reg)
            .ok_or(ReadError::NotAFile)?;
        if offset >= entry.size() {
            return Ok((0, Vec::new()));
        }
        let len = (size as u64).min(entry.size() - offset) as usize;
        let end = offset + len as u64;
        let ids = entry.chunk_ids();
        let mut pieces = Vec::new();
        let Some(first) = index.chunk_at(id, offset) else {
            return Ok((0, Vec::new()));
        };
        for cid in first.id..ids.end {
            let c = index.chunk(cid).expect("chunk ids of an entry are valid");
            if c.file_offset >= end {
                break;
            }
            let from = offset.max(c.file_offset);
            let to = end.min(c.file_offset + c.size);
            pieces.push(Piece {
                chunk: c,
                from: from - c.file_offset,
                at: (from - offset) as usize,
                len: (to - from) as usize,
            });
        }
        Ok((len, pieces))
    }

    /// Copies the local pieces into `buf`; returns the pieces that are not local.
    pub(crate) fn fill_local(
        &self,
        pieces: Vec<Piece>,
        buf: &mut [u8],
    ) -> Result<Vec<Piece>, ReadError> {
        let mut missing = Vec::new();
        for p in pieces {
            let Some(key) = key_of(&p.chunk) else {
                continue; // a hole: the buffer is zeroed
            };
            let out = &mut buf[p.at..p.at + p.len];
            match self.ctx.cache.read_at(&key, p.from, out)? {
                Some(n) if n == p.len => {
                    self.mark(p.chunk.id);
                }
                _ => missing.push(p),
            }
        }
        Ok(missing)
    }

    /// Copies `[offset, offset + size)` of file `id` into `buf` (resized to the read's
    /// length) from local chunks; false if some chunk is not local.
    pub(crate) fn copy_local(
        &self,
        buf: &mut Vec<u8>,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<bool, ReadError> {
        let (len, pieces) = self.plan(id, offset, size)?;
        buf.clear();
        buf.resize(len, 0);
        Ok(self.fill_local(pieces, buf)?.is_empty())
    }

    /// Up to `len` bytes at `offset` of file `id` if they are local, without counting it
    /// as a read (for looking into files, e.g. ELF headers). A chunk is marked local when
    /// its fetch answers, just before it is written to the cache: such a chunk is taken
    /// from its fetch (joined, not fetched again; fetched again only if it was evicted
    /// meanwhile) instead of being missed. Blocks: only for threads outside the runtime.
    pub(crate) fn peek_local_blocking(
        &self,
        id: EntryId,
        offset: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        let size = len.min(u32::MAX as usize) as u32;
        let (n, pieces) = self.plan(id, offset, size).ok()?;
        let mut buf = vec![0u8; n];
        let missing = self.fill_local(pieces, &mut buf).ok()?;
        if missing.is_empty() {
            return Some(buf);
        }
        if !missing.iter().all(|p| self.progress.is_done(p.chunk.id)) {
            return None;
        }
        let requests: Vec<_> = missing
            .iter()
            .filter_map(|p| request_of(&p.chunk))
            .collect();
        if requests.len() != missing.len() {
            return None;
        }
        let answers =
            self.fetcher
                .get_many_blocking(&self.ctx.runtime, &requests, Priority::OnDemand);
        for (p, answer) in missing.iter().zip(answers) {
            let data = answer.ok()?;
            let from = p.from as usize;
            buf[p.at..p.at + p.len].copy_from_slice(data.get(from..from + p.len)?);
        }
        Some(buf)
    }

    /// Marks the chunks found in the cache as local (an earlier mount, another layer with
    /// the same files).
    pub(crate) fn scan_cache(&self) {
        let index = &self.layer.index;
        for c in index.chunks_in_blob_order() {
            if let Some(k) = key_of(&c) {
                if self.ctx.cache.contains(&k) {
                    self.mark(c.id);
                }
            }
        }
    }
}
