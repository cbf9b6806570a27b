//! The on-disk layout under the snapshotter root:
//!
//! ```text
//! <root>/metadata.db          the metadata store
//! <root>/snapshots/<id>/fs    the snapshot's files (overlay upperdir, or a remote mount)
//! <root>/snapshots/<id>/work  overlay workdir (active snapshots only)
//! <root>/snapshots/new-<id>   a snapshot being created (renamed to <id> on success)
//! ```
//!
//! Paths are kept short on purpose: 128 lowerdirs of `<root>/snapshots/<id>/fs` must fit
//! in one mount option page.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of directories of snapshots being created.
const NEW_PREFIX: &str = "new-";

/// Paths of one snapshotter root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// Creates `<root>` and `<root>/snapshots`, root-only (0700), if missing.
    pub fn create_dirs(&self) -> Result<()> {
        for dir in [self.root.as_path(), &self.snapshots_dir()] {
            match fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
            {
                Ok(()) => {}
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
        }
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/metadata.db`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("metadata.db")
    }

    /// `<root>/snapshots`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `<root>/snapshots/<id>`.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// `<root>/snapshots/<id>/fs`.
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// `<root>/snapshots/<id>/work`.
    pub fn work_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// `<root>/snapshots/new-<id>`: where snapshot `id` is assembled before the rename.
    pub fn new_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(format!("{NEW_PREFIX}{id}"))
    }

    /// The id a directory name under `snapshots/` stands for, if it is a snapshot's.
    pub fn parse_id(name: &str) -> Option<u64> {
        if name.starts_with('+') || name.starts_with('0') && name.len() > 1 {
            return None;
        }
        name.parse().ok()
    }

    /// Assembles snapshot `id` in its temp directory: `fs` (0755, owned like `owner_of`
    /// if given, as containerd copies the parent's root ownership) and, for writable
    /// snapshots, `work` (0711). Returns the temp directory.
    pub fn assemble(&self, id: u64, writable: bool, owner_of: Option<&Path>) -> Result<PathBuf> {
        let tmp = self.new_dir(id);
        // A leftover from a crash (the id was never committed): start over.
        remove_tree(&tmp)?;
        let mk = |p: &Path, mode: u32| -> Result<()> {
            fs::DirBuilder::new()
                .mode(mode)
                .create(p)
                .map_err(|e| Error::io("create snapshot directory", p, e))?;
            // The umask may have masked bits off; containerd's suite checks 0755.
            fs::set_permissions(p, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("chmod snapshot directory", p, e))
        };
        mk(&tmp, 0o700)?;
        let fs_dir = tmp.join("fs");
        mk(&fs_dir, 0o755)?;
        if writable {
            mk(&tmp.join("work"), 0o711)?;
        }
        if let Some(owner) = owner_of {
            use std::os::unix::fs::MetadataExt;
            let md = fs::metadata(owner).map_err(|e| Error::io("stat parent", owner, e))?;
            std::os::unix::fs::lchown(&fs_dir, Some(md.uid()), Some(md.gid()))
                .map_err(|e| Error::io("chown snapshot directory", &fs_dir, e))?;
        }
        Ok(tmp)
    }

    /// Moves an assembled snapshot into place as `snapshots/<id>`, replacing a stray
    /// directory of that id (one whose record was never committed).
    pub fn install(&self, tmp: &Path, id: u64) -> Result<PathBuf> {
        let dst = self.snapshot_dir(id);
        remove_tree(&dst)?;
        fs::rename(tmp, &dst).map_err(|e| Error::io("rename snapshot directory into", &dst, e))?;
        Ok(dst)
    }
}

/// Removes a snapshot directory tree, first detaching anything still mounted on its `fs`
/// (a remote layer whose unmount failed, or a leftover of a crash), so removal never
/// walks into a mounted file system. Missing directories are fine.
pub fn remove_tree(dir: &Path) -> Result<()> {
    let fs_dir = dir.join("fs");
    linuxfs::mount::detach_all(&fs_dir).map_err(|e| Error::io("detach mounts at", &fs_dir, e))?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove snapshot directory", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_id_accepts_only_canonical_numbers() {
        assert_eq!(Layout::parse_id("17"), Some(17));
        assert_eq!(Layout::parse_id("0"), Some(0));
        for bad in ["new-3", "017", "+3", "", "x", "18446744073709551616"] {
            assert_eq!(Layout::parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn assemble_and_install_replace_strays() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().join("root"));
        layout.create_dirs().unwrap();
        // A stray final dir and a stray temp dir of the same id, as a crash leaves them.
        fs::create_dir_all(layout.fs_dir(3).join("junk")).unwrap();
        fs::create_dir_all(layout.new_dir(3).join("fs/junk")).unwrap();
        let t = layout.assemble(3, true, None).unwrap();
        let dst = layout.install(&t, 3).unwrap();
        assert_eq!(dst, layout.snapshot_dir(3));
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(layout.fs_dir(3)), 0o755);
        assert_eq!(mode(layout.work_dir(3)), 0o711);
        assert_eq!(fs::read_dir(layout.fs_dir(3)).unwrap().count(), 0);
        assert!(!layout.new_dir(3).exists());
        let view = layout.assemble(4, false, None).unwrap();
        assert!(!view.join("work").exists());
    }
}
