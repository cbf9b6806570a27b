//! Files of the disk cache: layout, atomic writes, reads (pread or mmap) and the start-up scan.
//!
//! Layout under the cache dir: `sha256/<2 hex>/<64 hex>` (verifiable chunks),
//! `unverified/<layer hex>/<offset>-<size>` (legacy chunks), `tmp/` (writes in progress).
//! Files hold exactly the chunk's uncompressed bytes, no header, so a file can back a FUSE
//! passthrough open directly.
//!
//! Several processes may use one cache directory at once (the daemon, `starling mount`,
//! `starling prefetch`, `starling cache import`): each writes its temp files in its own
//! [`TempArea`] (`tmp/<name>/`, held by an exclusive `flock` on `tmp/<name>.lock` for the
//! life of the process), and a process opening the cache removes only the areas whose lock
//! it can take (their process is gone), never files another live process is writing.
//! Entries are renamed into place whole, so writers of the same entry (same key, same
//! bytes) cannot tear each other's files.
//!
//! fsync policy: verifiable entries are written to a temp file and renamed into place without
//! fsync; a file torn by a crash fails its digest check on first use and is removed and
//! refetched. Unverifiable entries cannot be checked, so their file is fsynced before the
//! rename and the directory after it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

use super::{CacheError, ChunkKey};

/// How entry files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `pread` into a heap buffer.
    Pread,
    /// `mmap` the file and hand out the mapping (no copy).
    Mmap,
    /// `pread` for entries below [`MMAP_THRESHOLD`], `mmap` for larger ones: the faster of
    /// the two at each size in `benches/cache_read.rs`.
    Auto,
}

/// Entry size from which [`ReadMode::Auto`] maps files instead of reading them.
pub const MMAP_THRESHOLD: u64 = 256 << 10;

pub(crate) const TMP_DIR: &str = "tmp";
const LOCK_SUFFIX: &str = ".lock";

/// This process's directory for temp files under `tmp/`, locked while it lives.
pub(crate) struct TempArea {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl TempArea {
    /// Creates a fresh area: the lock file is created and locked before the directory, so
    /// a directory without a lock file is never in use.
    pub(crate) fn create(cache_dir: &Path) -> Result<Self, CacheError> {
        let tmp = cache_dir.join(TMP_DIR);
        let name = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
        // Created read-only: an fd open for writing would keep the cache's file system from
        // being remounted read-only (a fault the daemon must survive), and flock needs none.
        let fd = nix::fcntl::open(
            &lock_path,
            OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| CacheError::io("create", &lock_path, io::Error::from(e)))?;
        let file = File::from(fd);
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| CacheError::io("lock", &lock_path, io::Error::from(e)))?;
        let dir = tmp.join(name);
        fs::create_dir(&dir).map_err(|e| CacheError::io("create directory", &dir, e))?;
        Ok(TempArea { dir, _lock: lock })
    }

    /// The directory temp files go to.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempArea {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let mut lock = self.dir.clone().into_os_string();
        lock.push(LOCK_SUFFIX);
        let _ = fs::remove_file(lock);
    }
}

/// Removes what dead processes left in `tmp/`: areas whose lock nobody holds, directories
/// without a lock file, loose files (older versions wrote temp files straight into `tmp/`).
fn clean_tmp(tmp: &Path) -> Result<(), CacheError> {
    for e in fs::read_dir(tmp).map_err(|e| CacheError::io("list", tmp, e))? {
        let e = e.map_err(|e| CacheError::io("list", tmp, e))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if let Some(area) = name.strip_suffix(LOCK_SUFFIX) {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let _ = fs::remove_dir_all(tmp.join(area));
                let _ = fs::remove_file(&path);
            }
        } else if is_dir {
            if !tmp.join(format!("{name}{LOCK_SUFFIX}")).exists() {
                let _ = fs::remove_dir_all(&path);
            }
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

/// Reads a whole entry file. `expected` is the size the index knows (checked).
pub(crate) fn read_entry(path: &Path, expected: u64, mode: ReadMode) -> io::Result<Bytes> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("size {len}, expected {expected}"),
        ));
    }
    let mode = match mode {
        ReadMode::Auto if len >= MMAP_THRESHOLD => ReadMode::Mmap,
        ReadMode::Auto => ReadMode::Pread,
        m => m,
    };
    match mode {
        ReadMode::Pread | ReadMode::Auto => {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, 0)?;
            Ok(Bytes::from(buf))
        }
        ReadMode::Mmap => {
            if len == 0 {
                return Ok(Bytes::new());
            }
            // SAFETY: cache files are immutable once renamed into place (every write goes to
            // a new temp file); eviction unlinks them, which keeps an existing mapping valid.
            // Only an outside process truncating a cache file could invalidate the mapping.
            let map = unsafe { memmap2::Mmap::map(&file)? };
            Ok(Bytes::from_owner(map))
        }
    }
}

