//! The mount syscalls the snapshotter makes itself: the overlay feature probe, detaching
//! leftovers before a snapshot directory is deleted, and mounting returned [`Mount`]s
//! (for tests and tools; containerd mounts them itself in production).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::mounts::Mount;
use crate::error::{Error, Result};

/// Upper bound on mounts stacked on one path that [`detach_all`] will peel off.
const MAX_STACKED: usize = 64;

/// Decodes the octal escapes (`\040` for space, ...) of a `/proc/self/mountinfo` field.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text.
fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
}

/// Whether something is mounted on `path` (false if it does not exist).
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let canon = match fs::canonicalize(path) {
        Ok(p) => p,
        // A dead FUSE mount makes canonicalize fail with ENOTCONN: it is mounted.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => path.to_path_buf(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let found = mount_points(&info).any(|m| Path::new(&m) == canon);
    Ok(found)
}

/// Lazily detaches every mount stacked on `path` (no-op if nothing is mounted).
pub fn detach_all(path: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED {
        if !is_mountpoint(path).map_err(|e| Error::io("read mounts at", path, e))? {
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "detaching a leftover mount");
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| Error::io("detach mount", path, io::Error::from(e)))?;
    }
    Err(Error::io(
        "detach mounts",
        path,
        io::Error::other(format!("more than {MAX_STACKED} mounts stacked")),
    ))
}

/// Unmounts `target` (lazily: busy mounts go away when their last user does).
pub fn unmount(target: &Path) -> io::Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Mounts `mounts` on `target` in order, like containerd's `mount.All` for the `bind`
/// and `overlay` types the snapshotter returns. Needs CAP_SYS_ADMIN.
pub fn mount_all(mounts: &[Mount], target: &Path) -> io::Result<()> {
    for m in mounts {
        let ro = m.options.iter().any(|o| o == "ro");
        match m.fstype.as_str() {
            "bind" => {
                let mut flags = MsFlags::MS_BIND;
                if m.options.iter().any(|o| o == "rbind") {
                    flags |= MsFlags::MS_REC;
                }
                mount(
                    Some(m.source.as_str()),
                    target,
                    None::<&str>,
                    flags,
                    None::<&str>,
                )
                .map_err(io::Error::from)?;
                if ro {
                    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                        .map_err(io::Error::from)?;
                }
            }
            "overlay" => {
                let data: Vec<&str> = m
                    .options
                    .iter()
                    .map(String::as_str)
                    .filter(|o| *o != "ro" && *o != "rw")
                    .collect();
                let flags = if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                mount(
                    Some("overlay"),
                    target,
                    Some("overlay"),
                    flags,
                    Some(data.join(",").as_str()),
                )
                .map_err(io::Error::from)?;
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("mount type {other:?} is not supported here"),
                ))
            }
        }
    }
    Ok(())
}

/// A temporary mount that is detached when dropped (tests and probes).
pub struct MountGuard(PathBuf);

impl MountGuard {
    /// Mounts `mounts` on `target` and returns the guard.
    pub fn new(mounts: &[Mount], target: &Path) -> io::Result<Self> {
        mount_all(mounts, target)?;
        Ok(MountGuard(target.to_path_buf()))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while is_mountpoint(&self.0).unwrap_or(false) {
            if unmount(&self.0).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        let info =
            "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /plain rw - ext3 /dev/root rw\n";
        let points: Vec<String> = mount_points(info).collect();
        assert_eq!(points, ["/mnt with space", "/plain"]);
        assert_eq!(unescape_mountinfo("a\\134b"), "a\\b");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn missing_path_is_not_a_mountpoint() {
        assert!(!is_mountpoint(Path::new("/nonexistent/starling/x")).unwrap());
        assert!(is_mountpoint(Path::new("/proc")).unwrap());
        detach_all(Path::new("/nonexistent/starling/x")).unwrap();
    }
}
