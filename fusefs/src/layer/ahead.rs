//! Read-ahead of one layer ([`ReadAhead`]): fetching what reads will ask for next, before
//! they ask.
//!
//! - Neighbours: small files of the same directory right after a small file read on demand
//!   ([`ReadAhead::neighbours`]); once a directory has had two small files fetched on
//!   demand, its other small files (`fetch.directory_read_ahead`, [`ReadAhead::directory`]).
//! - The chunks after an on-demand fetch, when the file is read in order
//!   (`fetch.next_chunk_read_ahead`, [`ReadAhead::next_chunks`]); a mapped file faulted
//!   here and there does not pay a chunk ahead of every fault.
//! - What a program loads before it runs. Starting a dynamically linked program is a chain
//!   of dependent reads: the kernel reads the binary, then the dynamic loader it names, the
//!   loader reads `/etc/ld.so.cache`, then each shared library in turn. Over a lazy layer
//!   each step is a round trip to the registry. Once a file's program headers and dynamic
//!   section are local, [`ReadAhead::after_fetch`] reads what it needs (`elf`), finds those
//!   files in the image's lazy layers (upper layers first, as the overlay shows them,
//!   symlinks followed; `set`) and fetches them all at once; each fetched library is
//!   examined in turn. The image's own program is read ahead the same way
//!   ([`ReadAhead::read_ahead_program`]) once its top layer fetches, or earlier, once every
//!   layer of the image is open (the upper ones opened ahead of their Prepare, see
//!   `early`); and `fetch.start_files` when a layer starts fetching. Of an ELF file only what loading it touches is fetched
//!   (`fetch.elf_read_ahead_extent = "loader"`, see [`elf::loader_regions`]): its first
//!   chunk, then the chunks holding its loader tables, writable segments and init code;
//!   the code runs on demand. A large library costs a few chunks, not the whole file.
//! - What a script runs (`fetch.script_read_ahead`, [`ReadAhead::after_fetch`], `script`):
//!   a fetched file starting with `#!` has its interpreter fetched, and a shell script
//!   the programs its commands name; each is then examined as above (an ELF program's
//!   libraries, a script's own commands).
//!
//! Read-ahead leaves chunks a stream or the prefetch will deliver to them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use estargz::{Chunk, EntryId};
use parking_lot::Mutex;
use registry::Priority;

use config::{ElfExtent, NextChunk};

use super::chunks::{fetch_range, key_of, request_of};
use super::core::{LayerCore, Piece};
use super::elf::{self, ElfError};
use super::script;
use super::set::{find_program, join, resolve, Program, StackLayer, DEFAULT_PATH};
use crate::fetch::LARGE_CHUNK;

/// Files larger than this have only their first and last chunks read ahead whole (a
/// loader maps them but touches little of a huge library).
const MAX_WHOLE_FILE: u64 = 32 << 20;
/// Largest compressed chunk of a file that counts as small for directory read-ahead.
const SMALL_FILE: u64 = 256 << 10;
/// Bytes of a script's text looked at for the commands it runs.
const MAX_SCRIPT: usize = 256 << 10;
/// Entries kept in the per-file and per-directory maps before they are cleared.
const MAX_TRACKED: usize = 65536;

/// The read-ahead of one layer and its bookkeeping: files examined, files read ahead,
/// on-demand misses per directory, chunks asked for as loader regions, the last
/// on-demand chunks of each file.
pub(crate) struct ReadAhead {
    core: Arc<LayerCore>,
    examined: Mutex<HashSet<EntryId>>,
    requested: Mutex<HashSet<EntryId>>,
    misses: Mutex<HashMap<EntryId, u32>>,
    directories: Mutex<HashMap<EntryId, u32>>,
    loader_chunks: Mutex<HashSet<u32>>,
    /// Per file: first and last chunk of its last on-demand fetch and the read-ahead after
    /// it, and how many on-demand fetches in a row were in order.
    last_span: Mutex<HashMap<EntryId, (u32, u32, u32)>>,
    /// Read-ahead tasks (fetches and examinations) under way.
    tasks: Arc<AtomicUsize>,
}

/// One read-ahead task under way, counted in [`ReadAhead::tasks`] until dropped.
struct Task(Arc<AtomicUsize>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one more event for `key` in `map` (cleared when it grows past [`MAX_TRACKED`]);
/// returns the count before this one.
fn count(map: &Mutex<HashMap<EntryId, u32>>, key: EntryId) -> u32 {
    let mut m = map.lock();
    if m.len() > MAX_TRACKED {
        m.clear();
    }
    let n = m.entry(key).or_insert(0);
    *n += 1;
    *n - 1
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
        let whole = self.core.ctx.settings.fetch.elf_read_ahead_extent == ElfExtent::Whole;
        self.fetch_once(id, whole);
    }
}

