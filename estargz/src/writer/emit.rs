//! Lays tar entries out as eStargz segments and TOC entries, following the reference
//! writer: an entry's headers go into the current segment; each chunk of a regular
//! file's data (at most the chunk size) starts a new segment (a new gzip member or zstd
//! frame) whose offset the TOC records; padding and later headers follow in that segment.

use std::collections::HashMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::error::WriteError;
use super::pipeline::Producer;
use super::tar_in::{RawEntry, TarReader};
use crate::digest::Sha256Digest;
use crate::time::format_rfc3339;
use crate::toc::{
    TocEntry, LANDMARK_CONTENTS, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME,
};

const BLOCK: u64 = 512;

/// Go's `cleanEntryName`: `path.Clean("/" + name)` without the leading `/`.
pub(crate) fn clean_name(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// True for names the writer drops from its input (they are regenerated).
pub(crate) fn is_reserved(cleaned: &[u8]) -> bool {
    cleaned == TOC_TAR_NAME.as_bytes()
        || cleaned == PREFETCH_LANDMARK.as_bytes()
        || cleaned == NO_PREFETCH_LANDMARK.as_bytes()
}

pub(crate) struct Emitter<'p> {
    p: &'p mut Producer,
    chunk_size: u64,
    split_at: usize,
    diff: Sha256,
    pub(crate) uncompressed: u64,
    toc: Vec<TocEntry>,
    /// TOC entries dropped because a later entry has the same name.
    dropped: Vec<bool>,
    /// (TOC index, segment index) of every entry whose `offset` is a segment start.
    offsets: Vec<(usize, u64)>,
    unames: HashMap<u64, Vec<u8>>,
    gnames: HashMap<u64, Vec<u8>>,
    by_name: HashMap<Vec<u8>, (usize, usize)>,
}

/// What the emitter produced, once the pipeline has assigned segment offsets.
pub(crate) struct Emitted {
    pub toc: Vec<TocEntry>,
    pub dropped: Vec<bool>,
    pub offsets: Vec<(usize, u64)>,
    pub diff: Sha256,
    pub uncompressed: u64,
}

