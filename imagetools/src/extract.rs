//! Writes one layer's tree into a directory as an overlay-style diff (the layout an
//! overlayfs upper/lower dir has): whiteouts as 0/0 character devices, opaque
//! directories marked with the `trusted.overlay.opaque` (or `user.overlay.opaque`) xattr.
//!
//! Everything is created relative to directory file descriptors opened with
//! `O_NOFOLLOW`, so nothing is written outside the destination and no symlink from the
//! layer (or already in the destination) is followed. Per entry: contents first, then
//! ownership (before xattrs, so `security.capability` survives), xattrs, mode (after
//! chown, which clears setuid bits), times; directory metadata is applied after their
//! children, so their mtimes stay as in the layer. File contents are verified chunk by
//! chunk; a digest mismatch aborts the extraction and removes the partial file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use estargz::{Entry, EntryId, EntryKind, Layer, ReadAt, ROOT_ID};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

pub use linuxfs::overlay::OpaqueXattr;

/// Options for [`extract_layer`].
#[derive(Clone, Copy, Debug)]
pub struct ExtractOptions {
    /// The xattr marking opaque directories.
    pub opaque_xattr: OpaqueXattr,
    /// Set owners from the layer (needs root). When false, files keep the caller's ids.
    pub preserve_ownership: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            opaque_xattr: OpaqueXattr::Trusted,
            preserve_ownership: true,
        }
    }
}

/// What [`extract_layer`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Names created (hardlinks included).
    pub entries: u64,
    /// File content bytes written.
    pub bytes: u64,
}

/// Errors of [`extract_layer`].
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path inside the destination.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading or verifying the layer's contents failed.
    #[error(transparent)]
    Layer(#[from] estargz::ChunkError),
}

/// Extracts `layer` (contents read from `blob`) into the directory `dest`, which must
/// exist; entries that already exist there (other than directories) are an error.
pub fn extract_layer(
    layer: &Layer,
    blob: &dyn ReadAt,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", dest, e))?;
    let mut x = Extractor {
        layer,
        blob,
        opts: *opts,
        first_names: HashMap::new(),
        root: root.as_fd(),
        stats: ExtractStats::default(),
    };
    x.dir_children(root.as_fd(), ROOT_ID, &mut PathBuf::new())?;
    let r = layer.index.root();
    if !r.is_synthesized() || r.is_opaque() {
        x.finish_dir(root.as_fd(), &r, Path::new(""))?;
    }
    Ok(x.stats)
}

struct Extractor<'a> {
    layer: &'a Layer,
    blob: &'a dyn ReadAt,
    opts: ExtractOptions,
    /// Where each hardlinked file was first created (relative path).
    first_names: HashMap<EntryId, PathBuf>,
    root: BorrowedFd<'a>,
    stats: ExtractStats,
}

fn io_err(op: &'static str, path: &Path, e: impl Into<io::Error>) -> ExtractError {
    ExtractError::Io {
        op,
        path: path.to_string_lossy().into_owned(),
        source: e.into(),
    }
}

fn nix_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn timespec((secs, nanos): (i64, u32)) -> TimeSpec {
    TimeSpec::new(secs, i64::from(nanos))
}

