//! Call-by-call comparison of two mounted trees (a lazy layer and the same layer
//! extracted, or overlays of them): each [`Call`] is made on the same relative path under
//! both roots and its outcome — the value it returned or its errno — is written as one
//! canonical string, so that two answers are equal exactly when a client could not tell
//! them apart. [`compare`] runs a list of calls over a list of paths and returns every
//! row; the caller decides which differences are expected (and says why).
//!
//! Calls only read, except [`Call::Mutate`], which tries to change the tree (on a
//! read-only mount: the errno a client gets) and [`Call::CopyOut`], which writes into a
//! scratch file outside both trees. Nothing here blocks: FIFOs are opened with
//! `O_NONBLOCK` and block devices are never opened (opening one may create a kernel
//! device, e.g. a loop device).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What a path is (on the reference side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    Reg,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device (whiteouts included).
    Char,
    /// Block device.
    Block,
    /// FIFO.
    Fifo,
    /// Socket.
    Socket,
    /// Nothing there.
    Missing,
}

impl Kind {
    /// The kind of `path` (not following a final symlink).
    pub fn of(path: &Path) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Err(_) => Kind::Missing,
            Ok(m) => {
                let t = m.file_type();
                if t.is_file() {
                    Kind::Reg
                } else if t.is_dir() {
                    Kind::Dir
                } else if t.is_symlink() {
                    Kind::Symlink
                } else if t.is_char_device() {
                    Kind::Char
                } else if t.is_block_device() {
                    Kind::Block
                } else if t.is_fifo() {
                    Kind::Fifo
                } else {
                    Kind::Socket
                }
            }
        }
    }
}

/// A field of `statx(2)` (called with `AT_SYMLINK_NOFOLLOW`, asking for the basic stats
/// and the birth time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatField {
    /// `stx_mode` (type and permission bits).
    Mode,
    /// `stx_nlink`.
    Nlink,
    /// `stx_uid`.
    Uid,
    /// `stx_gid`.
    Gid,
    /// `stx_size`.
    Size,
    /// `stx_blocks`.
    Blocks,
    /// `stx_blksize`.
    Blksize,
    /// `stx_atime` (seconds and nanoseconds).
    Atime,
    /// `stx_mtime`.
    Mtime,
    /// `stx_ctime`.
    Ctime,
    /// `stx_rdev_major:stx_rdev_minor`.
    Rdev,
    /// Whether `stx_dev` is the device of the tree's root (what `find -xdev`, `du -x`
    /// and `tar --one-file-system` compare).
    DevIsRoot,
    /// `stx_mask` restricted to what was asked for (basic stats and birth time).
    Mask,
    /// `stx_attributes_mask`.
    AttributesMask,
    /// `stx_attributes`.
    Attributes,
}

/// A change to the tree (each on the path, or a new name next to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `truncate(path, 0)`.
    Truncate,
    /// `fchmodat(path, 0o700)`.
    Chmod,
    /// `lchown(path, 5, 5)`.
    Chown,
    /// `utimensat(path, [1, 2], AT_SYMLINK_NOFOLLOW)`.
    Utimes,
    /// `mkdir(path/new-dir)` (or next to a non-directory).
    Mkdir,
    /// `rmdir(path)`.
    Rmdir,
    /// `unlink(path)`.
    Unlink,
    /// `rename(path, path.renamed)`.
    Rename,
    /// `link(path, path.link)`.
    Link,
    /// `symlink("target", path.symlink)`.
    Symlink,
    /// `mknod(path.fifo, S_IFIFO)`.
    Mknod,
    /// `open(path/new-file or path.new, O_CREAT | O_EXCL | O_WRONLY)`.
    Create,
    /// `lsetxattr(path, "user.added", "v")`.
    Setxattr,
    /// `lremovexattr(path, "user.comment")`.
    Removexattr,
    /// `open(path, O_WRONLY | O_APPEND)` and write one byte.
    Append,
}

