//! Mounting and unmounting: a [`Mount`] in containerd's terms (`type`, `source`,
//! `options`) and [`mount_all`] for the `bind` and `overlay` types (the snapshotter's
//! overlay probe, tests and tools; containerd mounts them itself in production), a
//! [`MountGuard`] that detaches on drop, [`unmount`] (lazily when busy), [`detach`] and
//! [`detach_all`] (leftovers before a directory is deleted).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::mountinfo::is_mountpoint;

/// One mount, in containerd's `Mount` terms (`type`, `source`, `options`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// File system type: `bind` or `overlay`.
    pub fstype: String,
    /// Source: a directory for binds, `overlay` for overlays.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Upper bound on mounts stacked on one path that [`detach_all`] will peel off.
const MAX_STACKED: usize = 64;

/// Lazily detaches every mount stacked on `path` (no-op if nothing is mounted).
pub fn detach_all(path: &Path) -> io::Result<()> {
    for _ in 0..MAX_STACKED {
        if !is_mountpoint(path)? {
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "detaching a leftover mount");
        detach(path)?;
    }
    Err(io::Error::other(format!(
        "more than {MAX_STACKED} mounts stacked"
    )))
}

/// Detaches the mount on `target` (`MNT_DETACH`: a busy mount goes away when its last
/// user does).
pub fn detach(target: &Path) -> io::Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

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
            if detach(&self.0).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detaching_nothing_is_fine() {
        detach_all(Path::new("/nonexistent/starling/x")).unwrap();
        assert_eq!(
            unmount(Path::new("/nonexistent/starling/x")).unwrap(),
            Unmounted::NotMounted
        );
    }
}
