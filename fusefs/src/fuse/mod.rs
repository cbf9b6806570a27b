//! The FUSE file system of one lazy layer: a thin [`fuser::Filesystem`] over a
//! [`RemoteLayer`]. Read-only (every modifying call answers EROFS), inode numbers are the
//! index ids plus one (stable for the mount; hardlinks share one), attributes come from the
//! TOC ([`attr`]), and overlay semantics come from the index: whiteouts are 0/0 character
//! devices and opaque directories carry the configured `*.overlay.opaque` xattr, so the
//! mount can be an overlay lowerdir.
//!
//! Dispatch runs on several threads (one `/dev/fuse` clone each). A read is answered on
//! the worker thread only when every byte is in the local cache; otherwise it moves to a
//! task on the tokio runtime and the worker goes on, so reads waiting for the network never
//! hold up cached reads or metadata calls (the kernel bounds outstanding requests).
//! Opens keep the page cache (contents never change). Without passthrough, opens and
//! opendirs answer ENOSYS, which switches the kernel to zero-message opens (no OPEN,
//! RELEASE, OPENDIR or RELEASEDIR round trips; `FOPEN_KEEP_CACHE` and cached listings by
//! default), and FLUSH answers ENOSYS so closes cost nothing either. With passthrough
//! (`[fuse] passthrough`), opens are answered: a file that is one verified cache entry is
//! opened with FUSE passthrough to it ([`open`]), others with `FOPEN_KEEP_CACHE`.
//!
//! Contract: a client cannot tell a lazy layer from the same layer extracted and mounted
//! read-only, call by call (the integration test `fuse_compat` compares both, also
//! through read-only and writable overlays, and lists the few fields that cannot be
//! equal: ctime, birth time, the statx attribute mask, ext4's own `EXTENTS_FL`, the mtime
//! of directories the layer does not list, `st_dev` of files through an overlay).
//! - Extended attributes ([`xattr`]): a missing attribute is ENODATA, an entry without any
//!   lists none, on every layer; size probes and ERANGE as usual; `trusted.*` names are
//!   listed to root only. Never ENOSYS: the kernel would stop asking, but it then answers
//!   EOPNOTSUPP for every later call on the mount, and containerd's and BuildKit's diff
//!   code accept only ENODATA for a missing `security.capability`. The answers come from
//!   the in-memory index, without I/O or allocation; the cost is the round trip itself
//!   (overlayfs asks one or two per file on a new overlay mount: docs/fusefs.md).
//! - Names longer than 255 bytes are ENAMETOOLONG (the kernel lets FUSE names reach 1024).
//! - Inode-flag ioctls (`lsattr`, overlayfs' copy-up) answer no flags, others ENOTTY
//!   ([`ioctl`]).
//! - ENOSYS is answered only where the kernel then does locally what a local filesystem
//!   answers: OPEN/OPENDIR/FLUSH (above), LSEEK (SEEK_DATA/SEEK_HOLE from the size, as on
//!   a file extracted without holes), STATX (basic stats through GETATTR). Locks are the
//!   kernel's local locks; FSYNC succeeds; every change is EROFS (the mount is `ro`, so
//!   the kernel answers most of them before asking).