impl<'p> Emitter<'p> {
    pub(crate) fn new(p: &'p mut Producer, chunk_size: u64) -> Self {
        Self {
            p,
            chunk_size,
            split_at: (chunk_size as usize).clamp(1 << 20, 16 << 20),
            diff: Sha256::new(),
            uncompressed: 0,
            toc: Vec::new(),
            dropped: Vec::new(),
            offsets: Vec::new(),
            unames: HashMap::new(),
            gnames: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    pub(crate) fn into_emitted(self) -> Emitted {
        Emitted {
            toc: self.toc,
            dropped: self.dropped,
            offsets: self.offsets,
            diff: self.diff,
            uncompressed: self.uncompressed,
        }
    }

    /// Appends uncompressed bytes to the current segment.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        self.p.data.extend_from_slice(bytes);
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
    }

    fn pad(&mut self, size: u64) {
        let pad = (size.div_ceil(BLOCK) * BLOCK - size) as usize;
        if pad > 0 {
            self.append(&[0u8; 512][..pad]);
        }
    }

    fn push_toc(&mut self, e: TocEntry) {
        self.toc.push(e);
        self.dropped.push(false);
    }

    /// Ends the current segment if it grew past the split size (only headers are
    /// pending, so any cut is valid).
    fn maybe_split(&mut self) -> Result<(), WriteError> {
        if self.p.segment_len() >= self.split_at {
            self.p.end_segment()?;
        }
        Ok(())
    }

    /// Writes a landmark file (one byte, 0x0f) as its own chunk.
    pub(crate) fn landmark(&mut self, name: &str) -> Result<(), WriteError> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)
            .map_err(|e| WriteError::InvalidOption(e.to_string()))?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        self.append(h.as_bytes());
        self.p.end_segment()?;
        let seg = self.p.segment_index();
        self.append(&[LANDMARK_CONTENTS]);
        let digest = Sha256Digest::of(&[LANDMARK_CONTENTS]).to_string();
        self.offsets.push((self.toc.len(), seg));
        self.push_toc(TocEntry {
            name: name.as_bytes().to_vec(),
            kind: "reg".into(),
            size: 1,
            digest: digest.clone(),
            chunk_digest: digest,
            ..Default::default()
        });
        self.pad(1);
        self.maybe_split()
    }

    /// Copies one entry (headers and data) from `tar` and records its TOC entries.
    pub(crate) fn entry<R: Read>(
        &mut self,
        e: &RawEntry,
        tar: &mut TarReader<R>,
    ) -> Result<(), WriteError> {
        let cleaned = clean_name(&e.name);
        if is_reserved(&cleaned) {
            // Dropped; the reader skips its data.
            return Ok(());
        }
        self.append(&e.header);
        let first = self.toc.len();
        let mut ent = TocEntry {
            name: e.name.clone(),
            mode: i64::from(e.mode),
            uid: e.uid as i64,
            gid: e.gid as i64,
            user_name: name_if_changed(&mut self.unames, e.uid, &e.uname),
            group_name: name_if_changed(&mut self.gnames, e.gid, &e.gname),
            modtime: format_modtime(e.mtime),
            xattrs: e.xattrs.clone(),
            ..Default::default()
        };
        match e.typeflag {
            b'0' => {
                ent.kind = "reg".into();
                ent.size = e.size as i64;
                if e.size == 0 {
                    ent.digest = Sha256Digest::of(b"").to_string();
                    self.push_toc(ent);
                } else {
                    self.file_data(ent, e.size, tar)?;
                }
            }
            b'1' => {
                ent.kind = "hardlink".into();
                ent.link_name = e.link_name.clone();
                self.push_toc(ent);
            }
            b'2' => {
                ent.kind = "symlink".into();
                ent.link_name = e.link_name.clone();
                self.push_toc(ent);
            }
            b'3' | b'4' => {
                ent.kind = if e.typeflag == b'3' { "char" } else { "block" }.into();
                ent.dev_major = i64::from(e.dev.0);
                ent.dev_minor = i64::from(e.dev.1);
                self.push_toc(ent);
            }
            b'5' => {
                ent.kind = "dir".into();
                self.push_toc(ent);
            }
            b'6' => {
                ent.kind = "fifo".into();
                self.push_toc(ent);
            }
            other => {
                return Err(WriteError::UnsupportedEntry {
                    name: String::from_utf8_lossy(&e.name).into_owned(),
                    detail: format!("type flag {:?}", other as char),
                })
            }
        }
        // A later entry with the same name replaces an earlier one in the TOC (the tar
        // stream keeps both, and extracting it gives the same result).
        if let Some((s, end)) = self.by_name.insert(cleaned, (first, self.toc.len())) {
            for d in &mut self.dropped[s..end] {
                *d = true;
            }
        }
        self.maybe_split()
    }

    fn file_data<R: Read>(
        &mut self,
        mut ent: TocEntry,
        size: u64,
        tar: &mut TarReader<R>,
    ) -> Result<(), WriteError> {
        let first = self.toc.len();
        let multi = size > self.chunk_size;
        let mut file_hash = multi.then(Sha256::new);
        let mut written = 0u64;
        let mut last_digest = String::new();
        while written < size {
            self.p.end_segment()?;
            let seg = self.p.segment_index();
            let remain = size - written;
            let n = remain.min(self.chunk_size);
            if remain >= self.chunk_size {
                ent.chunk_size = self.chunk_size as i64;
            }
            ent.chunk_offset = written as i64;
            let at = self.p.data.len();
            self.p.data.resize(at + n as usize, 0);
            tar.read_data(&mut self.p.data[at..])?;
            let chunk = &self.p.data[at..];
            self.diff.update(chunk);
            self.uncompressed += n;
            let d = Sha256Digest::of(chunk);
            if let Some(h) = file_hash.as_mut() {
                h.update(chunk);
            }
            last_digest = d.to_string();
            ent.chunk_digest = last_digest.clone();
            self.offsets.push((self.toc.len(), seg));
            let next = TocEntry {
                name: ent.name.clone(),
                kind: "chunk".into(),
                ..Default::default()
            };
            self.push_toc(std::mem::replace(&mut ent, next));
            written += n;
        }
        self.toc[first].digest = match file_hash {
            Some(h) => Sha256Digest::from_hasher(h).to_string(),
            None => last_digest,
        };
        self.pad(size);
        Ok(())
    }
}

/// The reference writes a user/group name only when it differs from the last one seen
/// for the same id.
fn name_if_changed(seen: &mut HashMap<u64, Vec<u8>>, id: u64, name: &[u8]) -> Vec<u8> {
    if name.is_empty() || seen.get(&id).is_some_and(|n| n == name) {
        return Vec::new();
    }
    seen.insert(id, name.to_vec());
    name.to_vec()
}

/// TOC `modtime`: empty for the epoch (as the reference), else RFC 3339 UTC, keeping
/// sub-second precision from PAX records.
fn format_modtime((secs, nanos): (i64, u32)) -> String {
    if secs == 0 && nanos == 0 {
        return String::new();
    }
    format_rfc3339(secs, nanos).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean_name(b"./a/../b//c/"), b"b/c");
        assert_eq!(clean_name(b"../../x"), b"x");
        assert_eq!(clean_name(b"/"), b"");
        assert!(is_reserved(&clean_name(b"./stargz.index.json")));
        assert!(!is_reserved(&clean_name(b"a/.prefetch.landmark")));
    }
}
