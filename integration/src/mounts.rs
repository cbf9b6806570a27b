//! Mount helpers: read `/proc/self/mountinfo`, lazily unmount everything under a directory
//! (deepest first), mount overlayfs/bind mounts, and a guard that unmounts on drop.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use linuxfs::mountinfo::unescape;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, IoContext, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,relatime`...).
    pub mount_options: String,
    /// File-system type (`overlay`, `fuse.starling`...).
    pub fs_type: String,
    /// Mount source.
    pub source: String,
    /// Super-block options (e.g. overlay's `lowerdir=...`).
    pub super_options: String,
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let bad = || Error::invalid("mountinfo line", line.to_string());
        let (pre, post) = line.split_once(" - ").ok_or_else(bad)?;
        let f: Vec<&str> = pre.split(' ').collect();
        let p: Vec<&str> = post.splitn(3, ' ').collect();
        if f.len() < 6 || p.len() < 2 {
            return Err(bad());
        }
        v.push(MountInfo {
            id: f[0].parse().map_err(|_| bad())?,
            parent: f[1].parse().map_err(|_| bad())?,
            mount_point: unescape(f[4]),
            mount_options: f[5].to_string(),
            fs_type: p[0].to_string(),
            source: unescape(p[1]).to_string_lossy().into_owned(),
            super_options: p.get(2).map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok(v)
}

/// The calling process's mount table.
pub fn mounts() -> Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "read /proc/self/mountinfo".into())?;
    parse_mountinfo(&text)
}

fn is_under(p: &Path, dir: &Path) -> bool {
    p == dir || p.starts_with(dir)
}

/// Mounts at or below `dir`, deepest (last mounted) first.
pub fn mounts_under(dir: &Path) -> Result<Vec<MountInfo>> {
    let mut v: Vec<MountInfo> = mounts()?
        .into_iter()
        .filter(|m| is_under(&m.mount_point, dir))
        .collect();
    // mountinfo lists mounts in mount order; unmounting in reverse order takes children and
    // stacked mounts first. Sort by depth as a tie-breaker for mounts made out of order.
    v.reverse();
    v.sort_by_key(|m| {
        std::cmp::Reverse(
            m.mount_point
                .as_os_str()
                .as_bytes()
                .iter()
                .filter(|c| **c == b'/')
                .count(),
        )
    });
    Ok(v)
}

/// Lazily unmounts (MNT_DETACH) every mount at or below `dir`, deepest first; returns how
/// many were unmounted. Mounts that vanish meanwhile are not errors.
pub fn unmount_under(dir: &Path) -> Result<usize> {
    let mut n = 0;
    // Repeat: a detached mount may uncover another one stacked on the same point.
    for _ in 0..8 {
        let list = mounts_under(dir)?;
        if list.is_empty() {
            break;
        }
        for m in list {
            match nix::mount::umount2(&m.mount_point, MntFlags::MNT_DETACH) {
                Ok(()) => n += 1,
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(Error::sys(
                        format!("umount -l {}", m.mount_point.display()),
                        e,
                    ))
                }
            }
        }
    }
    Ok(n)
}

/// True when `path` is a mount point in this mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let p = std::fs::canonicalize(path).ctx(|| format!("canonicalize {}", path.display()))?;
    Ok(mounts()?.iter().any(|m| m.mount_point == p))
}

/// A mount that is lazily unmounted when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    active: bool,
}

