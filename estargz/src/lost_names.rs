//! Names the TOC lost, taken back from the tar headers.
//!
//! The reference converter (`ctr-remote image convert`, and every writer built on Go's
//! JSON encoder) writes each byte of a name that is not UTF-8 as U+FFFD into the TOC,
//! while the tar header in the blob keeps the true bytes. A lazy tree built from the TOC
//! alone would show `data/bad-\u{FFFD}\u{FFFD}` where a full pull shows `data/bad-\xff\xfe`
//! (and two names that differ only in such bytes would collapse into one). For the few
//! entries whose TOC name or link name contains U+FFFD, the header wins: their tar
//! headers are read from the blob and their raw names replace the TOC's.
//!
//! Where a header is, from what the format guarantees: the blob is one tar stream cut
//! into compressed members (gzip) or frames (zstd), and every chunk of file data starts a
//! member at the entry's `offset` (its data at `innerOffset` in the decompressed member).
//! TOC entries are in tar order. So decompressing from the member of the last data chunk
//! before an entry (or from the blob's start) and skipping the rest of that chunk's file
//! and its padding lands on the next tar header; the headers follow one per TOC entry
//! (chunk entries have none) up to the entry, all before the next member that starts at
//! another offset (the entry's own data, if it has any, starts one). The headers are
//! checked against their TOC entries on the way (type, size, name and link name up to
//! the replaced bytes): a blob that does not line up keeps the TOC's names.
//!
//! [`HeaderPlan`] says which byte ranges to read (one per run of lost entries after the
//! same data chunk); [`HeaderPlan::recover`] turns the bytes of a range into
//! [`NameFix`]es; [`crate::LayerIndex::from_toc_json_with_names`] builds the tree with them.

use std::collections::HashMap;
use std::io::{self, Read};
use std::ops::Range;

use crate::footer::{Compression, Footer};
use crate::name;
use crate::toc::{Toc, TocEntry, TocError};
use crate::ReadAt;

/// U+FFFD in UTF-8.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
/// Largest compressed range read for one run of lost names (a lost name right after a
/// huge single-chunk file is left as the TOC has it).
pub const MAX_SPAN_BYTES: u64 = 64 << 20;

/// The raw names of one TOC entry, from its tar header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameFix {
    /// The header's name.
    pub name: Vec<u8>,
    /// The header's link name, when the TOC's lost bytes too.
    pub link_name: Option<Vec<u8>>,
}

/// Fixes by position of the entry in the TOC's `entries` (chunk entries counted).
pub type NameFixes = HashMap<usize, NameFix>;

