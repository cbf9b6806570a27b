//! Pods' pull credentials, kept per registry host + repository ([`RepoKey`]) so that the
//! lazy layers of an image fetch with the credentials its `PullImage` brought.
//!
//! The set lives in one JSON file (`<root>/cri/credentials.json`, mode 0600, directory
//! 0700), rewritten atomically (temporary file, fsync, rename) on every change, and read
//! at start: a restarted daemon still reads the layers of running pods. A newer pull of
//! the same repository replaces the entry; a pull that fails puts the previous one back
//! ([`PodCredentials::undo`]); an entry goes when no image of its repository is left
//! ([`PodCredentials::retain`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::auth::PodAuth;
use crate::repo::RepoKey;

/// Version of the file format.
const FORMAT_VERSION: u32 = 1;

/// The credentials file could not be read or written. Never quotes a credential.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading the file failed.
    #[error("read pod credentials {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a credentials file of this version.
    #[error(
        "pod credentials {} are unreadable ({reason}); remove the file: pods' next pulls record their credentials again",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (line and column, or the version found), no values.
        reason: String,
    },
    /// Writing the file failed.
    #[error("write pod credentials {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: RepoKey,
    auth: PodAuth,
    /// Unix seconds of the pull that brought them.
    recorded_at: u64,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    repositories: Vec<Entry>,
}

#[derive(Clone)]
struct Stored {
    entry: Entry,
    serial: u64,
}

/// What [`PodCredentials::record`] replaced, to put it back if the pull fails.
#[derive(Debug)]
pub struct Recorded {
    key: RepoKey,
    serial: u64,
    previous: Option<(Entry, u64)>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.key, self.auth)
    }
}

/// The pods' credentials of one daemon root.
pub struct PodCredentials {
    path: PathBuf,
    entries: Mutex<BTreeMap<RepoKey, Stored>>,
    serial: AtomicU64,
}

impl std::fmt::Debug for PodCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCredentials")
            .field("path", &self.path)
            .field("repositories", &self.entries.lock().len())
            .finish()
    }
}

impl PodCredentials {
    /// The file of a daemon root: `<root>/cri/credentials.json`.
    pub fn path_in(root: &Path) -> PathBuf {
        root.join("cri").join("credentials.json")
    }

