//! Entry metadata as the kernel sees it: inode numbers (`id + 1`), kinds, modes, sizes and
//! block counts as an extracted copy on ext4 (4 KiB blocks) shows them, times, device
//! numbers. Whiteouts are 0/0 character devices with mode 0, as overlayfs and containerd
//! create them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use estargz::{Entry, EntryId, EntryKind};
use fuser::{FileAttr, FileType, INodeNo};

/// Block size reported by `stat`.
pub(crate) const BLOCK_SIZE: u32 = 4096;
/// Size of a directory, as on ext4.
const DIR_SIZE: u64 = 4096;
/// A symlink target this long or longer takes a block (ext4 keeps shorter ones in the
/// inode: `du` and `st_blocks` count 4 KiB for the others).
const FAST_SYMLINK_MAX: u64 = 60;

/// The inode number of an entry.
pub(crate) fn ino(id: EntryId) -> INodeNo {
    INodeNo(u64::from(id) + 1)
}

/// The entry id of an inode number (`None` for 0 or out of range).
pub(crate) fn id_of(ino: INodeNo) -> Option<EntryId> {
    ino.0.checked_sub(1).and_then(|v| u32::try_from(v).ok())
}

pub(crate) fn file_type(e: &Entry<'_>) -> FileType {
    match e.kind() {
        EntryKind::Dir => FileType::Directory,
        EntryKind::Reg => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Char => FileType::CharDevice,
        EntryKind::Block => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

/// Linux's `new_encode_dev`, the encoding FUSE's `rdev` uses.
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

/// The attributes of an entry.
pub(crate) fn attr_of(e: &Entry<'_>) -> FileAttr {
    let kind = file_type(e);
    let (size, blocks) = match e.kind() {
        EntryKind::Reg => (e.size(), e.size().div_ceil(u64::from(BLOCK_SIZE)) * 8),
        EntryKind::Symlink => {
            let len = e.symlink_target().map_or(0, |t| t.len() as u64);
            (len, if len >= FAST_SYMLINK_MAX { 8 } else { 0 })
        }
        EntryKind::Dir => (DIR_SIZE, 8),
        _ => (0, 0),
    };
    let (major, minor) = e.rdev();
    let (secs, nanos) = e.mtime();
    let t = time(secs, nanos);
    FileAttr {
        ino: ino(e.id()),
        size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: if e.is_whiteout() {
            0
        } else {
            (e.mode() & 0o7777) as u16
        },
        nlink: e.nlink().max(1),
        uid: e.uid(),
        gid: e.gid(),
        rdev: encode_dev(major, minor),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_dev(0, 0), 0);
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x1234), 0x34 | (8 << 8) | (0x1200 << 12));
    }

    #[test]
    fn inode_numbers_are_ids_plus_one() {
        assert_eq!(ino(0), INodeNo::ROOT);
        assert_eq!(id_of(INodeNo(1)), Some(0));
        assert_eq!(id_of(INodeNo(0)), None);
        assert_eq!(id_of(INodeNo(u64::MAX)), None);
    }

    #[test]
    fn negative_times_are_before_the_epoch() {
        assert_eq!(
            time(-1, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(500)
        );
    }
}
