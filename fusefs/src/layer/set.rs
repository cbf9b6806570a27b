//! The lazy layers of a process as images stack them ([`LayerSet`]): the live layers by
//! blob digest, each layer's image layer list (from the Prepare labels, see
//! [`super::LayerContext::note_image_layers`]) and the programs images run
//! ([`Program`]), so read-ahead in one layer can find files in the others: a path resolved
//! in the merged view of an image's lazy layers ([`resolve`]: upper layers first, whiteouts
//! and opaque directories honoured, symlinks followed).
//!
//! Layers take part through [`StackLayer`], so this module knows nothing of how a layer
//! reads or fetches.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use estargz::{EntryId, EntryKind, LayerIndex, ROOT_ID};
use parking_lot::Mutex;

/// Symlinks followed while resolving one path (as the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// A layer as the [`LayerSet`] sees it.
pub(crate) trait StackLayer: Send + Sync {
    /// The layer blob's digest.
    fn digest(&self) -> String;
    /// Its tree.
    fn index(&self) -> &LayerIndex;
    /// True once its fetching started (program read-ahead waits for that).
    fn is_fetching(&self) -> bool;
    /// Reads ahead `program` (and what it loads) in the merged view of its image.
    fn read_ahead_program(self: Arc<Self>, program: &Program);
    /// Fetches file `id` ahead of reads (once per file), then what it loads.
    fn fetch_ahead(self: Arc<Self>, id: EntryId);
}

/// The live layers of a process, by blob digest, and each layer's image layer list.
#[derive(Default)]
pub struct LayerSet {
    layers: Mutex<HashMap<String, Weak<dyn StackLayer>>>,
    /// Digest → the image's layer digests, base first.
    images: Mutex<HashMap<String, Vec<String>>>,
    /// Top layer digest → the program its image runs, waiting for the layer to fetch or
    /// for every layer of its image to be live.
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
    /// Adds a live layer (opened; mounted or opened ahead of its Prepare). It may complete
    /// the view an image's program waits for: see [`LayerSet::note_program`].
    /// A layer opened ahead does not displace a mounted one of the same blob (another
    /// image's): a layer registers again when it starts fetching.
    pub(crate) fn register(&self, layer: Arc<dyn StackLayer>) {
        let digest = layer.digest();
        {
            let mut l = self.layers.lock();
            l.retain(|_, w| w.strong_count() > 0);
            let mounted = l
                .get(&digest)
                .and_then(Weak::upgrade)
                .is_some_and(|old| old.is_fetching());
            if !mounted || layer.is_fetching() {
                l.insert(digest.clone(), Arc::downgrade(&layer));
            }
        }
        let top = self
            .images
            .lock()
            .get(&digest)
            .and_then(|list| list.last().cloned())
            .unwrap_or(digest);
        self.start_if_complete(&top);
    }

    /// Registers `layer` again (now fetching) and runs the program read-ahead waiting for
    /// it, if any; called once the layer fetches (its prefetch claimed first, so read-ahead
    /// leaves the prefetched chunks to it).
    pub(crate) fn start_program(&self, layer: Arc<dyn StackLayer>) {
        self.register(layer.clone());
        let pending = self.programs.lock().remove(&layer.digest());
        if let Some(p) = pending {
            layer.read_ahead_program(&p);
        }
    }

    /// Reads ahead `program` (and what it loads) in the image whose top layer is `top`:
    /// now if that layer is mounted and fetching, or if every layer of the image is live
    /// (mounted or opened ahead of its Prepare, see `super::early`: the merged view is
    /// whole, so the program and its libraries are found where the container will find
    /// them); else as soon as one of these holds.
    pub(crate) fn note_program(&self, top: &str, program: Program) {
        let live = self.layers.lock().get(top).and_then(Weak::upgrade);
        if let Some(layer) = live.filter(|l| l.is_fetching()) {
            layer.read_ahead_program(&program);
            return;
        }
        {
            let mut pending = self.programs.lock();
            if pending.len() > 1024 {
                pending.clear();
            }
            pending.insert(top.to_string(), program);
        }
        self.start_if_complete(top);
    }

    /// Runs the program read-ahead waiting for `top` if every layer of its image is live.
    fn start_if_complete(&self, top: &str) {
        if !self.programs.lock().contains_key(top) {
            return;
        }
        let list = self
            .images
            .lock()
            .get(top)
            .cloned()
            .unwrap_or_else(|| vec![top.to_string()]);
        let layer = {
            let live = self.layers.lock();
            let all = list
                .iter()
                .all(|d| live.get(d).is_some_and(|w| w.strong_count() > 0));
            all.then(|| live.get(top).and_then(Weak::upgrade)).flatten()
        };
        let Some(layer) = layer else { return };
        let pending = self.programs.lock().remove(top);
        if let Some(p) = pending {
            layer.read_ahead_program(&p);
        }
    }

    /// True if a live layer of blob `digest` is registered.
    #[cfg(test)]
    pub(crate) fn is_live(&self, digest: &str) -> bool {
        self.layers
            .lock()
            .get(digest)
            .is_some_and(|w| w.strong_count() > 0)
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
    pub(crate) fn stack(&self, layer: Arc<dyn StackLayer>) -> Vec<Arc<dyn StackLayer>> {
        let me = layer.digest();
        let Some(list) = self.images.lock().get(&me).cloned() else {
            return vec![layer.clone()];
        };
        let live = self.layers.lock();
        let mut out: Vec<Arc<dyn StackLayer>> = list
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

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The topmost layer holding the path `comps` (no symlinks followed), honouring
/// whiteouts and opaque directories of upper layers.
fn lookup(
    stack: &[Arc<dyn StackLayer>],
    comps: &[Vec<u8>],
) -> Option<(Arc<dyn StackLayer>, EntryId)> {
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
pub(crate) fn resolve(
    stack: &[Arc<dyn StackLayer>],
    path: &[u8],
) -> Option<(Arc<dyn StackLayer>, EntryId)> {
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

/// `PATH` when an image sets none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The regular file `execve` would run for `name` in the merged view of `stack`: a name
/// with a slash from `cwd`, else the first absolute directory of `path` that has it.
pub(crate) fn find_program(
    stack: &[Arc<dyn StackLayer>],
    path: &str,
    cwd: &[u8],
    name: &[u8],
) -> Option<(Arc<dyn StackLayer>, EntryId)> {
    if name.contains(&b'/') {
        return resolve(stack, &join(cwd, name));
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .find_map(|d| resolve(stack, &join(d.as_bytes(), name)))
}

/// `name` if absolute, else `name` in `dir`.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"/") {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
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
