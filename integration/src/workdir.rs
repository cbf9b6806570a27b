//! Per-test working directory: a short unique path under `$TMPDIR` (e.g. `/tmp/stl-e2e-k3x9q1`,
//! so unix sockets inside stay far below the 108-byte limit), removed on drop after lazily
//! unmounting anything still mounted below it. Set `STL_KEEP_WORKDIR=1` to keep it for
//! debugging (mounts are still detached).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};
use crate::mounts;

/// A unique, short, private directory for one test (or one `stl-env` state).
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    keep: bool,
}

/// A short pseudo-random token (base36) unique within this machine for practical purposes:
/// mixes time, pid and a process-wide counter.
pub fn unique_token(len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut x = (nanos as u64)
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        // xorshift64* step per character
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        s.push(char::from_digit((v >> 40) as u32 % 36, 36).unwrap_or('0'));
    }
    s
}

/// The temp root: `$TMPDIR`, else `/tmp`.
pub fn temp_root() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| "/tmp".into())
}

impl Workdir {
    /// Creates `$TMPDIR/stl-<tag>-<token>`; `tag` is cut to 10 characters.
    pub fn new(tag: &str) -> Result<Workdir> {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(10)
            .collect();
        let root = temp_root();
        loop {
            let path = root.join(format!("stl-{tag}-{}", unique_token(6)));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let keep = std::env::var("STL_KEEP_WORKDIR").is_ok_and(|v| v == "1");
                    return Ok(Workdir { path, keep });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).ctx(|| format!("create {}", path.display())),
            }
        }
    }

    /// Adopts an existing directory (e.g. an `stl-env` state dir); it is removed on drop
    /// unless [`Workdir::keep`] is called.
    pub fn adopt(path: impl Into<PathBuf>) -> Result<Workdir> {
        let path = path.into();
        std::fs::create_dir_all(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(Workdir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
        Ok(p)
    }

    /// Keeps the directory (and its contents) after drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Unmounts everything below the directory and removes it now.
    pub fn cleanup(&mut self) -> Result<()> {
        mounts::unmount_under(&self.path)?;
        if !self.keep && self.path.exists() {
            std::fs::remove_dir_all(&self.path)
                .ctx(|| format!("remove {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("warning: cleaning up {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_have_length() {
        let a = unique_token(6);
        let b = unique_token(6);
        assert_eq!(a.len(), 6);
        assert_ne!(a, b);
    }

    #[test]
    fn workdir_is_short_and_removed() {
        let wd = Workdir::new("unit/test with spaces").unwrap();
        let p = wd.path().to_path_buf();
        assert!(p.is_dir());
        assert!(p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("stl-unit-test-"));
        std::fs::write(wd.subdir("a/b").unwrap().join("f"), b"x").unwrap();
        drop(wd);
        assert!(!p.exists());
    }
}
