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
//! device, e.g. a loop device). The arguments of calls live in [`args`], the probes in
//! [`probe`] (statfs too), the changes in [`mutate`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod args;
mod mutate;
mod probe;

pub use args::{Ioctl, Kind, Lock, Mutation, OpenMode, Seek, StatField};

use mutate::mutate;
pub use probe::statfs_fields;
use probe::{
    copy_out, cpath, getdents, getxattr, io_errno, ioctl, listxattr, listxattr_as_nobody, lock,
    open_mode, read_head, seek, stat_field, sys, with_fd,
};

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
            Call::ReadHead => with_fd(&path, kind, read_head),
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
fn access_name(m: i32) -> &'static str {
    match m {
        libc::F_OK => "F_OK",
        libc::R_OK => "R_OK",
        libc::W_OK => "W_OK",
        libc::X_OK => "X_OK",
        _ => "?",
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
