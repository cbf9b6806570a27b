//! The chunk cache: decompressed, verified chunks on disk, content-addressed by chunk digest
//! (shared across layers and images, kept across restarts), a byte-bounded in-memory LRU in
//! front, a disk cap with LRU eviction, and pinning of chunks in use.
//!
//! Correctness rules:
//! - Only data matching its key is stored ([`ChunkCache::insert`] checks it; the fetcher uses
//!   [`ChunkCache::insert_verified`] after its own check).
//! - A disk entry is checked against its key when first used in a process lifetime (digest for
//!   verifiable keys, length for unverifiable ones); a torn or corrupted file is removed and
//!   reported as a miss, never served.
//! - Writes are atomic (temp file + rename); see [`disk`] for the fsync policy.
//! - Eviction (LRU by access, order rebuilt from file mtimes on open) never removes a pinned
//!   entry; pins are held by callers for chunks in use (e.g. a passthrough backing file).
//! - Other processes may write the same directory (`starling prefetch`, `starling cache
//!   import`, other mounts): an entry missing from this process's index is looked for on
//!   disk before it counts as a miss, and adopted (checked on first use, counted against
//!   the cap like any entry); temp files are per process ([`disk`]). Each process keeps the
//!   cap over the entries it knows, which at open is the whole directory.

mod disk;
mod error;
mod key;
mod memory;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

pub use disk::{ReadMode, MMAP_THRESHOLD};
pub use error::CacheError;
pub use key::ChunkKey;

use crate::metrics::Metrics;
use disk::{TempArea, TempEntry};
use memory::MemoryLru;

/// How cache files are read by default. `benches/cache_read.rs` (warm page cache, 2 cores):
/// `pread` wins for 64 KiB entries (21 vs 17-37 us per whole read), `mmap` from 512 KiB up
/// (4 MiB: 160-184 vs 342-356 us whole, 18-20 vs 287-314 us for a 128 KiB window), hence
/// [`ReadMode::Auto`].
pub const DEFAULT_READ_MODE: ReadMode = ReadMode::Auto;

/// Settings of a [`ChunkCache`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Disk cap in bytes; 0 = unbounded.
    pub max_size: u64,
    /// Bytes of the in-memory LRU; 0 = none.
    pub memory_size: u64,
    /// How files are read.
    pub read_mode: ReadMode,
}

impl CacheOptions {
    /// Options from the `[cache]` section (directory resolved against `root`).
    pub fn from_config(config: &config::Config) -> Self {
        CacheOptions {
            dir: config.cache_dir(),
            max_size: config.cache.max_size,
            memory_size: config.cache.memory_size,
            read_mode: DEFAULT_READ_MODE,
        }
    }
}

/// Disk and memory usage of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// Entries on disk.
    pub entries: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Bytes in the memory LRU.
    pub memory_bytes: u64,
    /// Entries currently pinned.
    pub pinned: u64,
}

/// The chunk cache. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ChunkCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tmp: TempArea,
    max_size: u64,
    read_mode: ReadMode,
    index: Mutex<Index>,
    memory: Mutex<MemoryLru>,
    metrics: Arc<Metrics>,
}

/// What is on disk, in access order (most recent first), with pins.
struct Index {
    entries: LruCache<ChunkKey, Entry>,
    bytes: u64,
    pins: HashMap<ChunkKey, usize>,
}

#[derive(Clone, Copy)]
struct Entry {
    size: u64,
    /// Checked against its key in this process lifetime.
    verified: bool,
}

