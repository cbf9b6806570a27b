//! The read path of a layer ([`ReadPath`]): from the chunk cache when every chunk of the
//! range is local ([`ReadPath::read_cached`], cheap enough for a FUSE worker thread), else
//! fetching the missing chunks in one call to the fetch layer (deduplicated with fetches in
//! flight, merged into few requests, verified, cached), or waiting for the layer's stream
//! when it is about to deliver them ([`ReadPath::read`], bounded by `fetch.read_timeout`).
//!
//! A fetch of a file's chunk also starts read-ahead (the chunks after it when the file is
//! read in order, neighbouring small files or the rest of a directory read file after
//! file, what an ELF file loads; see `ahead`), and every on-demand fetch feeds the
//! detector that switches the layer to streaming (see `stream`). Reads are recorded in the
//! access log when it is on; failures are logged once per file.

use std::collections::HashSet;
use std::sync::Arc;

use estargz::EntryId;
use parking_lot::Mutex;
use registry::Priority;

use super::access::AccessLog;
use super::ahead::ReadAhead;
use super::chunks::{fetch_range, key_of, request_of};
use super::core::LayerCore;
use super::error::ReadError;
use super::progress::StreamCause;
use super::stream::start_stream;
use crate::cache::ChunkKey;
use crate::fetch::FetchError;

/// Most distinct files whose read errors are logged per layer (then one summary line).
const MAX_LOGGED_ERRORS: usize = 1024;

/// The read path of one layer.
pub(crate) struct ReadPath {
    core: Arc<LayerCore>,
    ahead: Arc<ReadAhead>,
    access: Option<AccessLog>,
    logged: Mutex<HashSet<EntryId>>,
}

impl ReadPath {
    pub(crate) fn new(
        core: Arc<LayerCore>,
        ahead: Arc<ReadAhead>,
        access: Option<AccessLog>,
    ) -> Self {
        ReadPath {
            core,
            ahead,
            access,
            logged: Mutex::default(),
        }
    }

    /// The layer's read-ahead.
    #[cfg(test)]
    pub(crate) fn ahead(&self) -> &Arc<ReadAhead> {
        &self.ahead
    }

    /// The files read so far, in first-read order, when the access log is on.
    pub(crate) fn accessed_files(&self) -> Option<Vec<Vec<u8>>> {
        self.access.as_ref().map(|a| a.files())
    }

    /// Logs a read failure once per file.
    fn log_read_error(&self, id: EntryId, err: &ReadError) {
        let core = &self.core;
        let first = {
            let mut l = self.logged.lock();
            if l.len() > MAX_LOGGED_ERRORS {
                false
            } else {
                l.insert(id)
            }
        };
        if !first {
            return;
        }
        let path = String::from_utf8_lossy(&core.index().path_of(id)).into_owned();
        if self.logged.lock().len() > MAX_LOGGED_ERRORS {
            tracing::warn!(layer = %core.source.digest, "too many files failing to read; not logging more");
        } else {
            tracing::warn!(layer = %core.source.digest, path = %format!("/{path}"), error = %err, "read failed (EIO)");
        }
    }

