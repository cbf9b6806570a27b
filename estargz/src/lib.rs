//! The eStargz layer format, with no I/O beyond the [`ReadAt`] trait.
//!
//! Owns: footer detection (gzip eStargz, legacy stargz, zstd:chunked), TOC
//! (`stargz.index.json`) parsing and verification, the compact in-memory layer index,
//! chunk decoding and digest verification, and the writer that turns a tar into an
//! eStargz or zstd:chunked blob.

use std::io;

/// Positioned reads from a blob: a local file or a remote registry blob.
pub trait ReadAt: Send + Sync {
    /// Total size of the blob in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at EOF).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}