impl ChunkCache {
    /// Opens (creating if needed) the cache in `options.dir`: empties `tmp/`, rebuilds the
    /// index and access order from the files, and evicts down to the cap.
    pub fn open(options: CacheOptions, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let mut found = disk::scan(&options.dir)?;
        found.sort_by_key(|f| f.used);
        let mut index = Index {
            entries: LruCache::unbounded(),
            bytes: 0,
            pins: HashMap::new(),
        };
        for f in found {
            index.bytes += f.size;
            index.entries.put(
                f.key,
                Entry {
                    size: f.size,
                    verified: false,
                },
            );
        }
        let tmp = TempArea::create(&options.dir)?;
        let cache = ChunkCache {
            inner: Arc::new(Inner {
                tmp,
                dir: options.dir,
                max_size: options.max_size,
                read_mode: options.read_mode,
                index: Mutex::new(index),
                memory: Mutex::new(MemoryLru::new(options.memory_size)),
                metrics,
            }),
        };
        cache.inner.evict();
        cache.inner.update_gauges();
        Ok(cache)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The chunk's content, from memory or disk; `None` if absent (or found corrupted, in
    /// which case the file is removed).
    pub fn get(&self, key: &ChunkKey) -> Result<Option<Bytes>, CacheError> {
        let inner = &self.inner;
        if let Some(b) = inner.memory.lock().get(key) {
            Metrics::inc(&inner.metrics.memory_hits);
            return Ok(Some(b));
        }
        match inner.load(key, inner.read_mode)? {
            Some(data) => {
                Metrics::inc(&inner.metrics.disk_hits);
                inner.remember(*key, data.clone());
                Ok(Some(data))
            }
            None => {
                Metrics::inc(&inner.metrics.misses);
                Ok(None)
            }
        }
    }

    /// The content of an entry this process has just committed (see
    /// [`ChunkCache::writer`]), read back without counting a hit or filling the memory LRU:
    /// a fetcher that decoded a chunk straight into the cache serves it from there (large
    /// entries come back as a mapping of the file, so no heap copy is made).
    pub fn read_back(&self, key: &ChunkKey) -> Result<Option<Bytes>, CacheError> {
        self.inner.load(key, self.inner.read_mode)
    }

    /// Like [`ChunkCache::read_back`], but always as a mapping of the entry file, whatever
    /// the configured read mode (for entries too large for the heap).
    pub fn map_entry(&self, key: &ChunkKey) -> Result<Option<Bytes>, CacheError> {
        self.inner.load(key, ReadMode::Mmap)
    }

    /// Copies up to `buf.len()` bytes of the entry for `key` from `offset` into `buf`, without
    /// loading the whole entry (after its first-use check, which reads it once); returns the
    /// count (0 at or past its end), or `None` if the entry is absent or was found corrupted.
    /// The memory LRU is consulted but not filled: callers reading a chunk piece by piece
    /// (FUSE reads) rely on the kernel's page cache instead.
    pub fn read_at(
        &self,
        key: &ChunkKey,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, CacheError> {
        let inner = &self.inner;
        let copy = |data: &[u8], buf: &mut [u8]| {
            let start = (offset as usize).min(data.len());
            let n = (data.len() - start).min(buf.len());
            buf[..n].copy_from_slice(&data[start..start + n]);
            n
        };
        if let Some(b) = inner.memory.lock().get(key) {
            Metrics::inc(&inner.metrics.memory_hits);
            return Ok(Some(copy(&b, buf)));
        }
        let verified = match inner.entry(key) {
            None => {
                Metrics::inc(&inner.metrics.misses);
                return Ok(None);
            }
            Some(e) => e.verified,
        };
        if !verified {
            return match inner.load(key, inner.read_mode)? {
                Some(data) => {
                    Metrics::inc(&inner.metrics.disk_hits);
                    Ok(Some(copy(&data, buf)))
                }
                None => {
                    Metrics::inc(&inner.metrics.misses);
                    Ok(None)
                }
            };
        }
        let path = inner.path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                inner.drop_entry(key);
                Metrics::inc(&inner.metrics.misses);
                return Ok(None);
            }
            Err(e) => return Err(CacheError::io("open", &path, e)),
        };
        let mut done = 0;
        while done < buf.len() {
            match std::os::unix::fs::FileExt::read_at(&file, &mut buf[done..], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read", &path, e)),
            }
        }
        Metrics::inc(&inner.metrics.disk_hits);
        Ok(Some(done))
    }

    /// The chunk's content if it is in the memory LRU (no disk access; counts a memory hit).
    pub fn get_memory(&self, key: &ChunkKey) -> Option<Bytes> {
        let hit = self.inner.memory.lock().get(key);
        if hit.is_some() {
            Metrics::inc(&self.inner.metrics.memory_hits);
        }
        hit
    }

