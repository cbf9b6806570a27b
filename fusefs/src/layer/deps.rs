//! Read-ahead of what a program loads before it runs. Starting a dynamically linked
//! program is a chain of dependent reads: the kernel reads the binary, then the dynamic
//! loader it names, the loader reads `/etc/ld.so.cache`, then each shared library in turn.
//! Over a lazy layer each step is a round trip to the registry. Once a file's program
//! headers and dynamic section are local, [`RemoteLayer::after_fetch`] reads what it needs
//! ([`super::elf`]), finds those files in the image's lazy layers (upper layers first, as
//! the overlay shows them, symlinks followed) and fetches them all at once; each fetched
//! library is examined in turn.
//!
//! [`LayerSet`] knows the live layers of a process and, per layer, the image's layer list
//! (from the Prepare labels, see [`super::LayerContext::note_image_layers`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use estargz::{EntryId, EntryKind, ROOT_ID};
use parking_lot::Mutex;

use super::chunks::{request_of, LARGE_CHUNK};
use super::elf::{self, ElfError};
use super::RemoteLayer;
use registry::Priority;

/// Symlinks followed while resolving one path (as the kernel's limit).
const MAX_SYMLINKS: usize = 40;
/// Files larger than this have only their first and last chunks read ahead (a loader maps
/// them but touches little of a huge library).
const MAX_WHOLE_FILE: u64 = 32 << 20;

/// The live layers of a process, by blob digest, and each layer's image layer list.
#[derive(Default)]
pub struct LayerSet {
    layers: Mutex<HashMap<String, Weak<RemoteLayer>>>,
    /// Digest → the image's layer digests, base first.
    images: Mutex<HashMap<String, Vec<String>>>,
    /// Top layer digest → the program its image runs, waiting for the layer to be live.
    programs: Mutex<HashMap<String, Program>>,
}

/// An image's default program: `argv[0]` and the `PATH` it is looked up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// `argv[0]`: a path, or a name looked up in `path`.
    pub argv0: String,
    /// Colon-separated directories.
    pub path: String,
    /// The working directory (for a relative `argv0` with a slash).
    pub cwd: String,
}

impl LayerSet {
    pub(crate) fn register(&self, layer: &Arc<RemoteLayer>) {
        let mut l = self.layers.lock();
        l.retain(|_, w| w.strong_count() > 0);
        l.insert(layer.source.digest.to_string(), Arc::downgrade(layer));
    }

    /// Runs the program read-ahead waiting for `layer`, if any; called once the layer
    /// fetches (its prefetch claimed first, so read-ahead leaves the prefetched chunks to
    /// it).
    pub(crate) fn start_program(&self, layer: &Arc<RemoteLayer>) {
        let pending = self
            .programs
            .lock()
            .remove(&layer.source.digest.to_string());
        if let Some(p) = pending {
            layer.read_ahead_program(&p);
        }
    }

    /// Reads ahead `program` (and what it loads) in the image whose top layer is `top`:
    /// now if that layer is mounted and fetching, else as soon as it is.
    pub(crate) fn note_program(&self, top: &str, program: Program) {
        let live = self.layers.lock().get(top).and_then(Weak::upgrade);
        let mut pending = self.programs.lock();
        match live.filter(|l| l.fetching.load(std::sync::atomic::Ordering::SeqCst)) {
            Some(layer) => {
                drop(pending);
                layer.read_ahead_program(&program);
            }
            None => {
                if pending.len() > 1024 {
                    pending.clear();
                }
                pending.insert(top.to_string(), program);
            }
        }
    }

    /// Records that layer `digest` belongs to an image with `layers` (base first). Lists
    /// in Prepare labels hold the layer and the ones above it only (as the stargz
    /// snapshotter's), so every layer of a list keeps the longest list naming it: once the
    /// base layer is prepared, each layer above knows the layers below too.
    pub(crate) fn note_image(&self, digest: &str, layers: Vec<String>) {
        let mut m = self.images.lock();
        if m.len() > 4096 {
            m.clear();
        }
        let mut all = layers;
        if !all.iter().any(|d| d == digest) {
            all.insert(0, digest.to_string());
        }
        for d in &all {
            if m.get(d).is_none_or(|known| known.len() < all.len()) {
                m.insert(d.clone(), all.clone());
            }
        }
    }