    /// Opens the set kept in `path` (empty if the file does not exist yet).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::empty(path);
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file: File = serde_json::from_slice(&text).map_err(|e| {
            corrupt(format!(
                "not a credentials file at line {}, column {}",
                e.line(),
                e.column()
            ))
        })?;
        if file.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} (this starling reads {FORMAT_VERSION})",
                file.version
            )));
        }
        {
            let mut map = store.entries.lock();
            for entry in file.repositories {
                let serial = store.next_serial();
                map.insert(entry.key.clone(), Stored { entry, serial });
            }
        }
        Ok(store)
    }

    /// An empty set that will be written to `path` on the first change.
    pub fn empty(path: &Path) -> Self {
        PodCredentials {
            path: path.to_path_buf(),
            entries: Mutex::new(BTreeMap::new()),
            serial: AtomicU64::new(1),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    /// The credentials kept for `key`.
    pub fn lookup(&self, key: &RepoKey) -> Option<PodAuth> {
        self.entries.lock().get(key).map(|s| s.entry.auth.clone())
    }

    /// The repositories with credentials.
    pub fn keys(&self) -> Vec<RepoKey> {
        self.entries.lock().keys().cloned().collect()
    }

    /// Keeps `auth` for `key`, replacing what was there, and writes the file.
    pub fn record(&self, key: RepoKey, auth: PodAuth) -> Result<Recorded, StoreError> {
        let mut map = self.entries.lock();
        let previous = map.get(&key).map(|s| (s.entry.clone(), s.serial));
        if let Some((e, serial)) = &previous {
            if e.auth == auth {
                // Nothing changes; an undo would put the same back.
                return Ok(Recorded {
                    key,
                    serial: *serial,
                    previous,
                });
            }
        }
        let serial = self.next_serial();
        let entry = Entry {
            key: key.clone(),
            auth,
            recorded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        map.insert(key.clone(), Stored { entry, serial });
        if let Err(e) = self.write(&map) {
            match &previous {
                Some((e, s)) => map.insert(
                    key.clone(),
                    Stored {
                        entry: e.clone(),
                        serial: *s,
                    },
                ),
                None => map.remove(&key),
            };
            return Err(e);
        }
        Ok(Recorded {
            key,
            serial,
            previous,
        })
    }

    /// Puts back what `recorded` replaced, unless a later [`record`](Self::record) of the
    /// same repository replaced it in turn.
    pub fn undo(&self, recorded: Recorded) -> Result<(), StoreError> {
        let mut map = self.entries.lock();
        if map.get(&recorded.key).map(|s| s.serial) != Some(recorded.serial) {
            return Ok(());
        }
        match recorded.previous {
            // record() changed nothing.
            Some((_, serial)) if serial == recorded.serial => return Ok(()),
            Some((entry, serial)) => {
                map.insert(recorded.key, Stored { entry, serial });
            }
            None => {
                map.remove(&recorded.key);
            }
        }
        self.write(&map)
    }

    /// Forgets every repository `keep` says no to; returns them.
    pub fn retain(&self, keep: impl Fn(&RepoKey) -> bool) -> Result<Vec<RepoKey>, StoreError> {
        let mut map = self.entries.lock();
        let gone: Vec<RepoKey> = map.keys().filter(|k| !keep(k)).cloned().collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let before = map.clone();
        for k in &gone {
            map.remove(k);
        }
        if let Err(e) = self.write(&map) {
            *map = before;
            return Err(e);
        }
        Ok(gone)
    }

    /// Replaces the file with `map` (temporary file 0600 in the same directory, fsync,
    /// rename, fsync of the directory).
    fn write(&self, map: &BTreeMap<RepoKey, Stored>) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let file = File {
            version: FORMAT_VERSION,
            repositories: map.values().map(|s| s.entry.clone()).collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| err(e.into()))?;
        // NamedTempFile creates the file 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        tmp.write_all(&text).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use config::Secret;

    use super::*;

    fn basic(u: &str, p: &str) -> PodAuth {
        PodAuth::Basic {
            username: u.into(),
            password: Secret::new(p),
        }
    }

    #[test]
    fn kept_on_disk_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = PodCredentials::path_in(dir.path());
        let s = PodCredentials::open(&path).unwrap();
        let k = RepoKey::new("reg:5000", "team/app");
        s.record(k.clone(), basic("alice", "pw1")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let again = PodCredentials::open(&path).unwrap();
        assert_eq!(again.lookup(&k), Some(basic("alice", "pw1")));
        assert_eq!(again.lookup(&RepoKey::new("reg:5000", "other")), None);
    }

    #[test]
    fn newer_pulls_replace_and_failed_ones_are_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let s = PodCredentials::open(&path).unwrap();
        let k = RepoKey::new("reg:5000", "app");
        s.record(k.clone(), basic("alice", "old")).unwrap();
        let r = s.record(k.clone(), basic("alice", "new")).unwrap();
        assert_eq!(s.lookup(&k), Some(basic("alice", "new")));
        s.undo(r).unwrap();
        assert_eq!(s.lookup(&k), Some(basic("alice", "old")));
        assert_eq!(
            PodCredentials::open(&path).unwrap().lookup(&k),
            Some(basic("alice", "old"))
        );
        // An undo after a later record leaves the later one.
        let r1 = s.record(k.clone(), basic("bob", "1")).unwrap();
        s.record(k.clone(), basic("carol", "2")).unwrap();
        s.undo(r1).unwrap();
        assert_eq!(s.lookup(&k), Some(basic("carol", "2")));
        // A failed first pull leaves nothing.
        let k2 = RepoKey::new("reg:5000", "new");
        let r = s.record(k2.clone(), basic("x", "y")).unwrap();
        s.undo(r).unwrap();
        assert_eq!(s.lookup(&k2), None);
        // Recording the same again and undoing keeps it.
        let r = s.record(k.clone(), basic("carol", "2")).unwrap();
        s.undo(r).unwrap();
        assert_eq!(s.lookup(&k), Some(basic("carol", "2")));
    }

    #[test]
    fn retain_forgets_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let s = PodCredentials::open(&path).unwrap();
        let (a, b) = (RepoKey::new("h", "a"), RepoKey::new("h", "b"));
        s.record(a.clone(), basic("u", "1")).unwrap();
        s.record(b.clone(), basic("u", "2")).unwrap();
        assert_eq!(s.retain(|k| k == &a).unwrap(), vec![b.clone()]);
        let again = PodCredentials::open(&path).unwrap();
        assert_eq!(again.keys(), vec![a]);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            "{\"version\":1,\"repositories\":[{\"password\":\"hunter2\"",
        )
        .unwrap();
        let e = PodCredentials::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("remove the file") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::write(&path, "{\"version\":9,\"repositories\":[]}").unwrap();
        let e = PodCredentials::open(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