/// `open(2)` flags to try (`O_CLOEXEC` always; `O_NONBLOCK` added for FIFOs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_WRONLY`.
    WriteOnly,
    /// `O_RDWR`.
    ReadWrite,
    /// `O_RDONLY | O_TRUNC`.
    Trunc,
    /// `O_RDONLY | O_CREAT` (the path exists).
    Creat,
    /// `O_RDONLY | O_CREAT | O_EXCL`.
    CreatExcl,
    /// `O_RDONLY | O_DIRECTORY`.
    Directory,
    /// `O_RDONLY | O_NOFOLLOW`.
    NoFollow,
    /// `O_PATH`.
    Path,
    /// `O_PATH | O_NOFOLLOW`.
    PathNoFollow,
    /// `O_RDONLY | O_NOATIME`.
    NoAtime,
    /// `O_RDONLY | O_DIRECT` (a 4 KiB aligned read follows).
    Direct,
}

/// `lseek(2)` on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA` from 0.
    Data0,
    /// `SEEK_HOLE` from 0.
    Hole0,
    /// `SEEK_DATA` from the size (ENXIO on every Linux filesystem).
    DataAtEnd,
    /// `SEEK_END` 0.
    End,
}

/// A lock attempt on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// `flock(LOCK_SH | LOCK_NB)`.
    FlockShared,
    /// `flock(LOCK_EX | LOCK_NB)`.
    FlockExclusive,
    /// `fcntl(F_SETLK, F_RDLCK)`.
    PosixRead,
    /// `fcntl(F_SETLK, F_WRLCK)` (EBADF on a read-only descriptor).
    PosixWrite,
    /// `fcntl(F_OFD_SETLK, F_RDLCK)`.
    OfdRead,
    /// `fcntl(F_GETLK, F_WRLCK)`.
    GetLock,
}

/// An `ioctl(2)` on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctl {
    /// `FIONREAD` (bytes left to read).
    Fionread,
    /// `FS_IOC_GETFLAGS` (`lsattr`).
    GetFlags,
    /// `FS_IOC_FSGETXATTR`.
    FsGetXattr,
}

