//! Flattening a stack of overlay layer directories into one directory that holds exactly
//! what an overlay mount of the stack shows.
//!
//! The result is resolved top-down the way overlayfs looks paths up, so every entry of
//! the result is written once and nothing is written only to be deleted again:
//! - in each directory, for each name, the topmost layer that has the name decides: a
//!   whiteout (char device 0/0) makes it absent, a non-directory is taken from that
//!   layer, a directory is merged with the same directory of the layers below until one
//!   of them is opaque (`<prefix>opaque` = `y`) or has a non-directory or a whiteout
//!   there (the layers' roots always merge, as in overlayfs);
//! - regular files are hardlinked from their layer ([`LinkMode::Hardlink`]), or copied
//!   when the layer is on another file system (EXDEV: another mount, a FUSE layer), the
//!   inode has too many links (EMLINK), or the mode asks for it ([`LinkMode::Copy`]);
//!   a hardlinked file shares its inode with the layer, so its metadata is never touched;
//! - hardlinks within the input are kept: a second name of an inode that was copied (or
//!   made anew) is linked to the first copy;
//! - everything else (directories, symlinks, devices, fifos, sockets) is created anew with
//!   the owner set before the xattrs (so `security.capability` survives), then the mode,
//!   the xattrs (overlay's private ones are dropped: the result is complete and stands
//!   alone, so no whiteout or opaque marker is ever needed in it) and the times;
//!   directory times are set after their contents.
//!
//! Safety against hostile layers: every directory is opened with `O_NOFOLLOW` relative to
//! its parent's descriptor and every entry is created or read with `*at` calls on names
//! from `readdir`, so a symlink in a layer is copied as a symlink and never followed, in
//! the layers or in the result. Xattrs of entries without a descriptor go through
//! `/proc/self/fd/<dir>/<name>` with the non-following `l*xattr` calls.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{open, openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use xattr::FileExt;

use crate::store::Usage;

/// How regular files get into the flattened directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Hardlink from the layer when it is on the same file system, else copy.
    Hardlink,
    /// Always copy.
    Copy,
}

/// Settings of [`flatten`].
#[derive(Clone, Debug)]
pub struct FlattenOptions {
    /// Hardlink or copy regular files.
    pub link: LinkMode,
    /// Prefix of overlayfs' private xattrs in the layers: `trusted.overlay.`, or
    /// `user.overlay.` when overlay runs with `userxattr`.
    pub overlay_xattr_prefix: String,
}

impl FlattenOptions {
    /// Options for `link` with overlay's xattrs under `trusted.` or (`userxattr`) `user.`.
    pub fn new(link: LinkMode, userxattr: bool) -> Self {
        let prefix = if userxattr {
            "user.overlay."
        } else {
            "trusted.overlay."
        };
        FlattenOptions {
            link,
            overlay_xattr_prefix: prefix.to_string(),
        }
    }
}

/// What [`flatten`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Directories created (the root not included).
    pub dirs: u64,
    /// Regular files hardlinked from a layer (their data is shared, not owned).
    pub linked: u64,
    /// Regular files copied.
    pub copied: u64,
    /// Bytes of regular-file data copied.
    pub copied_bytes: u64,
    /// Names linked to an entry this flatten created earlier (hardlinks kept).
    pub relinked: u64,
    /// Symlinks, devices, fifos and sockets created.
    pub special: u64,
    /// Space and inodes the result owns: everything it created, not the inodes it
    /// shares with the layers through hardlinks.
    pub owned: Usage,
}

/// Failures of [`flatten`].
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// A file system call failed on `path`.
    #[error("merge: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The layer or result path it was done on.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A layer uses an overlayfs feature whose meaning cannot be reproduced in a flat copy.
    #[error("merge: {} uses overlayfs {feature}, which cannot be flattened (merge it with the stack mode)", path.display())]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// The feature (e.g. `redirect_dir`).
        feature: &'static str,
    },
    /// A file's size changed while it was copied (layers must not change).
    #[error("merge: {} changed while it was copied ({copied} of {expected} bytes)", path.display())]
    ShortCopy {
        /// The layer file.
        path: PathBuf,
        /// Bytes copied.
        copied: u64,
        /// Its size when it was looked at.
        expected: u64,
    },
    /// No layer to flatten.
    #[error("merge: nothing to flatten (no layers)")]
    NoLayers,
}

type Result<T, E = FlattenError> = std::result::Result<T, E>;

