//! Hand-made layer tarballs with full control of every header: regular files, dirs,
//! symlinks, hardlinks, devices, fifos, whiteouts (`.wh.NAME`), opaque markers
//! (`.wh..wh..opq`), xattrs as PAX `SCHILY.xattr.*` records, long names as GNU `L`/`K`
//! records (or a PAX `path` record), arbitrary byte names, modes, owners and mtimes.
//! Entries are written exactly in the order given (nothing is added or sorted).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::content::Content;
use crate::error::{IoContext, Result};

/// Default mtime of entries (2023-11-14T22:13:20Z).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File(Content),
    /// Directory.
    Dir,
    /// Symbolic link to the target (raw bytes).
    Symlink(Vec<u8>),
    /// Hard link to an earlier entry of the same layer (path as in the tar).
    Hardlink(Vec<u8>),
    /// Character device (major, minor).
    CharDev(u32, u32),
    /// Block device (major, minor).
    BlockDev(u32, u32),
    /// Named pipe.
    Fifo,
}

/// One tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the layer, raw bytes, relative (`usr/bin/x`; a trailing `/` is added
    /// to directories when written).
    pub path: Vec<u8>,
    /// Kind and payload.
    pub kind: EntryKind,
    /// Permission and special bits (`0o4755`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes (written as PAX `SCHILY.xattr.NAME`).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// User and group names written in the header.
    pub names: Option<(String, String)>,
    /// Store a long path as a PAX `path` record instead of a GNU long-name record.
    pub pax_path: bool,
}

fn bytes(p: impl AsRef<[u8]>) -> Vec<u8> {
    let b = p.as_ref();
    let b = b.strip_prefix(b"./").unwrap_or(b);
    let b = b.strip_prefix(b"/").unwrap_or(b);
    b.strip_suffix(b"/").unwrap_or(b).to_vec()
}

/// Splits `a/b/c` into (`a/b`, `c`).
pub(crate) fn split_parent(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|c| *c == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[][..], p),
    }
}

impl Entry {
    fn new(path: impl AsRef<[u8]>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: bytes(path),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            names: None,
            pax_path: false,
        }
    }

    /// Regular file (mode 0644).
    pub fn file(path: impl AsRef<[u8]>, content: impl Into<Content>) -> Entry {
        Entry::new(path, EntryKind::File(content.into()), 0o644)
    }

    /// Directory (mode 0755).
    pub fn dir(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    /// Symlink (mode 0777).
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    /// Hardlink to an earlier entry `target` of the same layer. Its mode/owner fields are
    /// written as given but extractors take them from the target.
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Hardlink(bytes(target)), 0o644)
    }

    /// Character device.
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDev(major, minor), 0o666)
    }

    /// Block device.
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDev(major, minor), 0o660)
    }

    /// Named pipe.
    pub fn fifo(path: impl AsRef<[u8]>) -> Entry {
        Entry::new(path, EntryKind::Fifo, 0o644)
    }

    /// Whiteout deleting `path` of lower layers: an empty file `DIR/.wh.NAME`.
    pub fn whiteout(path: impl AsRef<[u8]>) -> Entry {
        let p = bytes(path);
        let (dir, name) = split_parent(&p);
        let mut w = Vec::new();
        if !dir.is_empty() {
            w.extend_from_slice(dir);
            w.push(b'/');
        }
        w.extend_from_slice(b".wh.");
        w.extend_from_slice(name);
        Entry::new(w, EntryKind::File(Content::Bytes(Vec::new())), 0o644)
    }

    /// Opaque marker for directory `dir`: an empty file `DIR/.wh..wh..opq`.
    pub fn opaque(dir: impl AsRef<[u8]>) -> Entry {
        let mut p = bytes(dir);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        Entry::new(p, EntryKind::File(Content::Bytes(Vec::new())), 0o644)
    }

    /// Sets the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets owner and group.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the mtime.
    pub fn mtime(mut self, secs: u64) -> Self {
        self.mtime = secs;
        self
    }

    /// Adds an xattr.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Sets user/group names in the header.
    pub fn names(mut self, user: &str, group: &str) -> Self {
        self.names = Some((user.into(), group.into()));
        self
    }

    /// Stores the path as a PAX record when it is too long for the header.
    pub fn pax_path(mut self) -> Self {
        self.pax_path = true;
        self
    }

    /// The path as a host path (for joining onto extraction roots).
    pub fn host_path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.path))
    }

    /// True for `.wh.*` entries (including the opaque marker).
    pub fn is_whiteout(&self) -> bool {
        split_parent(&self.path).1.starts_with(b".wh.")
    }
}

