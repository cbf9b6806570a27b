//! In-memory state of the merge component: one build per result at a time (a second
//! identical request waits and then reuses the first one's result), and the temp
//! directories flattened results are built in (`<root>/merging/<n>`, outside
//! `snapshots/` so that cleanup never races a build; renamed into `snapshots/<id>` in
//! the transaction that records them). Leftovers of a crash are removed by
//! [`MergeState::cleanup`].

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::plan::MergeOptions;
use crate::error::{Error, Result};

/// Merge state of one snapshotter.
pub struct MergeState {
    /// Settings.
    pub options: MergeOptions,
    dir: PathBuf,
    building: Mutex<HashSet<String>>,
    built: Condvar,
    inflight: Mutex<HashSet<PathBuf>>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The sets stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MergeState {
    /// State for a snapshotter rooted at `root`.
    pub fn new(root: &Path, options: MergeOptions) -> Self {
        MergeState {
            options,
            dir: root.join("merging"),
            building: Mutex::new(HashSet::new()),
            built: Condvar::new(),
            inflight: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// Waits until no other build of `key` runs, then marks it as ours until the guard
    /// is dropped.
    pub fn build_lock(&self, key: &str) -> BuildLock<'_> {
        let mut set = lock(&self.building);
        while set.contains(key) {
            set = self.built.wait(set).unwrap_or_else(PoisonError::into_inner);
        }
        set.insert(key.to_string());
        BuildLock {
            state: self,
            key: key.to_string(),
        }
    }

    /// A new temp directory (0700) with an empty `fs` (0755) inside, removed on drop
    /// unless it was renamed away.
    pub fn temp_dir(&self) -> Result<TempBuild<'_>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io("create merge directory", &self.dir, e))?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", std::process::id()));
        let mut inflight = lock(&self.inflight);
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io("create merge directory", &path, e))?;
        let fs_dir = path.join("fs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_dir)
            .map_err(|e| Error::io("create merge directory", &fs_dir, e))?;
        inflight.insert(path.clone());
        Ok(TempBuild { state: self, path })
    }

    /// Removes temp directories no build is using (left by a crash). Returns how many.
    pub fn cleanup(&self) -> usize {
        let inflight = lock(&self.inflight);
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list merge temp directories");
                return 0;
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if inflight.contains(&path) {
                continue;
            }
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale merge directory")
                }
            }
        }
        removed
    }
}

/// Held while a flattened result is built (see [`MergeState::build_lock`]).
pub struct BuildLock<'a> {
    state: &'a MergeState,
    key: String,
}

impl Drop for BuildLock<'_> {
    fn drop(&mut self) {
        lock(&self.state.building).remove(&self.key);
        self.state.built.notify_all();
    }
}

/// A temp directory a flattened result is built in.
pub struct TempBuild<'a> {
    state: &'a MergeState,
    path: PathBuf,
}

impl TempBuild<'_> {
    /// The temp directory (renamed to `snapshots/<id>` when the result is recorded).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its `fs` directory, the flatten target.
    pub fn fs_dir(&self) -> PathBuf {
        self.path.join("fs")
    }
}

impl Drop for TempBuild<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.state.inflight);
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "merge temp directory left for cleanup");
            }
        }
        inflight.remove(&self.path);
    }
}