    /// True if an entry for `key` is on disk (not yet necessarily verified), also one
    /// another process wrote since this one opened the cache.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.inner.index.lock().entries.contains(key) || self.inner.adopt(key).is_some()
    }

    /// True if `key` is in this cache's index, without looking on disk for an entry another
    /// process wrote: cheap enough to ask while holding a lock.
    pub fn is_indexed(&self, key: &ChunkKey) -> bool {
        self.inner.index.lock().entries.contains(key)
    }

    /// Stores `data` for `key` after checking it matches the key.
    pub fn insert(&self, key: &ChunkKey, data: Bytes) -> Result<(), CacheError> {
        if !key.matches(&data) {
            return Err(CacheError::Mismatch {
                key: *key,
                got: data.len() as u64,
                digest_checked: key.is_verifiable(),
            });
        }
        self.insert_verified(key, data)
    }

    /// Stores `data` for `key`; the caller has already checked that it matches the key.
    pub fn insert_verified(&self, key: &ChunkKey, data: Bytes) -> Result<(), CacheError> {
        let inner = &self.inner;
        let known_good = inner
            .index
            .lock()
            .entries
            .get(key)
            .is_some_and(|e| e.verified);
        if known_good {
            inner.remember(*key, data);
            return Ok(());
        }
        disk::write_atomic(&inner.dir, &inner.tmp, key, &data, !key.is_verifiable())?;
        inner.add_entry(*key, data.len() as u64);
        inner.remember(*key, data);
        Ok(())
    }

    /// Like [`ChunkCache::insert_verified`], but leaves the memory LRU alone: for chunks
    /// fetched ahead of use (prefetch, background fetch, streaming), which would otherwise
    /// push the hot chunks of on-demand reads out of it.
    pub fn store_verified(&self, key: &ChunkKey, data: &[u8]) -> Result<(), CacheError> {
        let inner = &self.inner;
        let known_good = inner
            .index
            .lock()
            .entries
            .get(key)
            .is_some_and(|e| e.verified);
        if known_good {
            return Ok(());
        }
        disk::write_atomic(&inner.dir, &inner.tmp, key, data, !key.is_verifiable())?;
        inner.add_entry(*key, data.len() as u64);
        Ok(())
    }

    /// Starts writing an entry piece by piece (e.g. a whole file assembled from its chunks,
    /// keyed by the file's digest, to back a passthrough open). Nothing is visible until
    /// [`CacheWriter::commit`] checks the content against the key.
    pub fn writer(&self, key: ChunkKey) -> Result<CacheWriter, CacheError> {
        Ok(CacheWriter {
            cache: self.clone(),
            key,
            tmp: TempEntry::create(&self.inner.tmp)?,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Opens a verified entry for use as a backing file (FUSE passthrough): the file is
    /// checked against its key if this process has not done so yet, and stays pinned (not
    /// evicted) while the returned [`OpenEntry`] lives.
    pub fn open_entry(&self, key: &ChunkKey) -> Result<Option<OpenEntry>, CacheError> {
        let pin = self.pin(key);
        let inner = &self.inner;
        let verified = match inner.entry(key) {
            None => return Ok(None),
            Some(e) => e.verified,
        };
        if !verified && inner.load(key, inner.read_mode)?.is_none() {
            return Ok(None);
        }
        let path = inner.path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                inner.drop_entry(key);
                return Ok(None);
            }
            Err(e) => return Err(CacheError::io("open", &path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| CacheError::io("stat", &path, e))?
            .len();
        Ok(Some(OpenEntry {
            path,
            file,
            size,
            _pin: pin,
        }))
    }

    /// Keeps `key` from being evicted until the returned guard is dropped (the entry need
    /// not exist yet). Pins nest.
    pub fn pin(&self, key: &ChunkKey) -> Pin {
        *self.inner.index.lock().pins.entry(*key).or_insert(0) += 1;
        Pin {
            inner: self.inner.clone(),
            key: *key,
        }
    }

    /// Removes an entry from disk and memory (no-op if absent).
    pub fn remove(&self, key: &ChunkKey) {
        self.inner.memory.lock().remove(key);
        self.inner.drop_entry(key);
    }

    /// The keys of every entry on disk this process knows of (all of the directory at
    /// open, plus what was written or adopted since), least recently used first.
    pub fn keys(&self) -> Vec<ChunkKey> {
        let idx = self.inner.index.lock();
        idx.entries.iter().rev().map(|(k, _)| *k).collect()
    }

    /// Current usage.
    pub fn usage(&self) -> CacheUsage {
        let idx = self.inner.index.lock();
        CacheUsage {
            entries: idx.entries.len() as u64,
            disk_bytes: idx.bytes,
            memory_bytes: self.inner.memory.lock().bytes(),
            pinned: idx.pins.len() as u64,
        }
    }

    /// The metrics this cache counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
}

impl Inner {
    fn path(&self, key: &ChunkKey) -> PathBuf {
        self.dir.join(key.relative_path())
    }

    /// The index entry for `key` (marked used), or the entry file another process wrote,
    /// adopted.
    fn entry(&self, key: &ChunkKey) -> Option<Entry> {
        let known = self.index.lock().entries.get(key).copied();
        known.or_else(|| self.adopt(key))
    }

    /// Adds the entry file for `key` to the index if one is on disk (written by another
    /// process): unverified, so it is checked on first use like any entry found at open.
    fn adopt(&self, key: &ChunkKey) -> Option<Entry> {
        let size = disk::stat_entry(&self.path(key))?;
        let entry = Entry {
            size,
            verified: false,
        };
        {
            let mut idx = self.index.lock();
            if let Some(old) = idx.entries.put(*key, entry) {
                idx.bytes -= old.size;
            }
            idx.bytes += size;
        }
        self.evict();
        self.update_gauges();
        Some(entry)
    }

    /// Reads an entry from disk, checking it on first use; removes it if it is bad.
    fn load(&self, key: &ChunkKey, mode: ReadMode) -> Result<Option<Bytes>, CacheError> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let path = self.path(key);
        let data = match disk::read_entry(&path, entry.size, mode) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.drop_entry(key);
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.corrupt(key);
                return Ok(None);
            }
            Err(e) => return Err(CacheError::io("read", &path, e)),
        };
        if !entry.verified {
            if !key.matches(&data) {
                self.corrupt(key);
                return Ok(None);
            }
            if let Some(e) = self.index.lock().entries.peek_mut(key) {
                e.verified = true;
            }
            disk::touch(&path);
        }
        Ok(Some(data))
    }

    fn corrupt(&self, key: &ChunkKey) {
        Metrics::inc(&self.metrics.corrupt_entries);
        tracing::warn!(chunk = %key, "removing corrupted chunk cache entry");
        self.memory.lock().remove(key);
        self.drop_entry(key);
    }

    fn remember(&self, key: ChunkKey, data: Bytes) {
        let mut m = self.memory.lock();
        m.insert(key, data);
        Metrics::set(&self.metrics.memory_bytes, m.bytes());
    }

    fn add_entry(&self, key: ChunkKey, size: u64) {
        {
            let mut idx = self.index.lock();
            if let Some(old) = idx.entries.put(
                key,
                Entry {
                    size,
                    verified: true,
                },
            ) {
                idx.bytes -= old.size;
            }
            idx.bytes += size;
        }
        self.evict();
        self.update_gauges();
    }

    fn drop_entry(&self, key: &ChunkKey) {
        let removed = {
            let mut idx = self.index.lock();
            let e = idx.entries.pop(key);
            if let Some(e) = &e {
                idx.bytes -= e.size;
            }
            e
        };
        if removed.is_some() {
            let _ = std::fs::remove_file(self.path(key));
            self.update_gauges();
        }
    }

    /// Evicts least recently used, unpinned entries until the disk use is under the cap.
    fn evict(&self) {
        if self.max_size == 0 {
            return;
        }
        let victims: Vec<(ChunkKey, u64)> = {
            let mut idx = self.index.lock();
            if idx.bytes <= self.max_size {
                return;
            }
            let mut excess = idx.bytes - self.max_size;
            let mut victims = Vec::new();
            for (k, e) in idx.entries.iter().rev() {
                if excess == 0 {
                    break;
                }
                if idx.pins.contains_key(k) {
                    continue;
                }
                victims.push((*k, e.size));
                excess = excess.saturating_sub(e.size);
            }
            for (k, size) in &victims {
                idx.entries.pop(k);
                idx.bytes -= size;
            }
            victims
        };
        let mut memory = self.memory.lock();
        for (k, size) in &victims {
            memory.remove(k);
            let _ = std::fs::remove_file(self.path(k));
            Metrics::inc(&self.metrics.evictions);
            Metrics::add(&self.metrics.bytes_evicted, *size);
        }
        Metrics::set(&self.metrics.memory_bytes, memory.bytes());
        drop(memory);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        Metrics::set(&self.metrics.disk_bytes, self.index.lock().bytes);
    }
}