mod attr;
mod ioctl;
mod open;
mod xattr;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use estargz::{EntryId, EntryKind};
use fuser::{
    AccessFlags, Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::layer::OpaqueXattr;
use crate::layer::{ReadError, RemoteLayer};
use attr::{attr_of, file_type, id_of};
use open::{Backing, OpenMode, Opens};

/// Most readahead the kernel may ask for (bytes).
const MAX_READAHEAD: u32 = 1 << 20;
/// A worker's read buffer larger than this is not kept between reads.
const MAX_KEPT_READ_BUF: usize = 4 << 20;
/// Longest name (bytes), as `statfs` reports it and as on ext4 and xfs.
const NAME_MAX: usize = 255;

thread_local! {
    /// Each FUSE worker's buffer for reads answered from the cache (reused: see
    /// `ReadPath::read_cached_into`).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Kernel-facing options of one mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Attribute cache timeout.
    pub attr_timeout: Duration,
    /// Name lookup cache timeout.
    pub entry_timeout: Duration,
    /// Negative lookup cache timeout (0: not cached).
    pub negative_timeout: Duration,
    /// Use passthrough for files that are one verified cache entry, when the kernel can.
    pub passthrough: bool,
    /// The opaque-directory xattr.
    pub opaque_xattr: OpaqueXattr,
}

impl FsOptions {
    /// Options from `[fuse]`.
    pub fn from_config(fuse: &config::FuseConfig, opaque_xattr: OpaqueXattr) -> Self {
        FsOptions {
            attr_timeout: fuse.attr_timeout,
            entry_timeout: fuse.entry_timeout,
            negative_timeout: fuse.negative_timeout,
            passthrough: fuse.passthrough,
            opaque_xattr,
        }
    }
}

/// Counters of one mount's file system.
#[derive(Debug, Default)]
pub struct FsStats {
    /// Reads answered on the worker thread from the local cache.
    pub cached_reads: AtomicU64,
    /// Reads that waited for the network (answered from a task).
    pub fetched_reads: AtomicU64,
    /// Reads answered with EIO.
    pub failed_reads: AtomicU64,
    /// Opens answered with passthrough.
    pub passthrough_opens: AtomicU64,
    /// Opens answered through the page cache.
    pub cached_opens: AtomicU64,
    /// Name lookups.
    pub lookups: AtomicU64,
    /// Attribute requests.
    pub getattrs: AtomicU64,
    /// Directory listing requests (readdir and readdirplus).
    pub readdirs: AtomicU64,
    /// Open requests (zero with passthrough off: the kernel opens without asking).
    pub opens: AtomicU64,
    /// Release requests.
    pub releases: AtomicU64,
    /// Extended attribute requests (getxattr and listxattr).
    pub xattrs: AtomicU64,
}

impl FsStats {
    fn summary(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "lookups={} getattrs={} readdirs={} opens={} releases={} xattrs={} passthrough_opens={} cached_opens={} cached_reads={} fetched_reads={} failed_reads={}",
            n(&self.lookups),
            n(&self.getattrs),
            n(&self.readdirs),
            n(&self.opens),
            n(&self.releases),
            n(&self.xattrs),
            n(&self.passthrough_opens),
            n(&self.cached_opens),
            n(&self.cached_reads),
            n(&self.fetched_reads),
            n(&self.failed_reads),
        )
    }
}

/// The FUSE file system of one layer.
pub struct LayerFs {
    layer: Arc<RemoteLayer>,
    options: FsOptions,
    passthrough: AtomicBool,
    opens: Opens,
    next_fh: AtomicU64,
    stats: Arc<FsStats>,
}

impl LayerFs {
    /// A file system over `layer`.
    pub fn new(layer: Arc<RemoteLayer>, options: FsOptions) -> Self {
        LayerFs {
            layer,
            passthrough: AtomicBool::new(false),
            options,
            opens: Opens::default(),
            next_fh: AtomicU64::new(1),
            stats: Arc::new(FsStats::default()),
        }
    }

    /// Its counters (shared; stay valid after the file system is gone).
    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn entry(&self, ino: INodeNo) -> Result<estargz::Entry<'_>, Errno> {
        id_of(ino)
            .and_then(|id| self.layer.index().entry(id))
            .ok_or(Errno::ENOENT)
    }

    fn fh(&self, mode: OpenMode) -> FileHandle {
        FileHandle((self.next_fh.fetch_add(1, Ordering::Relaxed) << 1) | mode as u64)
    }

    /// Registers the cache entry of `id`'s contents as the backing file of an open.
    fn register_backing(&self, reply: &ReplyOpen, id: EntryId) -> Option<Backing> {
        let key = self.layer.whole_file_key(id)?;
        let entry = match self.layer.context().cache().open_entry(&key) {
            Ok(Some(e)) => e,
            _ => return None,
        };
        match reply.open_backing(&entry.file) {
            Ok(bid) => Some(Backing {
                id: bid,
                _entry: entry,
            }),
            Err(e) => {
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "FUSE passthrough unavailable; serving reads through the daemon");
                }
                None
            }
        }
    }

    fn reply_read_error(&self, reply: ReplyData, e: &ReadError) {
        match e {
            ReadError::NotAFile => reply.error(Errno::EISDIR),
            _ => {
                self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                reply.error(Errno::EIO)
            }
        }
    }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