    /// The lazy layers a container on `layer`'s image sees, topmost first (just `layer`
    /// when its image is unknown).
    fn stack(&self, layer: &Arc<RemoteLayer>) -> Vec<Arc<RemoteLayer>> {
        let me = layer.source.digest.to_string();
        let Some(list) = self.images.lock().get(&me).cloned() else {
            return vec![layer.clone()];
        };
        let live = self.layers.lock();
        let mut out: Vec<Arc<RemoteLayer>> = list
            .iter()
            .rev()
            .filter_map(|d| {
                if *d == me {
                    Some(layer.clone())
                } else {
                    live.get(d).and_then(Weak::upgrade)
                }
            })
            .collect();
        if !list.contains(&me) {
            out.insert(0, layer.clone());
        }
        out
    }
}

/// Per-layer bookkeeping: files examined, files read ahead, on-demand misses per directory.
#[derive(Default)]
pub(crate) struct Deps {
    examined: Mutex<HashSet<EntryId>>,
    requested: Mutex<HashSet<EntryId>>,
    misses: Mutex<HashMap<EntryId, u32>>,
}

impl Deps {
    /// Counts an on-demand miss of a small file in directory `dir`; returns the misses
    /// there before this one.
    pub(crate) fn dir_misses(&self, dir: EntryId) -> u32 {
        let mut m = self.misses.lock();
        if m.len() > 65536 {
            m.clear();
        }
        let n = m.entry(dir).or_insert(0);
        *n += 1;
        *n - 1
    }
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The topmost layer holding the path `comps` (no symlinks followed), honouring
/// whiteouts and opaque directories of upper layers.
fn lookup(stack: &[Arc<RemoteLayer>], comps: &[Vec<u8>]) -> Option<(Arc<RemoteLayer>, EntryId)> {
    for layer in stack {
        let index = layer.index();
        let mut cur = ROOT_ID;
        let mut hidden_below = false;
        let mut found = true;
        for c in comps {
            match index.lookup(cur, c) {
                Some(id) => {
                    let e = index.entry(id)?;
                    if e.is_whiteout() {
                        return None;
                    }
                    if e.kind() == EntryKind::Dir && e.is_opaque() {
                        hidden_below = true;
                    }
                    cur = id;
                }
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            return Some((layer.clone(), cur));
        }
        if hidden_below {
            return None;
        }
    }
    None
}

/// Resolves an absolute `path` in the merged view of `stack` to a regular file, following
/// symlinks.
fn resolve(stack: &[Arc<RemoteLayer>], path: &[u8]) -> Option<(Arc<RemoteLayer>, EntryId)> {
    let mut todo: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == b".." {
            cur.pop();
            continue;
        }
        cur.push(c);
        let (layer, id) = lookup(stack, &cur)?;
        let e = layer.index().entry(id)?;
        match e.kind() {
            EntryKind::Dir => {}
            EntryKind::Symlink => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return None;
                }
                cur.pop();
                let target = e.symlink_target()?;
                if target.starts_with(b"/") {
                    cur.clear();
                }
                todo.extend(components(target).rev().map(<[u8]>::to_vec));
            }
            EntryKind::Reg if todo.is_empty() => return Some((layer, id)),
            _ => return None,
        }
    }
    None
}

