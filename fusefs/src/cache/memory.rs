//! The in-memory LRU of hot chunks, bounded by bytes (not by entry count).

use bytes::Bytes;
use lru::LruCache;

use super::ChunkKey;

/// Byte-bounded LRU of chunk contents.
pub(crate) struct MemoryLru {
    entries: LruCache<ChunkKey, Bytes>,
    bytes: u64,
    capacity: u64,
}

impl MemoryLru {
    pub(crate) fn new(capacity: u64) -> Self {
        MemoryLru {
            entries: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    pub(crate) fn get(&mut self, key: &ChunkKey) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    /// Inserts `data`, evicting least recently used chunks; chunks larger than the whole
    /// capacity are not kept.
    pub(crate) fn insert(&mut self, key: ChunkKey, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        if let Some(old) = self.entries.put(key, data) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.capacity {
            match self.entries.pop_lru() {
                Some((_, v)) => self.bytes -= v.len() as u64,
                None => break,
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &ChunkKey) {
        if let Some(v) = self.entries.pop(key) {
            self.bytes -= v.len() as u64;
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_bound() {
        let mut m = MemoryLru::new(10);
        let k = |i: u8| ChunkKey::of(&[i]);
        m.insert(k(1), Bytes::from_static(b"aaaa"));
        m.insert(k(2), Bytes::from_static(b"bbbb"));
        assert!(m.get(&k(1)).is_some()); // 1 is now most recent
        m.insert(k(3), Bytes::from_static(b"cccc"));
        assert_eq!(m.bytes(), 8);
        assert!(m.get(&k(2)).is_none(), "least recently used evicted");
        assert!(m.get(&k(1)).is_some() && m.get(&k(3)).is_some());
        m.insert(k(4), Bytes::from(vec![0; 11]));
        assert!(m.get(&k(4)).is_none(), "larger than capacity: not kept");
        m.remove(&k(1));
        assert_eq!(m.bytes(), 4);
    }
}
