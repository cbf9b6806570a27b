//! A layer opened over a [`ReadAt`] blob: footer → TOC → digest check → index, plus
//! verified reads of file contents and a whole-layer verification.

use sha2::{Digest as _, Sha256};

use crate::chunk::ChunkError;
use crate::digest::Sha256Digest;
use crate::footer::{parse_footer, Footer, MAX_FOOTER_SIZE};
use crate::index::{lossy, Chunk, EntryId, EntryKind, IndexOptions, LayerIndex};
use crate::lost_names::{HeaderPlan, NameFixes};
use crate::toc::{decompress_toc, verify_toc_digest};
use crate::{Error, ReadAt};

/// Chunks up to this size are decoded into exactly sized buffers; larger ones stream.
pub const EXACT_BUFFER_LIMIT: u64 = 64 << 20;

/// Whether a chunk is better streamed than read whole: large chunks, and chunks whose
/// compressed range is much larger than their data (a range that a lying TOC may have
/// stretched over the whole blob).
pub fn should_stream(chunk: &Chunk) -> bool {
    chunk.size > EXACT_BUFFER_LIMIT
        || chunk.compressed_len > 2 * (chunk.size + chunk.inner_offset) + (1 << 20)
}

/// A `Read` over a byte range of a blob.
struct RangeReader<'a> {
    blob: &'a dyn ReadAt,
    pos: u64,
    end: u64,
}

impl std::io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.blob.read_at(self.pos, &mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Options for [`open`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Index building options (limits, digest requirements).
    pub index: IndexOptions,
    /// The expected TOC digest (the `containerd.io/snapshot/stargz/toc.digest`
    /// annotation). When set, a TOC with another digest is rejected.
    pub expected_toc_digest: Option<Sha256Digest>,
}

/// An opened layer.
#[derive(Debug)]
pub struct Layer {
    /// The parsed footer.
    pub footer: Footer,
    /// SHA-256 of the uncompressed TOC JSON.
    pub toc_digest: Sha256Digest,
    /// The index of the layer's tree and chunks.
    pub index: LayerIndex,
}

/// What [`Layer::verify_all`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Regular files whose contents were checked.
    pub files: u64,
    /// Chunks decoded and checked.
    pub chunks: u64,
    /// Uncompressed bytes checked.
    pub bytes: u64,
}

/// Opens a layer: reads and parses the footer and TOC, checks the TOC digest when
/// expected, and builds the index. Names the TOC lost (U+FFFD for bytes that are not
/// UTF-8) are read back from their tar headers (see [`crate::lost_names`]); where that
/// fails the TOC's names stay, with a warning.
pub fn open(blob: &dyn ReadAt, opts: &OpenOptions) -> Result<Layer, Error> {
    let size = blob.size().map_err(|source| Error::Read {
        what: "blob size",
        source,
    })?;
    let tail_len = (MAX_FOOTER_SIZE as u64).min(size) as usize;
    let mut tail = vec![0u8; tail_len];
    blob.read_exact_at(size - tail_len as u64, &mut tail)
        .map_err(|source| Error::Read {
            what: "footer",
            source,
        })?;
    let footer = parse_footer(&tail, size)?;
    if footer.toc_compressed_size > opts.index.limits.max_compressed_size {
        return Err(crate::TocError::CompressedTooLarge {
            size: footer.toc_compressed_size,
            limit: opts.index.limits.max_compressed_size,
        }
        .into());
    }
    let mut toc = vec![0u8; footer.toc_compressed_size as usize];
    blob.read_exact_at(footer.toc_offset, &mut toc)
        .map_err(|source| Error::Read {
            what: "TOC",
            source,
        })?;
    let (json, toc_digest) = Layer::toc_json(&footer, &toc, opts)?;
    drop(toc);
    let fixes = match HeaderPlan::from_json(&json, &footer)? {
        Some(plan) => {
            let (fixes, errors) = plan.recover_from(blob);
            for e in &errors {
                tracing::warn!(error = %e, "names the TOC lost are kept as the TOC has them");
            }
            fixes
        }
        None => NameFixes::new(),
    };
    Layer::from_toc_json(footer, &json, toc_digest, opts, &fixes)
}

impl Layer {
    /// Builds a layer from a parsed footer and the compressed TOC bytes at
    /// [`Footer::toc_range`] (for callers doing their own I/O).
    pub fn from_toc_bytes(
        footer: Footer,
        compressed_toc: &[u8],
        opts: &OpenOptions,
    ) -> Result<Self, Error> {
        let (json, toc_digest) = Self::toc_json(&footer, compressed_toc, opts)?;
        let index = LayerIndex::from_toc_json(&json, &footer, &opts.index)?;
        Ok(Self {
            footer,
            toc_digest,
            index,
        })
    }

    /// The TOC JSON of the compressed TOC bytes and its digest, checked against the
    /// expected one when set (the first half of [`Layer::from_toc_bytes`], for callers
    /// that recover lost names before building the index).
    pub fn toc_json(
        footer: &Footer,
        compressed_toc: &[u8],
        opts: &OpenOptions,
    ) -> Result<(Vec<u8>, Sha256Digest), Error> {
        let json = decompress_toc(footer, compressed_toc, &opts.index.limits)?;
        let toc_digest = match &opts.expected_toc_digest {
            Some(expected) => verify_toc_digest(&json, expected)?,
            None => Sha256Digest::of(&json),
        };
        Ok((json, toc_digest))
    }

    /// Builds a layer from verified TOC JSON (see [`Layer::toc_json`]), with the names of
    /// `fixes` taken from their tar headers.
    pub fn from_toc_json(
        footer: Footer,
        json: &[u8],
        toc_digest: Sha256Digest,
        opts: &OpenOptions,
        fixes: &NameFixes,
    ) -> Result<Self, Error> {
        let index = LayerIndex::from_toc_json_with_names(json, &footer, &opts.index, fixes)?;
        Ok(Self {
            footer,
            toc_digest,
            index,
        })
    }

