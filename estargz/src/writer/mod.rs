//! The writer: turns a tar (plain, gzip or zstd; detected by magic) into a gzip eStargz,
//! legacy stargz or zstd:chunked blob, streaming and compressing chunks on several threads.
//!
//! Layout (as the reference `estargz.Build`): optional prioritized entries, then a
//! landmark (`.prefetch.landmark` after a non-empty prioritized list, else
//! `.no.prefetch.landmark` first), the other entries in input order, the TOC, the footer.
//! Input headers are copied byte for byte; entries named `stargz.index.json` or like a
//! landmark at the root are dropped (they are regenerated). Memory grows with the number
//! of entries (the TOC), not with the layer size; prioritizing re-reads a seekable input
//! (a compressed or streamed input is first decompressed to a temporary file).

mod emit;
mod error;
mod pipeline;
mod sort;
mod tar_in;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::digest::Sha256Digest;
use crate::footer::{
    encode_estargz_footer, encode_legacy_footer, encode_zstd_chunked_footer, Compression, Format,
    SKIPPABLE_FRAME_MAGIC,
};
use crate::toc::{write_toc_json, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};
use emit::Emitter;
use pipeline::{Codec, Compressor};
use tar_in::TarReader;

pub use error::WriteError;

/// Default chunk size (as the reference): 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Default gzip level.
pub const DEFAULT_GZIP_LEVEL: u32 = 9;
/// Default zstd level (the reference uses klauspost's "default" speed, about level 3).
pub const DEFAULT_ZSTD_LEVEL: u32 = 3;

/// Options for [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Output format: [`Format::Estargz`] (default), [`Format::LegacyStargz`] (47-byte
    /// footer) or [`Format::ZstdChunked`].
    pub format: Format,
    /// Largest uncompressed chunk of a regular file (bytes).
    pub chunk_size: u64,
    /// Compression level (gzip 1-9, zstd 1-22); `None` for the format's default.
    pub level: Option<u32>,
    /// Paths to place first (as the reference: each with its parent directories and
    /// hardlink targets). Empty means no prioritization (`.no.prefetch.landmark`).
    pub prioritized_files: Vec<Vec<u8>>,
    /// Compression threads; 0 means one per available CPU.
    pub threads: usize,
    /// Directory for the temporary file used when prioritizing a non-seekable or
    /// compressed input; `None` for the system default.
    pub temp_dir: Option<PathBuf>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            format: Format::Estargz,
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: None,
            prioritized_files: Vec::new(),
            threads: 0,
            temp_dir: None,
        }
    }
}

/// What [`build`] produced: the values an image manifest and config need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutput {
    /// Format written.
    pub format: Format,
    /// SHA-256 of the TOC JSON (`containerd.io/snapshot/stargz/toc.digest`).
    pub toc_digest: Sha256Digest,
    /// SHA-256 of the uncompressed stream (the layer's diffID).
    pub diff_id: Sha256Digest,
    /// Size of the uncompressed stream (`io.containers.estargz.uncompressed-size`).
    pub uncompressed_size: u64,
    /// SHA-256 of the blob.
    pub blob_digest: Sha256Digest,
    /// Size of the blob.
    pub blob_size: u64,
    /// Offset of the compressed TOC in the blob.
    pub toc_offset: u64,
    /// Entries in the TOC.
    pub toc_entries: usize,
    /// Prioritized paths that were not in the input (skipped).
    pub missing_prioritized: Vec<Vec<u8>>,
}