impl From<&[u8]> for Content {
    fn from(b: &[u8]) -> Self {
        Content::Bytes(b.to_vec())
    }
}
impl From<Vec<u8>> for Content {
    fn from(b: Vec<u8>) -> Self {
        Content::Bytes(b)
    }
}
impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Bytes(s.as_bytes().to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for Content {
    fn from(b: &[u8; N]) -> Self {
        Content::Bytes(b.to_vec())
    }
}

/// Layer blob compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`).
    #[default]
    Gzip,
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
}

/// A layer under construction: entries in tar order.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    compression: Compression,
    gzip_level: Option<u32>,
}

/// A layer blob written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// Digest of the blob (`sha256:...`).
    pub digest: String,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
    /// OCI media type.
    pub media_type: String,
    /// Where the blob is.
    pub path: PathBuf,
}

struct HashWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl LayerBuilder {
    /// An empty gzip layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry.
    pub fn entry(mut self, e: Entry) -> Self {
        self.entries.push(e);
        self
    }

    /// Appends entries.
    pub fn entries(mut self, es: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(es);
        self
    }

    /// Appends a regular file.
    pub fn file(self, path: impl AsRef<[u8]>, content: impl Into<Content>) -> Self {
        self.entry(Entry::file(path, content))
    }

    /// Appends a directory.
    pub fn dir(self, path: impl AsRef<[u8]>) -> Self {
        self.entry(Entry::dir(path))
    }

