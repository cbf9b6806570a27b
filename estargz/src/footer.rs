//! Footers: the fixed-size tail of a blob that says where its TOC is.
//!
//! Pure functions over the blob's last bytes, so that async callers can do their own I/O:
//! fetch the last [`MAX_FOOTER_SIZE`] bytes, call [`parse_footer`], then fetch
//! [`Footer::toc_range`].
//!
//! - gzip eStargz, 51 bytes: an empty gzip member whose header carries the extra
//!   subfield `SG` of length 22 holding `%016xSTARGZ` (hex TOC offset).
//! - legacy stargz, 47 bytes: the same, but the extra field is the raw 22 bytes without
//!   the `SG` subfield header.
//! - zstd:chunked (stargz-snapshotter), 48 bytes: a zstd skippable frame (magic
//!   `0x184D2A50`, length 40) whose payload is the u64 LE TOC offset, compressed TOC length,
//!   uncompressed TOC length, manifest type (1) and the magic `GnUlInUx`.
//! - zstd:chunked (containers/storage v2), 72 bytes: the same skippable frame with a 64-byte
//!   payload that adds the tar-split position before the magic (`GNUlInUx`).
//!
//! Either magic is accepted with either layout.

use std::ops::Range;

/// The largest footer, i.e. how many tail bytes [`parse_footer`] may need.
pub const MAX_FOOTER_SIZE: usize = 72;
/// Size of the gzip eStargz footer.
pub const ESTARGZ_FOOTER_SIZE: usize = 51;
/// Size of the legacy stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the zstd:chunked footer written by stargz-snapshotter (frame header + 40 bytes).
pub const ZSTD_CHUNKED_FOOTER_SIZE: usize = 48;
/// Size of the zstd:chunked footer written by containers/storage (frame header + 64 bytes).
pub const ZSTD_CHUNKED_V2_FOOTER_SIZE: usize = 72;

/// Magic of a zstd skippable frame as written by zstd:chunked writers (little endian).
pub(crate) const SKIPPABLE_FRAME_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// Magic of a regular zstd frame.
pub(crate) const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The zstd:chunked footer magic of stargz-snapshotter (and early containers/storage),
/// ASCII `GnUlInUx`.
pub(crate) const ZSTD_CHUNKED_MAGIC: [u8; 8] = *b"GnUlInUx";
/// The magic of later containers/storage footers, ASCII `GNUlInUx`.
pub(crate) const ZSTD_CHUNKED_MAGIC_V2: [u8; 8] = *b"GNUlInUx";
/// Manifest type of a CRFS-style (stargz) TOC in a zstd:chunked footer.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// How chunks and the TOC of a blob are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Concatenated gzip members (eStargz and legacy stargz).
    Gzip,
    /// Concatenated zstd frames (zstd:chunked).
    Zstd,
}

/// The blob format, as told by its footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// gzip eStargz with the 51-byte footer.
    Estargz,
    /// legacy stargz with the 47-byte footer.
    LegacyStargz,
    /// zstd:chunked with the 40-byte footer payload (stargz-snapshotter).
    ZstdChunked,
    /// zstd:chunked with the 64-byte footer payload (containers/storage).
    ZstdChunkedV2,
}

impl Format {
    /// The compression of chunks and TOC.
    pub fn compression(self) -> Compression {
        match self {
            Format::Estargz | Format::LegacyStargz => Compression::Gzip,
            Format::ZstdChunked | Format::ZstdChunkedV2 => Compression::Zstd,
        }
    }

    /// The footer size in bytes.
    pub fn footer_size(self) -> usize {
        match self {
            Format::Estargz => ESTARGZ_FOOTER_SIZE,
            Format::LegacyStargz => LEGACY_FOOTER_SIZE,
            Format::ZstdChunked => ZSTD_CHUNKED_FOOTER_SIZE,
            Format::ZstdChunkedV2 => ZSTD_CHUNKED_V2_FOOTER_SIZE,
        }
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Estargz => "estargz",
            Format::LegacyStargz => "stargz (legacy)",
            Format::ZstdChunked => "zstd:chunked",
            Format::ZstdChunkedV2 => "zstd:chunked (containers/storage)",
        }
    }
}

/// A parsed footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// The blob format.
    pub format: Format,
    /// Offset in the blob where the compressed TOC starts (for gzip: the TOC's gzip
    /// member; for zstd: the TOC's zstd frame, after its skippable-frame header).
    pub toc_offset: u64,
    /// Compressed size of the TOC (for gzip: from the TOC offset to the footer).
    pub toc_compressed_size: u64,
    /// Uncompressed size of the TOC JSON, when the footer records it (zstd only).
    pub toc_uncompressed_size: Option<u64>,
    /// Total blob size the footer was parsed against.
    pub blob_size: u64,
}

