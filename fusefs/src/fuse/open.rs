//! Open files and FUSE passthrough. The kernel forbids mixing, on one inode, opens served
//! through the page cache and passthrough opens (the second kind fails with ETXTBSY), and
//! wants one backing file per inode: so each inode's opens are counted by kind and a new
//! open takes the kind of the ones still open. A passthrough open keeps the cache entry
//! pinned (not evicted) and its backing id registered until the inode's last release.

use std::collections::HashMap;

use estargz::EntryId;
use fuser::BackingId;
use parking_lot::Mutex;

use crate::cache::OpenEntry;

/// How an open was answered (the low bit of its file handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Reads come to the daemon (through the page cache, kept across opens).
    Cached = 0,
    /// Reads go straight to the cache file.
    Passthrough = 1,
}

/// A registered backing file and the pinned cache entry behind it.
pub(crate) struct Backing {
    pub(crate) id: BackingId,
    pub(crate) _entry: OpenEntry,
}

/// The opens of one inode.
#[derive(Default)]
pub(crate) struct InodeOpens {
    pub(crate) cached: u32,
    pub(crate) passthrough: u32,
    pub(crate) backing: Option<Backing>,
}

/// Open counts per inode.
#[derive(Default)]
pub(crate) struct Opens {
    inodes: Mutex<HashMap<EntryId, InodeOpens>>,
}

impl Opens {
    /// Runs `f` on the open state of `id` with the lock held (so that deciding an open and
    /// answering it are atomic with respect to other opens and releases).
    pub(crate) fn with<R>(&self, id: EntryId, f: impl FnOnce(&mut InodeOpens) -> R) -> R {
        let mut map = self.inodes.lock();
        let st = map.entry(id).or_default();
        let r = f(st);
        if st.cached == 0 && st.passthrough == 0 {
            map.remove(&id);
        }
        r
    }

    /// Records a release.
    pub(crate) fn release(&self, id: EntryId, mode: OpenMode) {
        let mut map = self.inodes.lock();
        let Some(st) = map.get_mut(&id) else { return };
        match mode {
            OpenMode::Cached => st.cached = st.cached.saturating_sub(1),
            OpenMode::Passthrough => {
                st.passthrough = st.passthrough.saturating_sub(1);
                if st.passthrough == 0 {
                    st.backing = None;
                }
            }
        }
        if st.cached == 0 && st.passthrough == 0 {
            map.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_inode_and_dropped_at_zero() {
        let o = Opens::default();
        o.with(3, |s| s.cached += 1);
        o.with(3, |s| s.cached += 1);
        assert_eq!(o.with(3, |s| s.cached), 2);
        o.release(3, OpenMode::Cached);
        o.release(3, OpenMode::Cached);
        assert_eq!(o.with(3, |s| s.cached), 0);
        assert!(o.inodes.lock().is_empty());
    }
}
