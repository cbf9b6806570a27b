//! Chunk decoding: one gzip member or zstd frame, skipping `innerOffset` bytes, into a
//! caller-provided buffer of exactly the chunk's size; digest verification lives in
//! [`crate::LayerIndex::decode_chunk`]. Decompressor state is reused per thread.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::digest::Sha256Digest;
use crate::footer::{Compression, ZSTD_FRAME_MAGIC};

/// Errors decoding or verifying a chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The output buffer does not have the chunk's size.
    #[error("chunk buffer has {got} bytes, the chunk has {expected}")]
    BufferSize {
        /// Chunk size.
        expected: u64,
        /// Buffer size.
        got: usize,
    },
    /// The compressed bytes could not be decoded.
    #[error("{path:?} at offset {file_offset}: cannot decode chunk: {source}")]
    Decode {
        /// File path in the layer.
        path: String,
        /// Chunk offset in the file.
        file_offset: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The decoded bytes do not match the chunk digest.
    #[error("{path:?} at offset {file_offset}: chunk digest mismatch: got {actual}, expected {expected}")]
    DigestMismatch {
        /// File path in the layer.
        path: String,
        /// Chunk offset in the file.
        file_offset: u64,
        /// Digest from the TOC.
        expected: Sha256Digest,
        /// Digest of the decoded bytes.
        actual: Sha256Digest,
    },
    /// Streaming the chunk failed.
    #[error("{path:?} at offset {file_offset}: {source}")]
    Stream {
        /// File path in the layer.
        path: String,
        /// Chunk offset in the file.
        file_offset: u64,
        /// Why.
        #[source]
        source: StreamError,
    },
    /// Reading the compressed bytes from the blob failed.
    #[error("{path:?} at offset {file_offset}: reading blob range {range:?}: {source}")]
    Read {
        /// File path in the layer.
        path: String,
        /// Chunk offset in the file.
        file_offset: u64,
        /// Blob range.
        range: std::ops::Range<u64>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Low-level decoding errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not start with a gzip header.
    #[error("not a gzip member")]
    NotGzip,
    /// The bytes do not start with a zstd frame.
    #[error("not a zstd frame")]
    NotZstd,
    /// The gzip header is malformed or truncated.
    #[error("malformed gzip header")]
    BadGzipHeader,
    /// The compressed stream is corrupt.
    #[error("corrupt compressed data: {0}")]
    Corrupt(String),
    /// The member ended before the chunk's bytes.
    #[error("member holds {got} bytes, the chunk needs {wanted}")]
    ShortMember {
        /// inner offset + chunk size.
        wanted: u64,
        /// Bytes the member decompressed to.
        got: u64,
    },
    /// The compressed bytes ended before the chunk's bytes were decoded.
    #[error("compressed data truncated after producing {got} of {wanted} bytes")]
    Truncated {
        /// inner offset + chunk size.
        wanted: u64,
        /// Bytes produced.
        got: u64,
    },
}

thread_local! {
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<ZstdDecoder<'static>>> = const { RefCell::new(None) };
}

const SKIP_BUF: usize = 16 * 1024;

/// Decodes the first member/frame of `compressed`, skips `inner_offset` bytes, and fills
/// `out` with the following `out.len()` bytes.
pub fn decompress(
    compression: Compression,
    compressed: &[u8],
    inner_offset: u64,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    match compression {
        Compression::Gzip => {
            let body = skip_gzip_header(compressed)?;
            INFLATE.with(|cell| {
                let mut slot = cell.borrow_mut();
                let d = slot.get_or_insert_with(|| Decompress::new(false));
                d.reset(false);
                inflate(d, body, inner_offset, out)
            })
        }
        Compression::Zstd => {
            if compressed.len() < 4 || compressed[..4] != ZSTD_FRAME_MAGIC {
                return Err(DecodeError::NotZstd);
            }
            ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot =
                        Some(ZstdDecoder::new().map_err(|e| DecodeError::Corrupt(e.to_string()))?);
                }
                let d = slot.as_mut().expect("just set");
                d.reinit()
                    .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
                unzstd(d, compressed, inner_offset, out)
            })
        }
    }
}

