//! Blocking readers for the conversion threads: a registry blob fed from an async download
//! task through a bounded channel, a layout blob checked against its digest, the source's
//! decompression (gzip, zstd or none, by magic bytes), and a reader that computes the
//! uncompressed stream's diffID. Source failures are kept as typed errors for the caller,
//! since the writer only sees `io::Error`s.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use oci_spec::image::Digest;
use registry::{Blob, Priority};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::progress::{LayerId, Progress};
use super::LayerError;

/// Pieces buffered between the download task and the conversion thread (each piece is
/// what one network read returned, typically 16-64 KiB).
const CHANNEL_PIECES: usize = 256;
/// Read buffer of the decompressors.
const BUF: usize = 256 * 1024;

/// Where a source failure is kept until the conversion thread's caller asks.
#[derive(Clone, Default)]
pub struct FailureSlot(Arc<Mutex<Option<LayerError>>>);

impl FailureSlot {
    fn set(&self, e: LayerError) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// The failure, if one happened.
    pub fn take(&self) -> Option<LayerError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

enum Piece {
    Data(Bytes),
    End,
    Failed,
}

/// A source blob read with blocking calls (inside a conversion thread).
pub struct SourceReader {
    inner: Box<dyn Read + Send>,
    failure: FailureSlot,
}

impl SourceReader {
    /// The slot source failures are kept in.
    pub fn failure(&self) -> FailureSlot {
        self.failure.clone()
    }

    /// A registry blob, downloaded by a task on the current tokio runtime. Must be called
    /// from inside the runtime; the reader must be used outside it.
    pub fn registry(blob: Blob, id: LayerId, progress: Arc<dyn Progress>) -> SourceReader {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        let failure = FailureSlot::default();
        let slot = failure.clone();
        tokio::spawn(async move {
            let mut stream = blob.stream(0, Priority::OnDemand);
            let mut read = 0u64;
            loop {
                let piece = match stream.next_chunk().await {
                    Some(Ok(b)) => {
                        read += b.len() as u64;
                        progress.layer_bytes(id, read);
                        Piece::Data(b)
                    }
                    Some(Err(e)) => {
                        slot.set(LayerError::Fetch(e));
                        Piece::Failed
                    }
                    None => Piece::End,
                };
                let last = !matches!(piece, Piece::Data(_));
                if tx.send(piece).await.is_err() || last {
                    return;
                }
            }
        });
        SourceReader {
            inner: Box::new(ChannelReader {
                rx,
                current: Bytes::new(),
                ended: false,
            }),
            failure,
        }
    }

    /// A layout blob, checked against `digest` and `size` as it is read.
    pub fn file(
        file: std::fs::File,
        digest: Digest,
        size: u64,
        id: LayerId,
        progress: Arc<dyn Progress>,
    ) -> SourceReader {
        let failure = FailureSlot::default();
        SourceReader {
            inner: Box::new(CheckedReader {
                inner: BufReader::with_capacity(BUF, file),
                hasher: Sha256::new(),
                read: 0,
                digest,
                size,
                failure: failure.clone(),
                id,
                progress,
            }),
            failure,
        }
    }
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.current = b,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed) => return Err(io::Error::other("source download failed")),
                None => return Err(io::Error::other("source download stopped")),
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

struct CheckedReader {
    inner: BufReader<std::fs::File>,
    hasher: Sha256,
    read: u64,
    digest: Digest,
    size: u64,
    failure: FailureSlot,
    id: LayerId,
    progress: Arc<dyn Progress>,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            self.failure
                .set(LayerError::Read(io::Error::new(e.kind(), e.to_string())))
        })?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            self.progress.layer_bytes(self.id, self.read);
            if self.read <= self.size {
                return Ok(n);
            }
        }
        let fail = |why: String| {
            self.failure.set(LayerError::Corrupt(why.clone()));
            Err(io::Error::new(io::ErrorKind::InvalidData, why))
        };
        if self.read != self.size {
            return fail(format!(
                "blob has {}{} bytes, its descriptor says {}",
                self.read,
                if n > 0 { "+" } else { "" },
                self.size
            ));
        }
        let actual = hex::encode(self.hasher.clone().finalize());
        if actual != self.digest.digest() {
            return fail(format!("blob content has digest sha256:{actual}"));
        }
        Ok(0)
    }
}

/// Wraps a source in the decompressor its first bytes call for.
pub fn decompress<R: Read + Send + 'static>(r: R) -> Result<Box<dyn Read + Send>, LayerError> {
    let mut br = BufReader::with_capacity(BUF, r);
    let magic = br.fill_buf().map_err(LayerError::Read)?;
    Ok(match magic {
        [0x1f, 0x8b, 0x08, ..] => Box::new(BufReader::with_capacity(
            BUF,
            flate2::bufread::MultiGzDecoder::new(br),
        )),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(BufReader::with_capacity(
            BUF,
            zstd::stream::read::Decoder::with_buffer(br).map_err(LayerError::Decompress)?,
        )),
        [b'B', b'Z', b'h', ..] => return Err(LayerError::Compression("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => return Err(LayerError::Compression("xz")),
        _ => Box::new(br),
    })
}

/// Computes the SHA-256 and length of what is read through it (the layer's diffID).
pub struct DiffReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> DiffReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        DiffReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads the rest of the stream (what follows the tar's end marker counts too) and
    /// returns `(sha256:hex, length)`.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
        ))
    }
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::progress::NoProgress;
    use std::io::Write;

    fn id() -> LayerId {
        LayerId { image: 0, layer: 0 }
    }

    fn file_with(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        f
    }

    #[test]
    fn checked_reader_verifies_digest_and_size() {
        let data = b"hello layer".repeat(1000);
        let d = crate::convert::image::sha256_digest(&data);
        let mut r = SourceReader::file(
            file_with(&data),
            d.clone(),
            data.len() as u64,
            id(),
            Arc::new(NoProgress),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        let mut bad = data.clone();
        bad[5] ^= 1;
        let mut r = SourceReader::file(
            file_with(&bad),
            d.clone(),
            data.len() as u64,
            id(),
            Arc::new(NoProgress),
        );
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(r.failure().take(), Some(LayerError::Corrupt(m)) if m.contains("digest")));

        let mut r = SourceReader::file(
            file_with(&data),
            d,
            data.len() as u64 - 1,
            id(),
            Arc::new(NoProgress),
        );
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(r.failure().take(), Some(LayerError::Corrupt(m)) if m.contains("bytes")));
    }

    #[test]
    fn decompresses_by_magic_and_hashes_the_stream() {
        let plain = b"tar bytes ".repeat(5000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain[..20000]).unwrap();
        let mut member2 =
            flate2::write::GzEncoder::new(gz.finish().unwrap(), flate2::Compression::fast());
        member2.write_all(&plain[20000..]).unwrap();
        let gz = member2.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&plain)));
        for input in [plain.clone(), gz, zst] {
            let r = DiffReader::new(decompress(std::io::Cursor::new(input)).unwrap());
            assert_eq!(r.finish().unwrap(), (want.clone(), plain.len() as u64));
        }
        assert!(matches!(
            decompress(std::io::Cursor::new(b"BZh91AY".to_vec())),
            Err(LayerError::Compression("bzip2"))
        ));
    }
}
