//! The system calls of FUSE connections: the device number of a mount (`None` once its
//! connection is gone), aborting a connection through `/sys/fs/fuse/connections`, and
//! asking the kernel to resend the requests of a connection (`FUSE_NOTIFY_RESEND`).
//! Mountinfo and unmounting are `linuxfs`'s.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The device number of the filesystem at `path` (`None` if the mount's connection is
/// gone: ENOTCONN).
pub fn device_of(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.dev())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Aborts the FUSE connection of the filesystem with device number `dev`: its pending
/// and future requests fail with ENOTCONN, and its server's session ends.
pub fn abort_connection(dev: u64) -> io::Result<()> {
    let minor = libc::minor(dev);
    let p = format!("/sys/fs/fuse/connections/{minor}/abort");
    std::fs::write(p, b"1")
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9+): the kernel puts every request that a server read
/// from the connection but did not answer back into the queue, to be read again.
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Asks the kernel to resend the requests of the FUSE connection of `fd` that were read
/// and never answered (by a server that died). EINVAL: the kernel cannot.
pub fn resend_unanswered(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let n = nix::unistd::write(fd, &msg)?;
    if n != msg.len() {
        return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}
