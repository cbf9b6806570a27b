//! `/proc/self/mountinfo`: the mounts of this mount namespace, read without touching the
//! mounts themselves (a stat of a dead FUSE mount hangs or fails; mountinfo never asks a
//! FUSE server anything). The one parser of its escaped fields in the workspace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Undoes the octal escapes of mountinfo fields (`\040` for a space, ...).
pub fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
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

/// Parses mountinfo text (lines that are not mountinfo lines are passed over).
pub fn parse(text: &str) -> Vec<MountInfo> {
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
    Ok(parse(&fs::read_to_string("/proc/self/mountinfo")?))
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

/// Whether something is mounted on `path` (false if it does not exist). A dead FUSE mount
/// (ENOTCONN) counts as mounted.
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let canon = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => std::path::absolute(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(mounts()?.iter().any(|m| m.path == canon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c"), PathBuf::from("/a b\tc"));
        assert_eq!(unescape(r"a\134b"), PathBuf::from("a\\b"));
        assert_eq!(unescape(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape(r"/trailing\04"), PathBuf::from(r"/trailing\04"));
        assert_eq!(unescape(r"/big\777"), PathBuf::from(r"/big\777"));
    }

    #[test]
    fn mountinfo_lines_give_path_type_and_device() {
        let text = "36 35 0:52 / /r/snapshots/1/fs ro,nosuid - fuse.starling starling:ab rw\n\
                    bad line\n";
        let m = parse(text);
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
    fn missing_path_is_not_a_mountpoint() {
        assert!(!is_mountpoint(Path::new("/nonexistent/starling/x")).unwrap());
        assert!(is_mountpoint(Path::new("/proc")).unwrap());
    }

    #[test]
    fn root_is_a_mount_point() {
        let points = mount_points().unwrap();
        assert!(points.iter().any(|(p, _)| p == Path::new("/")));
        assert!(mounted_type(Path::new("/")).unwrap().is_some());
    }
}
