//! Reordering for prioritized files, with the reference's rules (`sortEntries`): earlier
//! duplicates of a name are dropped and the entry keeps its last position; each
//! prioritized path is moved to the front after its parent directories and, for a
//! hardlink, its target. Differences: a parent directory missing from the tar is skipped
//! instead of failing (umoci layers omit unchanged parents), and hardlink cycles are cut.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use super::emit::{clean_name, is_reserved, Emitter};
use super::error::WriteError;
use super::tar_in::TarReader;

/// Bound on parent/hardlink recursion (paths are at most this deep in practice).
const MAX_DEPTH: usize = 4096;

/// Input offsets of the entries to copy, in output order.
pub(crate) struct Plan {
    pub prioritized: Vec<u64>,
    pub rest: Vec<u64>,
    pub missing: Vec<Vec<u8>>,
}

struct Item {
    start: u64,
    /// Cleaned hardlink target.
    link: Option<Vec<u8>>,
}

struct Sorter {
    stream: Vec<Option<Item>>,
    index: HashMap<Vec<u8>, usize>,
    out: Vec<u64>,
    moved: HashSet<Vec<u8>>,
}

/// Scans the plain tar in `file` and orders its entries.
pub(crate) fn plan(file: &File, prioritized: &[Vec<u8>]) -> Result<Plan, WriteError> {
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(WriteError::ReadInput)?;
    let mut reader = TarReader::new(BufReader::with_capacity(256 * 1024, f));
    let mut s = Sorter {
        stream: Vec::new(),
        index: HashMap::new(),
        out: Vec::new(),
        moved: HashSet::new(),
    };
    while let Some(e) = reader.next_entry()? {
        let cleaned = clean_name(&e.name);
        if is_reserved(&cleaned) {
            continue;
        }
        if let Some(old) = s.index.remove(&cleaned) {
            s.stream[old] = None;
        }
        s.index.insert(cleaned, s.stream.len());
        s.stream.push(Some(Item {
            start: e.start,
            link: (e.typeflag == b'1').then(|| clean_name(&e.link_name)),
        }));
    }
    let mut missing = Vec::new();
    for p in prioritized {
        if !s.move_rec(&clean_name(p), 0) {
            missing.push(p.clone());
        }
    }
    let rest = s.stream.into_iter().flatten().map(|i| i.start).collect();
    Ok(Plan {
        prioritized: s.out,
        rest,
        missing,
    })
}

impl Sorter {
    /// Moves `name` (cleaned) and what it needs to the front; false if it is not in the
    /// tar.
    fn move_rec(&mut self, name: &[u8], depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        if name.is_empty() {
            self.take(name);
            return true;
        }
        if !self.index.contains_key(name) && !self.moved.contains(name) {
            return false;
        }
        let parent = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => &name[..i],
            None => &b""[..],
        };
        // A missing parent is fine (the reference fails here).
        self.move_rec(parent, depth + 1);
        let link = self
            .index
            .get(name)
            .and_then(|&i| self.stream[i].as_ref())
            .and_then(|it| it.link.clone());
        if let Some(target) = link {
            if target != name && !self.move_rec(&target, depth + 1) {
                return false;
            }
        }
        self.take(name);
        true
    }

    fn take(&mut self, name: &[u8]) {
        if let Some(i) = self.index.remove(name) {
            if let Some(item) = self.stream[i].take() {
                self.out.push(item.start);
                self.moved.insert(name.to_vec());
            }
        }
    }
}

/// Re-reads entries of a plain tar file by offset, reusing the buffered reader when
/// entries are consecutive.
pub(crate) struct Rereader<'f> {
    file: &'f File,
    reader: Option<TarReader<BufReader<&'f File>>>,
}

impl<'f> Rereader<'f> {
    pub(crate) fn new(file: &'f File) -> Self {
        Self { file, reader: None }
    }

    /// Copies the entry starting at `start` into `em`.
    pub(crate) fn emit_at(&mut self, start: u64, em: &mut Emitter<'_>) -> Result<(), WriteError> {
        let reuse = self
            .reader
            .as_ref()
            .is_some_and(|r| r.next_header_offset() == start);
        if !reuse {
            let mut f = self.file;
            f.seek(SeekFrom::Start(start))
                .map_err(WriteError::ReadInput)?;
            self.reader = Some(TarReader::at(BufReader::with_capacity(64 * 1024, f), start));
        }
        let reader = self.reader.as_mut().expect("set above");
        let e = reader.next_entry()?.ok_or_else(|| WriteError::Tar {
            offset: start,
            detail: "entry vanished while re-reading the input".into(),
        })?;
        em.entry(&e, reader)
    }
}
