//! A private ext4 filesystem on a loop device, for measuring which pages a program reads:
//! the device's readahead can be turned off (`blockdev --setra 0`) without touching any
//! other filesystem, so a `read` brings in only the pages it asks for and an mmap fault only
//! its page; the page cache of the files on it can be emptied file by file
//! ([`evict`], `posix_fadvise(DONTNEED)` after `syncfs`) and read back with `mincore`
//! ([`resident_pages`]). Unmounted and detached on drop.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::process::run_cmd;

/// The filesystem: backing file, loop device, mount point.
#[derive(Debug)]
pub struct LoopFs {
    image: PathBuf,
    device: String,
    mountpoint: PathBuf,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    Ok(
        run_cmd(Command::new(program).args(args), Duration::from_secs(120))?
            .check()?
            .stdout,
    )
}

impl LoopFs {
    /// Creates a sparse `size`-byte image at `image`, makes ext4 on it, attaches it to a free
    /// loop device with readahead `readahead_kib` and mounts it at `mountpoint`.
    pub fn create(
        image: &Path,
        mountpoint: &Path,
        size: u64,
        readahead_kib: u32,
    ) -> Result<LoopFs> {
        crate::prereq::binaries(&["losetup", "mkfs.ext4", "blockdev", "mount", "umount"])
            .map_err(Error::Missing)?;
        let f = std::fs::File::create(image).ctx(|| format!("create {}", image.display()))?;
        f.set_len(size)
            .ctx(|| format!("size {} to {size} bytes", image.display()))?;
        drop(f);
        let img = image.to_string_lossy().into_owned();
        run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=1", &img])?;
        let device = run("losetup", &["--find", "--show", &img])?
            .trim()
            .to_string();
        let mut fs = LoopFs {
            image: image.to_path_buf(),
            device,
            mountpoint: mountpoint.to_path_buf(),
            mounted: false,
        };
        fs.set_readahead(readahead_kib)?;
        std::fs::create_dir_all(mountpoint).ctx(|| format!("create {}", mountpoint.display()))?;
        run(
            "mount",
            &[&fs.device, &mountpoint.to_string_lossy(), "-o", "noatime"],
        )?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Sets the device's readahead (KiB; 0 = off).
    pub fn set_readahead(&mut self, kib: u32) -> Result<()> {
        let sectors = (kib * 2).to_string();
        run("blockdev", &["--setra", &sectors, &self.device])?;
        Ok(())
    }

    /// The device's readahead in KiB, as the kernel reports it.
    pub fn readahead_kib(&self) -> Result<u32> {
        let s = run("blockdev", &["--getra", &self.device])?;
        s.trim()
            .parse::<u32>()
            .map(|sectors| sectors / 2)
            .map_err(|e| Error::invalid("blockdev --getra", format!("{s:?}: {e}")))
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Writes back every dirty page of the filesystem (`syncfs`).
    pub fn sync(&self) -> Result<()> {
        let dir = std::fs::File::open(&self.mountpoint)
            .ctx(|| format!("open {}", self.mountpoint.display()))?;
        nix::unistd::syncfs(dir.as_fd())
            .map_err(|e| Error::sys(format!("syncfs {}", self.mountpoint.display()), e))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[&self.mountpoint.to_string_lossy()]).is_err() {
            // something is still mounted inside or busy: detach it all lazily
            let _ = crate::mounts::unmount_under(&self.mountpoint);
        }
        let _ = run("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Drops the clean cached pages of `file` (dirty ones must be written back first).
pub fn evict(file: &std::fs::File) -> Result<()> {
    nix::fcntl::posix_fadvise(
        file.as_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(|e| Error::sys("posix_fadvise(DONTNEED)", e))
}

/// Which 4 KiB pages of `file` are in the page cache (`mincore` over a shared read-only
/// mapping, which itself faults nothing in); one bool per page.
pub fn resident_pages(file: &std::fs::File) -> Result<Vec<bool>> {
    let len = file.metadata().ctx(|| "stat for mincore".into())?.len();
    if len == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the mapping is read-only and never read through: only its residency is
    // asked. A concurrent truncation could make pages vanish, which mincore reports as
    // absent, not as a fault.
    let map = unsafe { memmap2::MmapOptions::new().map(file) }.ctx(|| "mmap for mincore".into())?;
    let page = 4096usize;
    let pages = (len as usize).div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `len` bytes starting at a page-aligned address,
    // and `vec` holds one byte for each of its `pages` pages, as mincore(2) requires.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            len as usize,
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::sys("mincore", nix::errno::Errno::last()));
    }
    Ok(vec.into_iter().map(|b| b & 1 == 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn eviction_and_residency_follow_reads() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (loop device, mount)");
            return;
        }
        let wd = crate::workdir::Workdir::new("loopfs").unwrap();
        let fs = match LoopFs::create(&wd.join("img"), &wd.join("mnt"), 64 << 20, 0) {
            Ok(fs) => fs,
            Err(e) => {
                eprintln!("SKIP: no loop filesystem here: {e}");
                return;
            }
        };
        assert_eq!(fs.readahead_kib().unwrap(), 0);
        let p = fs.path().join("f");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&vec![7u8; 40 * 4096]).unwrap();
        drop(f);
        fs.sync().unwrap();
        let f = std::fs::File::open(&p).unwrap();
        evict(&f).unwrap();
        assert!(resident_pages(&f).unwrap().iter().all(|r| !r));
        let mut b = [0u8; 100];
        f.read_exact_at(&mut b, 5 * 4096 + 10).unwrap();
        f.read_exact_at(&mut [0u8; 5000], 20 * 4096).unwrap();
        let got: Vec<usize> = resident_pages(&f)
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, vec![5, 20, 21], "only the pages read, no readahead");
    }
}
