//! Read-ahead of one layer ([`ReadAhead`]): fetching what reads will ask for next, before
//! they ask.
//!
//! - Neighbours: small files of the same directory right after a small file read on demand
//!   ([`ReadAhead::neighbours`]), and the next chunk of a file ([`ReadAhead::next_chunk`]).
//! - What a program loads before it runs. Starting a dynamically linked program is a chain
//!   of dependent reads: the kernel reads the binary, then the dynamic loader it names, the
//!   loader reads `/etc/ld.so.cache`, then each shared library in turn. Over a lazy layer
//!   each step is a round trip to the registry. Once a file's program headers and dynamic
//!   section are local, [`ReadAhead::after_fetch`] reads what it needs (`elf`), finds those
//!   files in the image's lazy layers (upper layers first, as the overlay shows them,
//!   symlinks followed; `set`) and fetches them all at once; each fetched library is
//!   examined in turn. The image's own program is read ahead the same way once its top
//!   layer fetches ([`ReadAhead::read_ahead_program`]), and `fetch.start_files` when a
//!   layer starts fetching.
//!
//! Read-ahead leaves chunks a stream or the prefetch will deliver to them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use estargz::{Chunk, EntryId};
use parking_lot::Mutex;
use registry::Priority;

use super::chunks::{fetch_range, key_of, request_of};
use super::core::{LayerCore, Piece};
use super::elf::{self, ElfError};
use super::set::{join, resolve, Program, StackLayer};
use crate::fetch::LARGE_CHUNK;

/// Files larger than this have only their first and last chunks read ahead (a loader maps
/// them but touches little of a huge library).
const MAX_WHOLE_FILE: u64 = 32 << 20;

/// The read-ahead of one layer and its bookkeeping: files examined, files read ahead,
/// on-demand misses per directory.
pub(crate) struct ReadAhead {
    core: Arc<LayerCore>,
    examined: Mutex<HashSet<EntryId>>,
    requested: Mutex<HashSet<EntryId>>,
    misses: Mutex<HashMap<EntryId, u32>>,
}

impl StackLayer for ReadAhead {
    fn digest(&self) -> String {
        self.core.source.digest.to_string()
    }

    fn index(&self) -> &estargz::LayerIndex {
        self.core.index()
    }

    fn is_fetching(&self) -> bool {
        self.core.fetching.load(Ordering::SeqCst)
    }

    fn read_ahead_program(self: Arc<Self>, program: &Program) {
        ReadAhead::read_ahead_program(&self, program);
    }

    fn fetch_ahead(self: Arc<Self>, id: EntryId) {
        if self.requested.lock().insert(id) {
            let runtime = self.core.ctx.runtime.clone();
            runtime.spawn(async move { self.fetch_file(id).await });
        }
    }
}

impl ReadAhead {
    pub(crate) fn new(core: Arc<LayerCore>) -> Arc<Self> {
        Arc::new(ReadAhead {
            core,
            examined: Mutex::default(),
            requested: Mutex::default(),
            misses: Mutex::default(),
        })
    }

    /// Counts an on-demand miss of a small file in directory `dir`; returns the misses
    /// there before this one.
    fn dir_misses(&self, dir: EntryId) -> u32 {
        let mut m = self.misses.lock();
        if m.len() > 65536 {
            m.clear();
        }
        let n = m.entry(dir).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// Small files of the same directory right after file `id`'s chunks in the blob, not
    /// local yet, up to `fetch.neighbour_read_ahead` compressed bytes (none when `id` is
    /// not itself a small single-chunk file).
    /// The window doubles with each on-demand miss in the same directory (up to 8 times
    /// the setting): a directory read file after file (a package being imported) comes in
    /// few requests, one read once costs little.
    pub(crate) fn neighbours(&self, id: EntryId, pieces: &[Piece]) -> Vec<Chunk> {
        let core = &self.core;
        let base = core.ctx.settings.fetch.neighbour_read_ahead;
        let index = core.index();
        let (Some(first), Some(entry)) = (pieces.first(), index.entry(id)) else {
            return Vec::new();
        };
        let small = |c: &Chunk| c.file_offset == 0 && c.compressed_len <= base;
        if base == 0 || pieces.len() != 1 || entry.chunk_ids().len() != 1 || !small(&first.chunk) {
            return Vec::new();
        }
        let parent = entry.parent();
        let budget = base << self.dir_misses(parent).min(3);
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
            if !core.progress.is_done(c.id)
                && key_of(&c).is_some()
                && !core.gate.will_cover(c.compressed_offset)
            {
                out.push(c);
            }
        }
        out
    }