impl BuildOptions {
    fn codec(&self) -> Result<Codec, WriteError> {
        let compression = self.format.compression();
        let level = match (compression, self.level) {
            (Compression::Gzip, None) => DEFAULT_GZIP_LEVEL,
            (Compression::Zstd, None) => DEFAULT_ZSTD_LEVEL,
            (Compression::Gzip, Some(l)) if (1..=9).contains(&l) => l,
            (Compression::Zstd, Some(l)) if (1..=22).contains(&l) => l,
            (_, Some(l)) => {
                return Err(WriteError::InvalidOption(format!(
                    "compression level {l} out of range"
                )))
            }
        };
        if self.format == Format::ZstdChunkedV2 {
            return Err(WriteError::InvalidOption(
                "writing the containers/storage zstd:chunked footer is not supported".into(),
            ));
        }
        if self.chunk_size == 0 || self.chunk_size > (1 << 30) {
            return Err(WriteError::InvalidOption(format!(
                "chunk size {} must be between 1 byte and 1 GiB",
                self.chunk_size
            )));
        }
        Ok(Codec { compression, level })
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// The compression of an input tar, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    Plain,
    Gzip,
    Zstd,
}

fn detect(magic: &[u8]) -> Result<InputKind, WriteError> {
    Ok(match magic {
        [0x1f, 0x8b, 0x08, ..] => InputKind::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => InputKind::Zstd,
        [b'B', b'Z', b'h', ..] => return Err(WriteError::UnsupportedInputCompression("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => {
            return Err(WriteError::UnsupportedInputCompression("xz"))
        }
        _ => InputKind::Plain,
    })
}

/// Wraps `input` in a decompressor matching its magic.
fn decompressed<'a, R: Read + 'a>(input: R) -> Result<(InputKind, Box<dyn Read + 'a>), WriteError> {
    let mut br = BufReader::with_capacity(256 * 1024, input);
    let kind = detect(br.fill_buf().map_err(WriteError::ReadInput)?)?;
    let r: Box<dyn Read + 'a> = match kind {
        InputKind::Plain => Box::new(br),
        InputKind::Gzip => Box::new(BufReader::with_capacity(
            256 * 1024,
            flate2::bufread::MultiGzDecoder::new(br),
        )),
        InputKind::Zstd => Box::new(BufReader::with_capacity(
            256 * 1024,
            zstd::stream::read::Decoder::with_buffer(br).map_err(WriteError::ReadInput)?,
        )),
    };
    Ok((kind, r))
}

/// Builds a blob from a tar stream. With prioritized files, the (decompressed) input is
/// first spooled to a temporary file to be re-read in the new order.
pub fn build<R: Read, W: Write + Send>(
    input: R,
    output: W,
    opts: &BuildOptions,
) -> Result<BuildOutput, WriteError> {
    opts.codec()?;
    let (_, mut tar) = decompressed(input)?;
    if opts.prioritized_files.is_empty() {
        return build_streaming(&mut tar, output, opts);
    }
    let mut spool = match &opts.temp_dir {
        Some(d) => tempfile::tempfile_in(d),
        None => tempfile::tempfile(),
    }
    .map_err(WriteError::Spool)?;
    io::copy(&mut tar, &mut spool).map_err(WriteError::Spool)?;
    spool.seek(SeekFrom::Start(0)).map_err(WriteError::Spool)?;
    build_sorted(&spool, output, opts)
}

/// Builds a blob from a tar file (plain, gzip or zstd). A plain tar is re-read in place
/// when prioritizing.
pub fn build_file<W: Write + Send>(
    path: &Path,
    output: W,
    opts: &BuildOptions,
) -> Result<BuildOutput, WriteError> {
    let mut file = File::open(path).map_err(WriteError::ReadInput)?;
    if !opts.prioritized_files.is_empty() {
        let mut magic = [0u8; 6];
        let n = file.read(&mut magic).map_err(WriteError::ReadInput)?;
        file.seek(SeekFrom::Start(0))
            .map_err(WriteError::ReadInput)?;
        if detect(&magic[..n])? == InputKind::Plain {
            opts.codec()?;
            return build_sorted(&file, output, opts);
        }
    }
    build(file, output, opts)
}

fn build_streaming<R: Read, W: Write + Send>(
    tar: &mut R,
    mut output: W,
    opts: &BuildOptions,
) -> Result<BuildOutput, WriteError> {
    let codec = opts.codec()?;
    let (emitted, written) =
        pipeline::run(&mut output, codec, opts.threads(), job_bytes(opts), |p| {
            let mut em = Emitter::new(p, opts.chunk_size);
            em.landmark(NO_PREFETCH_LANDMARK)?;
            let mut reader = TarReader::new(tar);
            while let Some(e) = reader.next_entry()? {
                em.entry(&e, &mut reader)?;
            }
            Ok(em.into_emitted())
        })?;
    finish(output, opts, codec, emitted, written, Vec::new())
}

fn build_sorted<W: Write + Send>(
    file: &File,
    mut output: W,
    opts: &BuildOptions,
) -> Result<BuildOutput, WriteError> {
    let codec = opts.codec()?;
    let plan = sort::plan(file, &opts.prioritized_files)?;
    let ((emitted, missing), written) =
        pipeline::run(&mut output, codec, opts.threads(), job_bytes(opts), |p| {
            let mut em = Emitter::new(p, opts.chunk_size);
            let mut reader = sort::Rereader::new(file);
            for &start in &plan.prioritized {
                reader.emit_at(start, &mut em)?;
            }
            em.landmark(PREFETCH_LANDMARK)?;
            for &start in &plan.rest {
                reader.emit_at(start, &mut em)?;
            }
            Ok((em.into_emitted(), plan.missing.clone()))
        })?;
    finish(output, opts, codec, emitted, written, missing)
}

fn job_bytes(opts: &BuildOptions) -> usize {
    (opts.chunk_size as usize).clamp(256 * 1024, 4 << 20)
}

/// Resolves offsets, writes the TOC and the footer.
fn finish<W: Write>(
    mut output: W,
    opts: &BuildOptions,
    codec: Codec,
    emitted: emit::Emitted,
    written: pipeline::Written,
    missing_prioritized: Vec<Vec<u8>>,
) -> Result<BuildOutput, WriteError> {
    let emit::Emitted {
        mut toc,
        dropped,
        offsets,
        mut diff,
        mut uncompressed,
    } = emitted;
    for (i, seg) in offsets {
        toc[i].offset = written.segment_offsets[seg as usize] as i64;
    }
    let toc: Vec<_> = toc
        .into_iter()
        .zip(dropped)
        .filter_map(|(e, d)| (!d).then_some(e))
        .collect();
    let mut json = Vec::with_capacity(toc.len() * 256);
    write_toc_json(&toc, &mut json);
    let toc_digest = Sha256Digest::of(&json);
    let mut comp = Compressor::new(codec)?;
    let mut tail = Vec::new();
    let mut blob_hasher = written.hasher;
    let mut offset = written.size;
    let toc_offset;
    match opts.format {
        Format::Estargz | Format::LegacyStargz => {
            // The TOC is a tar entry in its own gzip member, followed by the tar's
            // end-of-archive marker.
            let mut h = tar::Header::new_ustar();
            h.set_path(TOC_TAR_NAME).map_err(WriteError::Compress)?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(json.len() as u64);
            h.set_mode(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            let mut plain = Vec::with_capacity(json.len() + 2048);
            plain.extend_from_slice(h.as_bytes());
            plain.extend_from_slice(&json);
            plain.resize(plain.len().div_ceil(512) * 512 + 1024, 0);
            diff.update(&plain);
            uncompressed += plain.len() as u64;
            toc_offset = offset;
            comp.member(&plain, &mut tail)?;
            if opts.format == Format::Estargz {
                tail.extend_from_slice(&encode_estargz_footer(toc_offset));
            } else {
                tail.extend_from_slice(&encode_legacy_footer(toc_offset));
            }
        }
        Format::ZstdChunked | Format::ZstdChunkedV2 => {
            // End the tar stream, then the TOC in a skippable frame, then the footer.
            let eof = [0u8; 1024];
            diff.update(eof);
            uncompressed += eof.len() as u64;
            comp.member(&eof, &mut tail)?;
            let mut ztoc = Vec::new();
            comp.member(&json, &mut ztoc)?;
            let frame_len = u32::try_from(ztoc.len())
                .map_err(|_| WriteError::InvalidOption("compressed TOC exceeds 4 GiB".into()))?;
            tail.extend_from_slice(&SKIPPABLE_FRAME_MAGIC);
            tail.extend_from_slice(&frame_len.to_le_bytes());
            toc_offset = offset + tail.len() as u64;
            tail.extend_from_slice(&ztoc);
            tail.extend_from_slice(&encode_zstd_chunked_footer(
                toc_offset,
                ztoc.len() as u64,
                json.len() as u64,
            ));
        }
    }
    output.write_all(&tail).map_err(WriteError::WriteOutput)?;
    output.flush().map_err(WriteError::WriteOutput)?;
    blob_hasher.update(&tail);
    offset += tail.len() as u64;
    Ok(BuildOutput {
        format: opts.format,
        toc_digest,
        diff_id: Sha256Digest::from_hasher(diff),
        uncompressed_size: uncompressed,
        blob_digest: Sha256Digest::from_hasher(blob_hasher),
        blob_size: offset,
        toc_offset,
        toc_entries: toc.len(),
        missing_prioritized,
    })
}

#[cfg(test)]
mod tests;