/// One call made on a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A `statx` field.
    Stat(StatField),
    /// `lgetxattr(path, name, NULL, 0)`: the value's size.
    GetxattrSize(&'static str),
    /// `lgetxattr(path, name, buf, 64 KiB)`: the value.
    Getxattr(&'static str),
    /// `lgetxattr(path, name, buf, 1)`: ERANGE for longer values.
    GetxattrSmall(&'static str),
    /// `llistxattr(path, NULL, 0)`: the list's size.
    ListxattrSize,
    /// `llistxattr(path, buf, 64 KiB)`: the names, sorted (their order is the
    /// filesystem's).
    Listxattr,
    /// `llistxattr(path, buf, 1)`.
    ListxattrSmall,
    /// `readlink(path)`.
    Readlink,
    /// `open(path, flags)` (then closed).
    Open(OpenMode),
    /// SHA-256 of the first 64 KiB read through a plain descriptor.
    ReadHead,
    /// `fsync` on a read-only descriptor.
    Fsync,
    /// `fdatasync` on a read-only descriptor.
    Fdatasync,
    /// `lseek` on a read-only descriptor.
    Seek(Seek),
    /// `access(path, mode)` as the caller (root).
    Access(i32),
    /// A lock on a read-only descriptor.
    Lock(Lock),
    /// `copy_file_range` of the first 4 KiB into a scratch file on another filesystem.
    CopyOut,
    /// `copy_file_range` of the first 4 KiB into a new file at the tree's root (a
    /// container copying a file of its image within its own root).
    CopyWithin,
    /// `llistxattr` by an unprivileged process (uid and gid 65534, through Debian's
    /// python3): the names, sorted.
    ListxattrAsNobody,
    /// An ioctl on a read-only descriptor.
    Ioctl(Ioctl),
    /// The `(name, d_type)` pairs of `getdents64`, sorted (their order is the
    /// filesystem's), `.` and `..` included.
    Getdents,
    /// A change.
    Mutate(Mutation),
}

impl Call {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Call::Stat(f) => format!("statx {f:?}"),
            Call::GetxattrSize(n) => format!("getxattr {n} size 0"),
            Call::Getxattr(n) => format!("getxattr {n}"),
            Call::GetxattrSmall(n) => format!("getxattr {n} size 1"),
            Call::ListxattrSize => "listxattr size 0".into(),
            Call::Listxattr => "listxattr".into(),
            Call::ListxattrSmall => "listxattr size 1".into(),
            Call::Readlink => "readlink".into(),
            Call::Open(m) => format!("open {m:?}"),
            Call::ReadHead => "read 64 KiB".into(),
            Call::Fsync => "fsync ro fd".into(),
            Call::Fdatasync => "fdatasync ro fd".into(),
            Call::Seek(s) => format!("lseek {s:?}"),
            Call::Access(m) => format!("access {}", access_name(*m)),
            Call::Lock(l) => format!("lock {l:?}"),
            Call::CopyOut => "copy_file_range out".into(),
            Call::CopyWithin => "copy_file_range within".into(),
            Call::ListxattrAsNobody => "listxattr as nobody".into(),
            Call::Ioctl(i) => format!("ioctl {i:?}"),
            Call::Getdents => "getdents".into(),
            Call::Mutate(m) => format!("{m:?}"),
        }
    }

    /// Whether the call means something for `kind`.
    pub fn applies(&self, kind: Kind) -> bool {
        use Kind::*;
        match self {
            Call::Readlink | Call::Stat(_) | Call::Access(_) => true,
            Call::GetxattrSize(_) | Call::Getxattr(_) | Call::GetxattrSmall(_) => true,
            Call::ListxattrSize | Call::Listxattr | Call::ListxattrSmall => true,
            Call::ListxattrAsNobody => true,
            Call::Open(OpenMode::Path | OpenMode::PathNoFollow) => true,
            Call::Open(OpenMode::Direct) => kind == Reg,
            // Block devices are never opened (see the module docs).
            Call::Open(_) => kind != Block,
            Call::ReadHead | Call::CopyOut | Call::CopyWithin | Call::Seek(_) => kind == Reg,
            Call::Fsync | Call::Fdatasync | Call::Lock(_) => matches!(kind, Reg | Dir),
            Call::Ioctl(Ioctl::Fionread) => kind == Reg,
            Call::Ioctl(_) => matches!(kind, Reg | Dir),
            Call::Getdents => kind == Dir,
            Call::Mutate(m) => match m {
                Mutation::Rmdir => kind == Dir,
                Mutation::Truncate | Mutation::Append => kind == Reg,
                _ => kind != Missing,
            },
        }
    }

    /// Makes the call on `root/rel`; `scratch` is a directory on another filesystem than
    /// both trees (for [`Call::CopyOut`]).
    pub fn run(&self, root: &Path, rel: &Path, kind: Kind, scratch: &Path) -> String {
        let path = root.join(rel);
        match self {
            Call::Stat(f) => stat_field(root, &path, *f),
            Call::GetxattrSize(n) => getxattr(&path, n, 0),
            Call::Getxattr(n) => getxattr(&path, n, 65536),
            Call::GetxattrSmall(n) => getxattr(&path, n, 1),
            Call::ListxattrSize => listxattr(&path, 0),
            Call::Listxattr => listxattr(&path, 65536),
            Call::ListxattrSmall => listxattr(&path, 1),
            Call::Readlink => match std::fs::read_link(&path) {
                Ok(t) => format!("ok {}", String::from_utf8_lossy(t.as_os_str().as_bytes())),
                Err(e) => io_errno(&e),
            },
            Call::Open(m) => open_mode(&path, *m, kind),
            Call::ReadHead => with_fd(&path, kind, |fd| read_head(fd)),
            Call::Fsync => with_fd(&path, kind, |fd| {
                // SAFETY: fd is an open descriptor owned by with_fd.
                sys(unsafe { libc::fsync(fd) })
            }),
            Call::Fdatasync => with_fd(&path, kind, |fd| {
                // SAFETY: as above.
                sys(unsafe { libc::fdatasync(fd) })
            }),
            Call::Seek(s) => with_fd(&path, kind, |fd| seek(fd, *s)),
            Call::Access(m) => {
                let c = cpath(&path);
                // SAFETY: c is a valid NUL-terminated path.
                sys(unsafe { libc::access(c.as_ptr(), *m) })
            }
            Call::Lock(l) => with_fd(&path, kind, |fd| lock(fd, *l)),
            Call::CopyOut => with_fd(&path, kind, |fd| copy_out(fd, scratch)),
            Call::CopyWithin => with_fd(&path, kind, |fd| copy_out(fd, root)),
            Call::ListxattrAsNobody => listxattr_as_nobody(&path),
            Call::Ioctl(i) => with_fd(&path, kind, |fd| ioctl(fd, *i)),
            Call::Getdents => getdents(&path),
            Call::Mutate(m) => mutate(&path, kind, *m),
        }
    }
}

