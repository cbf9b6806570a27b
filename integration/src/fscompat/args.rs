//! The arguments of a [`super::Call`]: what a path is, and the `statx` fields, changes,
//! open flags, seeks, locks and ioctls a call names.

use std::path::Path;

/// What a path is (on the reference side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    Reg,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device (whiteouts included).
    Char,
    /// Block device.
    Block,
    /// FIFO.
    Fifo,
    /// Socket.
    Socket,
    /// Nothing there.
    Missing,
}

impl Kind {
    /// The kind of `path` (not following a final symlink).
    pub fn of(path: &Path) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Err(_) => Kind::Missing,
            Ok(m) => {
                let t = m.file_type();
                if t.is_file() {
                    Kind::Reg
                } else if t.is_dir() {
                    Kind::Dir
                } else if t.is_symlink() {
                    Kind::Symlink
                } else if t.is_char_device() {
                    Kind::Char
                } else if t.is_block_device() {
                    Kind::Block
                } else if t.is_fifo() {
                    Kind::Fifo
                } else {
                    Kind::Socket
                }
            }
        }
    }
}

/// A field of `statx(2)` (called with `AT_SYMLINK_NOFOLLOW`, asking for the basic stats
/// and the birth time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatField {
    /// `stx_mode` (type and permission bits).
    Mode,
    /// `stx_nlink`.
    Nlink,
    /// `stx_uid`.
    Uid,
    /// `stx_gid`.
    Gid,
    /// `stx_size`.
    Size,
    /// `stx_blocks`.
    Blocks,
    /// `stx_blksize`.
    Blksize,
    /// `stx_atime` (seconds and nanoseconds).
    Atime,
    /// `stx_mtime`.
    Mtime,
    /// `stx_ctime`.
    Ctime,
    /// `stx_rdev_major:stx_rdev_minor`.
    Rdev,
    /// Whether `stx_dev` is the device of the tree's root (what `find -xdev`, `du -x`
    /// and `tar --one-file-system` compare).
    DevIsRoot,
    /// `stx_mask` restricted to what was asked for (basic stats and birth time).
    Mask,
    /// `stx_attributes_mask`.
    AttributesMask,
    /// `stx_attributes`.
    Attributes,
}

/// A change to the tree (each on the path, or a new name next to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `truncate(path, 0)`.
    Truncate,
    /// `fchmodat(path, 0o700)`.
    Chmod,
    /// `lchown(path, 5, 5)`.
    Chown,
    /// `utimensat(path, [1, 2], AT_SYMLINK_NOFOLLOW)`.
    Utimes,
    /// `mkdir(path/new-dir)` (or next to a non-directory).
    Mkdir,
    /// `rmdir(path)`.
    Rmdir,
    /// `unlink(path)`.
    Unlink,
    /// `rename(path, path.renamed)`.
    Rename,
    /// `link(path, path.link)`.
    Link,
    /// `symlink("target", path.symlink)`.
    Symlink,
    /// `mknod(path.fifo, S_IFIFO)`.
    Mknod,
    /// `open(path/new-file or path.new, O_CREAT | O_EXCL | O_WRONLY)`.
    Create,
    /// `lsetxattr(path, "user.added", "v")`.
    Setxattr,
    /// `lremovexattr(path, "user.comment")`.
    Removexattr,
    /// `open(path, O_WRONLY | O_APPEND)` and write one byte.
    Append,
}

/// `open(2)` flags to try (`O_CLOEXEC` always; `O_NONBLOCK` added for FIFOs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_WRONLY`.
    WriteOnly,
    /// `O_RDWR`.
    ReadWrite,
    /// `O_RDONLY | O_TRUNC`.
    Trunc,
    /// `O_RDONLY | O_CREAT` (the path exists).
    Creat,
    /// `O_RDONLY | O_CREAT | O_EXCL`.
    CreatExcl,
    /// `O_RDONLY | O_DIRECTORY`.
    Directory,
    /// `O_RDONLY | O_NOFOLLOW`.
    NoFollow,
    /// `O_PATH`.
    Path,
    /// `O_PATH | O_NOFOLLOW`.
    PathNoFollow,
    /// `O_RDONLY | O_NOATIME`.
    NoAtime,
    /// `O_RDONLY | O_DIRECT` (a 4 KiB aligned read follows).
    Direct,
}

/// `lseek(2)` on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA` from 0.
    Data0,
    /// `SEEK_HOLE` from 0.
    Hole0,
    /// `SEEK_DATA` from the size (ENXIO on every Linux filesystem).
    DataAtEnd,
    /// `SEEK_END` 0.
    End,
}

/// A lock attempt on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// `flock(LOCK_SH | LOCK_NB)`.
    FlockShared,
    /// `flock(LOCK_EX | LOCK_NB)`.
    FlockExclusive,
    /// `fcntl(F_SETLK, F_RDLCK)`.
    PosixRead,
    /// `fcntl(F_SETLK, F_WRLCK)` (EBADF on a read-only descriptor).
    PosixWrite,
    /// `fcntl(F_OFD_SETLK, F_RDLCK)`.
    OfdRead,
    /// `fcntl(F_GETLK, F_WRLCK)`.
    GetLock,
}

/// An `ioctl(2)` on a read-only descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctl {
    /// `FIONREAD` (bytes left to read).
    Fionread,
    /// `FS_IOC_GETFLAGS` (`lsattr`).
    GetFlags,
    /// `FS_IOC_FSGETXATTR`.
    FsGetXattr,
}