/// Returns the deflate body after a gzip member header (RFC 1952).
fn skip_gzip_header(b: &[u8]) -> Result<&[u8], DecodeError> {
    if b.len() < 10 || b[0] != 0x1f || b[1] != 0x8b {
        return Err(DecodeError::NotGzip);
    }
    let flags = b[3];
    if b[2] != 8 || flags & 0xe0 != 0 {
        return Err(DecodeError::BadGzipHeader);
    }
    let mut pos = 10usize;
    if flags & 0x04 != 0 {
        let xlen = b.get(pos..pos + 2).ok_or(DecodeError::BadGzipHeader)?;
        pos += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            let rest = b.get(pos..).ok_or(DecodeError::BadGzipHeader)?;
            let nul = rest
                .iter()
                .position(|&c| c == 0)
                .ok_or(DecodeError::BadGzipHeader)?;
            pos += nul + 1;
        }
    }
    if flags & 0x02 != 0 {
        pos += 2;
    }
    b.get(pos..).ok_or(DecodeError::BadGzipHeader)
}

fn inflate(
    d: &mut Decompress,
    mut input: &[u8],
    inner_offset: u64,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let wanted = inner_offset + out.len() as u64;
    let mut produced = 0u64;
    let mut scratch = [0u8; SKIP_BUF];
    let mut filled = 0usize;
    while produced < wanted {
        let dst: &mut [u8] = if produced < inner_offset {
            let n = (inner_offset - produced).min(SKIP_BUF as u64) as usize;
            &mut scratch[..n]
        } else {
            &mut out[filled..]
        };
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress(input, dst, FlushDecompress::None)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let used = (d.total_in() - in0) as usize;
        let made = d.total_out() - out0;
        input = &input[used..];
        if produced >= inner_offset {
            filled += made as usize;
        }
        produced += made;
        if produced >= wanted {
            break;
        }
        match status {
            Status::StreamEnd => {
                return Err(DecodeError::ShortMember {
                    wanted,
                    got: produced,
                })
            }
            Status::Ok | Status::BufError if used == 0 && made == 0 => {
                return Err(DecodeError::Truncated {
                    wanted,
                    got: produced,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn unzstd(
    d: &mut ZstdDecoder<'static>,
    compressed: &[u8],
    inner_offset: u64,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let wanted = inner_offset + out.len() as u64;
    let mut produced = 0u64;
    let mut scratch = [0u8; SKIP_BUF];
    let mut input = InBuffer::around(compressed);
    let mut filled = 0usize;
    while produced < wanted {
        let skipping = produced < inner_offset;
        let dst: &mut [u8] = if skipping {
            let n = (inner_offset - produced).min(SKIP_BUF as u64) as usize;
            &mut scratch[..n]
        } else {
            &mut out[filled..]
        };
        let in_before = input.pos();
        let mut output = OutBuffer::around(dst);
        let hint = d
            .run(&mut input, &mut output)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let made = output.pos();
        if !skipping {
            filled += made;
        }
        produced += made as u64;
        if produced >= wanted {
            break;
        }
        if hint == 0 {
            return Err(DecodeError::ShortMember {
                wanted,
                got: produced,
            });
        }
        if made == 0 && input.pos() == in_before {
            return Err(DecodeError::Truncated {
                wanted,
                got: produced,
            });
        }
    }
    Ok(())
}

/// Streams one chunk: decodes the first member/frame read from `compressed`, skips
/// `inner_offset` bytes and passes the next `size` bytes to `sink` in pieces. Returns the
/// SHA-256 of those bytes. Memory stays bounded whatever the chunk size.
pub fn decompress_stream<R: std::io::BufRead>(
    compression: Compression,
    compressed: R,
    inner_offset: u64,
    size: u64,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Sha256Digest, StreamError> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(compressed)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(StreamError::Source)?
                .single_frame(),
        ),
    };
    let wanted = inner_offset + size;
    let mut produced = 0u64;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    while produced < wanted {
        let want = if produced < inner_offset {
            inner_offset - produced
        } else {
            wanted - produced
        };
        let n = (want.min(buf.len() as u64)) as usize;
        let got = match reader.read(&mut buf[..n]) {
            Ok(0) => {
                return Err(StreamError::Decode(DecodeError::ShortMember {
                    wanted,
                    got: produced,
                }))
            }
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Source(e)),
        };
        if produced >= inner_offset {
            hasher.update(&buf[..got]);
            sink(&buf[..got]).map_err(StreamError::Sink)?;
        }
        produced += got as u64;
    }
    Ok(Sha256Digest::from_hasher(hasher))
}

/// Errors of [`decompress_stream`].
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Decoding failed in a recognized way.
    #[error(transparent)]
    Decode(DecodeError),
    /// Reading or decompressing the compressed bytes failed.
    #[error("reading or decompressing the chunk: {0}")]
    Source(#[source] std::io::Error),
    /// The sink failed.
    #[error("writing the chunk: {0}")]
    Sink(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn data() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn gzip_with_inner_offset_and_trailing_bytes() {
        let d = data();
        let mut blob = gzip(&d);
        blob.extend_from_slice(b"next member garbage");
        let mut out = vec![0u8; 1000];
        decompress(Compression::Gzip, &blob, 50_000, &mut out).unwrap();
        assert_eq!(out, d[50_000..51_000]);
        let mut all = vec![0u8; d.len()];
        decompress(Compression::Gzip, &blob, 0, &mut all).unwrap();
        assert_eq!(all, d);
    }

    #[test]
    fn streams_both_compressions() {
        let d = data();
        for (c, blob) in [
            (Compression::Gzip, gzip(&d)),
            (Compression::Zstd, zstd::bulk::compress(&d, 3).unwrap()),
        ] {
            let mut got = Vec::new();
            let digest = decompress_stream(c, &blob[..], 1000, 200_000, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, d[1000..201_000]);
            assert_eq!(digest, Sha256Digest::of(&d[1000..201_000]));
            let short = decompress_stream(c, &blob[..], 0, d.len() as u64 + 1, &mut |_| Ok(()));
            assert!(
                matches!(
                    short,
                    Err(StreamError::Decode(DecodeError::ShortMember { .. }))
                ),
                "{short:?}"
            );
        }
    }

    #[test]
    fn zstd_with_inner_offset() {
        let d = data();
        let mut blob = zstd::bulk::compress(&d, 3).unwrap();
        blob.extend_from_slice(&zstd::bulk::compress(b"other frame", 3).unwrap());
        let mut out = vec![0u8; 777];
        decompress(Compression::Zstd, &blob, 123_456, &mut out).unwrap();
        assert_eq!(out, d[123_456..123_456 + 777]);
    }

    #[test]
    fn short_and_truncated_and_garbage() {
        let d = b"hello world".to_vec();
        let blob = gzip(&d);
        let mut out = vec![0u8; 20];
        assert!(matches!(
            decompress(Compression::Gzip, &blob, 0, &mut out),
            Err(DecodeError::ShortMember {
                wanted: 20,
                got: 11
            })
        ));
        let big = gzip(&data());
        let mut out = vec![0u8; 400_000];
        assert!(matches!(
            decompress(Compression::Gzip, &big[..big.len() / 2], 0, &mut out),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            decompress(Compression::Gzip, b"garbage garbage", 0, &mut out),
            Err(DecodeError::NotGzip)
        );
        assert_eq!(
            decompress(Compression::Zstd, b"garbage garbage", 0, &mut out),
            Err(DecodeError::NotZstd)
        );
        let zs = zstd::bulk::compress(&d, 3).unwrap();
        let mut out = vec![0u8; 20];
        assert!(matches!(
            decompress(Compression::Zstd, &zs, 0, &mut out),
            Err(DecodeError::ShortMember { .. })
        ));
        let mut corrupt = gzip(&data());
        for b in corrupt[20..200].iter_mut() {
            *b ^= 0x5a;
        }
        let mut out = vec![0u8; 400_000];
        assert!(decompress(Compression::Gzip, &corrupt, 0, &mut out).is_err());
    }
}
