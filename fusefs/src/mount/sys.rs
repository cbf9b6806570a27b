//! The system calls of mounting, in one place: unmounting (lazily when busy), finding out
//! whether a path is a mount point (`/proc/self/mountinfo`), and aborting a FUSE connection
//! through `/sys/fs/fuse/connections`.

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

/// Mount points of this mount namespace with their filesystem types, in mount order.
pub fn mount_points() -> io::Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || sep + 1 >= fields.len() {
            continue;
        }
        out.push((unescape(fields[4]), fields[sep + 1].to_string()));
    }
    Ok(out)
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
    fn root_is_a_mount_point() {
        let points = mount_points().unwrap();
        assert!(points.iter().any(|(p, _)| p == Path::new("/")));
        assert!(mounted_type(Path::new("/")).unwrap().is_some());
    }
}
