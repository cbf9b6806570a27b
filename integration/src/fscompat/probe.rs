//! The read-only probes of [`super::Call`] and the syscall plumbing they share: each
//! returns its outcome as one string (`ok ...` with the value, or the errno's name).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::args::{Ioctl, Kind, Lock, OpenMode, Seek, StatField};

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
pub(super) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub(super) fn errno_name(e: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e))
}

pub(super) fn last_errno() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

pub(super) fn io_errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => format!("error {e}"),
    }
}

/// `ok` for 0, the errno's name for -1.
pub(super) fn sys(r: libc::c_int) -> String {
    if r < 0 {
        last_errno()
    } else {
        "ok".into()
    }
}

pub(super) fn statx(path: &Path) -> Result<libc::statx, String> {
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

pub(super) fn stat_field(root: &Path, path: &Path, f: StatField) -> String {
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

pub(super) fn getxattr(path: &Path, name: &str, size: usize) -> String {
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

pub(super) fn listxattr(path: &Path, size: usize) -> String {
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

pub(super) fn open_flags(m: OpenMode) -> libc::c_int {
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

pub(super) fn raw_open(path: &Path, flags: libc::c_int, kind: Kind) -> Result<libc::c_int, String> {
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

pub(super) fn close(fd: libc::c_int) {
    // SAFETY: fd was returned by open and is closed once.
    unsafe { libc::close(fd) };
}

pub(super) fn open_mode(path: &Path, m: OpenMode, kind: Kind) -> String {
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
pub(super) fn direct_read(fd: libc::c_int) -> String {
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

pub(super) fn with_fd(path: &Path, kind: Kind, f: impl FnOnce(libc::c_int) -> String) -> String {
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

pub(super) fn read_head(fd: libc::c_int) -> String {
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

pub(super) fn seek(fd: libc::c_int, s: Seek) -> String {
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

pub(super) fn lock(fd: libc::c_int, l: Lock) -> String {
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

pub(super) fn copy_out(fd: libc::c_int, dir: &Path) -> String {
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
pub(super) fn listxattr_as_nobody(path: &Path) -> String {
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

pub(super) fn ioctl(fd: libc::c_int, i: Ioctl) -> String {
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

pub(super) fn getdents(path: &Path) -> String {
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