impl Footer {
    /// The byte range of the compressed TOC in the blob.
    pub fn toc_range(&self) -> Range<u64> {
        self.toc_offset..self.toc_offset + self.toc_compressed_size
    }

    /// The end of the data region: chunk payloads must lie before this offset.
    pub fn data_end(&self) -> u64 {
        match self.format.compression() {
            Compression::Gzip => self.toc_offset,
            // The TOC's skippable-frame header precedes the TOC offset.
            Compression::Zstd => self.toc_offset - 8,
        }
    }
}

/// Errors detecting or parsing a footer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FooterError {
    /// Fewer tail bytes were given than needed to parse a footer.
    #[error("need at least {need} tail bytes to parse the footer, got {got}")]
    TailTooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// More tail bytes were given than the blob has (a caller bug).
    #[error("{tail} tail bytes given for a blob of only {blob_size} bytes")]
    TailLongerThanBlob {
        /// Bytes given.
        tail: usize,
        /// Blob size.
        blob_size: u64,
    },
    /// The blob is smaller than any footer.
    #[error("blob of {0} bytes is too small to hold an eStargz/zstd:chunked footer")]
    BlobTooSmall(u64),
    /// None of the known footers matched.
    #[error("no eStargz, stargz or zstd:chunked footer found at the end of the blob")]
    NotFound,
    /// The footer's TOC offset is not a valid number.
    #[error("{format} footer has a malformed TOC offset {text:?}")]
    MalformedOffset {
        /// The format whose footer matched.
        format: &'static str,
        /// The offending text.
        text: String,
    },
    /// The footer points outside the blob.
    #[error("{format} footer puts the TOC at {toc_offset}+{toc_size}, outside the {blob_size}-byte blob")]
    TocOutOfBounds {
        /// The format whose footer matched.
        format: &'static str,
        /// TOC offset from the footer.
        toc_offset: u64,
        /// Compressed TOC size.
        toc_size: u64,
        /// Blob size.
        blob_size: u64,
    },
    /// A zstd:chunked footer names a manifest type other than the CRFS TOC.
    #[error("zstd:chunked footer has unsupported manifest type {0}")]
    UnsupportedManifestType(u64),
}

/// Parses the footer from `tail`, the last `tail.len()` bytes of a blob of `blob_size`
/// bytes. `tail` may be longer than the footer (only its end is used); it must hold at
/// least `min(MAX_FOOTER_SIZE, blob_size)` bytes.
pub fn parse_footer(tail: &[u8], blob_size: u64) -> Result<Footer, FooterError> {
    let need = MAX_FOOTER_SIZE.min(usize::try_from(blob_size).unwrap_or(usize::MAX));
    if (tail.len() as u64) > blob_size {
        return Err(FooterError::TailLongerThanBlob {
            tail: tail.len(),
            blob_size,
        });
    }
    if tail.len() < need {
        return Err(FooterError::TailTooShort {
            need,
            got: tail.len(),
        });
    }
    if blob_size < LEGACY_FOOTER_SIZE as u64 {
        return Err(FooterError::BlobTooSmall(blob_size));
    }
    let suffix = |n: usize| -> Option<&[u8]> { tail.len().checked_sub(n).map(|s| &tail[s..]) };

    if let Some(f) = suffix(ESTARGZ_FOOTER_SIZE) {
        if let Some(off) = parse_gzip_footer(f, true)? {
            return gzip_footer(Format::Estargz, off, blob_size);
        }
    }
    if let Some(f) = suffix(LEGACY_FOOTER_SIZE) {
        if let Some(off) = parse_gzip_footer(f, false)? {
            return gzip_footer(Format::LegacyStargz, off, blob_size);
        }
    }
    if tail.ends_with(&ZSTD_CHUNKED_MAGIC) || tail.ends_with(&ZSTD_CHUNKED_MAGIC_V2) {
        for (format, payload_len) in [(Format::ZstdChunked, 40u32), (Format::ZstdChunkedV2, 64u32)]
        {
            let Some(f) = suffix(format.footer_size()) else {
                continue;
            };
            if f[..4] != SKIPPABLE_FRAME_MAGIC || f[4..8] != payload_len.to_le_bytes() {
                continue;
            }
            return zstd_footer(format, &f[8..], blob_size);
        }
    }
    Err(FooterError::NotFound)
}