/// One call on one path, on both sides.
#[derive(Clone, Debug)]
pub struct Row {
    /// The call.
    pub call: Call,
    /// The path, relative to both roots.
    pub path: PathBuf,
    /// Its kind on the reference side.
    pub kind: Kind,
    /// The reference side's outcome (the extracted layer).
    pub reference: String,
    /// The other side's outcome (the lazy layer).
    pub actual: String,
}

impl Row {
    /// Whether both sides answered alike.
    pub fn equal(&self) -> bool {
        self.reference == self.actual
    }
}

/// Runs every call that applies on every path under both roots (reference first, then
/// the other, path by path, so that mutations see the same state on both sides).
pub fn compare(
    reference: &Path,
    actual: &Path,
    paths: &[PathBuf],
    calls: &[Call],
    scratch: &Path,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in paths {
        let kind = Kind::of(&reference.join(p));
        for c in calls.iter().filter(|c| c.applies(kind)) {
            let r = c.run(reference, p, kind, scratch);
            let a = c.run(actual, p, kind, scratch);
            rows.push(Row {
                call: c.clone(),
                path: p.clone(),
                kind,
                reference: r,
                actual: a,
            });
        }
    }
    rows
}

/// Every path under `root` (relative, `""` for the root itself), directories first,
/// sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            if Kind::of(&root.join(&r)) == Kind::Dir {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// `statfs(2)` of a mount, field by field (`f_type`, block and inode counts, `f_fsid`,
/// `f_bsize`, `f_frsize`, `f_namelen`, `f_flags`).
pub fn statfs_fields(path: &Path) -> Vec<(&'static str, String)> {
    let c = cpath(path);
    // SAFETY: all-zero is a valid statfs; c is a valid path and s a valid out-pointer.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        let e = last_errno();
        return vec![("statfs", e)];
    }
    // SAFETY: fsid_t is two ints; reading it as bytes is sound.
    let fsid: [i32; 2] = unsafe { std::mem::transmute(s.f_fsid) };
    // SAFETY: all-zero is a valid statvfs; c is a valid path and v a valid out-pointer.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let flags = if unsafe { libc::statvfs(c.as_ptr(), &mut v) } == 0 {
        statfs_flags(v.f_flag)
    } else {
        last_errno()
    };
    vec![
        ("f_type", format!("{:#x}", s.f_type)),
        ("f_bsize", s.f_bsize.to_string()),
        ("f_frsize", s.f_frsize.to_string()),
        ("f_namelen", s.f_namelen.to_string()),
        ("f_flags", flags),
        ("f_blocks", s.f_blocks.to_string()),
        ("f_bfree", s.f_bfree.to_string()),
        ("f_bavail", s.f_bavail.to_string()),
        ("f_files", s.f_files.to_string()),
        ("f_ffree", s.f_ffree.to_string()),
        ("f_fsid", format!("{:?}", fsid)),
    ]
}