impl Extractor<'_> {
    fn dir_children(
        &mut self,
        dirfd: BorrowedFd<'_>,
        dir: EntryId,
        rel: &mut PathBuf,
    ) -> Result<(), ExtractError> {
        let index = &self.layer.index;
        for (name, id) in index.children(dir) {
            let name = OsStr::from_bytes(name);
            rel.push(name);
            let e = index.entry(id).expect("child ids exist");
            self.entry(dirfd, name, &e, rel)?;
            self.stats.entries += 1;
            rel.pop();
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dirfd: BorrowedFd<'_>,
        name: &OsStr,
        e: &Entry<'_>,
        rel: &mut PathBuf,
    ) -> Result<(), ExtractError> {
        let rel_path = rel.clone();
        let p = rel_path.as_path();
        if e.kind() != EntryKind::Dir && e.nlink() > 1 {
            if let Some(first) = self.first_names.get(&e.id()) {
                return self.hardlink(first.clone(), dirfd, name, p);
            }
            self.first_names.insert(e.id(), rel_path.clone());
        }
        match e.kind() {
            EntryKind::Dir => {
                match mkdirat(dirfd, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(err) => return Err(io_err("mkdir", p, err)),
                }
                let fd = openat(
                    dirfd,
                    name,
                    OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| io_err("open directory", p, err))?;
                self.dir_children(fd.as_fd(), e.id(), rel)?;
                self.finish_dir(fd.as_fd(), e, p)
            }
            EntryKind::Reg => self.file(dirfd, name, e, p),
            EntryKind::Symlink => {
                let target = OsStr::from_bytes(e.symlink_target().unwrap_or_default());
                symlinkat(target, dirfd, name).map_err(|err| io_err("symlink", p, err))?;
                self.finish_at(dirfd, name, e, p, false)
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let (kind, perm, dev) = match e.kind() {
                    _ if e.is_whiteout() => (SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)),
                    EntryKind::Char => (
                        SFlag::S_IFCHR,
                        Mode::empty(),
                        makedev(e.rdev().0.into(), e.rdev().1.into()),
                    ),
                    EntryKind::Block => (
                        SFlag::S_IFBLK,
                        Mode::empty(),
                        makedev(e.rdev().0.into(), e.rdev().1.into()),
                    ),
                    _ => (SFlag::S_IFIFO, Mode::empty(), 0),
                };
                mknodat(dirfd, name, kind, perm, dev).map_err(|err| io_err("mknod", p, err))?;
                self.finish_at(dirfd, name, e, p, !e.is_whiteout())
            }
        }
    }

    fn hardlink(
        &mut self,
        first: PathBuf,
        dirfd: BorrowedFd<'_>,
        name: &OsStr,
        p: &Path,
    ) -> Result<(), ExtractError> {
        let (old_parent, old_name) = match first.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => (
                Some(parent.to_path_buf()),
                first.file_name().unwrap_or_default().to_owned(),
            ),
            _ => (None, first.as_os_str().to_owned()),
        };
        let parent_fd: Option<OwnedFd> = match &old_parent {
            Some(parent) => Some(self.open_beneath(parent)?),
            None => None,
        };
        let olddir = parent_fd.as_ref().map_or(self.root, |f| f.as_fd());
        linkat(olddir, old_name.as_os_str(), dirfd, name, AtFlags::empty())
            .map_err(|err| io_err("link", p, err))
    }

    /// Opens a directory under the destination root without following any symlink.
    fn open_beneath(&self, rel: &Path) -> Result<OwnedFd, ExtractError> {
        let how = nix::fcntl::OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                nix::fcntl::ResolveFlag::RESOLVE_BENEATH
                    | nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS,
            );
        nix::fcntl::openat2(self.root, rel, how).map_err(|err| io_err("open", rel, err))
    }

    fn file(
        &mut self,
        dirfd: BorrowedFd<'_>,
        name: &OsStr,
        e: &Entry<'_>,
        p: &Path,
    ) -> Result<(), ExtractError> {
        let fd = openat(
            dirfd,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|err| io_err("create", p, err))?;
        let mut file = File::from(fd);
        if let Err(err) = self.write_contents(&mut file, e, p) {
            drop(file);
            let _ = unlinkat(dirfd, name, UnlinkatFlags::NoRemoveDir);
            return Err(err);
        }
        self.finish_fd(file.as_fd(), e, p)
    }

    fn write_contents(
        &mut self,
        file: &mut File,
        e: &Entry<'_>,
        p: &Path,
    ) -> Result<(), ExtractError> {
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        for chunk in self.layer.index.chunks_of(e.id()) {
            if chunk.zeros {
                // A hole: leave it sparse.
                out.flush().map_err(|err| io_err("write", p, err))?;
                let f = out.get_mut();
                std::io::Seek::seek(f, io::SeekFrom::Current(chunk.size as i64))
                    .map_err(|err| io_err("seek", p, err))?;
                continue;
            }
            self.layer
                .stream_chunk(self.blob, &chunk, &mut |b| out.write_all(b))?;
            self.stats.bytes += chunk.size;
        }
        out.flush().map_err(|err| io_err("write", p, err))?;
        let f = out
            .into_inner()
            .map_err(|err| io_err("write", p, err.into_error()))?;
        f.set_len(e.size())
            .map_err(|err| io_err("truncate", p, err))
    }

    /// Metadata through an open fd (regular files and directories).
    fn finish_fd(&self, fd: BorrowedFd<'_>, e: &Entry<'_>, p: &Path) -> Result<(), ExtractError> {
        if self.opts.preserve_ownership {
            fchown(
                fd,
                Some(Uid::from_raw(e.uid())),
                Some(Gid::from_raw(e.gid())),
            )
            .map_err(|err| io_err("chown", p, err))?;
        }
        let file = fd
            .try_clone_to_owned()
            .map_err(|err| io_err("dup", p, err))?;
        let file = File::from(file);
        for (k, v) in e.xattrs() {
            xattr::FileExt::set_xattr(&file, OsStr::from_bytes(k), v)
                .map_err(|err| io_err("setxattr", p, err))?;
        }
        if e.is_opaque() {
            xattr::FileExt::set_xattr(&file, self.opts.opaque_xattr.name(), b"y")
                .map_err(|err| io_err("setxattr", p, err))?;
        }
        fchmod(fd, Mode::from_bits_truncate(e.mode())).map_err(|err| io_err("chmod", p, err))?;
        let t = timespec(e.mtime());
        futimens(fd, &t, &t).map_err(|err| io_err("utimes", p, err))
    }

    fn finish_dir(&self, fd: BorrowedFd<'_>, e: &Entry<'_>, p: &Path) -> Result<(), ExtractError> {
        self.finish_fd(fd, e, p)
    }

    /// Metadata by name (symlinks, devices, fifos), never following a symlink.
    fn finish_at(
        &self,
        dirfd: BorrowedFd<'_>,
        name: &OsStr,
        e: &Entry<'_>,
        p: &Path,
        chmod: bool,
    ) -> Result<(), ExtractError> {
        if self.opts.preserve_ownership {
            fchownat(
                dirfd,
                name,
                Some(Uid::from_raw(e.uid())),
                Some(Gid::from_raw(e.gid())),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|err| io_err("chown", p, err))?;
        }
        if e.xattrs().len() > 0 {
            // lsetxattr through the directory fd's /proc link: the final component is not
            // followed, and the directory is the one we opened.
            let via = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&dirfd)
            ))
            .join(name);
            for (k, v) in e.xattrs() {
                xattr::set(&via, OsStr::from_bytes(k), v)
                    .map_err(|err| io_err("setxattr", p, err))?;
            }
        }
        if chmod {
            fchmodat(
                dirfd,
                name,
                Mode::from_bits_truncate(e.mode()),
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|err| match err {
                // Kernels without fchmodat2 reject AT_SYMLINK_NOFOLLOW; the name is a
                // device node or fifo we just created, not a symlink.
                Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL => fchmodat(
                    dirfd,
                    name,
                    Mode::from_bits_truncate(e.mode()),
                    FchmodatFlags::FollowSymlink,
                ),
                other => Err(other),
            })
            .map_err(|err| io_err("chmod", p, nix_io(err)))?;
        }
        let t = timespec(e.mtime());
        utimensat(dirfd, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|err| io_err("utimes", p, err))
    }
}