/// What one name resolves to in a directory being merged.
enum Decision {
    /// Whited out by the topmost layer that has it.
    Absent,
    /// A non-directory, from this level.
    NonDir(usize),
    /// A directory merged from these levels (topmost first); `open` while the layers
    /// further down may still add to it.
    Dir { levels: Vec<usize>, open: bool },
}

/// What an entry of one layer directory is, for resolution.
enum EntryKind {
    Whiteout,
    Dir,
    Other,
}

/// One layer's view of the directory being merged.
struct Level {
    /// Index of the layer (into the layer list).
    layer: usize,
    /// The directory in that layer.
    dir: File,
}

/// Flattens `layers` (layer directories, **topmost first**) into `target`, an existing
/// empty directory on the file system where hardlinks should be made. The target root
/// gets the owner, mode, xattrs and times of the topmost layer's root.
pub fn flatten(layers: &[PathBuf], target: &Path, opts: &FlattenOptions) -> Result<FlattenStats> {
    if layers.is_empty() {
        return Err(FlattenError::NoLayers);
    }
    raise_fd_limit();
    let root = open_dir(target)?;
    let target_dev = fstat(&root).map_err(|e| io_err("stat", target, e))?.st_dev;
    let mut levels = Vec::with_capacity(layers.len());
    let mut layer_dev = Vec::with_capacity(layers.len());
    for (i, path) in layers.iter().enumerate() {
        let dir = open_dir(path)?;
        layer_dev.push(fstat(&dir).map_err(|e| io_err("stat", path, e))?.st_dev);
        levels.push(Level { layer: i, dir });
    }
    let mut f = Flattener {
        root: root.try_clone().map_err(|e| FlattenError::Io {
            op: "duplicate descriptor of",
            path: target.to_path_buf(),
            source: e,
        })?,
        opts,
        layers,
        layer_dev,
        target_dev,
        root_path: target,
        rel: PathBuf::new(),
        copies: HashMap::new(),
        stats: FlattenStats::default(),
    };
    let top = &levels[0];
    let st = fstat(&top.dir).map_err(|e| f.src_err("stat", 0, e))?;
    f.set_dir_meta(&root, &top.dir, &st, 0)?;
    f.merge_dir(&root, &levels)?;
    f.set_times_fd(&root, &st)?;
    f.own_fd(&root)?;
    Ok(f.stats)
}

struct Flattener<'a> {
    /// The result's root directory.
    root: File,
    opts: &'a FlattenOptions,
    layers: &'a [PathBuf],
    layer_dev: Vec<u64>,
    target_dev: u64,
    root_path: &'a Path,
    /// Path of the directory being merged, relative to the roots.
    rel: PathBuf,
    /// Inodes (dev, ino) with several names that were made anew: where their first name
    /// is in the result (relative path).
    copies: HashMap<(u64, u64), PathBuf>,
    stats: FlattenStats,
}

