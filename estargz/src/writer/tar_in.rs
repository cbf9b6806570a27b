//! A block-level tar reader that keeps every header block as raw bytes (so the writer
//! copies headers losslessly: PAX records, GNU long names, non-UTF-8 names), and resolves
//! the metadata the TOC needs (name, link, size, ids, times, devices, SCHILY xattrs).

use std::io::{self, Read};

use super::error::WriteError;
use crate::toc::Xattrs;

const BLOCK: usize = 512;
/// Largest PAX or GNU long-name extension accepted.
const MAX_EXTENSION: u64 = 8 << 20;

/// One tar entry's metadata and raw header bytes (its data follows in the stream).
#[derive(Clone, Debug, Default)]
pub(crate) struct RawEntry {
    /// Offset in the uncompressed input of the entry's first header block.
    pub start: u64,
    /// All header blocks: extension entries (with their data) and the main header.
    pub header: Vec<u8>,
    /// Type flag, normalized: `'0'` for regular files (`'\0'`, `'7'`), `'5'` for a
    /// legacy `'\0'` entry whose name ends with `/`.
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub link_name: Vec<u8>,
    /// Data bytes that follow the header (0 for header-only types).
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub mtime: (i64, u32),
    pub dev: (u32, u32),
    pub xattrs: Xattrs,
}

/// Reads tar entries from `R`, tracking the input offset.
pub(crate) struct TarReader<R> {
    r: R,
    pos: u64,
    /// Unread data + padding of the current entry.
    pending: u64,
    /// Data bytes of the current entry not yet read.
    data_left: u64,
    global: Xattrs,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(r: R) -> Self {
        Self::at(r, 0)
    }

    /// A reader whose input starts at offset `pos` of the whole tar.
    pub(crate) fn at(r: R, pos: u64) -> Self {
        Self {
            r,
            pos,
            pending: 0,
            data_left: 0,
            global: Vec::new(),
            done: false,
        }
    }