impl MountGuard {
    /// Takes ownership of an existing mount at `target`.
    pub fn adopt(target: impl Into<PathBuf>) -> Self {
        MountGuard {
            target: target.into(),
            active: true,
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now (lazily), reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        self.active = false;
        nix::mount::umount2(&self.target, MntFlags::MNT_DETACH)
            .map_err(|e| Error::sys(format!("umount -l {}", self.target.display()), e))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.active {
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts `fs_type` from `source` at `target` with `flags` and `data` (mount(2)).
pub fn mount(
    source: &str,
    target: &Path,
    fs_type: &str,
    flags: MsFlags,
    data: &str,
) -> Result<MountGuard> {
    nix::mount::mount(Some(source), target, Some(fs_type), flags, Some(data)).map_err(|e| {
        Error::sys(
            format!("mount -t {fs_type} {source} {} -o {data}", target.display()),
            e,
        )
    })?;
    Ok(MountGuard::adopt(target))
}

/// Read-only bind mount of `source` at `target`.
pub fn bind_ro(source: &Path, target: &Path) -> Result<MountGuard> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::sys(format!("bind {} {}", source.display(), target.display()), e))?;
    let guard = MountGuard::adopt(target);
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| Error::sys(format!("remount ro {}", target.display()), e))?;
    Ok(guard)
}

/// A parsed `mount -t TYPE SOURCE TARGET -o OPTIONS` line as printed by
/// `ctr snapshots mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// File-system type (`overlay`, `bind`).
    pub fs_type: String,
    /// Source.
    pub source: String,
    /// Options, comma separated as given (`ro`, `rbind` are turned into flags by [`MountSpec::mount`]).
    pub options: Vec<String>,
}

impl MountSpec {
    /// Parses `ctr snapshots mounts` output (one `mount ...` command per line).
    pub fn parse_ctr(text: &str) -> Result<Vec<MountSpec>> {
        let mut v = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let bad = || Error::invalid("ctr mount line", line.to_string());
            if words.first() != Some(&"mount") {
                return Err(bad());
            }
            let mut fs_type = String::new();
            let mut options = Vec::new();
            let mut positional = Vec::new();
            let mut i = 1;
            while i < words.len() {
                match words[i] {
                    "-t" => {
                        fs_type = words.get(i + 1).ok_or_else(bad)?.to_string();
                        i += 2;
                    }
                    "-o" => {
                        options = words
                            .get(i + 1)
                            .ok_or_else(bad)?
                            .split(',')
                            .map(String::from)
                            .collect();
                        i += 2;
                    }
                    w => {
                        positional.push(w);
                        i += 1;
                    }
                }
            }
            let source = positional.first().ok_or_else(bad)?.to_string();
            v.push(MountSpec {
                fs_type,
                source,
                options,
            });
        }
        Ok(v)
    }

    /// Mounts this spec at `target`.
    pub fn mount(&self, target: &Path) -> Result<MountGuard> {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        let mut bind = self.fs_type == "bind";
        for o in &self.options {
            match o.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "bind" => bind = true,
                "rbind" => {
                    bind = true;
                    flags |= MsFlags::MS_REC;
                }
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other.to_string()),
            }
        }
        if bind {
            let src = Path::new(&self.source);
            if flags.contains(MsFlags::MS_RDONLY) {
                return bind_ro(src, target);
            }
            nix::mount::mount(
                Some(src),
                target,
                None::<&str>,
                MsFlags::MS_BIND | flags,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind {} {}", src.display(), target.display()), e))?;
            return Ok(MountGuard::adopt(target));
        }
        mount(&self.source, target, &self.fs_type, flags, &data.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:50 / /mnt/with\\040space/ov ro shared:3 - overlay overlay ro,lowerdir=/a:/b\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[1].parent, 36);
        assert_eq!(m[1].super_options, "ro,lowerdir=/a:/b");
        assert!(parse_mountinfo("garbage").is_err());
    }

    #[test]
    fn parses_ctr_mount_lines() {
        let t = "mount -t overlay overlay /tmp/x -o index=off,lowerdir=/a:/b\nmount -t bind /s /tmp/y -o ro,rbind\n";
        let v = MountSpec::parse_ctr(t).unwrap();
        assert_eq!(v[0].fs_type, "overlay");
        assert_eq!(v[0].options, vec!["index=off", "lowerdir=/a:/b"]);
        assert_eq!(v[1].source, "/s");
        assert!(MountSpec::parse_ctr("umount x").is_err());
    }

    #[test]
    fn is_under_is_component_wise() {
        assert!(is_under(Path::new("/tmp/a/b"), Path::new("/tmp/a")));
        assert!(!is_under(Path::new("/tmp/ab"), Path::new("/tmp/a")));
    }
}