impl ReadAhead {
    pub(crate) fn new(core: Arc<LayerCore>) -> Arc<Self> {
        Arc::new(ReadAhead {
            core,
            examined: Mutex::default(),
            requested: Mutex::default(),
            misses: Mutex::default(),
            directories: Mutex::default(),
            loader_chunks: Mutex::default(),
            last_span: Mutex::default(),
            tasks: Arc::default(),
        })
    }

    /// Counts a task until the returned guard is dropped.
    fn task(&self) -> Task {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        Task(self.tasks.clone())
    }

    /// True while read-ahead tasks (fetches, examinations of fetched files) are under way:
    /// one may start fetches the fetch layer does not know of yet.
    #[cfg(test)]
    pub(crate) fn is_busy(&self) -> bool {
        self.tasks.load(Ordering::SeqCst) > 0
    }

    /// Fetches file `id` ahead of reads, once: all of it when `whole` (first and last
    /// chunks of a huge file), else its first chunk; then examines it.
    fn fetch_once(self: Arc<Self>, id: EntryId, whole: bool) {
        if self.requested.lock().insert(id) {
            let (runtime, task) = (self.core.ctx.runtime.clone(), self.task());
            runtime.spawn(async move {
                let _task = task;
                self.fetch_file(id, whole).await
            });
        }
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
        let budget = base << count(&self.misses, parent).min(3);
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

    /// When file `id` had a second small file of its directory fetched on demand (this
    /// one: `pieces`), the directory's other small files not local or coming yet, up to
    /// `fetch.directory_read_ahead` compressed bytes (in blob order); empty when off.
    pub(crate) fn directory(&self, id: EntryId, pieces: &[Piece]) -> Vec<Chunk> {
        let core = &self.core;
        let budget = core.ctx.settings.fetch.directory_read_ahead;
        let index = core.index();
        let (Some(first), Some(entry)) = (pieces.first(), index.entry(id)) else {
            return Vec::new();
        };
        if budget == 0
            || pieces.len() != 1
            || entry.chunk_ids().len() != 1
            || first.chunk.compressed_len > SMALL_FILE
        {
            return Vec::new();
        }
        let parent = entry.parent();
        if count(&self.directories, parent) != 1 {
            return Vec::new(); // the first miss there, or read ahead already
        }
        let mut out = Vec::new();
        let mut used = 0u64;
        for (_, child) in index.children(parent) {
            let Some(e) = index.entry(child) else {
                continue;
            };
            if child == id || e.kind() != estargz::EntryKind::Reg || e.chunk_ids().len() != 1 {
                continue;
            }
            let Some(c) = index.chunk(e.chunk_ids().start) else {
                continue;
            };
            let len = fetch_range(&c).end - c.compressed_offset;
            if c.compressed_len > SMALL_FILE
                || core.progress.is_done(c.id)
                || core.gate.will_cover(c.compressed_offset)
                || key_of(&c).is_none_or(|k| core.fetcher.is_in_flight(&k))
            {
                continue;
            }
            if used + len > budget {
                break;
            }
            used += len;
            out.push(c);
        }
        out.sort_by_key(|c| c.compressed_offset);
        out
    }

    /// Fetches `chunks` (small files of one directory) in the background of the read that
    /// found them, and marks them local.
    pub(crate) fn fetch_directory(&self, chunks: Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        let (core, task) = (self.core.clone(), self.task());
        self.core.ctx.runtime.spawn(async move {
            let _task = task;
            let requests: Vec<_> = chunks.iter().filter_map(request_of).collect();
            let answers = core.fetcher.get_many(&requests, Priority::Prefetch).await;
            for (c, a) in chunks.iter().zip(answers) {
                if a.is_ok() {
                    core.mark(c.id);
                }
            }
        });
    }

    /// After an on-demand fetch of chunks `first..=last` of file `id`: fetches the chunks
    /// that follow, as `fetch.next_chunk_read_ahead` says: `sequential`: only when this
    /// fetch starts within or right after the file's previous one and the read-ahead after
    /// it, as many decoded bytes as this fetch, doubled for each further fetch in order, up
    /// to `fetch.next_chunk_window`; `always`: the window after every fetch.
    pub(crate) fn next_chunks(self: &Arc<Self>, id: EntryId, first: u32, last: u32) {
        let core = &self.core;
        let settings = &core.ctx.settings.fetch;
        let index = core.index();
        let Some(entry) = index.entry(id) else { return };
        let ids = entry.chunk_ids();
        // In order: this fetch starts within or right after the file's previous one and
        // the chunks fetched ahead of it. The window grows with the run of in-order
        // fetches (the size of this fetch, doubled per step, up to the setting), so a
        // library faulted at two neighbouring places costs a chunk ahead, not a window.
        let mut spans = self.last_span.lock();
        if spans.len() > MAX_TRACKED {
            spans.clear();
        }
        let streak = match spans.get(&id) {
            Some(&(lo, hi, n)) if lo <= first && first <= hi.saturating_add(1) => n + 1,
            _ => 0,
        };
        let fetched: u64 = (first..=last)
            .filter_map(|c| index.chunk(c))
            .map(|c| c.size)
            .sum();
        let window = match settings.next_chunk_read_ahead {
            NextChunk::Off => None,
            NextChunk::Always => Some(settings.next_chunk_window),
            NextChunk::Sequential if streak == 0 => None,
            NextChunk::Sequential => Some(
                fetched
                    .saturating_mul(1 << (streak - 1).min(16))
                    .min(settings.next_chunk_window),
            ),
        };
        // The chunks after `last`, within the window (at least one).
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for next in last.saturating_add(1)..ids.end {
            let Some(window) = window else { break };
            if size >= window && !chunks.is_empty() {
                break;
            }
            let Some(chunk) = index.chunk(next) else {
                break;
            };
            if chunk.size > LARGE_CHUNK || core.gate.should_wait(chunk.compressed_offset) {
                break;
            }
            size += chunk.size;
            chunks.push(chunk);
        }
        let ahead_to = chunks.last().map_or(last, |c| c.id);
        spans.insert(id, (first, ahead_to, streak));
        drop(spans);
        let fetch = !chunks.is_empty();
        if !fetch {
            return;
        }
        let chunks: Vec<_> = chunks
            .into_iter()
            .filter(|c| {
                !core.progress.is_done(c.id)
                    && key_of(c).is_some_and(|k| !core.fetcher.is_in_flight(&k))
            })
            .collect();
        if chunks.is_empty() {
            return;
        }
        let (this, task) = (self.clone(), self.task());
        tokio::spawn(async move {
            let _task = task;
            let requests: Vec<_> = chunks.iter().filter_map(request_of).collect();
            let answers = this
                .core
                .fetcher
                .get_many(&requests, Priority::Prefetch)
                .await;
            let mut fresh = Vec::new();
            for (c, a) in chunks.iter().zip(answers) {
                if let Ok(data) = a {
                    this.core.mark(c.id);
                    fresh.push((c.file_offset, data));
                }
            }
            this.after_fetch(id, fresh);
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
        if let Some(text) = start.filter(|d| d.starts_with(b"#!")) {
            if self.examined.lock().insert(id) && core.ctx.settings.fetch.script_read_ahead {
                self.read_ahead_script(text);
            }
            return;
        }
        if start.is_some_and(|d| !d.starts_with(b"\x7fELF")) {
            self.examined.lock().insert(id);
            return;
        }
        let (this, task) = (self.clone(), self.task());
        core.ctx.runtime.spawn_blocking(move || {
            let _task = task;
            this.examine(id, &fresh)
        });
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
                _ => core.peek_local_blocking(id, off, len),
            }
        };
        let loader = core.ctx.settings.fetch.elf_read_ahead_extent == ElfExtent::Loader;
        let mut regions_complete = true;
        if loader {
            match elf::loader_regions(&mut read) {
                Ok(r) => {
                    regions_complete = r.complete;
                    self.fetch_loader_regions(id, &r.regions)
                }
                Err(ElfError::Incomplete(..)) => {}
                Err(_) => {
                    self.examined.lock().insert(id);
                    return;
                }
            }
        }
        let result = elf::needs(&mut read);
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
        // The dynamic section became local since the regions were taken (fetched by them,
        // or by a read): take them again, whole now, before the file counts as examined —
        // the fetch that brought it may find it examined and not look again.
        if loader && !regions_complete {
            if let Ok(r) = elf::loader_regions(&mut read) {
                self.fetch_loader_regions(id, &r.regions);
            }
        }
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

    /// Fetches what the script starting with `text` runs (see `script`): its interpreter
    /// and, for a shell script, the programs its commands name, as the merged view of this
    /// layer's image shows them; each is examined in turn when fetched.
    fn read_ahead_script(self: &Arc<Self>, text: &[u8]) {
        let Some(interp) = script::interpreter(text) else {
            return;
        };
        let mut names = script::program(&interp);
        if script::is_shell(&interp) {
            names.extend(script::commands(&text[..text.len().min(MAX_SCRIPT)]));
        }
        let stack = self.core.ctx.layers.stack(self.clone());
        let found: Vec<_> = names
            .iter()
            .filter_map(|name| find_program(&stack, DEFAULT_PATH, b"/", name))
            .collect();
        tracing::debug!(layer = %self.core.source.digest, names = names.len(), found = found.len(),
            "reading ahead what a script runs");
        for (layer, file) in found {
            layer.fetch_ahead(file);
        }
    }

    /// Fetches `program` as the merged view of this layer's image shows it, and then what
    /// it loads (see [`ReadAhead::after_fetch`]).
    pub(crate) fn read_ahead_program(self: &Arc<Self>, program: &Program) {
        let core = &self.core;
        let stack = core.ctx.layers.stack(self.clone());
        let found = find_program(
            &stack,
            &program.path,
            program.cwd.as_bytes(),
            program.argv0.as_bytes(),
        );
        let Some((layer, id)) = found else {
            tracing::debug!(layer = %core.source.digest, program = %program.argv0, "image program not found in the lazy layers");
            return;
        };
        let ahead_of_prepare = !core.fetching.load(Ordering::SeqCst);
        tracing::debug!(layer = %layer.digest(), program = %program.argv0, ahead_of_prepare,
            file = %String::from_utf8_lossy(&layer.index().path_of(id)), "reading ahead the image's program");
        layer.fetch_ahead(id);
    }

    /// Fetches the configured start files this layer has (`fetch.start_files`).
    pub(crate) fn fetch_start_files(self: &Arc<Self>) {
        let me: Arc<dyn StackLayer> = self.clone();
        for path in &self.core.ctx.settings.fetch.start_files {
            if let Some((_, id)) = resolve(std::slice::from_ref(&me), path.as_bytes()) {
                self.clone().fetch_once(id, true);
            }
        }
    }

    /// Fetches the chunks of ELF file `id` that hold `regions` (see
    /// [`elf::loader_regions`]) and are not local or asked for yet, then examines it again.
    fn fetch_loader_regions(self: &Arc<Self>, id: EntryId, regions: &[std::ops::Range<u64>]) {
        let core = &self.core;
        let index = core.index();
        let Some(entry) = index.entry(id) else { return };
        let mut chunks = Vec::new();
        {
            let mut asked = self.loader_chunks.lock();
            for cid in entry.chunk_ids() {
                let Some(c) = index.chunk(cid) else { continue };
                let hit = regions
                    .iter()
                    .any(|r| r.start < c.file_offset + c.size && c.file_offset < r.end);
                if hit
                    && !core.progress.is_done(cid)
                    && !core.gate.will_cover(c.compressed_offset)
                    && key_of(&c).is_some()
                    && asked.insert(cid)
                {
                    chunks.push(c);
                }
            }
        }
        if chunks.is_empty() {
            return;
        }
        let (this, task) = (self.clone(), self.task());
        core.ctx.runtime.spawn(async move {
            let _task = task;
            let core = &this.core;
            let _busy = core.ctx.activity.begin();
            let requests: Vec<_> = chunks.iter().filter_map(request_of).collect();
            let answers = core.fetcher.get_many(&requests, Priority::OnDemand).await;
            let mut fresh = Vec::new();
            for (c, a) in chunks.iter().zip(answers) {
                if let Ok(data) = a {
                    core.mark(c.id);
                    if c.size <= LARGE_CHUNK {
                        fresh.push((c.file_offset, data));
                    }
                }
            }
            this.after_fetch(id, fresh);
        });
    }

    /// Fetches file `id` (`whole`: all of it, only its first and last chunks when it is
    /// huge; else its first chunk), then examines it.
    async fn fetch_file(self: Arc<Self>, id: EntryId, whole: bool) {
        let core = &self.core;
        let index = core.index();
        let Some(entry) = index.entry(id) else { return };
        let ids = entry.chunk_ids();
        let huge = entry.size() > MAX_WHOLE_FILE;
        let chunks: Vec<_> = ids
            .clone()
            .filter(|c| *c == ids.start || (whole && (!huge || *c + 1 == ids.end)))
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