    /// Starts fetching the chunk after `last` of file `id`, if any and not local.
    pub(crate) fn next_chunk(self: &Arc<Self>, id: EntryId, last: Option<u32>) {
        let core = &self.core;
        let index = core.index();
        let Some(last) = last else { return };
        let Some(entry) = index.entry(id) else { return };
        let next = last + 1;
        if !entry.chunk_ids().contains(&next) || core.progress.is_done(next) {
            return;
        }
        let Some(chunk) = index.chunk(next) else {
            return;
        };
        if chunk.size > LARGE_CHUNK || core.gate.should_wait(chunk.compressed_offset) {
            return;
        }
        let Some(req) = request_of(&chunk) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.core.fetcher.get(&req, Priority::Prefetch).await;
            if let Ok(data) = r {
                this.core.mark(next);
                this.after_fetch(id, vec![(chunk.file_offset, data)]);
            }
        });
    }

    /// Called when chunks of file `id` became local: if it is a dynamically linked ELF file
    /// whose headers are now readable, fetches what the loader will load for it.
    /// `fresh`: chunks of the file just fetched, as (offset in the file, contents); they
    /// may not be in the cache yet.
    pub(crate) fn after_fetch(self: &Arc<Self>, id: EntryId, fresh: Vec<(u64, Bytes)>) {
        let core = &self.core;
        if !core.ctx.settings.fetch.elf_read_ahead || self.examined.lock().contains(&id) {
            return;
        }
        // Most fetched files are not ELF: when their start is at hand, say so here instead
        // of handing every fetch to a blocking thread.
        let start = fresh.iter().find(|(at, _)| *at == 0).map(|(_, d)| d);
        if start.is_some_and(|d| !d.starts_with(b"\x7fELF")) {
            self.examined.lock().insert(id);
            return;
        }
        let this = self.clone();
        core.ctx
            .runtime
            .spawn_blocking(move || this.examine(id, &fresh));
    }

    fn examine(self: &Arc<Self>, id: EntryId, fresh: &[(u64, Bytes)]) {
        let core = &self.core;
        let mut read = |off: u64, len: usize| {
            let hit = fresh.iter().find_map(|(at, data)| {
                let from = off.checked_sub(*at)? as usize;
                (from < data.len()).then(|| data[from..data.len().min(from + len)].to_vec())
            });
            match hit {
                Some(b) if b.len() == len => Some(b),
                _ => core.peek_local(id, off, len),
            }
        };
        // A fetched chunk is answered just before it is written to the cache: a chunk
        // marked local but not readable yet is waited for (briefly).
        let mut waits = 0;
        let result = loop {
            match elf::needs(&mut read) {
                Err(ElfError::Incomplete(off, _))
                    if waits < 100 && core.chunk_is_local(id, off) =>
                {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                r => break r,
            }
        };
        let needs = match result {
            Ok(n) => n,
            Err(ElfError::Incomplete(..)) => return, // again when more chunks are local
            Err(e) => {
                if e != ElfError::NotElf {
                    tracing::debug!(layer = %core.source.digest, file = %String::from_utf8_lossy(&core.index().path_of(id)),
                        error = %e, "not reading ahead for this ELF file");
                }
                self.examined.lock().insert(id);
                return;
            }
        };
        if !self.examined.lock().insert(id) || needs.is_empty() {
            return;
        }
        let stack = core.ctx.layers.stack(self.clone());
        let path = core.index().path_of(id);
        let origin = {
            let mut o = b"/".to_vec();
            if let Some(i) = path.iter().rposition(|&b| b == b'/') {
                o.extend_from_slice(&path[..i]);
            }
            o
        };
        let mut wanted = Vec::new();
        if let Some(interp) = &needs.interpreter {
            wanted.extend(resolve(&stack, &join(&origin, interp)));
        }
        if !needs.needed.is_empty() {
            wanted.extend(resolve(&stack, b"/etc/ld.so.cache"));
        }
        let dirs = elf::library_dirs(&needs, &origin);
        for name in &needs.needed {
            let found = if name.contains(&b'/') {
                resolve(&stack, &join(&origin, name))
            } else {
                dirs.iter().find_map(|d| resolve(&stack, &join(d, name)))
            };
            wanted.extend(found);
        }
        tracing::debug!(layer = %core.source.digest, file = %String::from_utf8_lossy(&path),
            needed = needs.needed.len(), found = wanted.len(), layers = stack.len(),
            "reading ahead what the loader needs");
        for (layer, file) in wanted {
            layer.fetch_ahead(file);
        }
    }

    /// Fetches `program` as the merged view of this layer's image shows it, and then what
    /// it loads (see [`ReadAhead::after_fetch`]).
    pub(crate) fn read_ahead_program(self: &Arc<Self>, program: &Program) {
        let core = &self.core;
        let stack = core.ctx.layers.stack(self.clone());
        let argv0 = program.argv0.as_bytes();
        let found = if argv0.contains(&b'/') {
            resolve(&stack, &join(program.cwd.as_bytes(), argv0))
        } else {
            program
                .path
                .split(':')
                .filter(|d| d.starts_with('/'))
                .find_map(|d| resolve(&stack, &join(d.as_bytes(), argv0)))
        };
        let Some((layer, id)) = found else {
            tracing::debug!(layer = %core.source.digest, program = %program.argv0, "image program not found in the lazy layers");
            return;
        };
        tracing::debug!(layer = %layer.digest(), program = %program.argv0,
            file = %String::from_utf8_lossy(&layer.index().path_of(id)), "reading ahead the image's program");
        layer.fetch_ahead(id);
    }

    /// Fetches the configured start files this layer has (`fetch.start_files`).
    pub(crate) fn fetch_start_files(self: &Arc<Self>) {
        let me: Arc<dyn StackLayer> = self.clone();
        for path in &self.core.ctx.settings.fetch.start_files {
            if let Some((_, id)) = resolve(std::slice::from_ref(&me), path.as_bytes()) {
                self.clone().fetch_ahead(id);
            }
        }
    }

    /// Fetches file `id` (its first and last chunks only when it is huge), then examines it.
    async fn fetch_file(self: Arc<Self>, id: EntryId) {
        let core = &self.core;
        let index = core.index();
        let Some(entry) = index.entry(id) else { return };
        let ids = entry.chunk_ids();
        let huge = entry.size() > MAX_WHOLE_FILE;
        let chunks: Vec<_> = ids
            .clone()
            .filter(|c| !huge || *c == ids.start || *c + 1 == ids.end)
            .filter(|c| !core.progress.is_done(*c))
            .filter_map(|c| index.chunk(c))
            // The prefetch (or a stream) brings these anyway: not twice.
            .filter(|c| !core.gate.will_cover(c.compressed_offset))
            .collect();
        let mut fresh = Vec::new();
        if !chunks.is_empty() {
            let _busy = core.ctx.activity.begin();
            let requests: Vec<_> = chunks.iter().filter_map(request_of).collect();
            let answers = core.fetcher.get_many(&requests, Priority::OnDemand).await;
            for (c, a) in chunks.iter().zip(answers) {
                match a {
                    Ok(data) => {
                        core.mark(c.id);
                        // Large chunks are served from their cache entry; not kept here.
                        if c.size <= LARGE_CHUNK {
                            fresh.push((c.file_offset, data));
                        }
                    }
                    Err(_) if c.size > LARGE_CHUNK => return,
                    Err(_) => {}
                }
            }
        }
        self.after_fetch(id, fresh);
    }
}