    /// Reads, decodes and verifies one chunk. Chunks up to 64 MiB are decoded into a
    /// buffer of exact capacity; larger ones (legacy layers may hold whole files in one
    /// chunk) grow with the data actually decoded, so a lying TOC cannot force a huge
    /// allocation.
    pub fn read_chunk(&self, blob: &dyn ReadAt, chunk: &Chunk) -> Result<Vec<u8>, ChunkError> {
        if !should_stream(chunk) {
            let mut out = vec![0u8; chunk.size as usize];
            self.read_chunk_into(blob, chunk, &mut out, &mut Vec::new())?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(EXACT_BUFFER_LIMIT as usize);
        self.stream_chunk(blob, chunk, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams one chunk's bytes to `sink` in pieces and verifies its digest at the end
    /// (on a mismatch the sink has seen unverified bytes: the caller must discard them).
    pub fn stream_chunk(
        &self,
        blob: &dyn ReadAt,
        chunk: &Chunk,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ChunkError> {
        let path = || lossy(&self.index.path_of(chunk.entry));
        if chunk.zeros {
            let zeros = vec![0u8; 64 * 1024];
            let mut left = chunk.size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                sink(&zeros[..n]).map_err(|e| ChunkError::Stream {
                    path: path(),
                    file_offset: chunk.file_offset,
                    source: crate::chunk::StreamError::Sink(e),
                })?;
                left -= n as u64;
            }
            return Ok(());
        }
        let reader = std::io::BufReader::with_capacity(
            256 * 1024,
            RangeReader {
                blob,
                pos: chunk.compressed_offset,
                end: chunk.compressed_offset + chunk.compressed_len,
            },
        );
        let actual = crate::chunk::decompress_stream(
            self.index.compression(),
            reader,
            chunk.inner_offset,
            chunk.size,
            sink,
        )
        .map_err(|source| ChunkError::Stream {
            path: path(),
            file_offset: chunk.file_offset,
            source,
        })?;
        if let Some(expected) = chunk.digest {
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

    /// Reads, decodes and verifies one chunk into `out` (exactly the chunk's size),
    /// using `scratch` for the compressed bytes.
    pub fn read_chunk_into(
        &self,
        blob: &dyn ReadAt,
        chunk: &Chunk,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), ChunkError> {
        if !chunk.zeros {
            scratch.resize(chunk.compressed_len as usize, 0);
            blob.read_exact_at(chunk.compressed_offset, scratch)
                .map_err(|source| ChunkError::Read {
                    path: lossy(&self.index.path_of(chunk.entry)),
                    file_offset: chunk.file_offset,
                    range: chunk.compressed_range(),
                    source,
                })?;
        }
        self.index.decode_chunk(chunk, scratch, out)
    }

    /// Reads up to `buf.len()` bytes of file `id` at `offset` (verified); returns the
    /// number of bytes read (0 at end of file).
    pub fn read_file_at(
        &self,
        blob: &dyn ReadAt,
        id: EntryId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let entry = self
            .index
            .entry(id)
            .filter(|e| e.kind() == EntryKind::Reg)
            .ok_or_else(|| Error::NotARegularFile(lossy(&self.index.path_of(id))))?;
        let mut done = 0usize;
        let mut pos = offset;
        while done < buf.len() && pos < entry.size() {
            let chunk = self
                .index
                .chunk_at(id, pos)
                .expect("chunks tile every regular file (checked when indexing)");
            let data = self.read_chunk(blob, &chunk)?;
            let from = (pos - chunk.file_offset) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
            pos += n as u64;
        }
        Ok(done)
    }

    /// Decodes and verifies every chunk in blob order, and the whole-file digest of
    /// multi-chunk files. The first failure names the entry.
    pub fn verify_all(&self, blob: &dyn ReadAt) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let mut scratch = Vec::new();
        let mut buf = Vec::new();
        let mut file_hash: Option<(EntryId, Sha256)> = None;
        for chunk in self.index.chunks_in_blob_order() {
            if chunk.file_offset == 0 {
                self.finish_file_digest(file_hash.take())?;
                report.files += 1;
                let e = self.index.entry(chunk.entry).expect("chunk entries exist");
                if e.chunk_ids().len() > 1 && e.digest().is_some() {
                    file_hash = Some((chunk.entry, Sha256::new()));
                }
            }
            if !should_stream(&chunk) {
                buf.resize(chunk.size as usize, 0);
                self.read_chunk_into(blob, &chunk, &mut buf, &mut scratch)?;
                if let Some((_, h)) = file_hash.as_mut() {
                    h.update(&buf);
                }
            } else {
                self.stream_chunk(blob, &chunk, &mut |b| {
                    if let Some((_, h)) = file_hash.as_mut() {
                        h.update(b);
                    }
                    Ok(())
                })?;
            }
            report.chunks += 1;
            report.bytes += chunk.size;
        }
        self.finish_file_digest(file_hash.take())?;
        Ok(report)
    }

    fn finish_file_digest(&self, state: Option<(EntryId, Sha256)>) -> Result<(), Error> {
        let Some((id, h)) = state else { return Ok(()) };
        let expected = self
            .index
            .entry(id)
            .and_then(|e| e.digest())
            .expect("set when hashing");
        let actual = Sha256Digest::from_hasher(h);
        if actual != expected {
            return Err(Error::FileDigestMismatch {
                path: lossy(&self.index.path_of(id)),
                expected,
                actual,
            });
        }
        Ok(())
    }
}
