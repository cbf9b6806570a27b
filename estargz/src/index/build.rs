//! Builds a [`LayerIndex`] from TOC entries pushed one at a time, validating as it goes,
//! then compacts it: unreachable entries (replaced by later duplicates) are dropped and
//! ids are renumbered breadth-first.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::{
    lossy, ChunkRec, DirentRec, EntryKind, EntryRec, IndexError, IndexOptions, LayerIndex,
    XattrRec, FLAG_OPAQUE, FLAG_SYNTHESIZED, FLAG_WHITEOUT, NONE, ROOT_ID, ZERO_CHUNK,
};
use crate::digest::Sha256Digest;
use crate::footer::Compression;
use crate::name::{self, NAME_MAX, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::time::parse_rfc3339;
use crate::toc::{TocEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};

/// Linux limits on what can exist on a filesystem.
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
const SYMLINK_MAX: usize = 4095;

#[derive(Clone, Copy)]
struct BuildDirent {
    parent: u32,
    name_off: u32,
    ino: u32,
    name_len: u16,
}

enum Pending {
    None,
    /// A regular file whose chunks are being collected.
    Reg {
        id: u32,
        size: u64,
        covered: u64,
    },
    /// An entry not in the tree (landmark, whiteout): its chunk entries are skipped.
    Ignored,
}

/// How [`IndexBuilder::link`] treats an existing name.
#[derive(PartialEq, Eq)]
enum LinkMode {
    Replace,
    /// A whiteout never replaces a real entry.
    Whiteout,
}

pub(crate) struct IndexBuilder {
    opts: IndexOptions,
    compression: Compression,
    data_end: u64,
    entries: Vec<EntryRec>,
    dirents: Vec<BuildDirent>,
    table: HashTable<u32>,
    hasher: std::hash::RandomState,
    arena: Vec<u8>,
    xattrs: Vec<XattrRec>,
    chunks: Vec<ChunkRec>,
    digests: Vec<[u8; 32]>,
    pending: Pending,
    /// Normalized path of the pending regular file (for error messages).
    pending_path: Vec<u8>,
    last_data: Option<(u64, u64)>,
    parent_cache: Option<(Vec<u8>, u32)>,
    toc_entries: usize,
    prefetch_landmark: Option<u64>,
    no_prefetch_landmark: bool,
}

impl IndexBuilder {
    pub(crate) fn new(compression: Compression, data_end: u64, opts: &IndexOptions) -> Self {
        let root = EntryRec {
            kind: EntryKind::Dir as u8,
            mode: 0o755,
            flags: FLAG_SYNTHESIZED,
            name: NONE,
            digest: NONE,
            ..Default::default()
        };
        Self {
            opts: *opts,
            compression,
            data_end,
            entries: vec![root],
            dirents: Vec::new(),
            table: HashTable::new(),
            hasher: std::hash::RandomState::new(),
            arena: Vec::new(),
            xattrs: Vec::new(),
            chunks: Vec::new(),
            digests: Vec::new(),
            pending: Pending::None,
            pending_path: Vec::new(),
            last_data: None,
            parent_cache: None,
            toc_entries: 0,
            prefetch_landmark: None,
            no_prefetch_landmark: false,
        }
    }

    /// Adds the next TOC entry.
    pub(crate) fn push(&mut self, e: TocEntry) -> Result<(), IndexError> {
        self.toc_entries += 1;
        if self.toc_entries > self.opts.limits.max_entries {
            return Err(self.too_many());
        }
        if e.kind == "chunk" {
            return self.push_chunk_entry(&e);
        }
        self.close_pending()?;
        let kind = match e.kind.as_str() {
            "dir" => Some(EntryKind::Dir),
            "reg" => Some(EntryKind::Reg),
            "symlink" => Some(EntryKind::Symlink),
            "char" => Some(EntryKind::Char),
            "block" => Some(EntryKind::Block),
            "fifo" => Some(EntryKind::Fifo),
            "hardlink" => None,
            _ => {
                return Err(IndexError::UnknownType {
                    name: lossy(&e.name),
                    kind: e.kind.clone(),
                })
            }
        };
        let path = name::normalize(&e.name).map_err(IndexError::InvalidName)?;
        let Some((parent_path, base)) = name::split_parent(&path) else {
            // The root itself ("./" or "/").
            if kind != Some(EntryKind::Dir) {
                return Err(IndexError::RootNotDirectory(e.kind.clone()));
            }
            let rec = self.make_rec(&e, EntryKind::Dir)?;
            self.update_dir(ROOT_ID, rec);
            self.pending = Pending::Ignored;
            return Ok(());
        };
        if parent_path.is_empty() && self.take_special_root_entry(base, &e)? {
            self.pending = Pending::Ignored;
            return Ok(());
        }
        let parent = self.resolve_parent(parent_path, &e.name)?;

        if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
            self.pending = Pending::Ignored;
            if base == OPAQUE_WHITEOUT {
                self.entries[parent as usize].flags |= FLAG_OPAQUE;
                return Ok(());
            }
            if target.is_empty() {
                return Err(IndexError::BadField {
                    name: lossy(&e.name),
                    field: "name",
                    detail: "whiteout of an empty name".into(),
                });
            }
            let mut rec = self.make_rec(&e, EntryKind::Char)?;
            rec.flags |= FLAG_WHITEOUT;
            rec.size = 0;
            rec.digest = NONE;
            (rec.a, rec.b) = (0, 0);
            let id = self.add_entry(rec)?;
            return self.link(parent, target, id, LinkMode::Whiteout);
        }

        let Some(kind) = kind else {
            let target = self.resolve_hardlink(&e)?;
            self.pending = Pending::Ignored;
            return self.link(parent, base, target, LinkMode::Replace);
        };
        if kind == EntryKind::Dir {
            let rec = self.make_rec(&e, kind)?;
            if let Some(d) = self.find(parent, base) {
                let ino = self.dirents[d as usize].ino;
                if self.entries[ino as usize].kind == EntryKind::Dir as u8 {
                    self.update_dir(ino, rec);
                    self.pending = Pending::Ignored;
                    return Ok(());
                }
            }
            let id = self.add_entry(rec)?;
            self.pending = Pending::Ignored;
            return self.link(parent, base, id, LinkMode::Replace);
        }
        let rec = self.make_rec(&e, kind)?;
        let id = self.add_entry(rec)?;
        self.link(parent, base, id, LinkMode::Replace)?;
        if kind == EntryKind::Reg {
            self.pending = Pending::Reg {
                id,
                size: rec.size,
                covered: 0,
            };
            self.pending_path = path;
            if rec.size > 0 {
                self.add_chunk(&e)?;
            }
        } else {
            self.pending = Pending::Ignored;
        }
        Ok(())
    }

    /// Handles root-level names that are not part of the tree. Returns true if `base` was
    /// one of them.
    fn take_special_root_entry(&mut self, base: &[u8], e: &TocEntry) -> Result<bool, IndexError> {
        if base == PREFETCH_LANDMARK.as_bytes() {
            if e.kind == "reg" && e.size > 0 && e.offset > 0 {
                let off = self.check_offset(&e.name, e.offset, e.inner_offset, 0)?;
                self.prefetch_landmark = Some(off);
            }
            return Ok(true);
        }
        if base == NO_PREFETCH_LANDMARK.as_bytes() {
            self.no_prefetch_landmark = true;
            return Ok(true);
        }
        Ok(base == TOC_TAR_NAME.as_bytes())
    }

    fn push_chunk_entry(&mut self, e: &TocEntry) -> Result<(), IndexError> {
        match self.pending {
            Pending::Reg { .. } => self.add_chunk(e),
            Pending::Ignored => Ok(()),
            Pending::None => Err(IndexError::ChunkWithoutFile { offset: e.offset }),
        }
    }

    fn add_chunk(&mut self, e: &TocEntry) -> Result<(), IndexError> {
        let Pending::Reg { id, size, covered } = self.pending else {
            return Err(IndexError::ChunkWithoutFile { offset: e.offset });
        };
        let layout = |this: &Self, detail: String| IndexError::ChunkLayout {
            name: lossy(&this.pending_path),
            detail,
        };
        if e.chunk_offset != covered as i64 {
            return Err(layout(
                self,
                format!(
                    "chunk at file offset {}, expected {covered}",
                    e.chunk_offset
                ),
            ));
        }
        if e.chunk_size < 0 {
            return Err(self.out_of_range(&self.pending_path.clone(), "chunkSize", e.chunk_size));
        }
        let csize = if e.chunk_size == 0 {
            size - covered
        } else {
            e.chunk_size as u64
        };
        if csize == 0 || csize > size - covered {
            return Err(layout(
                self,
                format!(
                    "chunk of {csize} bytes at file offset {covered} overruns the file size {size}"
                ),
            ));
        }
        let zeros = match e.chunk_type.as_str() {
            "" | "data" => false,
            "zeros" => true,
            other => return Err(layout(self, format!("unknown chunkType {other:?}"))),
        };
        let (offset, inner_offset) = if zeros {
            // No blob bytes; keep blob order monotonic for readers of chunks_in_blob_order.
            (self.last_data.map_or(0, |l| l.0), 0)
        } else {
            let name = self.pending_path.clone();
            let off = self.check_offset(&name, e.offset, e.inner_offset, e.end_offset)?;
            (off, e.inner_offset as u64)
        };
        let file_digest = self.entries[id as usize].digest;
        let digest = if zeros {
            ZERO_CHUNK
        } else if !e.chunk_digest.is_empty() {
            let d = Sha256Digest::parse_bytes(e.chunk_digest.as_bytes()).map_err(|err| {
                IndexError::BadField {
                    name: lossy(&self.pending_path),
                    field: "chunkDigest",
                    detail: err.to_string(),
                }
            })?;
            if file_digest != NONE && self.digests[file_digest as usize] == d.0 {
                file_digest
            } else {
                self.push_digest(d)?
            }
        } else if covered == 0 && csize == size && file_digest != NONE {
            file_digest
        } else if self.opts.allow_missing_digests {
            NONE
        } else {
            return Err(IndexError::MissingDigest {
                name: lossy(&self.pending_path),
                file_offset: covered,
            });
        };
        if self.chunks.len() >= NONE as usize {
            return Err(IndexError::Overflow("chunk count"));
        }
        self.chunks.push(ChunkRec {
            file_offset: covered,
            size: csize,
            compressed_offset: offset,
            // Holds the explicit end offset (or 0) until finish() derives lengths.
            compressed_len: if zeros { 0 } else { e.end_offset as u64 },
            inner_offset,
            entry: id,
            digest,
        });
        let rec = &mut self.entries[id as usize];
        if rec.b == 0 {
            rec.a = (self.chunks.len() - 1) as u32;
        }
        rec.b += 1;
        self.pending = Pending::Reg {
            id,
            size,
            covered: covered + csize,
        };
        Ok(())
    }

    /// Validates a data offset against the data region and the previous chunk; returns it.
    fn check_offset(
        &mut self,
        name: &[u8],
        offset: i64,
        inner: i64,
        end: i64,
    ) -> Result<u64, IndexError> {
        let oob = || IndexError::OffsetOutOfBounds {
            name: lossy(name),
            offset,
            end,
            data_end: self.data_end,
        };
        if offset < 0 || offset as u64 >= self.data_end || end < 0 {
            return Err(oob());
        }
        if end != 0 && (end <= offset || end as u64 > self.data_end) {
            return Err(oob());
        }
        if inner < 0 {
            return Err(self.out_of_range(name, "innerOffset", inner));
        }
        let cur = (offset as u64, inner as u64);
        if let Some(prev) = self.last_data {
            if cur <= prev {
                return Err(IndexError::OffsetsNotIncreasing {
                    name: lossy(name),
                    offset: cur.0,
                    inner_offset: cur.1,
                    prev_offset: prev.0,
                    prev_inner_offset: prev.1,
                });
            }
        }
        self.last_data = Some(cur);
        Ok(cur.0)
    }

    fn close_pending(&mut self) -> Result<(), IndexError> {
        if let Pending::Reg { size, covered, .. } = self.pending {
            if covered != size {
                return Err(IndexError::ChunkLayout {
                    name: lossy(&self.pending_path),
                    detail: format!("chunks cover {covered} of {size} bytes"),
                });
            }
        }
        self.pending = Pending::None;
        Ok(())
    }

    fn out_of_range(&self, name: &[u8], field: &'static str, value: i64) -> IndexError {
        IndexError::FieldOutOfRange {
            name: lossy(name),
            field,
            value,
        }
    }

    fn too_many(&self) -> IndexError {
        IndexError::TooManyEntries {
            limit: self.opts.limits.max_entries,
        }
    }

    /// Turns a TOC entry's metadata into a record (kind-specific fields filled in).
    fn make_rec(&mut self, e: &TocEntry, kind: EntryKind) -> Result<EntryRec, IndexError> {
        let u32_field = |field: &'static str, v: i64| -> Result<u32, IndexError> {
            u32::try_from(v).map_err(|_| IndexError::FieldOutOfRange {
                name: lossy(&e.name),
                field,
                value: v,
            })
        };
        if e.mode < 0 || e.mode > i64::from(u32::MAX) {
            return Err(self.out_of_range(&e.name, "mode", e.mode));
        }
        let (mtime_secs, mtime_nanos) = if e.modtime.is_empty() {
            (0, 0)
        } else {
            parse_rfc3339(e.modtime.as_bytes()).ok_or_else(|| IndexError::BadField {
                name: lossy(&e.name),
                field: "modtime",
                detail: format!("{:?} is not an RFC 3339 time", e.modtime),
            })?
        };
        let mut rec = EntryRec {
            mtime_secs,
            mtime_nanos,
            uid: u32_field("uid", e.uid)?,
            gid: u32_field("gid", e.gid)?,
            mode: (e.mode & 0o7777) as u16,
            kind: kind as u8,
            parent: NONE,
            name: NONE,
            digest: NONE,
            nlink: 0,
            ..Default::default()
        };
        match kind {
            EntryKind::Reg => {
                if e.size < 0 {
                    return Err(self.out_of_range(&e.name, "size", e.size));
                }
                rec.size = e.size as u64;
                if !e.digest.is_empty() {
                    let d = Sha256Digest::parse_bytes(e.digest.as_bytes()).map_err(|err| {
                        IndexError::BadField {
                            name: lossy(&e.name),
                            field: "digest",
                            detail: err.to_string(),
                        }
                    })?;
                    rec.digest = self.push_digest(d)?;
                }
            }
            EntryKind::Symlink => {
                if e.link_name.len() > SYMLINK_MAX || e.link_name.contains(&0) {
                    return Err(IndexError::BadField {
                        name: lossy(&e.name),
                        field: "linkName",
                        detail: "symlink target is longer than 4095 bytes or contains NUL".into(),
                    });
                }
                rec.a = self.push_arena(&e.link_name)?;
                rec.b = e.link_name.len() as u32;
                rec.size = e.link_name.len() as u64;
            }
            EntryKind::Char | EntryKind::Block => {
                rec.a = u32_field("devMajor", e.dev_major)?;
                rec.b = u32_field("devMinor", e.dev_minor)?;
            }
            EntryKind::Dir | EntryKind::Fifo => {}
        }
        if !e.xattrs.is_empty() {
            if e.xattrs.len() > usize::from(u16::MAX) {
                return Err(self.out_of_range(&e.name, "xattrs", e.xattrs.len() as i64));
            }
            rec.xattr_start =
                u32::try_from(self.xattrs.len()).map_err(|_| IndexError::Overflow("xattrs"))?;
            rec.xattr_len = e.xattrs.len() as u16;
            for (k, v) in &e.xattrs {
                if k.is_empty()
                    || k.len() > XATTR_NAME_MAX
                    || v.len() > XATTR_SIZE_MAX
                    || k.contains(&0)
                {
                    return Err(IndexError::BadField {
                        name: lossy(&e.name),
                        field: "xattrs",
                        detail: format!(
                            "xattr {:?} ({} value bytes) exceeds Linux limits or has an empty/NUL name",
                            lossy(k),
                            v.len()
                        ),
                    });
                }
                let off = self.push_arena(k)?;
                self.push_arena(v)?;
                self.xattrs.push(XattrRec {
                    off,
                    name_len: k.len() as u32,
                    value_len: v.len() as u32,
                });
            }
        }
        Ok(rec)
    }

    fn push_arena(&mut self, bytes: &[u8]) -> Result<u32, IndexError> {
        let off = self.arena.len();
        if off + bytes.len() > u32::MAX as usize {
            return Err(IndexError::Overflow("string arena"));
        }
        self.arena.extend_from_slice(bytes);
        Ok(off as u32)
    }

    fn push_digest(&mut self, d: Sha256Digest) -> Result<u32, IndexError> {
        if self.digests.len() >= ZERO_CHUNK as usize {
            return Err(IndexError::Overflow("digest count"));
        }
        self.digests.push(d.0);
        Ok((self.digests.len() - 1) as u32)
    }

    fn add_entry(&mut self, rec: EntryRec) -> Result<u32, IndexError> {
        if self.entries.len() >= self.opts.limits.max_entries.saturating_add(1)
            || self.entries.len() >= ZERO_CHUNK as usize
        {
            return Err(self.too_many());
        }
        self.entries.push(rec);
        Ok((self.entries.len() - 1) as u32)
    }

    /// Applies a later `dir` entry's metadata to an existing directory (keeps children and
    /// the opaque flag).
    fn update_dir(&mut self, id: u32, rec: EntryRec) {
        let old = self.entries[id as usize];
        self.entries[id as usize] = EntryRec {
            flags: old.flags & FLAG_OPAQUE,
            parent: old.parent,
            name: old.name,
            ..rec
        };
    }

    fn hash(&self, parent: u32, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    fn dirent_name(&self, d: &BuildDirent) -> &[u8] {
        &self.arena[d.name_off as usize..d.name_off as usize + d.name_len as usize]
    }

    /// Index of the dirent `name` in directory `parent`.
    fn find(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let h = self.hash(parent, name);
        self.table
            .find(h, |&i| {
                let d = &self.dirents[i as usize];
                d.parent == parent && self.dirent_name(d) == name
            })
            .copied()
    }

    /// Binds `name` in `parent` to entry `ino`.
    fn link(
        &mut self,
        parent: u32,
        name: &[u8],
        ino: u32,
        mode: LinkMode,
    ) -> Result<(), IndexError> {
        if let Some(d) = self.find(parent, name) {
            let old = self.dirents[d as usize].ino;
            let old_rec = &self.entries[old as usize];
            if mode == LinkMode::Whiteout && old_rec.flags & FLAG_WHITEOUT == 0 {
                return Ok(());
            }
            if old_rec.kind == EntryKind::Dir as u8 {
                self.parent_cache = None;
            }
            self.dirents[d as usize].ino = ino;
            return Ok(());
        }
        if self.dirents.len() >= self.opts.limits.max_entries.saturating_mul(2)
            || self.dirents.len() >= NONE as usize
        {
            return Err(self.too_many());
        }
        let name_off = self.push_arena(name)?;
        let idx = self.dirents.len() as u32;
        self.dirents.push(BuildDirent {
            parent,
            name_off,
            ino,
            // normalize() caps components at NAME_MAX bytes.
            name_len: name.len().min(NAME_MAX) as u16,
        });
        let h = self.hash(parent, name);
        let (dirents, arena, hasher) = (&self.dirents, &self.arena, &self.hasher);
        self.table.insert_unique(h, idx, |&i| {
            let d = &dirents[i as usize];
            hasher.hash_one((
                d.parent,
                &arena[d.name_off as usize..d.name_off as usize + d.name_len as usize],
            ))
        });
        Ok(())
    }

    /// Finds or synthesizes the directory at normalized `path`.
    fn resolve_parent(&mut self, path: &[u8], entry_name: &[u8]) -> Result<u32, IndexError> {
        if let Some((cached, id)) = &self.parent_cache {
            if cached == path {
                return Ok(*id);
            }
        }
        let mut cur = ROOT_ID;
        if !path.is_empty() {
            let mut walked = 0usize;
            for comp in path.split(|&b| b == b'/') {
                walked += comp.len() + usize::from(walked > 0);
                cur = match self.find(cur, comp) {
                    Some(d) => {
                        let ino = self.dirents[d as usize].ino;
                        let rec = &self.entries[ino as usize];
                        if rec.kind == EntryKind::Dir as u8 {
                            ino
                        } else if rec.flags & FLAG_WHITEOUT != 0 {
                            let id = self.add_entry(synthesized_dir())?;
                            self.dirents[d as usize].ino = id;
                            id
                        } else {
                            return Err(IndexError::ParentNotDirectory {
                                name: lossy(entry_name),
                                parent: lossy(&path[..walked]),
                            });
                        }
                    }
                    None => {
                        let id = self.add_entry(synthesized_dir())?;
                        self.link(cur, comp, id, LinkMode::Replace)?;
                        id
                    }
                };
            }
        }
        self.parent_cache = Some((path.to_vec(), cur));
        Ok(cur)
    }

    fn resolve_hardlink(&mut self, e: &TocEntry) -> Result<u32, IndexError> {
        let target =
            name::normalize(&e.link_name).map_err(|source| IndexError::InvalidLinkName {
                name: lossy(&e.name),
                source,
            })?;
        let missing = || IndexError::HardlinkTargetMissing {
            name: lossy(&e.name),
            target: lossy(&e.link_name),
        };
        let mut cur = ROOT_ID;
        if target.is_empty() {
            return Err(IndexError::HardlinkToDirectory {
                name: lossy(&e.name),
                target: lossy(&e.link_name),
            });
        }
        for comp in target.split(|&b| b == b'/') {
            if self.entries[cur as usize].kind != EntryKind::Dir as u8 {
                return Err(missing());
            }
            let d = self.find(cur, comp).ok_or_else(missing)?;
            cur = self.dirents[d as usize].ino;
        }
        if self.entries[cur as usize].kind == EntryKind::Dir as u8 {
            return Err(IndexError::HardlinkToDirectory {
                name: lossy(&e.name),
                target: lossy(&e.link_name),
            });
        }
        Ok(cur)
    }

    /// Validates the end state, derives compressed lengths, drops unreachable entries and
    /// renumbers breadth-first.
    pub(crate) fn finish(mut self) -> Result<LayerIndex, IndexError> {
        self.close_pending()?;
        self.table = HashTable::new();
        self.parent_cache = None;
        self.derive_compressed_lengths();

        let n = self.entries.len();
        // Group dirents by parent, sorted by name; a directory's (a, b) = its group.
        let mut order: Vec<u32> = (0..self.dirents.len() as u32).collect();
        {
            let (dirents, arena) = (&self.dirents, &self.arena);
            let name = |d: &BuildDirent| {
                &arena[d.name_off as usize..d.name_off as usize + d.name_len as usize]
            };
            order.sort_unstable_by(|&x, &y| {
                let (a, b) = (&dirents[x as usize], &dirents[y as usize]);
                a.parent.cmp(&b.parent).then_with(|| name(a).cmp(name(b)))
            });
        }
        for r in self.entries.iter_mut() {
            if r.kind == EntryKind::Dir as u8 {
                (r.a, r.b) = (0, 0);
            }
            r.nlink = 0;
        }
        let mut i = 0;
        while i < order.len() {
            let p = self.dirents[order[i] as usize].parent;
            let start = i;
            while i < order.len() && self.dirents[order[i] as usize].parent == p {
                i += 1;
            }
            let r = &mut self.entries[p as usize];
            (r.a, r.b) = (start as u32, (i - start) as u32);
        }

        // Breadth-first walk from the root assigns new ids (position in `bfs`).
        let mut new_id = vec![NONE; n];
        let mut bfs: Vec<u32> = Vec::with_capacity(n);
        new_id[ROOT_ID as usize] = 0;
        bfs.push(ROOT_ID);
        self.entries[ROOT_ID as usize].parent = 0;
        self.entries[ROOT_ID as usize].name = NONE;
        let mut dirents = Vec::with_capacity(self.dirents.len());
        let mut pos = 0;
        while pos < bfs.len() {
            let old = bfs[pos] as usize;
            if self.entries[old].kind == EntryKind::Dir as u8 {
                let (s, c) = (self.entries[old].a as usize, self.entries[old].b as usize);
                let fstart = dirents.len() as u32;
                let mut subdirs = 0u32;
                for &d in &order[s..s + c] {
                    let de = self.dirents[d as usize];
                    let ino = de.ino as usize;
                    if new_id[ino] == NONE {
                        new_id[ino] = bfs.len() as u32;
                        bfs.push(ino as u32);
                        self.entries[ino].parent = pos as u32;
                        self.entries[ino].name = dirents.len() as u32;
                    }
                    if self.entries[ino].kind == EntryKind::Dir as u8 {
                        subdirs += 1;
                    } else {
                        self.entries[ino].nlink += 1;
                    }
                    dirents.push(DirentRec {
                        name_off: de.name_off,
                        ino: new_id[ino],
                        name_len: de.name_len,
                    });
                }
                let r = &mut self.entries[old];
                (r.a, r.b) = (fstart, c as u32);
                r.nlink = 2 + subdirs;
            }
            pos += 1;
        }
        drop(order);
        self.dirents = Vec::new();

        // Keep the chunks of live files, in blob order.
        let mut chunks = Vec::with_capacity(self.chunks.len());
        let mut uncompressed_file_bytes = 0u64;
        for c in &self.chunks {
            let e = c.entry as usize;
            if new_id[e] == NONE {
                continue;
            }
            if c.file_offset == 0 {
                self.entries[e].a = chunks.len() as u32;
                uncompressed_file_bytes += self.entries[e].size;
            }
            chunks.push(ChunkRec {
                entry: new_id[e],
                ..*c
            });
        }
        self.chunks = Vec::new();

        let mut entries: Vec<EntryRec> =
            bfs.iter().map(|&old| self.entries[old as usize]).collect();
        drop(bfs);
        drop(new_id);
        self.entries = Vec::new();
        for r in entries.iter_mut() {
            if r.kind == EntryKind::Reg as u8 && r.b == 0 {
                r.a = 0;
            }
        }
        entries.shrink_to_fit();
        dirents.shrink_to_fit();
        chunks.shrink_to_fit();
        self.arena.shrink_to_fit();
        self.xattrs.shrink_to_fit();
        self.digests.shrink_to_fit();
        Ok(LayerIndex {
            entries,
            dirents,
            arena: self.arena,
            xattrs: self.xattrs,
            chunks,
            digests: self.digests,
            compression: self.compression,
            prefetch_landmark: self.prefetch_landmark,
            no_prefetch_landmark: self.no_prefetch_landmark,
            uncompressed_file_bytes,
        })
    }

    /// Compressed length of each chunk: the explicit end offset when given, else up to
    /// the next greater chunk offset, else up to the end of the data region.
    fn derive_compressed_lengths(&mut self) {
        let mut boundary = self.data_end;
        let mut later = self.data_end;
        for c in self.chunks.iter_mut().rev() {
            if c.digest == ZERO_CHUNK {
                continue;
            }
            if c.compressed_offset < later {
                boundary = later;
            }
            let end = if c.compressed_len != 0 {
                c.compressed_len
            } else {
                boundary
            };
            c.compressed_len = end - c.compressed_offset;
            later = c.compressed_offset;
        }
    }
}

fn synthesized_dir() -> EntryRec {
    EntryRec {
        kind: EntryKind::Dir as u8,
        mode: 0o755,
        flags: FLAG_SYNTHESIZED,
        parent: NONE,
        name: NONE,
        digest: NONE,
        ..Default::default()
    }
}