    fn read_block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool, WriteError> {
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WriteError::ReadInput(e)),
            }
        }
        self.pos += got as u64;
        if got == 0 {
            return Ok(false);
        }
        if got < BLOCK {
            return Err(WriteError::Tar {
                offset: self.pos - got as u64,
                detail: "truncated header block".into(),
            });
        }
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), WriteError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.r
                .read_exact(&mut buf[..k])
                .map_err(|e| self.truncated(e))?;
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    fn truncated(&self, e: io::Error) -> WriteError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WriteError::Tar {
                offset: self.pos,
                detail: "input ends inside an entry".into(),
            }
        } else {
            WriteError::ReadInput(e)
        }
    }

    /// Input offset of the next entry's first header block.
    pub(crate) fn next_header_offset(&self) -> u64 {
        self.pos + self.pending
    }

    /// Reads exactly `buf.len()` bytes of the current entry's data.
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<(), WriteError> {
        assert!(
            buf.len() as u64 <= self.data_left,
            "read past the entry's data"
        );
        self.r.read_exact(buf).map_err(|e| self.truncated(e))?;
        self.pos += buf.len() as u64;
        self.data_left -= buf.len() as u64;
        self.pending -= buf.len() as u64;
        Ok(())
    }

    /// Reads the next entry's headers; `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<RawEntry>, WriteError> {
        if self.done {
            return Ok(None);
        }
        let p = self.pending;
        self.skip(p)?;
        self.pending = 0;
        self.data_left = 0;
        let start = self.pos;
        let mut raw = Vec::with_capacity(BLOCK);
        let mut pax: Xattrs = Vec::new();
        let mut gnu_name: Option<Vec<u8>> = None;
        let mut gnu_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.pos;
            if !self.read_block(&mut block)? {
                if raw.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                return Err(WriteError::Tar {
                    offset,
                    detail: "input ends after extension headers".into(),
                });
            }
            if block.iter().all(|&b| b == 0) {
                if !raw.is_empty() {
                    return Err(WriteError::Tar {
                        offset,
                        detail: "end-of-archive marker after extension headers".into(),
                    });
                }
                self.done = true;
                return Ok(None);
            }
            check_checksum(&block, offset)?;
            let flag = block[156];
            let size = numeric(&block[124..136])
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| WriteError::Tar {
                    offset,
                    detail: "bad size field".into(),
                })?;
            match flag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_EXTENSION {
                        return Err(WriteError::Tar {
                            offset,
                            detail: format!(
                                "extension header of {size} bytes exceeds {MAX_EXTENSION}"
                            ),
                        });
                    }
                    raw.extend_from_slice(&block);
                    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    let at = raw.len();
                    raw.resize(at + padded as usize, 0);
                    self.r
                        .read_exact(&mut raw[at..])
                        .map_err(|e| self.truncated(e))?;
                    self.pos += padded;
                    let data = &raw[at..at + size as usize];
                    match flag {
                        b'x' => pax.extend(parse_pax(data, offset)?),
                        b'g' => {
                            for (k, v) in parse_pax(data, offset)? {
                                self.global.retain(|(gk, _)| *gk != k);
                                self.global.push((k, v));
                            }
                        }
                        b'L' => gnu_name = Some(until_nul(data).to_vec()),
                        _ => gnu_link = Some(until_nul(data).to_vec()),
                    }
                }
                _ => {
                    let mut main = block;
                    let entry =
                        self.main_entry(&mut main, offset, size, &pax, gnu_name, gnu_link)?;
                    raw.extend_from_slice(&main);
                    let pad = entry.size.div_ceil(BLOCK as u64) * BLOCK as u64 - entry.size;
                    self.data_left = entry.size;
                    self.pending = entry.size + pad;
                    return Ok(Some(RawEntry {
                        start,
                        header: raw,
                        ..entry
                    }));
                }
            }
        }
    }

    fn main_entry(
        &self,
        block: &mut [u8; BLOCK],
        offset: u64,
        header_size: u64,
        pax: &[(Vec<u8>, Vec<u8>)],
        gnu_name: Option<Vec<u8>>,
        gnu_link: Option<Vec<u8>>,
    ) -> Result<RawEntry, WriteError> {
        let bad = |detail: String| WriteError::Tar { offset, detail };
        let h = tar::Header::from_byte_slice(&block[..]);
        let records = || self.global.iter().chain(pax.iter());
        let rec = |key: &[u8]| {
            records()
                .rfind(|(k, _)| k.as_slice() == key)
                .map(|(_, v)| v.clone())
        };
        let num = |key: &'static str, v: &[u8]| -> Result<u64, WriteError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "PAX record {key} has a bad value {:?}",
                        String::from_utf8_lossy(v)
                    ))
                })
        };
        if records().any(|(k, _)| k.starts_with(b"GNU.sparse")) {
            return Err(WriteError::UnsupportedEntry {
                name: String::from_utf8_lossy(&h.path_bytes()).into_owned(),
                detail: "GNU sparse files are not supported".into(),
            });
        }
        let mut name = match (rec(b"path"), gnu_name) {
            (Some(p), _) => p,
            (None, Some(g)) => g,
            (None, None) => h.path_bytes().into_owned(),
        };
        let link_name = match (rec(b"linkpath"), gnu_link) {
            (Some(p), _) => p,
            (None, Some(g)) => g,
            (None, None) => h
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default(),
        };
        let mut typeflag = block[156];
        match typeflag {
            b'0' | b'7' => typeflag = b'0',
            0 => typeflag = if name.ends_with(b"/") { b'5' } else { b'0' },
            b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => {}
            other => {
                let what = match other {
                    b'S' => "GNU sparse file".to_string(),
                    b'V' => "GNU volume header".to_string(),
                    b'M' => "GNU multi-volume continuation".to_string(),
                    c => format!("type flag {:?}", c as char),
                };
                return Err(WriteError::UnsupportedEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    detail: format!("unsupported tar entry type: {what}"),
                });
            }
        }
        if name.is_empty() {
            name = b"./".to_vec();
        }
        let mut size = match rec(b"size") {
            Some(v) => num("size", &v)?,
            None => header_size,
        };
        // Like Go's archive/tar, header-only types carry no data whatever their size
        // field says; the copied header is patched so other readers agree.
        let patch_size = matches!(typeflag, b'1'..=b'6') && header_size != 0;
        if matches!(typeflag, b'1'..=b'6') {
            size = 0;
        }
        let field = |range: std::ops::Range<usize>, what: &str| {
            numeric(&block[range]).ok_or_else(|| bad(format!("bad {what} field")))
        };
        let id = |range, what| {
            field(range, what)
                .and_then(|v| u64::try_from(v).map_err(|_| bad(format!("negative {what}"))))
        };
        let uid = match rec(b"uid") {
            Some(v) => num("uid", &v)?,
            None => id(108..116, "uid")?,
        };
        let gid = match rec(b"gid") {
            Some(v) => num("gid", &v)?,
            None => id(116..124, "gid")?,
        };
        let mtime = match rec(b"mtime") {
            Some(v) => parse_pax_time(&v)
                .ok_or_else(|| bad(format!("bad PAX mtime {:?}", String::from_utf8_lossy(&v))))?,
            None => (field(136..148, "mtime")?, 0),
        };
        let uname =
            rec(b"uname").unwrap_or_else(|| h.username_bytes().unwrap_or_default().to_vec());
        let gname =
            rec(b"gname").unwrap_or_else(|| h.groupname_bytes().unwrap_or_default().to_vec());
        let mode =
            u32::try_from(field(100..108, "mode")?).map_err(|_| bad("mode out of range".into()))?;
        let dev = if matches!(typeflag, b'3' | b'4') {
            let dev = |range, what| {
                field(range, what)
                    .and_then(|v| u32::try_from(v).map_err(|_| bad(format!("{what} out of range"))))
            };
            (dev(329..337, "devmajor")?, dev(337..345, "devminor")?)
        } else {
            (0, 0)
        };
        let xattrs = records()
            .filter_map(|(k, v)| {
                k.strip_prefix(b"SCHILY.xattr.")
                    .map(|n| (n.to_vec(), v.clone()))
            })
            .fold(Xattrs::new(), |mut acc, (k, v)| {
                acc.retain(|(ak, _)| *ak != k);
                acc.push((k, v));
                acc
            });
        if patch_size {
            let mut hm = tar::Header::new_old();
            hm.as_mut_bytes().copy_from_slice(&block[..]);
            hm.set_size(0);
            hm.set_cksum();
            block.copy_from_slice(hm.as_bytes());
        }
        Ok(RawEntry {
            start: 0,
            header: Vec::new(),
            typeflag,
            name,
            link_name,
            size,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            dev,
            xattrs,
        })
    }
}