#[allow(clippy::too_many_arguments)]
impl fuser::Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.set_max_background(64);
        if self.options.passthrough {
            // Depth 1: the backing files are on a plain filesystem, and the mount itself can
            // still be an overlay lowerdir.
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
            if !ok {
                tracing::info!("kernel has no FUSE passthrough; serving reads through the daemon");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!(
            layer = %self.layer.source().digest,
            "FUSE session ended: {}",
            self.stats.summary()
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        if name.len() > NAME_MAX {
            // As a local filesystem: the kernel lets FUSE names reach 1024 bytes, and a
            // create of a longer name would otherwise fail with EROFS.
            return reply.error(Errno::ENAMETOOLONG);
        }
        let index = self.layer.index();
        let Some(pid) = id_of(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match index
            .lookup(pid, name_bytes(name))
            .and_then(|id| index.entry(id))
        {
            Some(e) => reply.entry_with_ttls(
                &self.options.attr_timeout,
                &self.options.entry_timeout,
                &attr_of(&e),
                Generation(0),
            ),
            None if !self.options.negative_timeout.is_zero()
                && index.entry(pid).is_some_and(|p| p.kind() == EntryKind::Dir) =>
            {
                // Node id 0: a negative entry the kernel caches for the timeout.
                let mut a = attr_of(&index.root());
                a.ino = INodeNo(0);
                reply.entry_with_ttls(
                    &Duration::ZERO,
                    &self.options.negative_timeout,
                    &a,
                    Generation(0),
                )
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.stats.getattrs.fetch_add(1, Ordering::Relaxed);
        match self.entry(ino) {
            Ok(e) => reply.attr(&self.options.attr_timeout, &attr_of(&e)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino) {
            Ok(e) => match e.symlink_target() {
                Some(t) => reply.data(t),
                None => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        if !self.passthrough.load(Ordering::Relaxed) {
            // Zero-message opens: the kernel stops sending OPEN/RELEASE for this mount and
            // opens files with FOPEN_KEEP_CACHE itself (write opens fail: the mount is ro).
            return reply.error(Errno::ENOSYS);
        }
        let e = match self.entry(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        match e.kind() {
            EntryKind::Reg => {}
            EntryKind::Dir => return reply.error(Errno::EISDIR),
            _ => return reply.error(Errno::EINVAL),
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let id = e.id();
        let try_passthrough = self.layer.whole_file_key(id).is_some();
        let cached = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        let stats = &self.stats;
        self.opens.with(id, |st| {
            if st.passthrough == 0 && (st.cached > 0 || !try_passthrough) {
                st.cached += 1;
                stats.cached_opens.fetch_add(1, Ordering::Relaxed);
                return reply.opened(self.fh(OpenMode::Cached), cached);
            }
            if st.backing.is_none() {
                match self.register_backing(&reply, id) {
                    Some(b) => st.backing = Some(b),
                    None => {
                        st.cached += 1;
                        stats.cached_opens.fetch_add(1, Ordering::Relaxed);
                        return reply.opened(self.fh(OpenMode::Cached), cached);
                    }
                }
            }
            st.passthrough += 1;
            stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
            // Reads bypass the daemon: count the file as read when it is opened.
            self.layer.note_read(id);
            let backing = &st.backing.as_ref().expect("registered above").id;
            reply.opened_passthrough(
                self.fh(OpenMode::Passthrough),
                FopenFlags::FOPEN_NOFLUSH,
                backing,
            )
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(id) = id_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut reply = Some(reply);
        let local = READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let r = self
                .layer
                .reads()
                .read_cached_into(id, offset, size, &mut buf);
            if matches!(r, Ok(true)) {
                if let Some(reply) = reply.take() {
                    reply.data(&buf);
                }
            }
            if buf.capacity() > MAX_KEPT_READ_BUF {
                *buf = Vec::new();
            }
            r
        });
        let Some(reply) = reply else {
            self.stats.cached_reads.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match local {
            Ok(true) => {} // answered above (the reply was taken)
            Err(e) => self.reply_read_error(reply, &e),
            Ok(false) => {
                self.stats.fetched_reads.fetch_add(1, Ordering::Relaxed);
                let layer = self.layer.clone();
                let stats = self.stats.clone();
                self.layer.context().runtime().spawn(async move {
                    match layer.read(id, offset, size).await {
                        Ok(data) => reply.data(&data),
                        Err(ReadError::NotAFile) => reply.error(Errno::EISDIR),
                        Err(_) => {
                            stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                            reply.error(Errno::EIO)
                        }
                    }
                });
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush on a read-only layer; ENOSYS makes the kernel stop sending
        // FLUSH on close (one round trip less per file).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.releases.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = id_of(ino) {
            let mode = if fh.0 & 1 == 1 {
                OpenMode::Passthrough
            } else {
                OpenMode::Cached
            };
            self.opens.release(id, mode);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Zero-message opendir: the kernel stops sending OPENDIR/RELEASEDIR and caches
        // listings (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR); readdir checks the inode.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.stats.readdirs.fetch_add(1, Ordering::Relaxed);
        let e = match self.entry(ino) {
            Ok(e) if e.kind() == EntryKind::Dir => e,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(err) => return reply.error(err),
        };
        let index = self.layer.index();
        let mut pos = offset;
        if pos == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            pos = 1;
        }
        if pos == 1 {
            if reply.add(attr::ino(e.parent()), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            pos = 2;
        }
        let mut next = pos;
        for (name, child) in index.children(e.id()).skip((pos - 2) as usize) {
            next += 1;
            let Some(c) = index.entry(child) else {
                continue;
            };
            if reply.add(
                attr::ino(child),
                next,
                file_type(&c),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.stats.readdirs.fetch_add(1, Ordering::Relaxed);
        let e = match self.entry(ino) {
            Ok(e) if e.kind() == EntryKind::Dir => e,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(err) => return reply.error(err),
        };
        let index = self.layer.index();
        let ttl = self.options.entry_timeout;
        let mut pos = offset;
        if pos == 0 {
            if reply.add(ino, 1, ".", &ttl, &attr_of(&e), Generation(0)) {
                return reply.ok();
            }
            pos = 1;
        }
        if pos == 1 {
            let parent = index.entry(e.parent()).unwrap_or(e);
            if reply.add(
                attr::ino(parent.id()),
                2,
                "..",
                &ttl,
                &attr_of(&parent),
                Generation(0),
            ) {
                return reply.ok();
            }
            pos = 2;
        }
        let mut next = pos;
        for (name, child) in index.children(e.id()).skip((pos - 2) as usize) {
            next += 1;
            let Some(c) = index.entry(child) else {
                continue;
            };
            if reply.add(
                attr::ino(child),
                next,
                OsStr::from_bytes(name),
                &ttl,
                &attr_of(&c),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let index = self.layer.index();
        let blocks = index
            .uncompressed_file_bytes()
            .div_ceil(u64::from(attr::BLOCK_SIZE));
        reply.statfs(
            blocks,
            0,
            0,
            index.len() as u64,
            0,
            attr::BLOCK_SIZE,
            NAME_MAX as u32,
            attr::BLOCK_SIZE,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.stats.xattrs.fetch_add(1, Ordering::Relaxed);
        let e = match self.entry(ino) {
            Ok(e) => e,
            Err(err) => return reply.error(err),
        };
        match xattr::value(&e, name_bytes(name), self.options.opaque_xattr) {
            None => reply.error(Errno::NO_XATTR),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(v),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.stats.xattrs.fetch_add(1, Ordering::Relaxed);
        let e = match self.entry(ino) {
            Ok(e) => e,
            Err(err) => return reply.error(err),
        };
        let list = xattr::list(&e, self.options.opaque_xattr, req.uid());
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        match (self.entry(ino), ioctl::answer(cmd, out_size)) {
            (Err(e), _) => reply.error(e),
            (Ok(_), Some(data)) => reply.ioctl(0, data),
            (Ok(_), None) => reply.error(Errno::ENOTTY),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.entry(ino) {
            Err(e) => reply.error(e),
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
        }
    }

    // Everything below modifies the tree: a layer is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