/// Why the headers of a range could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Reading the range failed.
    #[error("reading tar headers at bytes {}..{}: {source}", range.start, range.end)]
    Read {
        /// The range.
        range: Range<u64>,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The range does not decompress to the tar stream the TOC describes.
    #[error("tar headers at bytes {}..{}: {source}", range.start, range.end)]
    Stream {
        /// The range.
        range: Range<u64>,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A header does not match its TOC entry.
    #[error("tar headers at bytes {}..{}: entry {position} {toc_name:?} of the TOC: {detail}", range.start, range.end)]
    Mismatch {
        /// The range.
        range: Range<u64>,
        /// The entry's position in the TOC.
        position: usize,
        /// Its TOC name.
        toc_name: String,
        /// What differs.
        detail: String,
    },
    /// The range is larger than [`MAX_SPAN_BYTES`].
    #[error("tar headers at bytes {}..{}: range larger than {MAX_SPAN_BYTES} bytes", range.start, range.end)]
    TooLarge {
        /// The range.
        range: Range<u64>,
    },
}

/// True when `json` (a TOC) may hold a name with U+FFFD: raw or as the `\ufffd` escape
/// Go writes for each byte that is not UTF-8. False means no entry needs its header.
pub fn may_have_lost_names(json: &[u8]) -> bool {
    contains(json, REPLACEMENT)
        || json
            .windows(6)
            .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].eq_ignore_ascii_case(b"fffd"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a header must look like: its TOC entry.
#[derive(Clone, Debug)]
struct Expected {
    position: usize,
    lost: bool,
    kind: String,
    size: i64,
    name: Vec<u8>,
    link_name: Vec<u8>,
}

/// One range of the blob holding the headers of some lost entries.
#[derive(Clone, Debug)]
pub struct HeaderSpan {
    /// Compressed bytes to read: from a member start to the start of a later member.
    pub range: Range<u64>,
    /// Decompressed bytes before the first header (the end of a file's data, padding).
    skip: u64,
    /// The TOC entries whose headers follow, in order, up to the last lost one.
    expect: Vec<Expected>,
}

impl HeaderSpan {
    /// How many entries of this span lost their names.
    pub fn lost(&self) -> usize {
        self.expect.iter().filter(|e| e.lost).count()
    }
}

/// The ranges to read to recover a TOC's lost names.
#[derive(Clone, Debug)]
pub struct HeaderPlan {
    compression: Compression,
    spans: Vec<HeaderSpan>,
}

/// A run of TOC entries after one data chunk, being collected.
struct Group {
    start: u64,
    skip: u64,
    expect: Vec<Expected>,
}

fn pad(size: u64) -> u64 {
    (512 - size % 512) % 512
}

fn lost(b: &[u8]) -> bool {
    contains(b, REPLACEMENT)
}

impl HeaderPlan {
    /// Plans from TOC JSON; `Ok(None)` when no entry lost a name (the usual case, told
    /// without parsing the TOC).
    pub fn from_json(json: &[u8], footer: &Footer) -> Result<Option<Self>, TocError> {
        if !may_have_lost_names(json) {
            return Ok(None);
        }
        let toc = Toc::parse(json)?;
        let plan = Self::from_toc(&toc.entries, footer);
        Ok((!plan.spans.is_empty()).then_some(plan))
    }

    /// Plans from parsed entries.
    pub fn from_toc(entries: &[TocEntry], footer: &Footer) -> Self {
        let data_end = footer.data_end();
        let mut spans = Vec::new();
        let mut close = |g: Group, end: u64| {
            let Some(last) = g.expect.iter().rposition(|e| e.lost) else {
                return;
            };
            if end <= g.start {
                return;
            }
            let mut expect = g.expect;
            expect.truncate(last + 1);
            spans.push(HeaderSpan {
                range: g.start..end,
                skip: g.skip,
                expect,
            });
        };
        let mut group = Group {
            start: 0,
            skip: 0,
            expect: Vec::new(),
        };
        let mut file_size = 0u64;
        for (position, e) in entries.iter().enumerate() {
            let is_chunk = e.kind == "chunk";
            if !is_chunk {
                group.expect.push(Expected {
                    position,
                    lost: lost(&e.name)
                        || (matches!(e.kind.as_str(), "symlink" | "hardlink")
                            && lost(&e.link_name)),
                    kind: e.kind.clone(),
                    size: e.size,
                    name: e.name.clone(),
                    link_name: e.link_name.clone(),
                });
            }
            let has_data = if is_chunk {
                e.chunk_type != "zeros"
            } else {
                e.kind == "reg" && e.size > 0
            };
            if e.kind == "reg" {
                file_size = e.size.max(0) as u64;
            }
            if !has_data || e.offset <= 0 {
                continue;
            }
            let offset = e.offset as u64;
            if offset == group.start && !group.expect.is_empty() {
                // Data inside the member being walked: the walk passes over it.
                continue;
            }
            let chunk_offset = if is_chunk {
                e.chunk_offset.max(0) as u64
            } else {
                0
            };
            let skip = e.inner_offset.max(0) as u64
                + file_size.saturating_sub(chunk_offset)
                + pad(file_size);
            let done = std::mem::replace(
                &mut group,
                Group {
                    start: offset,
                    skip,
                    expect: Vec::new(),
                },
            );
            close(done, offset);
        }
        close(group, data_end);
        HeaderPlan {
            compression: footer.format.compression(),
            spans,
        }
    }

    /// The ranges to read.
    pub fn spans(&self) -> &[HeaderSpan] {
        &self.spans
    }

    /// Compressed bytes of all ranges.
    pub fn total_bytes(&self) -> u64 {
        self.spans.iter().map(|s| s.range.end - s.range.start).sum()
    }

    /// Entries that lost a name.
    pub fn lost(&self) -> usize {
        self.spans.iter().map(HeaderSpan::lost).sum()
    }

    /// The fixes of span `span` from its bytes (`compressed` holds `span.range`).
    pub fn recover(
        &self,
        span: &HeaderSpan,
        compressed: &[u8],
    ) -> Result<Vec<(usize, NameFix)>, HeaderError> {
        let range = span.range.clone();
        if range.end - range.start > MAX_SPAN_BYTES {
            return Err(HeaderError::TooLarge { range });
        }
        let stream_err = |source: io::Error| HeaderError::Stream {
            range: range.clone(),
            source,
        };
        let mut reader: Box<dyn Read + '_> = match self.compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(compressed).map_err(stream_err)?)
            }
        };
        let skipped =
            io::copy(&mut (&mut reader).take(span.skip), &mut io::sink()).map_err(stream_err)?;
        if skipped != span.skip {
            return Err(stream_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the range ends after {skipped} of the {} bytes before the first header",
                    span.skip
                ),
            )));
        }
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries().map_err(stream_err)?;
        let mut fixes = Vec::new();
        for want in &span.expect {
            let mismatch = |detail: String| HeaderError::Mismatch {
                range: range.clone(),
                position: want.position,
                toc_name: String::from_utf8_lossy(&want.name).into_owned(),
                detail,
            };
            let entry = loop {
                match entries.next() {
                    None => return Err(mismatch("no tar header left in the range".into())),
                    Some(Err(e)) => return Err(stream_err(e)),
                    Some(Ok(e)) if e.header().entry_type() == tar::EntryType::XGlobalHeader => {}
                    Some(Ok(e)) => break e,
                }
            };
            let header = entry.header();
            let kind = kind_of(header.entry_type());
            if kind != Some(want.kind.as_str()) {
                return Err(mismatch(format!(
                    "the tar header is a {:?} entry, the TOC says {:?}",
                    header.entry_type(),
                    want.kind
                )));
            }
            if want.kind == "reg" && entry.size() != want.size.max(0) as u64 {
                return Err(mismatch(format!(
                    "the tar header says {} bytes, the TOC {}",
                    entry.size(),
                    want.size
                )));
            }
            let raw_name = entry.path_bytes().into_owned();
            if !same_name(&raw_name, &want.name) {
                return Err(mismatch(format!(
                    "the tar header names {:?}",
                    String::from_utf8_lossy(&raw_name)
                )));
            }
            let raw_link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            if matches!(want.kind.as_str(), "symlink" | "hardlink")
                && go_lossy(&raw_link) != want.link_name
            {
                return Err(mismatch(format!(
                    "the tar header links to {:?}",
                    String::from_utf8_lossy(&raw_link)
                )));
            }
            if want.lost {
                fixes.push((
                    want.position,
                    NameFix {
                        name: raw_name,
                        link_name: lost(&want.link_name).then_some(raw_link),
                    },
                ));
            }
        }
        Ok(fixes)
    }

    /// Reads every range from `blob` and recovers what it can: the fixes, and why the
    /// other ranges could not be used.
    pub fn recover_from(&self, blob: &dyn ReadAt) -> (NameFixes, Vec<HeaderError>) {
        let mut fixes = NameFixes::new();
        let mut errors = Vec::new();
        for span in &self.spans {
            let len = span.range.end - span.range.start;
            if len > MAX_SPAN_BYTES {
                errors.push(HeaderError::TooLarge {
                    range: span.range.clone(),
                });
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            if let Err(source) = blob.read_exact_at(span.range.start, &mut buf) {
                errors.push(HeaderError::Read {
                    range: span.range.clone(),
                    source,
                });
                continue;
            }
            match self.recover(span, &buf) {
                Ok(found) => fixes.extend(found),
                Err(e) => errors.push(e),
            }
        }
        (fixes, errors)
    }
}

