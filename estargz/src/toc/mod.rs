//! The TOC (`stargz.index.json`): its JSON entry type, reading it out of a blob
//! (decompression with size caps, digest), and writing it.
//!
//! The same JSON layout serves gzip eStargz (the TOC is a tar entry inside the last gzip
//! member) and zstd:chunked (the TOC is a zstd frame inside a skippable frame), including
//! the containers/storage manifest variant (extra `endOffset`, `chunkType` fields).
//! Names are bytes: a TOC may carry non-UTF-8 names.

mod de;
mod ser;

use std::io::Read;

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::footer::{Compression, Footer};

pub use ser::write_toc_json;

/// Name of the TOC entry in the tar stream of a gzip eStargz blob.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Landmark file whose offset ends the prioritized (prefetch) region.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark file saying the layer has no prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Contents of a landmark file.
pub const LANDMARK_CONTENTS: u8 = 0xf;
/// Layer annotation with the TOC digest.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation with the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// Extended attributes as (name, value) pairs, in order.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Caps applied while reading a TOC, checked before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TocLimits {
    /// Largest compressed TOC accepted (bytes).
    pub max_compressed_size: u64,
    /// Largest uncompressed TOC JSON accepted (bytes).
    pub max_uncompressed_size: u64,
    /// Largest number of TOC entries, plus synthesized directories, accepted.
    pub max_entries: usize,
}

impl Default for TocLimits {
    fn default() -> Self {
        Self {
            max_compressed_size: 256 << 20,
            max_uncompressed_size: 512 << 20,
            max_entries: 4_000_000,
        }
    }
}

