//! The eStargz layer format, with no I/O beyond the [`ReadAt`] trait.
//!
//! Owns: footer detection (gzip eStargz, legacy stargz, zstd:chunked), TOC
//! (`stargz.index.json`) parsing and verification, the compact in-memory layer index,
//! chunk decoding and digest verification, and the writer that turns a tar into an
//! eStargz or zstd:chunked blob.
//!
//! Layers, bottom up: [`footer`] and [`toc`] are pure functions over bytes (async callers
//! do their own I/O: fetch the tail, parse the footer, fetch the TOC range, then
//! [`Layer::from_toc_bytes`]); [`index`] turns a TOC into a [`LayerIndex`]; [`chunk`]
//! decodes one chunk; [`layer`] ties them to a [`ReadAt`] blob ([`open`]); [`lost_names`]
//! reads back, from their tar headers, names a TOC writer replaced with U+FFFD;
//! [`writer`] builds blobs.

pub mod chunk;
pub mod digest;
pub mod footer;
pub mod index;
pub mod layer;
pub mod lost_names;
pub mod name;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod time;
pub mod toc;
pub mod writer;

use std::io;

pub use chunk::{ChunkError, DecodeError};
pub use digest::Sha256Digest;
pub use footer::{parse_footer, Compression, Footer, FooterError, Format, MAX_FOOTER_SIZE};
pub use index::{
    Children, Chunk, ChunkId, Entry, EntryId, EntryKind, IndexError, IndexOptions, LayerIndex,
    ROOT_ID,
};
pub use layer::{open, Layer, OpenOptions, VerifyReport};
pub use toc::{Toc, TocEntry, TocError, TocLimits};
pub use writer::{build, build_file, BuildOptions, BuildOutput, WriteError};

/// Positioned reads from a blob: a local file or a remote registry blob.
pub trait ReadAt: Send + Sync {
    /// Total size of the blob in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at EOF).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Fills `buf` from `offset`, failing with `UnexpectedEof` if the blob ends first.
    fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(offset, buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob ended at offset {offset}"),
                    ))
                }
                Ok(n) => {
                    offset += n as u64;
                    buf = &mut buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = self.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the blob failed.
    #[error("reading {what} from the blob: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Footer.
    #[error(transparent)]
    Footer(#[from] FooterError),
    /// TOC.
    #[error(transparent)]
    Toc(#[from] TocError),
    /// Index.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Chunk.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// Writer.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A multi-chunk file's contents do not match its `digest`.
    #[error("{path:?}: file digest mismatch: got {actual}, expected {expected}")]
    FileDigestMismatch {
        /// File path in the layer.
        path: String,
        /// From the TOC.
        expected: Sha256Digest,
        /// Of the contents.
        actual: Sha256Digest,
    },
    /// The entry is not a regular file.
    #[error("entry {0:?} is not a regular file")]
    NotARegularFile(String),
}