/// Returns the TOC offset if `f` is a (legacy when `!sg`) gzip stargz footer.
fn parse_gzip_footer(f: &[u8], sg: bool) -> Result<Option<u64>, FooterError> {
    // 10-byte gzip header: ID1 ID2 CM FLG MTIME(4) XFL OS; FLG must be exactly FEXTRA.
    if f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || f[3] != 0x04 {
        return Ok(None);
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    let payload = if sg {
        if xlen != 26 || f[12] != b'S' || f[13] != b'G' || u16::from_le_bytes([f[14], f[15]]) != 22
        {
            return Ok(None);
        }
        &f[16..38]
    } else {
        if xlen != 22 {
            return Ok(None);
        }
        &f[12..34]
    };
    if &payload[16..] != b"STARGZ" {
        return Ok(None);
    }
    // The rest is an empty deflate stream and a zero CRC/ISIZE trailer; it carries no
    // information, and readers of the reference format do not check it either.
    let hexpart = &payload[..16];
    let text = || String::from_utf8_lossy(hexpart).into_owned();
    let format = if sg { "estargz" } else { "legacy stargz" };
    if !hexpart.iter().all(u8::is_ascii_hexdigit) {
        return Err(FooterError::MalformedOffset {
            format,
            text: text(),
        });
    }
    // 16 hex digits always fit in a u64.
    let s = std::str::from_utf8(hexpart).map_err(|_| FooterError::MalformedOffset {
        format,
        text: text(),
    })?;
    let off = u64::from_str_radix(s, 16).map_err(|_| FooterError::MalformedOffset {
        format,
        text: text(),
    })?;
    Ok(Some(off))
}

fn gzip_footer(format: Format, toc_offset: u64, blob_size: u64) -> Result<Footer, FooterError> {
    let data_end = blob_size - format.footer_size() as u64;
    if toc_offset >= data_end {
        return Err(FooterError::TocOutOfBounds {
            format: format.name(),
            toc_offset,
            toc_size: 0,
            blob_size,
        });
    }
    Ok(Footer {
        format,
        toc_offset,
        toc_compressed_size: data_end - toc_offset,
        toc_uncompressed_size: None,
        blob_size,
    })
}

fn zstd_footer(format: Format, payload: &[u8], blob_size: u64) -> Result<Footer, FooterError> {
    let u = |i: usize| u64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (toc_offset, compressed, uncompressed, manifest_type) = (u(0), u(1), u(2), u(3));
    if manifest_type != MANIFEST_TYPE_CRFS {
        return Err(FooterError::UnsupportedManifestType(manifest_type));
    }
    let data_end = blob_size - format.footer_size() as u64;
    let fits = toc_offset >= 8
        && compressed > 0
        && toc_offset
            .checked_add(compressed)
            .is_some_and(|end| end <= data_end);
    if !fits {
        return Err(FooterError::TocOutOfBounds {
            format: format.name(),
            toc_offset,
            toc_size: compressed,
            blob_size,
        });
    }
    Ok(Footer {
        format,
        toc_offset,
        toc_compressed_size: compressed,
        toc_uncompressed_size: Some(uncompressed),
        blob_size,
    })
}

/// Encodes the 51-byte gzip eStargz footer for a TOC at `toc_offset`.
pub fn encode_estargz_footer(toc_offset: u64) -> [u8; ESTARGZ_FOOTER_SIZE] {
    let mut f = [0u8; ESTARGZ_FOOTER_SIZE];
    f[..10].copy_from_slice(&GZIP_FOOTER_HEADER);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12] = b'S';
    f[13] = b'G';
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&EMPTY_STORED_DEFLATE);
    // CRC32 and ISIZE of the empty payload are zero.
    f
}

/// Encodes the 47-byte legacy stargz footer for a TOC at `toc_offset`.
pub fn encode_legacy_footer(toc_offset: u64) -> [u8; LEGACY_FOOTER_SIZE] {
    let mut f = [0u8; LEGACY_FOOTER_SIZE];
    f[..10].copy_from_slice(&GZIP_FOOTER_HEADER);
    f[10..12].copy_from_slice(&22u16.to_le_bytes());
    f[12..34].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[34..39].copy_from_slice(&EMPTY_STORED_DEFLATE);
    f
}

/// Encodes the 48-byte zstd:chunked footer frame (stargz-snapshotter layout).
pub fn encode_zstd_chunked_footer(
    toc_offset: u64,
    toc_compressed_size: u64,
    toc_uncompressed_size: u64,
) -> [u8; ZSTD_CHUNKED_FOOTER_SIZE] {
    let mut f = [0u8; ZSTD_CHUNKED_FOOTER_SIZE];
    f[..4].copy_from_slice(&SKIPPABLE_FRAME_MAGIC);
    f[4..8].copy_from_slice(&40u32.to_le_bytes());
    f[8..16].copy_from_slice(&toc_offset.to_le_bytes());
    f[16..24].copy_from_slice(&toc_compressed_size.to_le_bytes());
    f[24..32].copy_from_slice(&toc_uncompressed_size.to_le_bytes());
    f[32..40].copy_from_slice(&MANIFEST_TYPE_CRFS.to_le_bytes());
    f[40..48].copy_from_slice(&ZSTD_CHUNKED_MAGIC);
    f
}

