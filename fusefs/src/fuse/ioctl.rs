//! The ioctls a local filesystem answers on a read-only layer: the inode flags
//! (`FS_IOC_GETFLAGS`, what `lsattr` asks, and `FS_IOC_FSGETXATTR`), which overlayfs also
//! reads when it copies a lower file up. A layer's entries carry none, so both answer
//! zeros; every other ioctl is ENOTTY, as for an ioctl a filesystem does not know.
//! (Unanswered, the kernel turned them into ENOTTY too, but `lsattr` failed where it
//! works on an extracted layer, and each call was logged as not implemented.)

/// `FS_IOC_GETFLAGS` and its 32-bit form (FUSE carries commands as 32 bits).
const FS_IOC_GETFLAGS: u32 = libc::FS_IOC_GETFLAGS as u32;
const FS_IOC32_GETFLAGS: u32 = libc::FS_IOC32_GETFLAGS as u32;
/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`; not in the libc crate).
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
/// Size of `struct fsxattr`.
const FSXATTR_SIZE: usize = 28;

/// The reply to ioctl `cmd` with `out_size` bytes of room: `Some(bytes)` to answer,
/// `None` for ENOTTY.
pub(crate) fn answer(cmd: u32, out_size: u32) -> Option<&'static [u8]> {
    static ZEROS: [u8; FSXATTR_SIZE] = [0; FSXATTR_SIZE];
    let want = match cmd {
        FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => 4,
        FS_IOC_FSGETXATTR => FSXATTR_SIZE,
        _ => return None,
    };
    Some(&ZEROS[..want.min(out_size as usize)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_zero_and_other_ioctls_unknown() {
        assert_eq!(answer(FS_IOC_GETFLAGS, 4), Some(&[0u8; 4][..]));
        assert_eq!(answer(FS_IOC_GETFLAGS, 8), Some(&[0u8; 4][..]));
        assert_eq!(answer(FS_IOC_FSGETXATTR, 28), Some(&[0u8; 28][..]));
        assert_eq!(answer(0x5421, 0), None); // FIONBIO
    }
}