    /// Appends a symlink.
    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(Entry::symlink(path, target))
    }

    /// Appends a hardlink.
    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(Entry::hardlink(path, target))
    }

    /// Appends a whiteout for `path`.
    pub fn whiteout(self, path: impl AsRef<[u8]>) -> Self {
        self.entry(Entry::whiteout(path))
    }

    /// Appends an opaque marker for `dir`.
    pub fn opaque(self, dir: impl AsRef<[u8]>) -> Self {
        self.entry(Entry::opaque(dir))
    }

    /// Writes the blob uncompressed.
    pub fn uncompressed(mut self) -> Self {
        self.compression = Compression::None;
        self
    }

    /// gzip level (default 1, fast).
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.gzip_level = Some(level);
        self
    }

    /// The entries in order.
    pub fn entry_list(&self) -> &[Entry] {
        &self.entries
    }

    /// Compression of the blob.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Writes the uncompressed tar stream to `w`.
    pub fn write_tar<W: Write>(&self, w: W) -> io::Result<W> {
        let mut b = tar::Builder::new(w);
        for e in &self.entries {
            append_entry(&mut b, e)?;
        }
        b.into_inner()
    }

    /// Writes the blob into `blobs_dir` (an OCI layout's `blobs/sha256`), named by digest.
    pub fn build(&self, blobs_dir: &Path) -> Result<BuiltLayer> {
        std::fs::create_dir_all(blobs_dir).ctx(|| format!("create {}", blobs_dir.display()))?;
        let tmp = blobs_dir.join(format!(".tmp-layer-{}", crate::workdir::unique_token(8)));
        let file = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let compressed = HashWriter {
            inner: io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            n: 0,
        };
        let (blob_hash, size, diff_hash, usize_) = match self.compression {
            Compression::Gzip => {
                let level = flate2::Compression::new(self.gzip_level.unwrap_or(1));
                let gz = GzEncoder::new(compressed, level);
                let raw = HashWriter {
                    inner: gz,
                    hash: Sha256::new(),
                    n: 0,
                };
                let raw = self
                    .write_tar(raw)
                    .ctx(|| format!("write layer tar {}", tmp.display()))?;
                let (diff, un) = (raw.hash, raw.n);
                let mut c = raw.inner.finish().ctx(|| "finish gzip".into())?;
                c.flush().ctx(|| "flush layer".into())?;
                (c.hash, c.n, diff, un)
            }
            Compression::None => {
                let mut c = self
                    .write_tar(compressed)
                    .ctx(|| format!("write layer tar {}", tmp.display()))?;
                c.flush().ctx(|| "flush layer".into())?;
                let h = c.hash.clone();
                (c.hash, c.n, h, c.n)
            }
        };
        let digest = format!("sha256:{}", hex::encode(blob_hash.finalize()));
        let diff_id = format!("sha256:{}", hex::encode(diff_hash.finalize()));
        let path = blobs_dir.join(&digest["sha256:".len()..]);
        std::fs::rename(&tmp, &path)
            .ctx(|| format!("rename {} -> {}", tmp.display(), path.display()))?;
        Ok(BuiltLayer {
            digest,
            diff_id,
            size,
            uncompressed_size: usize_,
            media_type: match self.compression {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                Compression::None => "application/vnd.oci.image.layer.v1.tar".into(),
            },
            path,
        })
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN KEY=VALUE\n" where LEN counts the whole record including its own digits
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn special_header(name: &[u8], kind: u8, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn append_entry<W: Write>(b: &mut tar::Builder<W>, e: &Entry) -> io::Result<()> {
    let mut name = e.path.clone();
    if e.kind == EntryKind::Dir && !name.is_empty() {
        name.push(b'/');
    }
    let mut pax = Vec::new();
    for (k, v) in &e.xattrs {
        pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
    }
    let long_name = name.len() > 100;
    if long_name && e.pax_path {
        pax.extend(pax_record("path", &name));
    }
    if !pax.is_empty() {
        let h = special_header(b"././@PaxHeader", b'x', pax.len() as u64);
        b.append(&h, &pax[..])?;
    }
    if long_name && !e.pax_path {
        let mut data = name.clone();
        data.push(0);
        b.append(
            &special_header(b"././@LongLink", b'L', data.len() as u64),
            &data[..],
        )?;
    }
    let link = match &e.kind {
        EntryKind::Symlink(t) | EntryKind::Hardlink(t) => Some(t.clone()),
        _ => None,
    };
    if let Some(t) = &link {
        if t.len() > 100 {
            let mut data = t.clone();
            data.push(0);
            b.append(
                &special_header(b"././@LongLink", b'K', data.len() as u64),
                &data[..],
            )?;
        }
    }
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(t) = &link {
        let n = t.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
    }
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    if let Some((u, g)) = &e.names {
        h.set_username(u)?;
        h.set_groupname(g)?;
    }
    let (ty, size) = match &e.kind {
        EntryKind::File(c) => (tar::EntryType::Regular, c.len()?),
        EntryKind::Dir => (tar::EntryType::Directory, 0),
        EntryKind::Symlink(_) => (tar::EntryType::Symlink, 0),
        EntryKind::Hardlink(_) => (tar::EntryType::Link, 0),
        EntryKind::CharDev(..) => (tar::EntryType::Char, 0),
        EntryKind::BlockDev(..) => (tar::EntryType::Block, 0),
        EntryKind::Fifo => (tar::EntryType::Fifo, 0),
    };
    h.set_entry_type(ty);
    h.set_size(size);
    if let EntryKind::CharDev(ma, mi) | EntryKind::BlockDev(ma, mi) = e.kind {
        h.set_device_major(ma)?;
        h.set_device_minor(mi)?;
    }
    h.set_cksum();
    match &e.kind {
        EntryKind::File(c) => {
            let r = c.reader()?;
            b.append(
                &h,
                LenChecked {
                    inner: r,
                    left: size,
                },
            )
        }
        _ => b.append(&h, io::empty()),
    }
}

/// Fails if a host file changes length while it is archived (the header is already written).
struct LenChecked<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LenChecked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = (buf.len() as u64).min(self.left) as usize;
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 && self.left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while archiving",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"abc");
        assert_eq!(r, b"12 path=abc\n");
        let long = vec![b'x'; 95];
        let r = pax_record("path", &long);
        let s = String::from_utf8(r.clone()).unwrap();
        let len: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn whiteout_and_opaque_names() {
        assert_eq!(Entry::whiteout("a/b/c").path, b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("top").path, b".wh.top");
        assert_eq!(Entry::opaque("a/b/").path, b"a/b/.wh..wh..opq");
        assert!(Entry::opaque("a").is_whiteout());
        assert!(!Entry::file("a/x.wh", "").is_whiteout());
    }

    #[test]
    fn tar_round_trips_through_tar_reader() {
        let deep: Vec<u8> = (0..60)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/")
            .into_bytes();
        let mut deep_file = deep.clone();
        deep_file.extend_from_slice(b"/f");
        let l = LayerBuilder::new()
            .dir("a")
            .entry(
                Entry::file("a/x", "hello")
                    .mode(0o4755)
                    .owner(1000, 50)
                    .mtime(12345)
                    .xattr("user.k", b"v\0w"),
            )
            .hardlink("a/y", "a/x")
            .symlink("s", "/abs/target")
            .entry(Entry::char_dev("dev/c", 1, 3))
            .entry(Entry::file(&deep_file, "deep"))
            .entry(Entry::file([&deep[..], b"/p"].concat(), "pax").pax_path())
            .file(b"bad\xffname", "nonutf8")
            .whiteout("gone");
        let tar = l.write_tar(Vec::new()).unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for ent in a.entries().unwrap() {
            let mut ent = ent.unwrap();
            let p = ent.path_bytes().into_owned();
            if p == b"a/x" {
                assert_eq!(ent.header().mode().unwrap(), 0o4755);
                assert_eq!(ent.header().uid().unwrap(), 1000);
                assert_eq!(ent.header().mtime().unwrap(), 12345);
                let x: Vec<_> = ent
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| e.unwrap().key().unwrap().to_string())
                    .collect();
                assert_eq!(x, vec!["SCHILY.xattr.user.k"]);
            }
            if p == b"a/y" {
                assert_eq!(ent.link_name_bytes().unwrap().as_ref(), b"a/x");
            }
            let mut body = Vec::new();
            ent.read_to_end(&mut body).unwrap();
            seen.push((p, body));
        }
        let names: Vec<&[u8]> = seen.iter().map(|(p, _)| &p[..]).collect();
        assert!(names.contains(&&deep_file[..]), "GNU long name");
        assert!(
            names.iter().any(|n| n.ends_with(b"/p") && n.len() > 100),
            "PAX path"
        );
        assert!(names.contains(&&b"bad\xffname"[..]));
        assert!(names.contains(&&b".wh.gone"[..]));
        assert!(names.contains(&&b"a/"[..]));
        let _ = std::ffi::OsStr::from_bytes(b"x");
    }

    #[test]
    fn build_writes_blob_named_by_digest() {
        let wd = crate::workdir::Workdir::new("layer").unwrap();
        let l = LayerBuilder::new().file("a", "x");
        let b = l.build(&wd.join("blobs/sha256")).unwrap();
        let data = std::fs::read(&b.path).unwrap();
        assert_eq!(b.size, data.len() as u64);
        assert_eq!(
            b.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(
            b.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&raw)))
        );
        let u = l
            .clone()
            .uncompressed()
            .build(&wd.join("blobs/sha256"))
            .unwrap();
        assert_eq!(u.digest, u.diff_id);
        assert_eq!(u.diff_id, b.diff_id);
    }
}
