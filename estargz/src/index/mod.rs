//! The compact in-memory layer index ([`LayerIndex`]) built from a TOC, shaped for a FUSE
//! filesystem and a small daemon footprint.
//!
//! Layout: entries are dense `u32` ids (root = 0; a FUSE inode is `id + 1`), numbered
//! breadth-first so a directory's children have neighbouring ids. Every variable-length
//! datum lives in shared arrays, so an entry costs no heap allocation of its own:
//! - `entries`: one fixed 64-byte record per inode;
//! - `dirents`: (name, inode) records, each directory's children one contiguous range
//!   sorted by name bytes (lookup is a binary search); a hardlink is one more dirent
//!   pointing at its target's id;
//! - `arena`: names, symlink targets, xattr names and values (bytes, non-UTF-8 allowed);
//! - `chunks`: all chunks of all files in blob order, each file owning a contiguous range;
//! - `digests`: 32-byte SHA-256 digests, shared by file and single-chunk records.
//!
//! Overlay semantics: `.wh.NAME` shows up as a child `NAME` that is a 0/0 character
//! device flagged as a whiteout (a real `NAME` in the same directory wins over it);
//! `.wh..wh..opq` sets the directory's opaque flag and is not listed. The root-level
//! landmarks `.prefetch.landmark` / `.no.prefetch.landmark` and a root-level
//! `stargz.index.json` are not in the tree (as in the reference filesystem, which hides
//! them); their presence is exposed by [`LayerIndex::prefetch_landmark`] and
//! [`LayerIndex::has_no_prefetch_landmark`]. Parent directories missing from the TOC are
//! synthesized with mode 0755, uid/gid 0 and mtime 0 (the Unix epoch) and are flagged
//! [`Entry::is_synthesized`]. Duplicate paths: the later entry wins (tar semantics);
//! entries made unreachable that way are dropped when the index is finished.

mod build;
mod stream;

use std::ops::Range;

use crate::chunk::{self, ChunkError};
use crate::digest::Sha256Digest;
use crate::footer::{Compression, Footer};
use crate::lost_names::NameFixes;
use crate::name::{self, NameError};
use crate::toc::{TocEntry, TocError, TocLimits};

pub(crate) use build::IndexBuilder;

/// Dense id of an entry (inode) in a [`LayerIndex`]. The root is [`ROOT_ID`].
pub type EntryId = u32;
/// Index of a chunk in [`LayerIndex::chunks_in_blob_order`].
pub type ChunkId = u32;
/// The root directory's id.
pub const ROOT_ID: EntryId = 0;

pub(crate) const NONE: u32 = u32::MAX;
/// Digest slot of a containers/storage "zeros" chunk (a hole, no blob bytes).
pub(crate) const ZERO_CHUNK: u32 = u32::MAX - 1;

pub(crate) const FLAG_WHITEOUT: u8 = 1;
pub(crate) const FLAG_OPAQUE: u8 = 2;
pub(crate) const FLAG_SYNTHESIZED: u8 = 4;

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link.
    Symlink,
    /// Character device (also whiteouts: 0/0).
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

impl EntryKind {
    /// The `S_IFMT` bits of this kind.
    pub fn file_type_bits(self) -> u32 {
        match self {
            EntryKind::Dir => 0o040000,
            EntryKind::Reg => 0o100000,
            EntryKind::Symlink => 0o120000,
            EntryKind::Char => 0o020000,
            EntryKind::Block => 0o060000,
            EntryKind::Fifo => 0o010000,
        }
    }
}

/// Options for building an index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexOptions {
    /// Size and count caps.
    pub limits: TocLimits,
    /// Accept data chunks without a usable digest (they then cannot be verified). Off by
    /// default: every non-empty chunk must have `chunkDigest`, or be a whole file with
    /// `digest`.
    pub allow_missing_digests: bool,
}

