//! The bounded on-disk block cache: one file per (blob digest, block index) under
//! `<cache-dir>/b<block-size>/<algorithm>/<hex>/<index>`, written to a temporary file and
//! renamed into place (a block is there whole or not at all), least recently used blocks
//! removed when the total passes the cap. The index of what is cached lives in memory and
//! is rebuilt from the directory at start (oldest written first in line for eviction).
//!
//! Blocks cannot be verified alone (a blob digest covers the whole blob); what goes in is
//! exactly what the upstream answered for the block's range, never a short or failed read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

/// One block of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The blob's digest (`sha256:<hex>`, validated by the caller).
    pub digest: Arc<str>,
    /// The block's index in the blob.
    pub index: u64,
}

/// Errors of the block cache.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("block cache {path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task did not finish (runtime shutting down).
    #[error("block cache: background task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

struct Index {
    lru: LruCache<BlockKey, u64>,
    total: u64,
    /// Blobs whose blocks were dropped, with the epoch of the drop: blocks of them fetched
    /// before that (and stored after) are not stored.
    dropped: HashMap<Arc<str>, u64>,
}

/// The block cache. Shared by all requests.
pub struct BlockStore {
    dir: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    evicted: std::sync::atomic::AtomicU64,
    clock: std::sync::atomic::AtomicU64,
}

impl BlockStore {
    /// Opens (creates) the cache for `block_size` blocks under `cache_dir`, keeping at most
    /// `max_bytes`. Blocks of another block size left by an earlier run are removed.
    pub fn open(cache_dir: &Path, block_size: u64, max_bytes: u64) -> Result<Self, StoreError> {
        let name = format!("b{block_size}");
        let dir = cache_dir.join(&name);
        let tmp = cache_dir.join("tmp");
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp, "clear"))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp, "create"))?;
        for e in std::fs::read_dir(cache_dir).map_err(io(cache_dir, "list"))? {
            let e = e.map_err(io(cache_dir, "list"))?;
            let other = e.file_name().to_string_lossy().into_owned();
            if other.starts_with('b') && other != name && e.path().is_dir() {
                tracing::info!(dir = %e.path().display(), "removing blocks of another block size");
                std::fs::remove_dir_all(e.path()).map_err(io(&e.path(), "remove"))?;
            }
        }
        let mut found = Vec::new();
        scan(&dir, &mut found)?;
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut index = Index {
            lru: LruCache::unbounded(),
            total: 0,
            dropped: HashMap::new(),
        };
        for (key, len, _) in found {
            index.total += len;
            index.lru.put(key, len);
        }
        let store = BlockStore {
            dir,
            tmp,
            max_bytes,
            index: Mutex::new(index),
            evicted: Default::default(),
            clock: Default::default(),
        };
        store.evict(&mut store.index.lock());
        Ok(store)
    }

    fn path(&self, key: &BlockKey) -> PathBuf {
        let (algo, hex) = key
            .digest
            .split_once(':')
            .unwrap_or(("unknown", &key.digest));
        self.dir.join(algo).join(hex).join(key.index.to_string())
    }

    /// True if the block is cached (does not count as a use).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.index.lock().lru.contains(key)
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> u64 {
        self.index.lock().total
    }

    /// Blocks removed to stay under the cap so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The block, or `None` if it is not (or no longer) cached.
    pub async fn read(&self, key: &BlockKey) -> Result<Option<Bytes>, StoreError> {
        if self.index.lock().lru.get(key).is_none() {
            return Ok(None);
        }
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(key);
                Ok(None)
            }
            Err(e) => {
                self.forget(key);
                Err(io(&path, "read")(e))
            }
        }
    }

    fn forget(&self, key: &BlockKey) {
        let mut index = self.index.lock();
        if let Some(len) = index.lru.pop(key) {
            index.total -= len;
        }
    }

    /// A new epoch: take one before fetching blocks and store them with it.
    pub fn epoch(&self) -> u64 {
        self.clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores a block (whole: the caller checked its length), then evicts down to the cap.
    #[cfg(test)]
    pub async fn put(self: &Arc<Self>, key: BlockKey, data: Bytes) -> Result<(), StoreError> {
        let epoch = self.epoch();
        self.put_all(vec![(key, data)], epoch).await
    }

    /// Stores blocks fetched in `epoch` in one background task (stops at the first
    /// failure); blocks of a blob dropped since `epoch` are left out.
    pub async fn put_all(
        self: &Arc<Self>,
        blocks: Vec<(BlockKey, Bytes)>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            blocks
                .into_iter()
                .try_for_each(|(key, data)| me.put_blocking(key, &data, epoch))
        })
        .await
        .map_err(StoreError::Task)?
    }

    fn put_blocking(&self, key: BlockKey, data: &[u8], epoch: u64) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path(&key);
        let parent = path.parent().expect("a block path has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent, "create"))?;
        let mut f = tempfile::NamedTempFile::new_in(&self.tmp).map_err(io(&self.tmp, "create"))?;
        f.write_all(data).map_err(io(f.path(), "write"))?;
        // Renames and removals happen under the index lock, so an eviction never removes a
        // file that a later put of the same block renamed into place.
        let mut index = self.index.lock();
        if index.dropped.get(&key.digest).is_some_and(|d| *d >= epoch) {
            return Ok(());
        }
        f.persist(&path)
            .map_err(|e| io(&path, "rename into place")(e.error))?;
        if let Some(old) = index.lru.put(key, data.len() as u64) {
            index.total -= old;
        }
        index.total += data.len() as u64;
        self.evict(&mut index);
        Ok(())
    }

    fn evict(&self, index: &mut Index) {
        while index.total > self.max_bytes {
            let Some((key, len)) = index.lru.pop_lru() else {
                break;
            };
            index.total -= len;
            let path = self.path(&key);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "block cache: cannot remove an evicted block");
                }
            }
            self.evicted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Removes every cached block of `digest` (its bytes did not match the digest).
    pub fn drop_blob(&self, digest: &str) {
        let epoch = self.epoch();
        let mut index = self.index.lock();
        index.dropped.insert(digest.into(), epoch);
        let keys: Vec<BlockKey> = index
            .lru
            .iter()
            .filter(|(k, _)| &*k.digest == digest)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(len) = index.lru.pop(&k) {
                index.total -= len;
            }
            let _ = std::fs::remove_file(self.path(&k));
        }
    }
}