/// Errors reading a TOC.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    /// The compressed TOC exceeds [`TocLimits::max_compressed_size`].
    #[error("compressed TOC of {size} bytes exceeds the limit of {limit} bytes")]
    CompressedTooLarge {
        /// Size found.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The TOC JSON exceeds [`TocLimits::max_uncompressed_size`].
    #[error("TOC JSON of {size} bytes exceeds the limit of {limit} bytes")]
    UncompressedTooLarge {
        /// Size found.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Fewer compressed TOC bytes were given than the footer announces.
    #[error("expected {expected} compressed TOC bytes, got {got}")]
    Truncated {
        /// Expected size.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// The TOC could not be decompressed.
    #[error("TOC decompression failed: {0}")]
    Decompress(std::io::Error),
    /// The gzip TOC does not hold a tar entry named `stargz.index.json`.
    #[error("TOC tar entry is named {0:?}, expected \"stargz.index.json\"")]
    WrongTarEntry(String),
    /// The gzip TOC's tar header is malformed.
    #[error("malformed TOC tar header: {0}")]
    BadTarHeader(String),
    /// The decompressed TOC size differs from the size in the footer.
    #[error("TOC JSON is {got} bytes, the footer says {expected}")]
    SizeMismatch {
        /// Footer's uncompressed size.
        expected: u64,
        /// Actual size.
        got: u64,
    },
    /// The TOC JSON is malformed.
    #[error("malformed TOC JSON: {0}")]
    Json(String),
    /// The TOC version is not 1.
    #[error("unsupported TOC version {0} (expected 1)")]
    UnsupportedVersion(i64),
    /// The TOC digest does not match the expected one.
    #[error("TOC digest mismatch: the TOC has {actual}, expected {expected}")]
    DigestMismatch {
        /// Expected digest (from the layer annotation).
        expected: Sha256Digest,
        /// Digest of the TOC JSON.
        actual: Sha256Digest,
    },
}

/// One TOC entry, as in the JSON. Integer fields keep the JSON's signed width so that
/// validation can name out-of-range values instead of failing to parse.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TocEntry {
    /// Path of the entry in the tar (not normalized).
    #[serde(deserialize_with = "de::bytes")]
    pub name: Vec<u8>,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type", deserialize_with = "de::nullable")]
    pub kind: String,
    /// Logical size of a regular file.
    #[serde(deserialize_with = "de::nullable")]
    pub size: i64,
    /// Modification time, RFC 3339; empty means unknown.
    #[serde(deserialize_with = "de::nullable")]
    pub modtime: String,
    /// Target of a symlink or hardlink.
    #[serde(rename = "linkName", deserialize_with = "de::bytes")]
    pub link_name: Vec<u8>,
    /// Permission and mode bits (as in the tar header).
    #[serde(deserialize_with = "de::nullable")]
    pub mode: i64,
    /// Owner user id.
    #[serde(deserialize_with = "de::nullable")]
    pub uid: i64,
    /// Owner group id.
    #[serde(deserialize_with = "de::nullable")]
    pub gid: i64,
    /// Owner user name (writers may emit it only on the first entry of each uid).
    #[serde(rename = "userName", deserialize_with = "de::bytes")]
    pub user_name: Vec<u8>,
    /// Owner group name (likewise).
    #[serde(rename = "groupName", deserialize_with = "de::bytes")]
    pub group_name: Vec<u8>,
    /// Offset in the blob of the compressed member holding this chunk's data.
    #[serde(deserialize_with = "de::nullable")]
    pub offset: i64,
    /// Offset of this chunk's data inside the decompressed member starting at `offset`.
    #[serde(rename = "innerOffset", deserialize_with = "de::nullable")]
    pub inner_offset: i64,
    /// End of the compressed frame (containers/storage zstd:chunked only).
    #[serde(rename = "endOffset", deserialize_with = "de::nullable")]
    pub end_offset: i64,
    /// Device major number.
    #[serde(rename = "devMajor", deserialize_with = "de::nullable")]
    pub dev_major: i64,
    /// Device minor number.
    #[serde(rename = "devMinor", deserialize_with = "de::nullable")]
    pub dev_minor: i64,
    /// Extended attributes (JSON: name -> base64 value), in JSON order.
    #[serde(deserialize_with = "de::xattrs")]
    pub xattrs: Xattrs,
    /// Digest of the whole file's contents (`sha256:...`).
    #[serde(deserialize_with = "de::nullable")]
    pub digest: String,
    /// Offset of this chunk in the file.
    #[serde(rename = "chunkOffset", deserialize_with = "de::nullable")]
    pub chunk_offset: i64,
    /// Size of this chunk; 0 means up to the end of the file.
    #[serde(rename = "chunkSize", deserialize_with = "de::nullable")]
    pub chunk_size: i64,
    /// Digest of this chunk's contents.
    #[serde(rename = "chunkDigest", deserialize_with = "de::nullable")]
    pub chunk_digest: String,
    /// containers/storage chunk type: empty or `data`, or `zeros` for a hole.
    #[serde(rename = "chunkType", deserialize_with = "de::nullable")]
    pub chunk_type: String,
}

/// A fully parsed TOC (for tools and tests; [`crate::LayerIndex`] streams instead).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Toc {
    /// Format version, 1.
    #[serde(default)]
    pub version: i64,
    /// Entries in TOC order.
    #[serde(default, deserialize_with = "de::nullable")]
    pub entries: Vec<TocEntry>,
}

impl Toc {
    /// Parses TOC JSON into memory.
    pub fn parse(json: &[u8]) -> Result<Self, TocError> {
        let toc: Toc = serde_json::from_slice(json).map_err(|e| TocError::Json(e.to_string()))?;
        if toc.version != 1 {
            return Err(TocError::UnsupportedVersion(toc.version));
        }
        Ok(toc)
    }
}

/// Decompresses the TOC JSON out of the compressed TOC bytes at [`Footer::toc_range`],
/// enforcing `limits` before allocating.
pub fn decompress_toc(
    footer: &Footer,
    compressed: &[u8],
    limits: &TocLimits,
) -> Result<Vec<u8>, TocError> {
    if footer.toc_compressed_size > limits.max_compressed_size {
        return Err(TocError::CompressedTooLarge {
            size: footer.toc_compressed_size,
            limit: limits.max_compressed_size,
        });
    }
    let expected = footer.toc_compressed_size;
    if (compressed.len() as u64) < expected {
        return Err(TocError::Truncated {
            expected,
            got: compressed.len() as u64,
        });
    }
    let compressed = &compressed[..expected as usize];
    match footer.format.compression() {
        Compression::Gzip => decompress_gzip_toc(compressed, limits),
        Compression::Zstd => decompress_zstd_toc(
            compressed,
            footer.toc_uncompressed_size.unwrap_or(0),
            limits,
        ),
    }
}