fn statfs_flags(f: u64) -> String {
    let names = [
        (libc::ST_RDONLY, "RDONLY"),
        (libc::ST_NOSUID, "NOSUID"),
        (libc::ST_NODEV, "NODEV"),
        (libc::ST_NOEXEC, "NOEXEC"),
        (libc::ST_SYNCHRONOUS, "SYNCHRONOUS"),
        (libc::ST_MANDLOCK, "MANDLOCK"),
        (libc::ST_NOATIME, "NOATIME"),
        (libc::ST_NODIRATIME, "NODIRATIME"),
        (libc::ST_RELATIME, "RELATIME"),
    ];
    let mut v: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| f & *bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        v.push("-");
    }
    v.join("|")
}

fn access_name(m: i32) -> &'static str {
    match m {
        libc::F_OK => "F_OK",
        libc::R_OK => "R_OK",
        libc::W_OK => "W_OK",
        libc::X_OK => "X_OK",
        _ => "?",
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn errno_name(e: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e))
}

fn last_errno() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn io_errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => format!("error {e}"),
    }
}

/// `ok` for 0, the errno's name for -1.
fn sys(r: libc::c_int) -> String {
    if r < 0 {
        last_errno()
    } else {
        "ok".into()
    }
}

fn statx(path: &Path) -> Result<libc::statx, String> {
    let c = cpath(path);
    // SAFETY: all-zero is a valid statx.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path, st a valid out-pointer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    };
    if r != 0 {
        return Err(last_errno());
    }
    Ok(st)
}

fn stat_field(root: &Path, path: &Path, f: StatField) -> String {
    let st = match statx(path) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let t = |ts: libc::statx_timestamp| format!("{}.{:09}", ts.tv_sec, ts.tv_nsec);
    match f {
        StatField::Mode => format!("{:o}", st.stx_mode),
        StatField::Nlink => st.stx_nlink.to_string(),
        StatField::Uid => st.stx_uid.to_string(),
        StatField::Gid => st.stx_gid.to_string(),
        StatField::Size => st.stx_size.to_string(),
        StatField::Blocks => st.stx_blocks.to_string(),
        StatField::Blksize => st.stx_blksize.to_string(),
        StatField::Atime => t(st.stx_atime),
        StatField::Mtime => t(st.stx_mtime),
        StatField::Ctime => t(st.stx_ctime),
        StatField::Rdev => format!("{}:{}", st.stx_rdev_major, st.stx_rdev_minor),
        StatField::DevIsRoot => match statx(root) {
            Ok(r) => (r.stx_dev_major == st.stx_dev_major && r.stx_dev_minor == st.stx_dev_minor)
                .to_string(),
            Err(e) => e,
        },
        StatField::Mask => {
            let asked = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
            let m = st.stx_mask & asked;
            if m == asked {
                "basic|btime".into()
            } else if m == libc::STATX_BASIC_STATS {
                "basic".into()
            } else {
                format!("{m:#x}")
            }
        }
        StatField::AttributesMask => format!("{:#x}", st.stx_attributes_mask),
        StatField::Attributes => format!("{:#x}", st.stx_attributes),
    }
}

fn getxattr(path: &Path, name: &str, size: usize) -> String {
    let c = cpath(path);
    let n = CString::new(name).expect("xattr name");
    let mut buf = vec![0u8; size];
    // SAFETY: valid path and name; buf has `size` writable bytes (NULL when 0).
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    };
    if r < 0 {
        return last_errno();
    }
    if size == 0 {
        format!("ok size {r}")
    } else {
        format!("ok {}", hex::encode(&buf[..r as usize]))
    }
}