impl Flattener<'_> {
    /// Resolves every name of the directory `levels` stand for and writes it into `dst`.
    fn merge_dir(&mut self, dst: &File, levels: &[Level]) -> Result<()> {
        let mut plan: BTreeMap<OsString, Decision> = BTreeMap::new();
        for (idx, level) in levels.iter().enumerate() {
            for (name, dtype) in self.read_entries(level)? {
                match plan.get_mut(&name) {
                    None => {
                        let decision = match self.kind_of(level, &name, dtype)? {
                            EntryKind::Whiteout => Decision::Absent,
                            EntryKind::Other => Decision::NonDir(idx),
                            EntryKind::Dir => Decision::Dir {
                                levels: vec![idx],
                                open: !self.dir_is_opaque(level, &name)?,
                            },
                        };
                        plan.insert(name, decision);
                    }
                    Some(Decision::Dir { levels, open }) if *open => {
                        match self.kind_of(level, &name, dtype)? {
                            EntryKind::Dir => {
                                levels.push(idx);
                                *open = !self.dir_is_opaque(level, &name)?;
                            }
                            // A non-directory or a whiteout below a directory hides
                            // everything further down.
                            EntryKind::Whiteout | EntryKind::Other => *open = false,
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        for (name, decision) in plan {
            match decision {
                Decision::Absent => {}
                Decision::NonDir(idx) => self.place_nondir(&levels[idx], dst, &name)?,
                Decision::Dir { levels: idxs, .. } => {
                    self.place_dir(levels, &idxs, dst, &name)?;
                }
            }
        }
        Ok(())
    }

    fn place_dir(
        &mut self,
        levels: &[Level],
        idxs: &[usize],
        dst: &File,
        name: &OsStr,
    ) -> Result<()> {
        mkdirat(dst, name, Mode::from_bits_truncate(0o700))
            .map_err(|e| self.dst_err("create directory", name, e))?;
        let sub_dst = open_dir_at(dst, name).map_err(|e| self.dst_err("open", name, e))?;
        let mut subs = Vec::with_capacity(idxs.len());
        for &idx in idxs {
            let level = &levels[idx];
            let dir = open_dir_at(&level.dir, name)
                .map_err(|e| self.src_err_at("open directory", level.layer, name, e))?;
            subs.push(Level {
                layer: level.layer,
                dir,
            });
        }
        let top = &subs[0];
        let st = fstat(&top.dir).map_err(|e| self.src_err_at("stat", top.layer, name, e))?;
        self.rel.push(name);
        let result = (|| {
            self.set_dir_meta(&sub_dst, &top.dir, &st, top.layer)?;
            self.merge_dir(&sub_dst, &subs)?;
            // After the contents: creating entries changes a directory's mtime.
            self.set_times_fd(&sub_dst, &st)?;
            self.own_fd(&sub_dst)
        })();
        self.rel.pop();
        result?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn place_nondir(&mut self, level: &Level, dst: &File, name: &OsStr) -> Result<()> {
        let src = &level.dir;
        let st = fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.src_err_at("stat", level.layer, name, e))?;
        let inode = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.copies.get(&inode) {
                let first = first.clone();
                match linkat(self.root.as_fd(), &first, dst, name, AtFlags::empty()) {
                    Ok(()) => {
                        self.stats.relinked += 1;
                        return Ok(());
                    }
                    // Too many links on our copy: make another one below.
                    Err(Errno::EMLINK) => {}
                    Err(e) => return Err(self.dst_err("hardlink", name, e)),
                }
            }
        }
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        match fmt {
            SFlag::S_IFREG => {
                if self.opts.link == LinkMode::Hardlink
                    && self.layer_dev[level.layer] == self.target_dev
                {
                    match linkat(src, name, dst, name, AtFlags::empty()) {
                        Ok(()) => {
                            self.stats.linked += 1;
                            return Ok(());
                        }
                        Err(Errno::EXDEV | Errno::EMLINK) => {}
                        Err(e) => return Err(self.src_err_at("hardlink", level.layer, name, e)),
                    }
                }
                self.copy_file(level, dst, name, &st)?;
            }
            SFlag::S_IFLNK => self.copy_symlink(level, dst, name, &st)?,
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                self.make_node(level, dst, name, &st, fmt)?
            }
            _ => {
                return Err(FlattenError::Unsupported {
                    path: self.layers[level.layer].join(&self.rel).join(name),
                    feature: "file type",
                })
            }
        }
        if st.st_nlink > 1 {
            self.copies.insert(inode, self.rel.join(name));
        }
        Ok(())
    }

    fn copy_file(&mut self, level: &Level, dst: &File, name: &OsStr, st: &FileStat) -> Result<()> {
        let src = openat(
            &level.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| self.src_err_at("open", level.layer, name, e))?;
        let out = openat(
            dst,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(File::from)
        .map_err(|e| self.dst_err("create", name, e))?;
        let copied = io::copy(&mut &src, &mut &out).map_err(|e| FlattenError::Io {
            op: "copy",
            path: self.layers[level.layer].join(&self.rel).join(name),
            source: e,
        })?;
        let expected = u64::try_from(st.st_size).unwrap_or(0);
        if copied != expected {
            return Err(FlattenError::ShortCopy {
                path: self.layers[level.layer].join(&self.rel).join(name),
                copied,
                expected,
            });
        }
        // Owner first: chown clears set-id bits and security.capability.
        fchown(
            &out,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| self.dst_err("chown", name, e))?;
        fchmod(&out, Mode::from_bits_truncate(st.st_mode & 0o7777))
            .map_err(|e| self.dst_err("chmod", name, e))?;
        self.copy_xattrs_fd(&src, &out, level.layer, name)?;
        futimens(&out, &atime(st), &mtime(st))
            .map_err(|e| self.dst_err("set times of", name, e))?;
        self.stats.copied += 1;
        self.stats.copied_bytes += copied;
        self.own_fd(&out)
    }

    fn copy_symlink(
        &mut self,
        level: &Level,
        dst: &File,
        name: &OsStr,
        st: &FileStat,
    ) -> Result<()> {
        let target = readlinkat(&level.dir, name)
            .map_err(|e| self.src_err_at("read symlink", level.layer, name, e))?;
        symlinkat(target.as_os_str(), dst, name)
            .map_err(|e| self.dst_err("create symlink", name, e))?;
        self.finish_special(level, dst, name, st, false)
    }

    fn make_node(
        &mut self,
        level: &Level,
        dst: &File,
        name: &OsStr,
        st: &FileStat,
        fmt: SFlag,
    ) -> Result<()> {
        mknodat(dst, name, fmt, Mode::from_bits_truncate(0o600), st.st_rdev)
            .map_err(|e| self.dst_err("create node", name, e))?;
        self.finish_special(level, dst, name, st, true)
    }

    /// Owner, mode (not for symlinks), xattrs and times of a symlink or node just made.
    fn finish_special(
        &mut self,
        level: &Level,
        dst: &File,
        name: &OsStr,
        st: &FileStat,
        chmod: bool,
    ) -> Result<()> {
        fchownat(
            dst,
            name,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.dst_err("chown", name, e))?;
        if chmod {
            // Not a symlink (we just made it), so following is harmless.
            fchmodat(
                dst,
                name,
                Mode::from_bits_truncate(st.st_mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| self.dst_err("chmod", name, e))?;
        }
        let from = proc_path(&level.dir, name);
        let to = proc_path(dst, name);
        for (attr, value) in self.read_xattrs_path(&from, level.layer, name)? {
            xattr::set(&to, &attr, &value).map_err(|e| FlattenError::Io {
                op: "set xattr on",
                path: self.root_path.join(&self.rel).join(name),
                source: with_xattr_name(e, &attr),
            })?;
        }
        utimensat(
            dst,
            name,
            &atime(st),
            &mtime(st),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.dst_err("set times of", name, e))?;
        let made = fstatat(dst, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.dst_err("stat", name, e))?;
        self.own(&made);
        self.stats.special += 1;
        Ok(())
    }

    /// Owner, mode and xattrs of a directory (times come after its contents).
    fn set_dir_meta(&mut self, dst: &File, src: &File, st: &FileStat, layer: usize) -> Result<()> {
        let rel = self.rel.clone();
        let here = || self.root_path.join(&rel);
        fchown(
            dst,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| io_err("chown", here(), e))?;
        fchmod(dst, Mode::from_bits_truncate(st.st_mode & 0o7777))
            .map_err(|e| io_err("chmod", here(), e))?;
        self.copy_xattrs_fd(src, dst, layer, OsStr::new(""))
    }

    fn set_times_fd(&self, dst: &File, st: &FileStat) -> Result<()> {
        futimens(dst, &atime(st), &mtime(st))
            .map_err(|e| io_err("set times of", self.root_path.join(&self.rel), e))
    }

    fn copy_xattrs_fd(&self, src: &File, dst: &File, layer: usize, name: &OsStr) -> Result<()> {
        let src_path = || self.layers[layer].join(&self.rel).join(name);
        let names = match src.list_xattr() {
            Ok(n) => n,
            Err(e) if unsupported(&e) => return Ok(()),
            Err(e) => return Err(xattr_err("list xattrs of", src_path(), e)),
        };
        for attr in names {
            if self.is_overlay_private(&attr) {
                continue;
            }
            let value = match src.get_xattr(&attr) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    return Err(xattr_err(
                        "read xattr of",
                        src_path(),
                        with_xattr_name(e, &attr),
                    ))
                }
            };
            dst.set_xattr(&attr, &value).map_err(|e| FlattenError::Io {
                op: "set xattr on",
                path: self.root_path.join(&self.rel).join(name),
                source: with_xattr_name(e, &attr),
            })?;
        }
        Ok(())
    }

    fn read_xattrs_path(
        &self,
        from: &Path,
        layer: usize,
        name: &OsStr,
    ) -> Result<Vec<(OsString, Vec<u8>)>> {
        let src_path = || self.layers[layer].join(&self.rel).join(name);
        let names = match xattr::list(from) {
            Ok(n) => n,
            Err(e) if unsupported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(xattr_err("list xattrs of", src_path(), e)),
        };
        let mut out = Vec::new();
        for attr in names {
            if self.is_overlay_private(&attr) {
                continue;
            }
            match xattr::get(from, &attr) {
                Ok(Some(v)) => out.push((attr, v)),
                Ok(None) => {}
                Err(e) => {
                    return Err(xattr_err(
                        "read xattr of",
                        src_path(),
                        with_xattr_name(e, &attr),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn is_overlay_private(&self, attr: &OsStr) -> bool {
        attr.as_bytes()
            .starts_with(self.opts.overlay_xattr_prefix.as_bytes())
    }

    /// Whether directory `name` in `level` is opaque; fails on overlay features whose
    /// meaning a flat copy cannot keep (a renamed directory's redirect).
    fn dir_is_opaque(&self, level: &Level, name: &OsStr) -> Result<bool> {
        let path = proc_path(&level.dir, name);
        let src_path = || self.layers[level.layer].join(&self.rel).join(name);
        let prefix = &self.opts.overlay_xattr_prefix;
        let names = match xattr::list(&path) {
            Ok(n) => n,
            Err(e) if unsupported(&e) => return Ok(false),
            Err(e) => return Err(xattr_err("list xattrs of", src_path(), e)),
        };
        let mut opaque = false;
        for attr in names {
            let Some(rest) = attr.as_bytes().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            match rest {
                b"redirect" => {
                    return Err(FlattenError::Unsupported {
                        path: src_path(),
                        feature: "redirect_dir",
                    })
                }
                b"opaque" => {
                    let v = xattr::get(&path, &attr)
                        .map_err(|e| xattr_err("read xattr of", src_path(), e))?;
                    opaque = v.as_deref() == Some(b"y");
                }
                _ => {}
            }
        }
        Ok(opaque)
    }

    fn kind_of(&self, level: &Level, name: &OsStr, dtype: Option<Type>) -> Result<EntryKind> {
        match dtype {
            Some(Type::Directory) => return Ok(EntryKind::Dir),
            Some(Type::CharacterDevice) | None => {}
            Some(_) => return Ok(EntryKind::Other),
        }
        let st = fstatat(&level.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.src_err_at("stat", level.layer, name, e))?;
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        Ok(if fmt == SFlag::S_IFDIR {
            EntryKind::Dir
        } else if fmt == SFlag::S_IFCHR && st.st_rdev == 0 {
            EntryKind::Whiteout
        } else {
            EntryKind::Other
        })
    }

    fn read_entries(&self, level: &Level) -> Result<Vec<(OsString, Option<Type>)>> {
        let mut dir = Dir::openat(
            &level.dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.src_err("read directory", level.layer, e))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| self.src_err("read directory", level.layer, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
        }
        Ok(out)
    }

    fn own_fd(&mut self, f: &File) -> Result<()> {
        let st = fstat(f).map_err(|e| io_err("stat", self.root_path.join(&self.rel), e))?;
        self.own(&st);
        Ok(())
    }

    fn own(&mut self, st: &FileStat) {
        self.stats.owned.inodes += 1;
        self.stats.owned.size = self
            .stats
            .owned
            .size
            .saturating_add(st.st_blocks.saturating_mul(512));
    }

    fn src_err(&self, op: &'static str, layer: usize, e: Errno) -> FlattenError {
        io_err(op, self.layers[layer].join(&self.rel), e)
    }

    fn src_err_at(&self, op: &'static str, layer: usize, name: &OsStr, e: Errno) -> FlattenError {
        io_err(op, self.layers[layer].join(&self.rel).join(name), e)
    }

    fn dst_err(&self, op: &'static str, name: &OsStr, e: Errno) -> FlattenError {
        io_err(op, self.root_path.join(&self.rel).join(name), e)
    }
}

fn io_err(op: &'static str, path: impl Into<PathBuf>, e: Errno) -> FlattenError {
    FlattenError::Io {
        op,
        path: path.into(),
        source: io::Error::from(e),
    }
}

fn xattr_err(op: &'static str, path: PathBuf, e: io::Error) -> FlattenError {
    FlattenError::Io {
        op,
        path,
        source: e,
    }
}

fn with_xattr_name(e: io::Error, attr: &OsStr) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", attr.to_string_lossy()))
}

/// Xattrs not supported by the file system (e.g. some FUSE layers): there are none.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

fn open_dir(path: &Path) -> Result<File> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| io_err("open directory", path, e))
}

fn open_dir_at(dir: &File, name: &OsStr) -> nix::Result<File> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in the open directory `dir` that does
/// not depend on the directory's path (only the last component is looked up, and the
/// `l*xattr` calls do not follow it).
fn proc_path(dir: &File, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

fn atime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_mtime, st.st_mtime_nsec)
}

/// Raises the soft open-files limit to the hard one (once per process): a merge holds a
/// descriptor per layer per directory level it is in.
fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            // SAFETY: setrlimit only reads the struct we pass.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        }
    });
}