/// Errors building an index from a TOC. Each names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The TOC itself could not be read.
    #[error(transparent)]
    Toc(#[from] TocError),
    /// More entries than [`TocLimits::max_entries`].
    #[error("TOC has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// An entry name is hostile or malformed.
    #[error("invalid entry name: {0}")]
    InvalidName(#[source] NameError),
    /// A hardlink target is hostile or malformed.
    #[error("entry {name:?}: invalid hardlink target: {source}")]
    InvalidLinkName {
        /// The entry.
        name: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// Unknown entry type.
    #[error("entry {name:?} has unknown type {kind:?}")]
    UnknownType {
        /// The entry.
        name: String,
        /// The type.
        kind: String,
    },
    /// A numeric field is out of range.
    #[error("entry {name:?}: field {field} has out-of-range value {value}")]
    FieldOutOfRange {
        /// The entry.
        name: String,
        /// The JSON field.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A field holds a malformed value.
    #[error("entry {name:?}: field {field} is malformed: {detail}")]
    BadField {
        /// The entry.
        name: String,
        /// The JSON field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The root entry is not a directory.
    #[error("the root entry has type {0:?}, expected dir")]
    RootNotDirectory(String),
    /// A path goes through a non-directory.
    #[error("entry {name:?}: parent {parent:?} is not a directory")]
    ParentNotDirectory {
        /// The entry.
        name: String,
        /// The non-directory parent.
        parent: String,
    },
    /// A hardlink's target does not exist (earlier in the TOC).
    #[error("hardlink {name:?} points to {target:?}, which is not in the layer")]
    HardlinkTargetMissing {
        /// The hardlink.
        name: String,
        /// Its target.
        target: String,
    },
    /// A hardlink points to a directory.
    #[error("hardlink {name:?} points to directory {target:?}")]
    HardlinkToDirectory {
        /// The hardlink.
        name: String,
        /// Its target.
        target: String,
    },
    /// A `chunk` entry does not follow a regular file.
    #[error("chunk entry at blob offset {offset} does not follow a regular file")]
    ChunkWithoutFile {
        /// Its blob offset.
        offset: i64,
    },
    /// The chunks of a file do not tile it.
    #[error("file {name:?}: bad chunk layout: {detail}")]
    ChunkLayout {
        /// The file.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A chunk lies outside the data region of the blob.
    #[error("file {name:?}: chunk offset {offset} (end {end}) is outside the data region [0, {data_end})")]
    OffsetOutOfBounds {
        /// The file.
        name: String,
        /// Chunk offset.
        offset: i64,
        /// Chunk end offset, when given.
        end: i64,
        /// End of the data region (the TOC offset).
        data_end: u64,
    },
    /// Chunk offsets are not increasing in TOC order.
    #[error("file {name:?}: chunk at blob offset {offset}+{inner_offset} does not follow the previous chunk at {prev_offset}+{prev_inner_offset}")]
    OffsetsNotIncreasing {
        /// The file.
        name: String,
        /// Chunk offset.
        offset: u64,
        /// Chunk inner offset.
        inner_offset: u64,
        /// Previous chunk offset.
        prev_offset: u64,
        /// Previous chunk inner offset.
        prev_inner_offset: u64,
    },
    /// A data chunk has no digest to verify it against.
    #[error("file {name:?}: chunk at file offset {file_offset} has no chunkDigest (and is not a whole file with a digest)")]
    MissingDigest {
        /// The file.
        name: String,
        /// Chunk offset in the file.
        file_offset: u64,
    },
    /// The index would exceed its internal 32-bit addressing.
    #[error("TOC too large for the index ({0})")]
    Overflow(&'static str),
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EntryRec {
    pub size: u64,
    pub mtime_secs: i64,
    /// Parent id (root: itself).
    pub parent: u32,
    /// Index of the dirent holding this entry's primary name (root: NONE).
    pub name: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_nanos: u32,
    pub nlink: u32,
    /// Dir: dirent range start; reg: chunk range start; symlink: arena offset; dev: major.
    pub a: u32,
    /// Dir: dirent count; reg: chunk count; symlink: length; dev: minor.
    pub b: u32,
    pub xattr_start: u32,
    pub digest: u32,
    pub xattr_len: u16,
    pub mode: u16,
    pub kind: u8,
    pub flags: u8,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct DirentRec {
    pub name_off: u32,
    pub ino: u32,
    pub name_len: u16,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct XattrRec {
    pub off: u32,
    pub name_len: u32,
    pub value_len: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkRec {
    pub file_offset: u64,
    pub size: u64,
    pub compressed_offset: u64,
    pub compressed_len: u64,
    pub inner_offset: u64,
    pub entry: u32,
    /// Digest slot, NONE, or ZERO_CHUNK.
    pub digest: u32,
}

const KINDS: [EntryKind; 6] = [
    EntryKind::Dir,
    EntryKind::Reg,
    EntryKind::Symlink,
    EntryKind::Char,
    EntryKind::Block,
    EntryKind::Fifo,
];

/// One chunk of a regular file: where its bytes are in the file and in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// This chunk's id.
    pub id: ChunkId,
    /// The file it belongs to.
    pub entry: EntryId,
    /// Uncompressed offset of the chunk in the file.
    pub file_offset: u64,
    /// Uncompressed size of the chunk.
    pub size: u64,
    /// Offset in the blob of the compressed member (gzip member / zstd frame) that holds it.
    pub compressed_offset: u64,
    /// Length of that member: up to the next distinct chunk offset (or the TOC), or the
    /// exact frame end when the TOC gives one.
    pub compressed_len: u64,
    /// Offset of the chunk's data inside the decompressed member.
    pub inner_offset: u64,
    /// Expected SHA-256 of the chunk's bytes (`chunkDigest`, or the file `digest` when the
    /// chunk is the whole file).
    pub digest: Option<Sha256Digest>,
    /// A hole (containers/storage `chunkType: zeros`): all zero bytes, nothing to fetch.
    pub zeros: bool,
}

impl Chunk {
    /// The compressed byte range to fetch from the blob.
    pub fn compressed_range(&self) -> Range<u64> {
        self.compressed_offset..self.compressed_offset + self.compressed_len
    }

    /// The uncompressed byte range of the file this chunk covers.
    pub fn file_range(&self) -> Range<u64> {
        self.file_offset..self.file_offset + self.size
    }
}

/// The compact index of one layer. See the module documentation for its layout.
#[derive(Debug)]
pub struct LayerIndex {
    pub(crate) entries: Vec<EntryRec>,
    pub(crate) dirents: Vec<DirentRec>,
    pub(crate) arena: Vec<u8>,
    pub(crate) xattrs: Vec<XattrRec>,
    pub(crate) chunks: Vec<ChunkRec>,
    pub(crate) digests: Vec<[u8; 32]>,
    pub(crate) compression: Compression,
    pub(crate) prefetch_landmark: Option<u64>,
    pub(crate) no_prefetch_landmark: bool,
    pub(crate) uncompressed_file_bytes: u64,
}

/// A read-only view of one entry.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    index: &'a LayerIndex,
    id: EntryId,
    rec: &'a EntryRec,
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("path", &lossy(&self.index.path_of(self.id)))
            .field("kind", &self.kind())
            .field("mode", &format_args!("{:o}", self.mode()))
            .field("size", &self.size())
            .finish()
    }
}

impl<'a> Entry<'a> {
    /// This entry's id.
    pub fn id(&self) -> EntryId {
        self.id
    }
    /// Its kind (whiteouts are [`EntryKind::Char`]).
    pub fn kind(&self) -> EntryKind {
        KINDS[self.rec.kind as usize]
    }
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub fn mode(&self) -> u32 {
        u32::from(self.rec.mode)
    }
    /// `st_mode`: file type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind().file_type_bits() | self.mode()
    }
    /// Owner uid.
    pub fn uid(&self) -> u32 {
        self.rec.uid
    }
    /// Owner gid.
    pub fn gid(&self) -> u32 {
        self.rec.gid
    }
    /// Size: file size for regular files, target length for symlinks, 0 otherwise.
    pub fn size(&self) -> u64 {
        self.rec.size
    }
    /// Modification time: Unix seconds and nanoseconds.
    pub fn mtime(&self) -> (i64, u32) {
        (self.rec.mtime_secs, self.rec.mtime_nanos)
    }
    /// Link count: names pointing at this entry; directories count 2 + subdirectories.
    pub fn nlink(&self) -> u32 {
        self.rec.nlink
    }
    /// Device numbers (major, minor) of character and block devices; (0, 0) otherwise.
    pub fn rdev(&self) -> (u32, u32) {
        match self.kind() {
            EntryKind::Char | EntryKind::Block => (self.rec.a, self.rec.b),
            _ => (0, 0),
        }
    }
    /// True for an overlay whiteout (a 0/0 char device standing for `.wh.NAME`).
    pub fn is_whiteout(&self) -> bool {
        self.rec.flags & FLAG_WHITEOUT != 0
    }
    /// True for a directory marked opaque by `.wh..wh..opq`.
    pub fn is_opaque(&self) -> bool {
        self.rec.flags & FLAG_OPAQUE != 0
    }
    /// True for a directory that the TOC did not list but a descendant needed.
    pub fn is_synthesized(&self) -> bool {
        self.rec.flags & FLAG_SYNTHESIZED != 0
    }
    /// The symlink target (data, never resolved).
    pub fn symlink_target(&self) -> Option<&'a [u8]> {
        (self.kind() == EntryKind::Symlink).then(|| self.index.arena_slice(self.rec.a, self.rec.b))
    }
    /// Extended attributes as (name, value).
    pub fn xattrs(&self) -> impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let index = self.index;
        let start = self.rec.xattr_start as usize;
        index.xattrs[start..start + self.rec.xattr_len as usize]
            .iter()
            .map(move |x| {
                let name = index.arena_slice(x.off, x.name_len);
                let value = index.arena_slice(x.off + x.name_len, x.value_len);
                (name, value)
            })
    }
    /// One extended attribute's value.
    pub fn xattr(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.xattrs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
    /// Digest of a regular file's whole contents, when the TOC has it.
    pub fn digest(&self) -> Option<Sha256Digest> {
        self.index.digest_at(self.rec.digest)
    }
    /// The parent directory (the root is its own parent). For a hardlinked file, the
    /// directory of its first name in breadth-first order.
    pub fn parent(&self) -> EntryId {
        self.rec.parent
    }
    /// The base name this entry was first reached by (root: empty).
    pub fn name(&self) -> &'a [u8] {
        if self.rec.name == NONE {
            return b"";
        }
        let d = &self.index.dirents[self.rec.name as usize];
        self.index.arena_slice(d.name_off, u32::from(d.name_len))
    }
    /// The range of this regular file's chunks (empty for other kinds and empty files).
    pub fn chunk_ids(&self) -> Range<ChunkId> {
        if self.kind() == EntryKind::Reg {
            self.rec.a..self.rec.a + self.rec.b
        } else {
            0..0
        }
    }
}

/// Children of a directory in name order.
#[derive(Clone)]
pub struct Children<'a> {
    arena: &'a [u8],
    iter: std::slice::Iter<'a, DirentRec>,
}

impl<'a> Iterator for Children<'a> {
    type Item = (&'a [u8], EntryId);
    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next().map(|d| {
            let off = d.name_off as usize;
            (&self.arena[off..off + d.name_len as usize], d.ino)
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        if n > 0 {
            self.iter.nth(n - 1)?;
        }
        self.next()
    }
}

impl ExactSizeIterator for Children<'_> {}

impl LayerIndex {
    /// Builds the index by streaming the TOC JSON (entries are not all held in memory).
    /// `footer` bounds the chunk offsets.
    pub fn from_toc_json(
        json: &[u8],
        footer: &Footer,
        opts: &IndexOptions,
    ) -> Result<Self, IndexError> {
        stream::build_from_json(
            json,
            footer.format.compression(),
            footer.data_end(),
            opts,
            None,
        )
    }

    /// [`LayerIndex::from_toc_json`] with the names of some entries taken from their tar
    /// headers instead of the TOC (see [`crate::lost_names`]).
    pub fn from_toc_json_with_names(
        json: &[u8],
        footer: &Footer,
        opts: &IndexOptions,
        fixes: &NameFixes,
    ) -> Result<Self, IndexError> {
        stream::build_from_json(
            json,
            footer.format.compression(),
            footer.data_end(),
            opts,
            (!fixes.is_empty()).then_some(fixes),
        )
    }

    /// Builds the index from parsed entries. `data_end` is where chunk data must end (the
    /// TOC offset, see [`Footer::data_end`]).
    pub fn from_entries(
        entries: impl IntoIterator<Item = TocEntry>,
        compression: Compression,
        data_end: u64,
        opts: &IndexOptions,
    ) -> Result<Self, IndexError> {
        let mut b = IndexBuilder::new(compression, data_end, opts);
        for e in entries {
            b.push(e)?;
        }
        b.finish()
    }

    /// Number of entries (inodes), including the root.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: an index has at least its root.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One entry.
    pub fn entry(&self, id: EntryId) -> Option<Entry<'_>> {
        self.entries.get(id as usize).map(|rec| Entry {
            index: self,
            id,
            rec,
        })
    }

    /// The root directory.
    pub fn root(&self) -> Entry<'_> {
        self.entry(ROOT_ID).expect("an index always has a root")
    }

    /// Children of directory `dir` in name-byte order (empty for non-directories).
    pub fn children(&self, dir: EntryId) -> Children<'_> {
        let slice = match self.entries.get(dir as usize) {
            Some(r) if r.kind == EntryKind::Dir as u8 => {
                &self.dirents[r.a as usize..(r.a + r.b) as usize]
            }
            _ => &[],
        };
        Children {
            arena: &self.arena,
            iter: slice.iter(),
        }
    }

    /// Looks up `name` in directory `dir` (binary search).
    pub fn lookup(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        let r = self.entries.get(dir as usize)?;
        if r.kind != EntryKind::Dir as u8 {
            return None;
        }
        let slice = &self.dirents[r.a as usize..(r.a + r.b) as usize];
        slice
            .binary_search_by(|d| {
                self.arena_slice(d.name_off, u32::from(d.name_len))
                    .cmp(name)
            })
            .ok()
            .map(|i| slice[i].ino)
    }

    /// Resolves a path (normalized like TOC names; no symlinks are followed).
    pub fn resolve(&self, path: &[u8]) -> Option<EntryId> {
        let norm = name::normalize(path).ok()?;
        let mut cur = ROOT_ID;
        if norm.is_empty() {
            return Some(cur);
        }
        for comp in norm.split(|&b| b == b'/') {
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// The path of an entry (by its first name), without a leading `/`; root is empty.
    pub fn path_of(&self, id: EntryId) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = id;
        // The parent chain is acyclic and at most len() long.
        for _ in 0..self.entries.len() {
            let Some(e) = self.entry(cur) else { break };
            if cur == ROOT_ID {
                break;
            }
            parts.push(e.name());
            cur = e.parent();
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Number of chunks.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// One chunk.
    pub fn chunk(&self, id: ChunkId) -> Option<Chunk> {
        let c = self.chunks.get(id as usize)?;
        Some(Chunk {
            id,
            entry: c.entry,
            file_offset: c.file_offset,
            size: c.size,
            compressed_offset: c.compressed_offset,
            compressed_len: c.compressed_len,
            inner_offset: c.inner_offset,
            digest: if c.digest == ZERO_CHUNK {
                None
            } else {
                self.digest_at(c.digest)
            },
            zeros: c.digest == ZERO_CHUNK,
        })
    }

    /// The chunks of a regular file, in file order.
    pub fn chunks_of(&self, file: EntryId) -> impl Iterator<Item = Chunk> + '_ {
        let range = self.entry(file).map(|e| e.chunk_ids()).unwrap_or(0..0);
        range.filter_map(move |id| self.chunk(id))
    }

    /// The chunk of `file` that holds byte `offset`.
    pub fn chunk_at(&self, file: EntryId, offset: u64) -> Option<Chunk> {
        let range = self.entry(file)?.chunk_ids();
        let slice = &self.chunks[range.start as usize..range.end as usize];
        let i = slice.partition_point(|c| c.file_offset + c.size <= offset);
        let c = slice.get(i)?;
        (c.file_offset <= offset && offset < c.file_offset + c.size)
            .then(|| self.chunk(range.start + i as u32))
            .flatten()
    }

    /// All chunks in blob order (compressed offsets non-decreasing), for prefetch and
    /// background fetch.
    pub fn chunks_in_blob_order(&self) -> impl ExactSizeIterator<Item = Chunk> + '_ {
        (0..self.chunks.len() as u32).map(move |id| self.chunk(id).expect("in range"))
    }

    /// Compressed offset that ends the prioritized region (`.prefetch.landmark`).
    pub fn prefetch_landmark(&self) -> Option<u64> {
        self.prefetch_landmark
    }

    /// True when the layer carries `.no.prefetch.landmark` (prefetch nothing). Checked
    /// before [`Self::prefetch_landmark`], as the reference does.
    pub fn has_no_prefetch_landmark(&self) -> bool {
        self.no_prefetch_landmark
    }

    /// Total bytes of all regular files (hardlinked files counted once).
    pub fn uncompressed_file_bytes(&self) -> u64 {
        self.uncompressed_file_bytes
    }

    /// The compression of chunks.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Heap bytes held by the index (capacity of its arrays).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.entries.capacity() * size_of::<EntryRec>()
            + self.dirents.capacity() * size_of::<DirentRec>()
            + self.arena.capacity()
            + self.xattrs.capacity() * size_of::<XattrRec>()
            + self.chunks.capacity() * size_of::<ChunkRec>()
            + self.digests.capacity() * 32
    }

    /// Decompresses `chunk` from its compressed bytes (starting at
    /// [`Chunk::compressed_offset`]) into `out` (exactly [`Chunk::size`] bytes) and verifies
    /// its digest. A mismatch names the file and offset.
    pub fn decode_chunk(
        &self,
        chunk: &Chunk,
        compressed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let path = || lossy(&self.path_of(chunk.entry));
        if out.len() as u64 != chunk.size {
            return Err(ChunkError::BufferSize {
                expected: chunk.size,
                got: out.len(),
            });
        }
        if chunk.zeros {
            out.fill(0);
            return Ok(());
        }
        chunk::decompress(self.compression, compressed, chunk.inner_offset, out).map_err(
            |source| ChunkError::Decode {
                path: path(),
                file_offset: chunk.file_offset,
                source,
            },
        )?;
        if let Some(expected) = chunk.digest {
            let actual = Sha256Digest::of(out);
            if actual != expected {
                return Err(ChunkError::DigestMismatch {
                    path: path(),
                    file_offset: chunk.file_offset,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Like [`Self::decode_chunk`], returning a `Vec` of exactly the chunk's size.
    pub fn decode_chunk_to_vec(
        &self,
        chunk: &Chunk,
        compressed: &[u8],
    ) -> Result<Vec<u8>, ChunkError> {
        let len = usize::try_from(chunk.size).map_err(|_| ChunkError::BufferSize {
            expected: chunk.size,
            got: usize::MAX,
        })?;
        let mut out = vec![0u8; len];
        self.decode_chunk(chunk, compressed, &mut out)?;
        Ok(out)
    }

    pub(crate) fn arena_slice(&self, off: u32, len: u32) -> &[u8] {
        &self.arena[off as usize..(off + len) as usize]
    }

    fn digest_at(&self, slot: u32) -> Option<Sha256Digest> {
        self.digests.get(slot as usize).map(|d| Sha256Digest(*d))
    }
}

#[cfg(test)]
mod tests;
