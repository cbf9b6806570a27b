//! Disk usage of a directory tree the way containerd's `fs.DiskUsage` counts it: every
//! inode once (hard links are not counted twice), size = allocated blocks × 512, the root
//! included. Symlinks are not followed; entries vanishing during the walk are skipped.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::Usage;

/// Walks `root` and sums its usage.
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut usage = Usage::default();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut is_root = true;
    while let Some(path) = stack.pop() {
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !is_root => continue,
            Err(e) => return Err(e),
        };
        is_root = false;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(md.blocks())
                .unwrap_or(i64::MAX)
                .saturating_mul(512);
        }
        if md.is_dir() {
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/a"), vec![7u8; 64 * 1024]).unwrap();
        let before = disk_usage(root).unwrap();
        assert_eq!(before.inodes, 3, "root, d, a");
        fs::hard_link(root.join("d/a"), root.join("b")).unwrap();
        let after = disk_usage(root).unwrap();
        assert_eq!(after, before, "a hard link adds neither inode nor bytes");
        let a = fs::metadata(root.join("d/a")).unwrap();
        assert!(a.blocks() * 512 >= 64 * 1024);
        assert!(after.size >= (a.blocks() * 512) as i64);
        std::os::unix::fs::symlink("/etc/passwd", root.join("s")).unwrap();
        assert_eq!(
            disk_usage(root).unwrap().inodes,
            4,
            "a symlink is one inode, not followed"
        );
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(disk_usage(Path::new("/nonexistent/starling")).is_err());
    }
}
