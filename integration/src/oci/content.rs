//! File contents for hand-made layers: literal bytes, a deterministic pseudo-random pattern
//! (so a misplaced chunk is detectable at any offset), mostly-zero "sparse-ish" data with a
//! few marks, or a file copied from the host. Large contents are generated while streaming.

use std::io::{self, Read};
use std::path::PathBuf;

/// Contents of a regular file in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// `len` bytes of [`pattern_byte`]`(seed, offset)`.
    Pattern {
        /// Length.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// `len` zero bytes except `marks` (offset, bytes) written over them.
    Sparse {
        /// Length.
        len: u64,
        /// Non-zero islands, sorted by offset, non-overlapping.
        marks: Vec<(u64, Vec<u8>)>,
    },
    /// A file on the host, read when the layer is written.
    HostFile(PathBuf),
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Byte at `offset` of the pattern with `seed` (never repeats with a short period).
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    splitmix64(seed ^ (offset / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes()
        [(offset % 8) as usize]
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0usize;
    while i < buf.len() {
        let off = offset + i as u64;
        let word = splitmix64(seed ^ (off / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
        let start = (off % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
    }
}

impl Content {
    /// Length in bytes (host files are stat'ed).
    pub fn len(&self) -> io::Result<u64> {
        Ok(match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern { len, .. } | Content::Sparse { len, .. } => *len,
            Content::HostFile(p) => std::fs::metadata(p)?.len(),
        })
    }

    /// True when empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A reader over the contents.
    pub fn reader(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(match self {
            Content::Bytes(b) => Box::new(&b[..]),
            Content::HostFile(p) => Box::new(std::fs::File::open(p)?),
            other => Box::new(GenReader {
                content: other,
                pos: 0,
            }),
        })
    }

    /// The whole contents in memory (for small files in assertions).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.reader()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

struct GenReader<'a> {
    content: &'a Content,
    pos: u64,
}

impl Read for GenReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.content.len()?;
        let n = ((len - self.pos).min(buf.len() as u64)) as usize;
        let out = &mut buf[..n];
        match self.content {
            Content::Pattern { seed, .. } => fill_pattern(*seed, self.pos, out),
            Content::Sparse { marks, .. } => {
                out.fill(0);
                let (a, b) = (self.pos, self.pos + n as u64);
                for (off, data) in marks {
                    let (s, e) = (*off, off + data.len() as u64);
                    if e <= a || s >= b {
                        continue;
                    }
                    let from = s.max(a);
                    let to = e.min(b);
                    out[(from - a) as usize..(to - a) as usize]
                        .copy_from_slice(&data[(from - s) as usize..(to - s) as usize]);
                }
            }
            _ => unreachable!("GenReader only for generated contents"),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_consistent_across_read_boundaries() {
        let c = Content::Pattern {
            len: 10_007,
            seed: 42,
        };
        let all = c.to_vec().unwrap();
        assert_eq!(all.len(), 10_007);
        for (i, b) in all.iter().enumerate().step_by(97) {
            assert_eq!(*b, pattern_byte(42, i as u64));
        }
        let mut small = Vec::new();
        let mut r = c.reader().unwrap();
        let mut buf = [0u8; 13];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            small.extend_from_slice(&buf[..n]);
        }
        assert_eq!(small, all);
        assert_ne!(
            Content::Pattern { len: 64, seed: 1 }.to_vec().unwrap(),
            Content::Pattern { len: 64, seed: 2 }.to_vec().unwrap()
        );
    }

    #[test]
    fn sparse_places_marks() {
        let c = Content::Sparse {
            len: 100,
            marks: vec![
                (0, b"ab".to_vec()),
                (98, b"yz".to_vec()),
                (50, b"m".to_vec()),
            ],
        };
        let v = c.to_vec().unwrap();
        assert_eq!(&v[..2], b"ab");
        assert_eq!(&v[98..], b"yz");
        assert_eq!(v[50], b'm');
        assert_eq!(v.iter().filter(|b| **b != 0).count(), 5);
    }
}