fn decompress_gzip_toc(compressed: &[u8], limits: &TocLimits) -> Result<Vec<u8>, TocError> {
    let mut gz = flate2::bufread::GzDecoder::new(compressed);
    let mut header = [0u8; 512];
    gz.read_exact(&mut header).map_err(TocError::Decompress)?;
    let h = tar::Header::from_byte_slice(&header);
    let name = h.path_bytes();
    if &*name != TOC_TAR_NAME.as_bytes() {
        return Err(TocError::WrongTarEntry(
            String::from_utf8_lossy(&name).into_owned(),
        ));
    }
    if !matches!(h.entry_type(), tar::EntryType::Regular) {
        return Err(TocError::BadTarHeader(format!(
            "TOC entry has type {:?}, expected a regular file",
            h.entry_type()
        )));
    }
    let size = h
        .entry_size()
        .map_err(|e| TocError::BadTarHeader(e.to_string()))?;
    if size > limits.max_uncompressed_size {
        return Err(TocError::UncompressedTooLarge {
            size,
            limit: limits.max_uncompressed_size,
        });
    }
    // The tar entry is followed by padding and the end-of-archive marker.
    read_exactly(gz, size, false)
}

/// Reads exactly `size` bytes (and, with `at_end`, checks nothing follows), growing the
/// buffer with the data actually decoded: a lying size cannot force a large allocation.
fn read_exactly(r: impl Read, size: u64, at_end: bool) -> Result<Vec<u8>, TocError> {
    let mut json = Vec::with_capacity(size.min(16 << 20) as usize);
    let limit = size + u64::from(at_end);
    let got = r
        .take(limit)
        .read_to_end(&mut json)
        .map_err(TocError::Decompress)? as u64;
    if got != size {
        return Err(TocError::SizeMismatch {
            expected: size,
            got,
        });
    }
    Ok(json)
}

fn decompress_zstd_toc(
    compressed: &[u8],
    size: u64,
    limits: &TocLimits,
) -> Result<Vec<u8>, TocError> {
    if size > limits.max_uncompressed_size {
        return Err(TocError::UncompressedTooLarge {
            size,
            limit: limits.max_uncompressed_size,
        });
    }
    let mut dec =
        zstd::stream::read::Decoder::with_buffer(compressed).map_err(TocError::Decompress)?;
    let mut json = vec![0u8; size as usize];
    let mut got = 0usize;
    while got < json.len() {
        match dec.read(&mut json[got..]).map_err(TocError::Decompress)? {
            0 => break,
            n => got += n,
        }
    }
    let mut probe = [0u8; 1];
    let extra = dec.read(&mut probe).map_err(TocError::Decompress)?;
    if got as u64 != size || extra != 0 {
        return Err(TocError::SizeMismatch {
            expected: size,
            got: got as u64 + extra as u64,
        });
    }
    Ok(json)
}

