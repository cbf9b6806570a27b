//! Reading file contents: from the chunk cache when every chunk of the range is local
//! ([`RemoteLayer::read_cached`], cheap enough for a FUSE worker thread), else fetching the
//! missing chunks in one call to the fetcher (deduplicated with fetches in flight, merged
//! into few requests, verified, cached), or waiting for the layer's stream when it is about
//! to deliver them ([`RemoteLayer::read`], bounded by `fetch.read_timeout`).
//!
//! A fetch of a file's chunk also starts fetching the file's next chunk (read-ahead), and
//! every on-demand fetch feeds the detector that switches the layer to streaming.

use std::io::{BufRead, Read};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use estargz::{Chunk, EntryId, EntryKind};
use tokio::runtime::Handle;

use super::chunks::{fetch_range, key_of, request_of, LARGE_CHUNK};
use super::{ReadError, RemoteLayer};
use crate::cache::ChunkKey;
use crate::fetch::FetchError;
use registry::{BlobStream, Priority};

/// One chunk's share of a read: where its bytes go in the output buffer.
struct Piece {
    chunk: Chunk,
    /// Offset in the chunk.
    from: u64,
    /// Offset in the output buffer.
    at: usize,
    len: usize,
}

impl RemoteLayer {
    /// The chunks holding `[offset, offset + size)` of file `id`, clipped to the file, and
    /// the length of the read.
    fn plan(&self, id: EntryId, offset: u64, size: u32) -> Result<(usize, Vec<Piece>), ReadError> {
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
    fn fill_local(&self, pieces: Vec<Piece>, buf: &mut [u8]) -> Result<Vec<Piece>, ReadError> {
        let mut missing = Vec::new();
        for p in pieces {
            let Some(key) = key_of(&p.chunk) else {
                continue; // a hole: the buffer is zeroed
            };
            let out = &mut buf[p.at..p.at + p.len];
            match self.ctx.cache.read_at(&key, p.from, out)? {
                Some(n) if n == p.len => {
                    self.progress.mark(&self.layer.index, p.chunk.id);
                }
                _ => missing.push(p),
            }
        }
        Ok(missing)
    }

    /// Reads `[offset, offset + size)` of file `id` from local chunks only: `Ok(None)` if
    /// some chunk is not local. Never touches the network.
    pub fn read_cached(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let mut buf = Vec::new();
        Ok(self
            .read_cached_into(id, offset, size, &mut buf)?
            .then_some(buf))
    }

    /// [`RemoteLayer::read_cached`] into a caller's buffer (cleared and resized to the
    /// read's length), so a FUSE worker can reuse one buffer for every read: a fresh
    /// multi-100-KiB buffer per read is a new mapping each time (see `memory`). `Ok(false)`
    /// if some chunk is not local (the buffer's contents are then unspecified).
    pub fn read_cached_into(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<bool, ReadError> {
        if !self.copy_local(id, offset, size, buf)? {
            return Ok(false);
        }
        self.note_read(id);
        Ok(true)
    }

    /// Up to `len` bytes at `offset` of file `id` if they are local, without counting it
    /// as a read (for looking into files, e.g. ELF headers).
    pub(crate) fn peek_local(&self, id: EntryId, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let size = len.min(u32::MAX as usize) as u32;
        self.copy_local(id, offset, size, &mut buf)
            .ok()?
            .then_some(buf)
    }

    /// Copies `[offset, offset + size)` of file `id` into `buf` (resized to the read's
    /// length) from local chunks; false if some chunk is not local.
    fn copy_local(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<bool, ReadError> {
        let (len, pieces) = self.plan(id, offset, size)?;
        buf.clear();
        buf.resize(len, 0);
        Ok(self.fill_local(pieces, buf)?.is_empty())
    }

    /// Reads `[offset, offset + size)` of file `id` (short at the end of the file),
    /// fetching what is not local. Fails within `fetch.read_timeout`; a failure is logged
    /// once per file.
    pub async fn read(
        self: &Arc<Self>,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let timeout = self.ctx.settings.fetch.read_timeout;
        let result = match tokio::time::timeout(timeout, self.read_inner(id, offset, size)).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout(timeout)),
        };
        match &result {
            Ok(_) => self.note_read(id),
            Err(ReadError::NotAFile) => {}
            Err(e) => self.log_read_error(id, e),
        }
        result
    }

    /// Notes a read of file `id` for the access log.
    pub(crate) fn note_read(&self, id: EntryId) {
        if let Some(a) = &self.access {
            a.record(&self.layer.index, id);
        }
    }

    async fn read_inner(
        self: &Arc<Self>,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let (len, pieces) = self.plan(id, offset, size)?;
        let mut buf = vec![0u8; len];
        let mut missing = self.fill_local(pieces, &mut buf)?;
        if missing.is_empty() {
            return Ok(buf);
        }
        // The link is busy for background fetch until this read has its chunks.
        let _busy = self.ctx.activity.begin();
        let timeout = self.ctx.settings.fetch.read_timeout;
        // Chunks the stream is about to deliver: wait for it, then look again. A chunk in
        // flight (in a stream window or another read) is joined below instead.
        let mut waited = false;
        for p in &missing {
            let in_flight = key_of(&p.chunk).is_some_and(|k| self.fetcher.is_in_flight(&k));
            if !in_flight && self.stream.should_wait(p.chunk.compressed_offset) {
                self.stream
                    .wait_past(p.chunk.compressed_offset, timeout)
                    .await;
                waited = true;
            }
        }
        if waited {
            missing = self.fill_local(missing, &mut buf)?;
            if missing.is_empty() {
                return Ok(buf);
            }
        }
        let (large, small): (Vec<Piece>, Vec<Piece>) = missing
            .into_iter()
            .partition(|p| p.chunk.size > LARGE_CHUNK);
        for p in &large {
            self.fetch_large(&p.chunk).await?;
        }
        missing = self.fill_local(large, &mut buf)?;
        if !missing.is_empty() {
            return Err(ReadError::Cache(
                "a large chunk vanished from the cache".into(),
            ));
        }
        if small.is_empty() {
            self.after_fetch(id, Vec::new());
            return Ok(buf);
        }
        let mut requests: Vec<_> = small.iter().filter_map(|p| request_of(&p.chunk)).collect();
        let wanted = requests.len();
        let neighbours = self.neighbours(id, &small);
        requests.extend(neighbours.iter().filter_map(request_of));
        tracing::debug!(layer = %self.source.digest,
            file = %String::from_utf8_lossy(&self.layer.index.path_of(id)),
            chunks = requests.len(), "fetching on demand");
        self.read_ahead(id, small.last().map(|p| p.chunk.id));
        let answers = self.fetcher.get_many(&requests, Priority::OnDemand).await;
        let threshold = self.ctx.settings.fetch.stream_threshold;
        let mut fresh = Vec::with_capacity(small.len());
        let mut answers = answers;
        let extra = answers.split_off(wanted.min(answers.len()));
        for (c, answer) in neighbours.iter().zip(extra) {
            if answer.is_ok() {
                self.progress.mark(&self.layer.index, c.id);
            }
        }
        for (p, answer) in small.iter().zip(answers) {
            let data = answer?;
            fresh.push((p.chunk.file_offset, data.clone()));
            let from = p.from as usize;
            if data.len() < from + p.len {
                return Err(ReadError::Fetch(FetchError::Abandoned));
            }
            buf[p.at..p.at + p.len].copy_from_slice(&data[from..from + p.len]);
            // Count each chunk once: concurrent reads of one file (kernel readahead) join
            // the same fetch, and counting every joiner made a 1 MiB read of a 7 MiB
            // layer look like "most of the layer" and stream all of it.
            if self.progress.mark(&self.layer.index, p.chunk.id) {
                let range = fetch_range(&p.chunk);
                if self.progress.record_on_demand(range.clone(), id, threshold) {
                    self.start_stream(range.start);
                }
            }
        }
        self.after_fetch(id, fresh);
        Ok(buf)
    }

    /// Small files of the same directory right after file `id`'s chunks in the blob, not
    /// local yet, up to `fetch.neighbour_read_ahead` compressed bytes (none when `id` is
    /// not itself a small single-chunk file).
    /// The window doubles with each on-demand miss in the same directory (up to 8 times
    /// the setting): a directory read file after file (a package being imported) comes in
    /// few requests, one read once costs little.
    fn neighbours(&self, id: EntryId, pieces: &[Piece]) -> Vec<Chunk> {
        let base = self.ctx.settings.fetch.neighbour_read_ahead;
        let index = &self.layer.index;
        let (Some(first), Some(entry)) = (pieces.first(), index.entry(id)) else {
            return Vec::new();
        };
        let small = |c: &Chunk| c.file_offset == 0 && c.compressed_len <= base;
        if base == 0 || pieces.len() != 1 || entry.chunk_ids().len() != 1 || !small(&first.chunk) {
            return Vec::new();
        }
        let parent = entry.parent();
        let budget = base << self.deps.dir_misses(parent).min(3);
        let mut out = Vec::new();
        let (mut used, mut end) = (0u64, fetch_range(&first.chunk).end);
        let mut next = first.chunk.id + 1;
        while let Some(c) = index.chunk(next) {
            next += 1;
            let Some(e) = index.entry(c.entry) else { break };
            let range = fetch_range(&c);
            // Adjacent in the blob (a small gap: tar headers), same directory, whole file.
            if range.start > end + (4 << 10)
                || e.parent() != parent
                || e.chunk_ids().len() != 1
                || c.file_offset != 0
                || used + (range.end - range.start) > budget
            {
                break;
            }
            used += range.end - range.start;
            end = range.end;
            if !self.progress.is_done(c.id)
                && key_of(&c).is_some()
                && !self.stream.will_cover(c.compressed_offset)
            {
                out.push(c);
            }
        }
        out
    }

    /// Starts fetching the chunk after `last` of file `id`, if any and not local.
    fn read_ahead(self: &Arc<Self>, id: EntryId, last: Option<u32>) {
        let index = &self.layer.index;
        let Some(last) = last else { return };
        let Some(entry) = index.entry(id) else { return };
        let next = last + 1;
        if !entry.chunk_ids().contains(&next) || self.progress.is_done(next) {
            return;
        }
        let Some(chunk) = index.chunk(next) else {
            return;
        };
        if chunk.size > LARGE_CHUNK || self.stream.should_wait(chunk.compressed_offset) {
            return;
        }
        let Some(req) = request_of(&chunk) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.fetcher.get(&req, Priority::Prefetch).await;
            if let Ok(data) = r {
                this.progress.mark(&this.layer.index, next);
                this.after_fetch(id, vec![(chunk.file_offset, data)]);
            }
        });
    }

    /// Switches the layer to streaming the rest of the blob from `from`.
    fn start_stream(self: &Arc<Self>, from: u64) {
        if self.is_closed() {
            return;
        }
        let this = self.clone();
        let end = self.layer.footer.data_end();
        tokio::spawn(async move {
            tracing::info!(layer = %this.source.digest, from, "workload reads most of the layer: streaming the rest of the blob");
            let before = this.progress.state();
            this.progress.set_state(super::FetchState::Streaming);
            let r = match this.claim_region(from, end) {
                Ok(Some(region)) => region.run_windows().await,
                Ok(None) => Ok(Default::default()),
                Err(e) => Err(e),
            };
            this.progress.set_state(before);
            match r {
                Ok(s) => tracing::info!(
                    layer = %this.source.digest,
                    windows = s.windows,
                    chunks = s.chunks,
                    bytes = s.bytes,
                    skipped_local = s.skipped_local,
                    skipped_in_flight = s.skipped_in_flight,
                    "stream finished"
                ),
                Err(super::stream::StreamError::Busy) => this.progress.rearm_stream(),
                Err(e) => {
                    tracing::warn!(layer = %this.source.digest, error = %e, "stream stopped; reads fetch chunk by chunk");
                    this.progress.rearm_stream();
                }
            }
        });
    }

    /// Fetches a chunk too large for memory by streaming it through the decoder into a
    /// cache entry (verified when it is committed).
    pub(crate) async fn fetch_large(self: &Arc<Self>, chunk: &Chunk) -> Result<(), ReadError> {
        let Some(key) = key_of(chunk) else {
            return Ok(());
        };
        let stream = self
            .blob
            .stream_range(fetch_range(chunk), Priority::OnDemand);
        let (cache, compression, handle) = (
            self.ctx.cache.clone(),
            self.layer.index.compression(),
            Handle::current(),
        );
        let (inner, size) = (chunk.inner_offset, chunk.size);
        let id = chunk.id;
        tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(
                256 << 10,
                StreamReader {
                    stream,
                    handle,
                    current: Bytes::new(),
                },
            );
            let mut writer = cache.writer(key).map_err(|e| e.to_string())?;
            let mut failed = None;
            estargz::chunk::decompress_stream(compression, reader, inner, size, &mut |b| {
                writer.write(b).map_err(|e| {
                    failed = Some(e.to_string());
                    std::io::Error::other("cache write failed")
                })
            })
            .map_err(|e| failed.take().unwrap_or_else(|| e.to_string()))?;
            writer.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ReadError::LargeChunk(e.to_string()))?
        .map_err(ReadError::LargeChunk)?;
        self.progress.mark(&self.layer.index, id);
        Ok(())
    }

    /// The key of the cache entry holding the whole contents of file `id` if it is local
    /// as one entry (a single-chunk file), for passthrough opens.
    pub fn whole_file_key(&self, id: EntryId) -> Option<ChunkKey> {
        let index = &self.layer.index;
        let e = index.entry(id)?;
        let ids = e.chunk_ids();
        if ids.len() != 1 {
            return None;
        }
        let c = index.chunk(ids.start)?;
        if c.file_offset != 0 || c.size != e.size() {
            return None;
        }
        key_of(&c)
    }
}

/// A blocking `Read` over a [`BlobStream`] (for decoders on blocking threads).
struct StreamReader {
    stream: BlobStream,
    handle: Handle,
    current: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for StreamReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next_chunk()) {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
    }
}