/// Keeps one key from eviction while alive.
pub struct Pin {
    inner: Arc<Inner>,
    key: ChunkKey,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let over = {
            let mut idx = self.inner.index.lock();
            if let Some(n) = idx.pins.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    idx.pins.remove(&self.key);
                }
            }
            self.inner.max_size != 0 && idx.bytes > self.inner.max_size
        };
        if over {
            self.inner.evict();
        }
    }
}

/// A verified entry opened for use as a backing file; pinned while alive.
pub struct OpenEntry {
    /// Path of the entry file (stable while pinned).
    pub path: PathBuf,
    /// The open file (read-only).
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
    _pin: Pin,
}

/// An entry being written piece by piece; see [`ChunkCache::writer`].
pub struct CacheWriter {
    cache: ChunkCache,
    key: ChunkKey,
    tmp: TempEntry,
    hasher: Sha256,
    written: u64,
}

impl CacheWriter {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        if self.key.is_verifiable() {
            self.hasher.update(data);
        }
        self.written += data.len() as u64;
        self.tmp.write(data)
    }

    /// Checks the content against the key and makes the entry visible. On mismatch nothing
    /// is stored.
    pub fn commit(self) -> Result<(), CacheError> {
        let ok = match &self.key {
            ChunkKey::Digest(d) => self.hasher.finalize().as_slice() == d,
            ChunkKey::Unverified { size, .. } => self.written == *size,
        };
        if !ok {
            return Err(CacheError::Mismatch {
                key: self.key,
                got: self.written,
                digest_checked: self.key.is_verifiable(),
            });
        }
        let inner = &self.cache.inner;
        self.tmp
            .persist(&inner.dir, &self.key, !self.key.is_verifiable())?;
        inner.add_entry(self.key, self.written);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