/// `name` if absolute, else `name` in `dir`.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"/") {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl RemoteLayer {
    /// Called when chunks of file `id` became local: if it is a dynamically linked ELF file
    /// whose headers are now readable, fetches what the loader will load for it.
    /// `fresh`: chunks of the file just fetched, as (offset in the file, contents); they
    /// may not be in the cache yet.
    pub(crate) fn after_fetch(self: &Arc<Self>, id: EntryId, fresh: Vec<(u64, Bytes)>) {
        if !self.ctx.settings.fetch.elf_read_ahead || self.deps.examined.lock().contains(&id) {
            return;
        }
        // Most fetched files are not ELF: when their start is at hand, say so here instead
        // of handing every fetch to a blocking thread.
        let start = fresh.iter().find(|(at, _)| *at == 0).map(|(_, d)| d);
        if start.is_some_and(|d| !d.starts_with(b"\x7fELF")) {
            self.deps.examined.lock().insert(id);
            return;
        }
        let this = self.clone();
        self.ctx
            .runtime
            .spawn_blocking(move || this.examine(id, &fresh));
    }

    fn examine(self: &Arc<Self>, id: EntryId, fresh: &[(u64, Bytes)]) {
        let mut read = |off: u64, len: usize| {
            let hit = fresh.iter().find_map(|(at, data)| {
                let from = off.checked_sub(*at)? as usize;
                (from < data.len()).then(|| data[from..data.len().min(from + len)].to_vec())
            });
            match hit {
                Some(b) if b.len() == len => Some(b),
                _ => self.peek_local(id, off, len),
            }
        };
        // A fetched chunk is answered just before it is written to the cache: a chunk
        // marked local but not readable yet is waited for (briefly).
        let mut waits = 0;
        let result = loop {
            match elf::needs(&mut read) {
                Err(ElfError::Incomplete(off, _))
                    if waits < 100 && self.chunk_is_local(id, off) =>
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
                    tracing::debug!(layer = %self.source.digest, file = %String::from_utf8_lossy(&self.layer.index.path_of(id)),
                        error = %e, "not reading ahead for this ELF file");
                }
                self.deps.examined.lock().insert(id);
                return;
            }
        };
        if !self.deps.examined.lock().insert(id) || needs.is_empty() {
            return;
        }
        let stack = self.ctx.layers.stack(self);
        let path = self.layer.index.path_of(id);
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
        tracing::debug!(layer = %self.source.digest, file = %String::from_utf8_lossy(&path),
            needed = needs.needed.len(), found = wanted.len(), layers = stack.len(),
            "reading ahead what the loader needs");
        for (layer, file) in wanted {
            if layer.deps.requested.lock().insert(file) {
                let l = layer.clone();
                layer
                    .ctx
                    .runtime
                    .spawn(async move { l.fetch_file(file).await });
            }
        }
    }

    /// True when the chunk of file `id` holding `offset` is marked local.
    fn chunk_is_local(&self, id: EntryId, offset: u64) -> bool {
        self.layer
            .index
            .chunk_at(id, offset)
            .is_some_and(|c| self.progress.is_done(c.id))
    }

    /// Fetches `program` as the merged view of this layer's image shows it, and then what
    /// it loads (see [`RemoteLayer::after_fetch`]).
    pub(crate) fn read_ahead_program(self: &Arc<Self>, program: &Program) {
        let stack = self.ctx.layers.stack(self);
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
            tracing::debug!(layer = %self.source.digest, program = %program.argv0, "image program not found in the lazy layers");
            return;
        };
        tracing::debug!(layer = %layer.source.digest, program = %program.argv0,
            file = %String::from_utf8_lossy(&layer.layer.index.path_of(id)), "reading ahead the image's program");
        if layer.deps.requested.lock().insert(id) {
            let l = layer.clone();
            layer
                .ctx
                .runtime
                .spawn(async move { l.fetch_file(id).await });
        }
    }

    /// Fetches the configured start files this layer has (`fetch.start_files`).
    pub(crate) fn fetch_start_files(self: &Arc<Self>) {
        for path in &self.ctx.settings.fetch.start_files {
            let Some((_, id)) = resolve(std::slice::from_ref(self), path.as_bytes()) else {
                continue;
            };
            if self.deps.requested.lock().insert(id) {
                let l = self.clone();
                self.ctx
                    .runtime
                    .spawn(async move { l.fetch_file(id).await });
            }
        }
    }

    /// Fetches file `id` (its first and last chunks only when it is huge), then examines it.
    async fn fetch_file(self: Arc<Self>, id: EntryId) {
        let index = &self.layer.index;
        let Some(entry) = index.entry(id) else { return };
        let ids = entry.chunk_ids();
        let huge = entry.size() > MAX_WHOLE_FILE;
        let chunks: Vec<_> = ids
            .clone()
            .filter(|c| !huge || *c == ids.start || *c + 1 == ids.end)
            .filter(|c| !self.progress.is_done(*c))
            .filter_map(|c| index.chunk(c))
            // The prefetch (or a stream) brings these anyway: not twice.
            .filter(|c| !self.stream.will_cover(c.compressed_offset))
            .collect();
        let mut fresh = Vec::new();
        if !chunks.is_empty() {
            let _busy = self.ctx.activity.begin();
            let (large, small): (Vec<_>, Vec<_>) =
                chunks.into_iter().partition(|c| c.size > LARGE_CHUNK);
            let requests: Vec<_> = small.iter().filter_map(request_of).collect();
            let answers = self.fetcher.get_many(&requests, Priority::OnDemand).await;
            for (c, a) in small.iter().zip(answers) {
                if let Ok(data) = a {
                    self.progress.mark(index, c.id);
                    fresh.push((c.file_offset, data));
                }
            }
            for c in &large {
                if self.fetch_large(c).await.is_err() {
                    return;
                }
            }
        }
        self.after_fetch(id, fresh);
    }
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn components_skip_empty_and_dot() {
        let c: Vec<&[u8]> = components(b"//lib/./x86_64-linux-gnu//libc.so.6").collect();
        assert_eq!(c, vec![&b"lib"[..], b"x86_64-linux-gnu", b"libc.so.6"]);
    }
}