#[cfg(test)]
mod tests {
    //! Extraction tests. They need root (devices, ownership, trusted xattrs): without it
    //! they skip, unless `STARLING_REQUIRE_INTEGRATION=1` makes that a failure.

    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use estargz::testutil::{edge_case_tar, manifest_from_tar, Manifest, Node};
    use estargz::{BuildOptions, Format, OpenOptions, Sha256Digest};

    use super::*;

    fn have_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
            "extraction tests need root"
        );
        eprintln!("skipping: extraction tests need root");
        false
    }

    /// The tree under `dir`, read back with lstat and llistxattr.
    pub(crate) fn manifest_from_dir(dir: &Path) -> Manifest {
        let mut nodes = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), BTreeSet<Vec<u8>>> = HashMap::new();
        let mut stack = vec![(dir.to_path_buf(), Vec::new())];
        while let Some((path, rel)) = stack.pop() {
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let mut node = Node {
                kind: 'f',
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: Some((md.mtime(), md.mtime_nsec() as u32)),
                digest: None,
                size: 0,
                link: Vec::new(),
                rdev: (0, 0),
                xattrs: BTreeMap::new(),
                opaque: false,
            };
            for name in xattr::list(&path).unwrap() {
                let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                if name == "trusted.overlay.opaque" {
                    node.opaque = value == b"y";
                } else {
                    node.xattrs.insert(name.as_bytes().to_vec(), value);
                }
            }
            if ft.is_dir() {
                node.kind = 'd';
                for child in std::fs::read_dir(&path).unwrap() {
                    let child = child.unwrap();
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(child.file_name().as_bytes());
                    stack.push((child.path(), r));
                }
            } else if ft.is_file() {
                let data = std::fs::read(&path).unwrap();
                node.size = data.len() as u64;
                node.digest = Some(Sha256Digest::of(&data));
            } else if ft.is_symlink() {
                node.kind = 'l';
                node.link = std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                node.size = node.link.len() as u64;
            } else {
                let rdev = md.rdev();
                node.rdev = (
                    nix::sys::stat::major(rdev) as u32,
                    nix::sys::stat::minor(rdev) as u32,
                );
                node.kind = if ft.is_char_device() {
                    if rdev == 0 {
                        'w'
                    } else {
                        'c'
                    }
                } else if ft.is_block_device() {
                    'b'
                } else {
                    'p'
                };
            }
            if !ft.is_dir() && md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            nodes.insert(rel, node);
        }
        Manifest {
            nodes,
            hardlinks: inodes.into_values().filter(|s| s.len() > 1).collect(),
        }
    }

    fn blob_of(tar: &[u8], format: Format) -> Vec<u8> {
        let mut blob = Vec::new();
        let opts = BuildOptions {
            format,
            chunk_size: 64 * 1024,
            ..Default::default()
        };
        estargz::build(tar, &mut blob, &opts).unwrap();
        blob
    }

    #[test]
    fn extracts_the_edge_case_layer_like_the_tar() {
        if !have_root() {
            return;
        }
        let tar = edge_case_tar();
        let expected = manifest_from_tar(&tar);
        for format in [Format::Estargz, Format::ZstdChunked, Format::LegacyStargz] {
            let blob = blob_of(&tar, format);
            let layer = estargz::open(&blob, &OpenOptions::default()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let stats =
                extract_layer(&layer, &blob, dir.path(), &ExtractOptions::default()).unwrap();
            assert_eq!(stats.bytes, layer.index.uncompressed_file_bytes());
            expected.assert_same(&manifest_from_dir(dir.path()));
        }
    }

    /// Layers converted by ctr-remote lost their non-UTF-8 names in the TOC (U+FFFD);
    /// `estargz::open` reads them back from the tar headers, so what `starling estargz
    /// extract` writes equals the original tar (what a full pull unpacks).
    #[test]
    fn extracts_the_names_a_ctr_remote_toc_lost_from_the_tar_headers() {
        if !have_root() {
            return;
        }
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../estargz/tests/fixtures");
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures.join("ctr-remote-lostnames.json")).unwrap(),
        )
        .unwrap();
        let expected = manifest_from_tar(&estargz::testutil::lost_names_tar());
        for key in ["estargz", "zstdchunked"] {
            let m = &meta[key];
            let blob = std::fs::read(fixtures.join(m["blob"].as_str().unwrap())).unwrap();
            let opts = OpenOptions {
                expected_toc_digest: Some(m["tocDigest"].as_str().unwrap().parse().unwrap()),
                ..Default::default()
            };
            let layer = estargz::open(&blob, &opts).unwrap();
            let dir = tempfile::tempdir().unwrap();
            extract_layer(&layer, &blob, dir.path(), &ExtractOptions::default()).unwrap();
            expected.assert_same(&manifest_from_dir(dir.path()));
            use std::os::unix::ffi::OsStrExt;
            let raw = dir
                .path()
                .join(std::ffi::OsStr::from_bytes(b"bad-\xff\xfe"));
            assert!(std::fs::symlink_metadata(raw).is_ok(), "{key}: raw name");
        }
    }

    #[test]
    fn never_writes_through_a_symlink_in_the_destination() {
        if !have_root() {
            return;
        }
        let mut t = estargz::testutil::TarBuilder::new();
        t.dir(b"a/", &Default::default());
        t.file(b"a/payload", &Default::default(), b"x");
        let blob = blob_of(&t.finish(), Format::Estargz);
        let layer = estargz::open(&blob, &OpenOptions::default()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.path().join("a")).unwrap();
        let err =
            extract_layer(&layer, &blob, dest.path(), &ExtractOptions::default()).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_contents_abort_and_leave_no_partial_file() {
        if !have_root() {
            return;
        }
        let mut t = estargz::testutil::TarBuilder::new();
        t.file(b"good", &Default::default(), b"fine");
        t.file(
            b"bad",
            &Default::default(),
            &estargz::testutil::pattern(100_000, 9),
        );
        let mut blob = blob_of(&t.finish(), Format::Estargz);
        let layer = estargz::open(&blob, &OpenOptions::default()).unwrap();
        let id = layer.index.resolve(b"bad").unwrap();
        let c = layer.index.chunks_of(id).next().unwrap();
        // Flip bits in the middle of the compressed chunk.
        let mid = (c.compressed_offset + c.compressed_len / 2) as usize;
        for b in &mut blob[mid..mid + 64] {
            *b ^= 0xa5;
        }
        let dir = tempfile::tempdir().unwrap();
        let err = extract_layer(&layer, &blob, dir.path(), &ExtractOptions::default()).unwrap_err();
        assert!(err.to_string().contains("\"bad\""), "{err}");
        assert!(!dir.path().join("bad").exists());
    }
}