/// gzip header of the footer member: FLG=FEXTRA, MTIME=0, XFL=0, OS=255 (unknown).
const GZIP_FOOTER_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff];
/// A final, empty stored deflate block.
const EMPTY_STORED_DEFLATE: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn estargz_footer_round_trips_and_is_an_empty_gzip_member() {
        let f = encode_estargz_footer(0x1234);
        let mut blob = vec![0u8; 0x2000];
        blob.extend_from_slice(&f);
        let parsed =
            parse_footer(&blob[blob.len() - MAX_FOOTER_SIZE..], blob.len() as u64).unwrap();
        assert_eq!(parsed.format, Format::Estargz);
        assert_eq!(parsed.toc_offset, 0x1234);
        assert_eq!(parsed.toc_compressed_size, 0x2000 - 0x1234);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn legacy_footer_round_trips() {
        let f = encode_legacy_footer(7);
        let mut blob = vec![0u8; 100];
        blob.extend_from_slice(&f);
        let parsed = parse_footer(&blob, blob.len() as u64).unwrap();
        assert_eq!(parsed.format, Format::LegacyStargz);
        assert_eq!(parsed.toc_offset, 7);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn zstd_footer_round_trips() {
        let f = encode_zstd_chunked_footer(108, 50, 400);
        let mut blob = vec![0u8; 158];
        blob.extend_from_slice(&f);
        let parsed = parse_footer(&blob, blob.len() as u64).unwrap();
        assert_eq!(parsed.format, Format::ZstdChunked);
        assert_eq!(&f[40..], b"GnUlInUx", "the stargz-snapshotter magic");
        assert_eq!(parsed.toc_range(), 108..158);
        assert_eq!(parsed.toc_uncompressed_size, Some(400));
        assert_eq!(parsed.data_end(), 100);
    }

    #[test]
    fn zstd_v2_footer_is_recognized() {
        let mut payload = Vec::new();
        for v in [108u64, 50, 400, 1, 158, 0, 0] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        payload.extend_from_slice(&ZSTD_CHUNKED_MAGIC_V2);
        let mut blob = vec![0u8; 158];
        blob.extend_from_slice(&SKIPPABLE_FRAME_MAGIC);
        blob.extend_from_slice(&64u32.to_le_bytes());
        blob.extend_from_slice(&payload);
        let parsed = parse_footer(&blob, blob.len() as u64).unwrap();
        assert_eq!(parsed.format, Format::ZstdChunkedV2);
        assert_eq!(parsed.toc_offset, 108);
    }

    #[test]
    fn rejects_out_of_bounds_and_garbage() {
        let f = encode_estargz_footer(1000);
        let mut blob = vec![0u8; 10];
        blob.extend_from_slice(&f);
        assert!(matches!(
            parse_footer(&blob, blob.len() as u64),
            Err(FooterError::TocOutOfBounds { .. })
        ));
        assert_eq!(parse_footer(&[7u8; 200], 200), Err(FooterError::NotFound));
        assert_eq!(
            parse_footer(&[0u8; 10], 10),
            Err(FooterError::BlobTooSmall(10))
        );
        assert!(matches!(
            parse_footer(&[0u8; 10], 1000),
            Err(FooterError::TailTooShort { .. })
        ));
        let mut bad = encode_estargz_footer(5);
        bad[16] = b'z';
        let mut blob = vec![0u8; 10];
        blob.extend_from_slice(&bad);
        assert!(matches!(
            parse_footer(&blob, blob.len() as u64),
            Err(FooterError::MalformedOffset { .. })
        ));
    }

    #[test]
    fn zstd_footer_rejects_bad_manifest_type_and_bounds() {
        let mut f = encode_zstd_chunked_footer(8, 10, 10);
        f[32] = 2;
        let mut blob = vec![0u8; 20];
        blob.extend_from_slice(&f);
        assert_eq!(
            parse_footer(&blob, blob.len() as u64),
            Err(FooterError::UnsupportedManifestType(2))
        );
        let f = encode_zstd_chunked_footer(8, 100, 10);
        let mut blob = vec![0u8; 20];
        blob.extend_from_slice(&f);
        assert!(matches!(
            parse_footer(&blob, blob.len() as u64),
            Err(FooterError::TocOutOfBounds { .. })
        ));
    }
}