fn listxattr(path: &Path, size: usize) -> String {
    let c = cpath(path);
    let mut buf = vec![0u8; size];
    // SAFETY: valid path; buf has `size` writable bytes (NULL when 0).
    let r = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    };
    if r < 0 {
        return last_errno();
    }
    if size == 0 {
        return format!("ok size {r}");
    }
    let mut names: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    format!("ok [{}]", names.join(","))
}

fn open_flags(m: OpenMode) -> libc::c_int {
    use libc::*;
    match m {
        OpenMode::ReadOnly => O_RDONLY,
        OpenMode::WriteOnly => O_WRONLY,
        OpenMode::ReadWrite => O_RDWR,
        OpenMode::Trunc => O_RDONLY | O_TRUNC,
        OpenMode::Creat => O_RDONLY | O_CREAT,
        OpenMode::CreatExcl => O_RDONLY | O_CREAT | O_EXCL,
        OpenMode::Directory => O_RDONLY | O_DIRECTORY,
        OpenMode::NoFollow => O_RDONLY | O_NOFOLLOW,
        OpenMode::Path => O_PATH,
        OpenMode::PathNoFollow => O_PATH | O_NOFOLLOW,
        OpenMode::NoAtime => O_RDONLY | O_NOATIME,
        OpenMode::Direct => O_RDONLY | O_DIRECT,
    }
}

fn raw_open(path: &Path, flags: libc::c_int, kind: Kind) -> Result<libc::c_int, String> {
    let c = cpath(path);
    let mut flags = flags | libc::O_CLOEXEC;
    if kind == Kind::Fifo {
        flags |= libc::O_NONBLOCK;
    }
    // SAFETY: valid path; the mode is used only with O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        Err(last_errno())
    } else {
        Ok(fd)
    }
}

fn close(fd: libc::c_int) {
    // SAFETY: fd was returned by open and is closed once.
    unsafe { libc::close(fd) };
}

fn open_mode(path: &Path, m: OpenMode, kind: Kind) -> String {
    match raw_open(path, open_flags(m), kind) {
        Err(e) => e,
        Ok(fd) => {
            let out = if m == OpenMode::Direct {
                direct_read(fd)
            } else {
                "ok".into()
            };
            close(fd);
            out
        }
    }
}

/// One aligned 4 KiB read through an `O_DIRECT` descriptor.
fn direct_read(fd: libc::c_int) -> String {
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
    // SAFETY: non-zero size layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return "alloc failed".into();
    }
    // SAFETY: buf has 4096 writable bytes, aligned to 4096.
    let n = unsafe { libc::pread(fd, buf.cast(), 4096, 0) };
    let out = if n < 0 {
        format!("ok open, read {}", last_errno())
    } else {
        // SAFETY: the first n bytes were written by pread.
        let data = unsafe { std::slice::from_raw_parts(buf, n as usize) };
        format!("ok read {n} {}", hex::encode(&Sha256::digest(data)[..8]))
    };
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    out
}

fn with_fd(path: &Path, kind: Kind, f: impl FnOnce(libc::c_int) -> String) -> String {
    let flags = if kind == Kind::Dir {
        libc::O_RDONLY | libc::O_DIRECTORY
    } else {
        libc::O_RDONLY
    };
    match raw_open(path, flags, kind) {
        Err(e) => format!("open {e}"),
        Ok(fd) => {
            let out = f(fd);
            close(fd);
            out
        }
    }
}

fn read_head(fd: libc::c_int) -> String {
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf has 65536 writable bytes.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return last_errno();
    }
    format!(
        "ok {n} {}",
        hex::encode(&Sha256::digest(&buf[..n as usize])[..8])
    )
}

fn seek(fd: libc::c_int, s: Seek) -> String {
    // SAFETY: all-zero is a valid stat; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(fd, &mut st) };
    let (off, whence) = match s {
        Seek::Data0 => (0, libc::SEEK_DATA),
        Seek::Hole0 => (0, libc::SEEK_HOLE),
        Seek::DataAtEnd => (st.st_size, libc::SEEK_DATA),
        Seek::End => (0, libc::SEEK_END),
    };
    // SAFETY: fd is open.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        last_errno()
    } else {
        format!("ok {r}")
    }
}