/// The TOC type of a tar entry type.
fn kind_of(t: tar::EntryType) -> Option<&'static str> {
    use tar::EntryType as T;
    Some(match t {
        T::Regular | T::Continuous => "reg",
        T::Directory => "dir",
        T::Symlink => "symlink",
        T::Link => "hardlink",
        T::Char => "char",
        T::Block => "block",
        T::Fifo => "fifo",
        _ => return None,
    })
}

/// Whether a header's raw name is what a TOC writer made of it.
fn same_name(raw: &[u8], toc: &[u8]) -> bool {
    let written = go_lossy(raw);
    if written == toc {
        return true;
    }
    match (name::normalize(&written), name::normalize(toc)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `raw` as Go's JSON encoder writes it: each byte that does not start a valid UTF-8
/// sequence becomes U+FFFD (one per byte, unlike Rust's lossy conversion, which replaces
/// a truncated sequence as a whole).
pub fn go_lossy(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.extend_from_slice(s.as_bytes());
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.extend_from_slice(&rest[..valid]);
                out.extend_from_slice(REPLACEMENT);
                rest = &rest[valid + 1..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_lossy_replaces_each_invalid_byte() {
        assert_eq!(go_lossy(b"plain"), b"plain");
        assert_eq!(go_lossy(b"bad-\xff\xfe"), "bad-\u{FFFD}\u{FFFD}".as_bytes());
        assert_eq!(go_lossy(b"caf\xe9"), "caf\u{FFFD}".as_bytes());
        // A truncated three-byte sequence: two replacements (Rust's lossy gives one).
        assert_eq!(go_lossy(b"\xe2\x82a"), "\u{FFFD}\u{FFFD}a".as_bytes());
        assert_eq!(go_lossy(b"\xc3("), "\u{FFFD}(".as_bytes());
        assert_eq!(go_lossy("é".as_bytes()), "é".as_bytes());
    }

    #[test]
    fn the_escape_or_the_character_mark_a_toc_that_may_have_lost_names() {
        assert!(!may_have_lost_names(br#"{"entries":[{"name":"a"}]}"#));
        assert!(may_have_lost_names(br#"{"name":"bad-\ufffd"}"#));
        assert!(may_have_lost_names(br#"{"name":"bad-\uFFFD"}"#));
        assert!(may_have_lost_names(
            "{\"name\":\"bad-\u{FFFD}\"}".as_bytes()
        ));
    }
}