#[cfg(test)]
mod interop_tests {
    //! Extracting the layers Debian's `ctr-remote` produced (fixtures of the estargz
    //! crate, see its `tests/fixtures/regen.sh`) gives the original tar's tree on disk.

    use std::path::PathBuf;

    use estargz::testutil::manifest_from_tar;
    use estargz::{OpenOptions, Sha256Digest};

    use super::tests::manifest_from_dir;
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../estargz/tests/fixtures")
    }

    #[test]
    fn ctr_remote_layers_extract_like_the_original_tar() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
                "needs root"
            );
            eprintln!("skipping: extraction tests need root");
            return;
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("ctr-remote.json")).unwrap())
                .unwrap();
        let mut tar = Vec::new();
        let gz = std::fs::read(fixtures().join("layer.tar.gz")).unwrap();
        flate2_free_gunzip(&gz, &mut tar);
        let expected = manifest_from_tar(&tar);
        for key in ["estargz", "zstdchunked"] {
            let m = &meta[key];
            let blob = std::fs::read(fixtures().join(m["blob"].as_str().unwrap())).unwrap();
            let digest: Sha256Digest = m["tocDigest"].as_str().unwrap().parse().unwrap();
            let layer = estargz::open(
                &blob,
                &OpenOptions {
                    expected_toc_digest: Some(digest),
                    ..Default::default()
                },
            )
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            extract_layer(&layer, &blob, dir.path(), &ExtractOptions::default()).unwrap();
            expected.assert_same(&manifest_from_dir(dir.path()));
        }
    }

    /// gunzip through the estargz crate's chunk decoder (this crate has no flate2).
    fn flate2_free_gunzip(gz: &[u8], out: &mut Vec<u8>) {
        let mut size = [0u8; 4];
        size.copy_from_slice(&gz[gz.len() - 4..]);
        let len = u32::from_le_bytes(size) as usize;
        out.resize(len, 0);
        estargz::chunk::decompress(estargz::Compression::Gzip, gz, 0, out).unwrap();
    }
}