fn lock(fd: libc::c_int, l: Lock) -> String {
    let fl = |t: libc::c_short| libc::flock {
        l_type: t,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match l {
        // SAFETY: fd is open.
        Lock::FlockShared => sys(unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) }),
        // SAFETY: fd is open.
        Lock::FlockExclusive => sys(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }),
        Lock::PosixRead | Lock::PosixWrite | Lock::OfdRead => {
            let (cmd, t) = match l {
                Lock::PosixRead => (libc::F_SETLK, libc::F_RDLCK),
                Lock::PosixWrite => (libc::F_SETLK, libc::F_WRLCK),
                _ => (libc::F_OFD_SETLK, libc::F_RDLCK),
            };
            let f = fl(t as libc::c_short);
            // SAFETY: fd is open and f a valid flock.
            sys(unsafe { libc::fcntl(fd, cmd, &f) })
        }
        Lock::GetLock => {
            let mut f = fl(libc::F_WRLCK as libc::c_short);
            // SAFETY: fd is open and f a valid flock the kernel fills in.
            let r = unsafe { libc::fcntl(fd, libc::F_GETLK, &mut f) };
            if r < 0 {
                last_errno()
            } else {
                format!("ok type {}", f.l_type)
            }
        }
    }
}

fn copy_out(fd: libc::c_int, dir: &Path) -> String {
    let dest = dir.join("copy-out");
    let _ = std::fs::remove_file(&dest);
    let out = match raw_open(
        &dest,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        Kind::Reg,
    ) {
        Ok(o) => o,
        Err(e) => return format!("scratch {e}"),
    };
    // SAFETY: both descriptors are open; NULL offsets use the file positions.
    let r = unsafe {
        libc::copy_file_range(fd, std::ptr::null_mut(), out, std::ptr::null_mut(), 4096, 0)
    };
    let s = if r < 0 {
        last_errno()
    } else {
        format!("ok {r}")
    };
    close(out);
    s
}

/// What an unprivileged process lists (Debian's python3 drops to uid and gid 65534).
fn listxattr_as_nobody(path: &Path) -> String {
    const SCRIPT: &str = "import errno, os, sys\n\
os.setgroups([]); os.setgid(65534); os.setuid(65534)\n\
try:\n    n = sorted(os.listxattr(os.fsencode(sys.argv[1]), follow_symlinks=False))\n    print('ok [' + ','.join(x for x in n) + ']')\n\
except OSError as e:\n    print(errno.errorcode.get(e.errno, str(e.errno)))\n";
    match std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("python3: {e}"),
    }
}