    /// Reads `[offset, offset + size)` of file `id` from local chunks only: `Ok(None)` if
    /// some chunk is not local. Never touches the network.
    pub(crate) fn read_cached(
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
    pub(crate) fn read_cached_into(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<bool, ReadError> {
        if !self.core.copy_local(buf, id, offset, size)? {
            return Ok(false);
        }
        self.note_read(id);
        Ok(true)
    }

    /// Reads `[offset, offset + size)` of file `id` (short at the end of the file),
    /// fetching what is not local. Fails within `fetch.read_timeout`; a failure is logged
    /// once per file.
    pub(crate) async fn read(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let timeout = self.core.ctx.settings.fetch.read_timeout;
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

    /// Notes a read of file `id` for the access log and the stream detector's breadth rule
    /// (which may switch the layer to streaming the whole blob from this file on).
    pub(crate) fn note_read(&self, id: EntryId) {
        if self.core.progress.note_file_read(id) {
            let core = &self.core;
            let from = core
                .index()
                .chunks_of(id)
                .find(|c| !c.zeros)
                .map_or(0, |c| c.compressed_offset);
            start_stream(core, from, StreamCause::Breadth);
        }
        if let Some(a) = &self.access {
            a.record(self.core.index(), id);
        }
    }

    async fn read_inner(&self, id: EntryId, offset: u64, size: u32) -> Result<Vec<u8>, ReadError> {
        let core = &self.core;
        let (len, pieces) = core.plan(id, offset, size)?;
        let mut buf = vec![0u8; len];
        let mut missing = core.fill_local(pieces, &mut buf)?;
        if missing.is_empty() {
            return Ok(buf);
        }
        // The link is busy for background fetch until this read has its chunks.
        let _busy = core.ctx.activity.begin();
        let timeout = core.ctx.settings.fetch.read_timeout;
        // Chunks the stream is about to deliver: wait for it, then look again. A chunk in
        // flight (in a stream window, claimed by a region stream, or in another read) is
        // joined below instead.
        let mut waited = false;
        let mut joins_only = true;
        for p in &missing {
            let in_flight = key_of(&p.chunk).is_some_and(|k| core.fetcher.is_in_flight(&k));
            joins_only &= in_flight;
            if !in_flight && core.gate.should_wait(p.chunk.compressed_offset) {
                core.gate
                    .wait_past(p.chunk.compressed_offset, timeout)
                    .await;
                waited = true;
            }
        }
        if waited {
            missing = core.fill_local(missing, &mut buf)?;
            if missing.is_empty() {
                return Ok(buf);
            }
        }
        let mut requests: Vec<_> = missing
            .iter()
            .filter_map(|p| request_of(&p.chunk))
            .collect();
        let wanted = requests.len();
        // Small files of the directory: all of them once it is read file after file, else
        // those right after this one, in the same request. Not for a read that only joins
        // fetches in flight (the prefetch, a stream, another read): whoever started those
        // read ahead already, and a read's extra requests must not depend on whether it
        // came just before or just after the prefetch claimed its chunks.
        let directory = if joins_only {
            Vec::new()
        } else {
            self.ahead.directory(id, &missing)
        };
        let neighbours = if directory.is_empty() && !joins_only {
            self.ahead.neighbours(id, &missing)
        } else {
            Vec::new()
        };
        requests.extend(neighbours.iter().filter_map(request_of));
        tracing::debug!(layer = %core.source.digest,
            file = %String::from_utf8_lossy(&core.index().path_of(id)),
            chunks = requests.len(), directory = directory.len(), "fetching on demand");
        self.ahead.fetch_directory(directory);
        if let (Some(first), Some(last), false) = (missing.first(), missing.last(), joins_only) {
            self.ahead.next_chunks(id, first.chunk.id, last.chunk.id);
        }
        let mut answers = core.fetcher.get_many(&requests, Priority::OnDemand).await;
        let threshold = core.ctx.settings.fetch.stream_threshold;
        let mut fresh = Vec::with_capacity(missing.len());
        let extra = answers.split_off(wanted.min(answers.len()));
        for (c, answer) in neighbours.iter().zip(extra) {
            if answer.is_ok() {
                core.mark(c.id);
            }
        }
        for (p, answer) in missing.iter().zip(answers) {
            let data = answer?;
            let from = p.from as usize;
            if data.len() < from + p.len {
                return Err(ReadError::Fetch(FetchError::Abandoned));
            }
            buf[p.at..p.at + p.len].copy_from_slice(&data[from..from + p.len]);
            fresh.push((p.chunk.file_offset, data));
            // Count each chunk once: concurrent reads of one file (kernel readahead) join
            // the same fetch, and counting every joiner made a 1 MiB read of a 7 MiB
            // layer look like "most of the layer" and stream all of it.
            if core.mark(p.chunk.id) {
                let range = fetch_range(&p.chunk);
                let settled = |gap| core.is_settled(gap);
                let cause = core
                    .progress
                    .record_on_demand(range.clone(), id, threshold, settled);
                if let Some(cause) = cause {
                    start_stream(core, range.start, cause);
                }
            }
        }
        self.ahead.after_fetch(id, fresh);
        Ok(buf)
    }

    /// The key of the cache entry holding the whole contents of file `id` if it is local
    /// as one entry (a single-chunk file), for passthrough opens.
    pub(crate) fn whole_file_key(&self, id: EntryId) -> Option<ChunkKey> {
        let index = self.core.index();
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
