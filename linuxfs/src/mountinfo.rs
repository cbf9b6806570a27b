//! The system calls of mounting, in one place: unmounting (lazily when busy), finding out
//! whether a path is a mount point and of what (`/proc/self/mountinfo`, which never asks a
//! FUSE server anything), aborting a FUSE connection through `/sys/fs/fuse/connections`,
//! and asking the kernel to resend the requests of a connection (`FUSE_NOTIFY_RESEND`).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted.
    Done,
    /// The mount was busy; it was detached and goes away with its last user.
    Detached,
    /// Nothing was mounted there.
    NotMounted,
}

/// Unmounts `path`; a busy mount is detached (`MNT_DETACH`).
pub fn unmount(path: &Path) -> io::Result<Unmounted> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Done),
        Err(nix::errno::Errno::EINVAL) => Ok(Unmounted::NotMounted),
        Err(nix::errno::Errno::ENOENT) => Ok(Unmounted::NotMounted),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
            Ok(Unmounted::Detached)
        }
        Err(e) => Err(e.into()),
    }
}

/// Undoes the octal escapes of mountinfo fields (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where it is mounted.
    pub path: PathBuf,
    /// The filesystem type (`fuse.starling` for a layer).
    pub fstype: String,
    /// The device number (`st_dev` of files on it).
    pub dev: u64,
}

fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || sep + 1 >= fields.len() {
            continue;
        }
        let dev = fields[2]
            .split_once(':')
            .and_then(|(ma, mi)| Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?)))
            .unwrap_or(0);
        out.push(MountInfo {
            path: unescape(fields[4]),
            fstype: fields[sep + 1].to_string(),
            dev,
        });
    }
    out
}

/// Mounts of this mount namespace, in mount order.
pub fn mounts() -> io::Result<Vec<MountInfo>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The topmost mount at `path`, if any (without touching the mount itself).
pub fn mount_at(path: &Path) -> io::Result<Option<MountInfo>> {
    let path = std::path::absolute(path)?;
    Ok(mounts()?.into_iter().rev().find(|m| m.path == path))
}

/// Mount points of this mount namespace with their filesystem types, in mount order.
pub fn mount_points() -> io::Result<Vec<(PathBuf, String)>> {
    Ok(mounts()?.into_iter().map(|m| (m.path, m.fstype)).collect())
}

/// The filesystem type mounted at `path` (the topmost mount), if any.
pub fn mounted_type(path: &Path) -> io::Result<Option<String>> {
    let path = std::path::absolute(path)?;
    Ok(mount_points()?
        .into_iter()
        .rev()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| t))
}

/// The device number of the filesystem at `path` (`None` if the mount's connection is
/// gone: ENOTCONN).
pub fn device_of(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.dev())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Aborts the FUSE connection of the filesystem with device number `dev`: its pending
/// and future requests fail with ENOTCONN, and its server's session ends.
pub fn abort_connection(dev: u64) -> io::Result<()> {
    let minor = libc::minor(dev);
    let p = format!("/sys/fs/fuse/connections/{minor}/abort");
    std::fs::write(p, b"1")
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9+): the kernel puts every request that a server read
/// from the connection but did not answer back into the queue, to be read again.
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Asks the kernel to resend the requests of the FUSE connection of `fd` that were read
/// and never answered (by a server that died). EINVAL: the kernel cannot.
pub fn resend_unanswered(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let n = nix::unistd::write(fd, &msg)?;
    if n != msg.len() {
        return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c"), PathBuf::from("/a b\tc"));
        assert_eq!(unescape(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape(r"/trailing\04"), PathBuf::from(r"/trailing\04"));
    }

    #[test]
    fn mountinfo_lines_give_path_type_and_device() {
        let text = "36 35 0:52 / /r/snapshots/1/fs ro,nosuid - fuse.starling starling:ab rw\n\
                    bad line\n";
        let m = parse_mountinfo(text);
        assert_eq!(
            m,
            vec![MountInfo {
                path: PathBuf::from("/r/snapshots/1/fs"),
                fstype: "fuse.starling".into(),
                dev: libc::makedev(0, 52),
            }]
        );
    }

    #[test]
    fn root_is_a_mount_point() {
        let points = mount_points().unwrap();
        assert!(points.iter().any(|(p, _)| p == Path::new("/")));
        assert!(mounted_type(Path::new("/")).unwrap().is_some());
    }
}