/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`; not in the libc crate).
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;

fn ioctl(fd: libc::c_int, i: Ioctl) -> String {
    match i {
        Ioctl::Fionread => {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
            if r < 0 {
                last_errno()
            } else {
                format!("ok {n}")
            }
        }
        Ioctl::GetFlags => {
            let mut flags: libc::c_long = 0;
            // SAFETY: FS_IOC_GETFLAGS writes at most a long.
            let r = unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) };
            if r < 0 {
                last_errno()
            } else {
                format!("ok {:#x}", flags as u32)
            }
        }
        Ioctl::FsGetXattr => {
            let mut fsx = [0u8; 28];
            // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr (28 bytes).
            let r = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR, fsx.as_mut_ptr()) };
            if r < 0 {
                last_errno()
            } else {
                let xflags = u32::from_ne_bytes(fsx[0..4].try_into().expect("4 bytes"));
                format!("ok xflags {xflags:#x}")
            }
        }
    }
}

fn getdents(path: &Path) -> String {
    let fd = match raw_open(path, libc::O_RDONLY | libc::O_DIRECTORY, Kind::Dir) {
        Ok(fd) => fd,
        Err(e) => return format!("open {e}"),
    };
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 32768];
    loop {
        // SAFETY: buf has buf.len() writable bytes; fd is an open directory.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            let e = last_errno();
            close(fd);
            return e;
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let dtype = buf[off + 18];
            let name = &buf[off + 19..off + reclen];
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            entries.push(format!(
                "{}:{}",
                String::from_utf8_lossy(&name[..end]),
                dtype
            ));
            off += reclen;
        }
    }
    close(fd);
    entries.sort();
    format!("ok {}", entries.join(" "))
}

/// A new name next to `path` (inside it for directories).
fn sibling(path: &Path, kind: Kind, suffix: &str) -> PathBuf {
    if kind == Kind::Dir {
        path.join(format!("new{suffix}"))
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }
}

fn mutate(path: &Path, kind: Kind, m: Mutation) -> String {
    let c = cpath(path);
    // SAFETY (every call below): c and the other paths are valid NUL-terminated strings;
    // the pointers passed stay valid for the call.
    match m {
        Mutation::Truncate => sys(unsafe { libc::truncate(c.as_ptr(), 0) }),
        Mutation::Chmod => sys(unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), 0o700, 0) }),
        Mutation::Chown => sys(unsafe { libc::lchown(c.as_ptr(), 5, 5) }),
        Mutation::Utimes => {
            let ts = [
                libc::timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 2,
                    tv_nsec: 0,
                },
            ];
            sys(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        }
        Mutation::Mkdir => {
            let n = cpath(&sibling(path, kind, "-dir"));
            sys(unsafe { libc::mkdir(n.as_ptr(), 0o755) })
        }
        Mutation::Rmdir => sys(unsafe { libc::rmdir(c.as_ptr()) }),
        Mutation::Unlink => sys(unsafe { libc::unlink(c.as_ptr()) }),
        Mutation::Rename => {
            let n = cpath(&PathBuf::from({
                let mut s = path.as_os_str().to_owned();
                s.push(".renamed");
                s
            }));
            sys(unsafe { libc::rename(c.as_ptr(), n.as_ptr()) })
        }
        Mutation::Link => {
            let n = cpath(&PathBuf::from({
                let mut s = path.as_os_str().to_owned();
                s.push(".link");
                s
            }));
            sys(unsafe { libc::link(c.as_ptr(), n.as_ptr()) })
        }
        Mutation::Symlink => {
            let n = cpath(&sibling(path, kind, "-symlink"));
            let t = CString::new("target").expect("no NUL");
            sys(unsafe { libc::symlink(t.as_ptr(), n.as_ptr()) })
        }
        Mutation::Mknod => {
            let n = cpath(&sibling(path, kind, "-fifo"));
            sys(unsafe { libc::mknod(n.as_ptr(), libc::S_IFIFO | 0o644, 0) })
        }
        Mutation::Create => {
            let n = sibling(path, kind, "-file");
            match raw_open(&n, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, Kind::Reg) {
                Ok(fd) => {
                    close(fd);
                    "ok".into()
                }
                Err(e) => e,
            }
        }
        Mutation::Setxattr => {
            let n = CString::new("user.added").expect("no NUL");
            sys(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) })
        }
        Mutation::Removexattr => {
            let n = CString::new("user.comment").expect("no NUL");
            sys(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
        }
        Mutation::Append => match raw_open(path, libc::O_WRONLY | libc::O_APPEND, kind) {
            Ok(fd) => {
                let r = unsafe { libc::write(fd, b"+".as_ptr().cast(), 1) };
                let out = if r < 0 { last_errno() } else { "ok".into() };
                close(fd);
                out
            }
            Err(e) => e,
        },
    }
}

/// `path` as a display string (`/` for the root, lossy for non-UTF-8 names).
pub fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(OsStr::as_bytes(path.as_os_str())).into_owned()
    }
}