/// Checks the TOC digest against the expected value (the `toc.digest` annotation).
pub fn verify_toc_digest(json: &[u8], expected: &Sha256Digest) -> Result<Sha256Digest, TocError> {
    let actual = Sha256Digest::of(json);
    if actual != *expected {
        return Err(TocError::DigestMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_fields() {
        let json = br#"{"version":1,"entries":[
            {"name":"a/","type":"dir","mode":493,"modtime":"2020-01-01T00:00:00Z",
             "xattrs":{"user.x":"aGk="},"uid":1,"gid":2,"userName":"u","groupName":"g"},
            {"name":"a/f","type":"reg","size":10,"offset":7,"innerOffset":3,
             "digest":"sha256:00","chunkSize":4,"chunkDigest":"sha256:11"},
            {"name":"a/f","type":"chunk","offset":9,"chunkOffset":4},
            {"name":"d","type":"char","devMajor":1,"devMinor":3,"extra":{"x":[1,2]}},
            {"name":"l","type":"symlink","linkName":"t"}
        ]}"#;
        let toc = Toc::parse(json).unwrap();
        assert_eq!(toc.entries.len(), 5);
        let d = &toc.entries[0];
        assert_eq!(d.xattrs, vec![(b"user.x".to_vec(), b"hi".to_vec())]);
        assert_eq!((d.uid, d.gid, d.mode), (1, 2, 493));
        assert_eq!(d.user_name, b"u");
        let f = &toc.entries[1];
        assert_eq!(
            (f.size, f.offset, f.inner_offset, f.chunk_size),
            (10, 7, 3, 4)
        );
        assert_eq!(toc.entries[2].chunk_offset, 4);
        assert_eq!((toc.entries[3].dev_major, toc.entries[3].dev_minor), (1, 3));
        assert_eq!(toc.entries[4].link_name, b"t");
    }

    #[test]
    fn accepts_nulls_and_non_utf8_names() {
        let mut json = br#"{"version":1,"entries":[{"name":""#.to_vec();
        json.extend_from_slice(b"\xff\xfe");
        json.extend_from_slice(br#"","type":"reg","size":null,"xattrs":null,"linkName":null}]}"#);
        let toc = Toc::parse(&json).unwrap();
        assert_eq!(toc.entries[0].name, b"\xff\xfe");
        assert_eq!(toc.entries[0].size, 0);
    }

    fn zstd_footer(json_len: u64, compressed: &[u8]) -> Footer {
        Footer {
            format: crate::footer::Format::ZstdChunked,
            toc_offset: 8,
            toc_compressed_size: compressed.len() as u64,
            toc_uncompressed_size: Some(json_len),
            blob_size: 1000,
        }
    }

    #[test]
    fn decompression_checks_sizes_and_limits() {
        let json = br#"{"version":1,"entries":[]}"#;
        let z = zstd::bulk::compress(json, 3).unwrap();
        let limits = TocLimits::default();
        assert_eq!(
            decompress_toc(&zstd_footer(json.len() as u64, &z), &z, &limits).unwrap(),
            json
        );
        for wrong in [json.len() as u64 - 1, json.len() as u64 + 1] {
            assert!(matches!(
                decompress_toc(&zstd_footer(wrong, &z), &z, &limits),
                Err(TocError::SizeMismatch { .. })
            ));
        }
        // A lying size is refused by the limit before anything is allocated.
        assert!(matches!(
            decompress_toc(&zstd_footer(1 << 40, &z), &z, &limits),
            Err(TocError::UncompressedTooLarge { .. })
        ));
        let tight = TocLimits {
            max_compressed_size: 4,
            ..Default::default()
        };
        assert!(matches!(
            decompress_toc(&zstd_footer(json.len() as u64, &z), &z, &tight),
            Err(TocError::CompressedTooLarge { .. })
        ));
        assert!(matches!(
            decompress_toc(&zstd_footer(json.len() as u64, &z), &z[..3], &limits),
            Err(TocError::Truncated { .. })
        ));
        // gzip: the tar entry must be stargz.index.json.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(json.len() as u64);
        b.append_data(&mut h, "other.json", &json[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        let gz = gz.finish().unwrap();
        let f = Footer {
            format: crate::footer::Format::Estargz,
            toc_offset: 0,
            toc_compressed_size: gz.len() as u64,
            toc_uncompressed_size: None,
            blob_size: gz.len() as u64 + 51,
        };
        assert!(
            matches!(decompress_toc(&f, &gz, &limits), Err(TocError::WrongTarEntry(n)) if n == "other.json")
        );
    }

    #[test]
    fn rejects_bad_base64_and_versions() {
        let bad = br#"{"version":1,"entries":[{"name":"a","type":"reg","xattrs":{"k":"!!"}}]}"#;
        assert!(matches!(Toc::parse(bad), Err(TocError::Json(_))));
        let v2 = br#"{"version":2,"entries":[]}"#;
        assert!(matches!(
            Toc::parse(v2),
            Err(TocError::UnsupportedVersion(2))
        ));
    }
}