/// Parses a numeric header field as Go's archive/tar does: base-256 when the high bit of
/// the first byte is set, else octal with surrounding spaces and NULs ignored (empty is 0).
fn numeric(f: &[u8]) -> Option<i64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        let negative = f[0] & 0x40 != 0;
        let mut v: i128 = i128::from(f[0] & 0x7f) - if negative { 0x80 } else { 0 };
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return i64::try_from(v).ok();
    }
    let s = until_nul(f);
    let s = s.iter().skip_while(|&&c| c == b' ').collect::<Vec<_>>();
    let trimmed: Vec<u8> = s.into_iter().copied().take_while(|&c| c != b' ').collect();
    trimmed.iter().try_fold(0i64, |acc, &c| {
        (b'0'..=b'7').contains(&c).then_some(())?;
        acc.checked_mul(8)?.checked_add(i64::from(c - b'0'))
    })
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

fn check_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), WriteError> {
    let field = &block[148..156];
    let stored = until_nul(field)
        .iter()
        .filter(|c| **c != b' ')
        .try_fold(0u64, |acc, c| {
            (b'0'..=b'7')
                .contains(c)
                .then(|| acc * 8 + u64::from(c - b'0'))
        });
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    match stored {
        Some(s) if s == unsigned || s as i64 == signed => Ok(()),
        _ => Err(WriteError::Tar {
            offset,
            detail: "header checksum mismatch (not a tar archive?)".into(),
        }),
    }
}

/// Parses PAX records `"<len> <key>=<value>\n"`.
fn parse_pax(data: &[u8], offset: u64) -> Result<Xattrs, WriteError> {
    let mut out = Vec::new();
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| WriteError::Tar {
            offset,
            detail: format!("malformed PAX record: {e}"),
        })?;
        out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
    }
    Ok(out)
}

/// Parses a PAX time `secs[.frac]` (possibly negative).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(if !neg {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2.3"), None);
    }

    #[test]
    fn reads_ustar_pax_and_gnu_entries() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        h.set_mode(0o644);
        h.set_mtime(77);
        let long = "d/".repeat(100) + "file";
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..]), ("mtime", b"5.5")])
            .unwrap();
        b.append_data(&mut h, "dir/", &[][..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut r = TarReader::new(&data[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        assert_eq!(
            (e.typeflag, e.size, e.mode, e.mtime),
            (b'0', 3, 0o644, (77, 0))
        );
        let mut buf = [0u8; 3];
        r.read_data(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        let d = r.next_entry().unwrap().unwrap();
        assert_eq!(d.name, b"dir/");
        assert_eq!(d.typeflag, b'5');
        assert_eq!(d.mtime, (5, 500_000_000));
        assert_eq!(d.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
        assert_eq!(d.header.len() % 512, 0);
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let mut r = TarReader::new(&[7u8; 512][..]);
        assert!(matches!(r.next_entry(), Err(WriteError::Tar { .. })));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1000);
        b.append_data(&mut h, "f", &vec![1u8; 1000][..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut r = TarReader::new(&data[..700]);
        let e = r.next_entry().unwrap().unwrap();
        let mut buf = vec![0u8; e.size as usize];
        assert!(matches!(r.read_data(&mut buf), Err(WriteError::Tar { .. })));
    }
}