/// Writes `data` as the entry for `key`: temp file (in `area`), optional fsync, rename
/// into place under `dir`.
pub(crate) fn write_atomic(
    dir: &Path,
    area: &TempArea,
    key: &ChunkKey,
    data: &[u8],
    durable: bool,
) -> Result<PathBuf, CacheError> {
    let mut tmp = TempEntry::create(area)?;
    tmp.write(data)?;
    tmp.persist(dir, key, durable)
}

/// A temp file being filled; removed on drop unless persisted.
pub(crate) struct TempEntry {
    path: PathBuf,
    file: Option<File>,
}

impl TempEntry {
    pub(crate) fn create(area: &TempArea) -> Result<Self, CacheError> {
        let name = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let path = area.dir().join(name);
        let file = match File::create_new(&path) {
            // The area was removed under us (someone emptied `tmp/`): make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(area.dir()).and_then(|()| File::create_new(&path))
            }
            r => r,
        }
        .map_err(|e| CacheError::io("create", &path, e))?;
        Ok(TempEntry {
            path,
            file: Some(file),
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        match self.file.as_mut() {
            Some(f) => f
                .write_all(data)
                .map_err(|e| CacheError::io("write", &self.path, e)),
            None => Ok(()),
        }
    }

    pub(crate) fn persist(
        mut self,
        dir: &Path,
        key: &ChunkKey,
        durable: bool,
    ) -> Result<PathBuf, CacheError> {
        let file = self.file.take();
        if durable {
            if let Some(f) = &file {
                f.sync_all()
                    .map_err(|e| CacheError::io("fsync", &self.path, e))?;
            }
        }
        drop(file);
        let dest = dir.join(key.relative_path());
        let parent = dest.parent().unwrap_or(dir);
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create directory", parent, e))?;
        fs::rename(&self.path, &dest).map_err(|e| CacheError::io("rename", &dest, e))?;
        if durable {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| CacheError::io("fsync", parent, e))?;
        }
        self.path = PathBuf::new();
        Ok(dest)
    }
}

impl Drop for TempEntry {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// One entry found on disk at start-up.
pub(crate) struct Found {
    pub(crate) key: ChunkKey,
    pub(crate) size: u64,
    pub(crate) used: SystemTime,
}

/// Prepares the directory (creating it and `tmp/`, removing what dead processes left in
/// `tmp/`) and lists its entries. Files that are not entries are left alone.
pub(crate) fn scan(dir: &Path) -> Result<Vec<Found>, CacheError> {
    let tmp = dir.join(TMP_DIR);
    fs::create_dir_all(&tmp).map_err(|e| CacheError::io("create directory", &tmp, e))?;
    clean_tmp(&tmp)?;
    let mut found = Vec::new();
    for top in ["sha256", "unverified"] {
        let top_dir = dir.join(top);
        let subs = match fs::read_dir(&top_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io("list", &top_dir, e)),
        };
        for sub in subs {
            let sub = sub.map_err(|e| CacheError::io("list", &top_dir, e))?;
            let sub_name = sub.file_name().to_string_lossy().into_owned();
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(key) = ChunkKey::from_relative_path(&format!("{top}/{sub_name}/{name}"))
                else {
                    continue;
                };
                let Ok(meta) = f.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                found.push(Found {
                    key,
                    size: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    Ok(found)
}

/// The size of the entry file at `path` if there is one (written by another process since
/// this one scanned the directory).
pub(crate) fn stat_entry(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Records a use of the entry in its mtime, so the LRU order survives restarts.
pub(crate) fn touch(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}