/// Collects `(key, length, mtime)` of every block file under `dir/<algo>/<hex>/<index>`.
fn scan(
    dir: &Path,
    out: &mut Vec<(BlockKey, u64, std::time::SystemTime)>,
) -> Result<(), StoreError> {
    for algo in std::fs::read_dir(dir).map_err(io(dir, "list"))? {
        let algo = algo.map_err(io(dir, "list"))?;
        let Ok(algo_name) = algo.file_name().into_string() else {
            continue;
        };
        let algo_dir = algo.path();
        for blob in std::fs::read_dir(&algo_dir).map_err(io(&algo_dir, "list"))? {
            let blob = blob.map_err(io(&algo_dir, "list"))?;
            let Ok(hex) = blob.file_name().into_string() else {
                continue;
            };
            let digest: Arc<str> = format!("{algo_name}:{hex}").into();
            let blob_dir = blob.path();
            for block in std::fs::read_dir(&blob_dir).map_err(io(&blob_dir, "list"))? {
                let block = block.map_err(io(&blob_dir, "list"))?;
                let Some(index) = block.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let meta = block.metadata().map_err(io(&block.path(), "stat"))?;
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                out.push((
                    BlockKey {
                        digest: digest.clone(),
                        index,
                    },
                    meta.len(),
                    mtime,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str, i: u64) -> BlockKey {
        BlockKey {
            digest: format!("sha256:{d}").into(),
            index: i,
        }
    }

    #[tokio::test]
    async fn blocks_round_trip_and_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 65536, 300).unwrap());
        store
            .put(key("aa", 0), Bytes::from(vec![1u8; 100]))
            .await
            .unwrap();
        store
            .put(key("aa", 1), Bytes::from(vec![2u8; 100]))
            .await
            .unwrap();
        store
            .put(key("bb", 0), Bytes::from(vec![3u8; 100]))
            .await
            .unwrap();
        assert_eq!(store.bytes(), 300);
        // a use makes aa/0 the most recent: aa/1 is evicted next
        assert_eq!(
            &store.read(&key("aa", 0)).await.unwrap().unwrap()[..],
            &[1u8; 100][..]
        );
        store
            .put(key("cc", 0), Bytes::from(vec![4u8; 100]))
            .await
            .unwrap();
        assert_eq!(store.bytes(), 300);
        assert!(!store.contains(&key("aa", 1)));
        assert!(!dir.path().join("b65536/sha256/aa/1").exists());
        assert!(store.contains(&key("aa", 0)));
        assert!(store.read(&key("aa", 1)).await.unwrap().is_none());
        assert_eq!(store.evicted(), 1);
    }

    #[tokio::test]
    async fn the_index_is_rebuilt_and_other_block_sizes_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(BlockStore::open(dir.path(), 65536, 1000).unwrap());
            store
                .put(key("aa", 3), Bytes::from_static(b"abc"))
                .await
                .unwrap();
        }
        // a block of an earlier run with another block size
        std::fs::create_dir_all(dir.path().join("b131072/sha256/aa")).unwrap();
        std::fs::write(dir.path().join("b131072/sha256/aa/0"), b"x").unwrap();
        let store = BlockStore::open(dir.path(), 65536, 1000).unwrap();
        assert!(!dir.path().join("b131072").exists());
        assert!(store.contains(&key("aa", 3)));
        assert_eq!(store.bytes(), 3);
        assert_eq!(
            &store.read(&key("aa", 3)).await.unwrap().unwrap()[..],
            b"abc"
        );
        store.drop_blob("sha256:aa");
        assert!(!store.contains(&key("aa", 3)));
        assert_eq!(store.bytes(), 0);
        assert!(!dir.path().join("b65536/sha256/aa/3").exists());
    }

    #[tokio::test]
    async fn blocks_fetched_before_their_blob_was_dropped_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 65536, 1000).unwrap());
        let before = store.epoch();
        store.drop_blob("sha256:aa");
        store
            .put_all(vec![(key("aa", 0), Bytes::from_static(b"old"))], before)
            .await
            .unwrap();
        assert!(!store.contains(&key("aa", 0)));
        assert!(!dir.path().join("b65536/sha256/aa/0").exists());
        let after = store.epoch();
        store
            .put_all(vec![(key("aa", 0), Bytes::from_static(b"new"))], after)
            .await
            .unwrap();
        assert!(store.contains(&key("aa", 0)));
    }

    #[tokio::test]
    async fn a_block_removed_behind_its_back_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 65536, 1000).unwrap());
        store
            .put(key("aa", 0), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        std::fs::remove_file(dir.path().join("b65536/sha256/aa/0")).unwrap();
        assert!(store.read(&key("aa", 0)).await.unwrap().is_none());
        assert!(!store.contains(&key("aa", 0)));
        assert_eq!(store.bytes(), 0);
    }
}
