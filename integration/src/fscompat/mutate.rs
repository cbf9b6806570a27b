//! The changes of [`super::Call::Mutate`]: each tries one change on (or next to) a path
//! and returns `ok` or the errno's name.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use super::args::{Kind, Mutation};
use super::probe::{close, cpath, last_errno, raw_open, sys};

/// A new name next to `path` (inside it for directories).
fn sibling(path: &Path, kind: Kind, suffix: &str) -> PathBuf {
    if kind == Kind::Dir {
        path.join(format!("new{suffix}"))
    } else {
        suffixed(path, suffix)
    }
}

/// `path` with `suffix` appended to its last component.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs a libc call taking one path.
fn on_path(path: &Path, f: impl FnOnce(&CStr) -> libc::c_int) -> String {
    let c = cpath(path);
    sys(f(&c))
}

/// Runs a libc call taking two paths.
fn on_paths(a: &Path, b: &Path, f: impl FnOnce(&CStr, &CStr) -> libc::c_int) -> String {
    let (a, b) = (cpath(a), cpath(b));
    sys(f(&a, &b))
}

pub(super) fn mutate(path: &Path, kind: Kind, m: Mutation) -> String {
    match m {
        Mutation::Truncate => on_path(path, |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::truncate(c.as_ptr(), 0) }
        }),
        Mutation::Chmod => on_path(path, |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), 0o700, 0) }
        }),
        Mutation::Chown => on_path(path, |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::lchown(c.as_ptr(), 5, 5) }
        }),
        Mutation::Utimes => on_path(path, |c| {
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
            // SAFETY: c is a valid path and ts two valid timespecs.
            unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            }
        }),
        Mutation::Mkdir => on_path(&sibling(path, kind, "-dir"), |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::mkdir(c.as_ptr(), 0o755) }
        }),
        Mutation::Rmdir => on_path(path, |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::rmdir(c.as_ptr()) }
        }),
        Mutation::Unlink => on_path(path, |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::unlink(c.as_ptr()) }
        }),
        Mutation::Rename => on_paths(path, &suffixed(path, ".renamed"), |a, b| {
            // SAFETY: a and b are valid NUL-terminated paths.
            unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }
        }),
        Mutation::Link => on_paths(path, &suffixed(path, ".link"), |a, b| {
            // SAFETY: a and b are valid NUL-terminated paths.
            unsafe { libc::link(a.as_ptr(), b.as_ptr()) }
        }),
        Mutation::Symlink => {
            on_paths(
                Path::new("target"),
                &sibling(path, kind, "-symlink"),
                |t, n| {
                    // SAFETY: t and n are valid NUL-terminated strings.
                    unsafe { libc::symlink(t.as_ptr(), n.as_ptr()) }
                },
            )
        }
        Mutation::Mknod => on_path(&sibling(path, kind, "-fifo"), |c| {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFIFO | 0o644, 0) }
        }),
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
        Mutation::Setxattr => on_path(path, |c| {
            let n = CString::new("user.added").expect("no NUL");
            // SAFETY: valid path and name; the value is 1 readable byte.
            unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) }
        }),
        Mutation::Removexattr => on_path(path, |c| {
            let n = CString::new("user.comment").expect("no NUL");
            // SAFETY: valid path and name.
            unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }
        }),
        Mutation::Append => match raw_open(path, libc::O_WRONLY | libc::O_APPEND, kind) {
            Ok(fd) => {
                // SAFETY: fd is open for writing; the buffer is 1 readable byte.
                let r = unsafe { libc::write(fd, b"+".as_ptr().cast(), 1) };
                let out = if r < 0 { last_errno() } else { "ok".into() };
                close(fd);
                out
            }
            Err(e) => e,
        },
    }
}
