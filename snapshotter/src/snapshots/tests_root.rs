//! The core with real mounts (root only): overlay stacking, read-only views, and that
//! directories are never deleted through a mount left on them.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::tests::{labels, open};
use super::*;
use crate::remote::{HookError, LayerOutcome, LayerRequest};
use linuxfs::mountinfo::is_mountpoint;
use linuxfs::MountGuard;

/// True when the test may mount; otherwise prints why it is skipped (or fails when
/// STARLING_REQUIRE_INTEGRATION=1).
fn can_mount() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
        "this test needs root (STARLING_REQUIRE_INTEGRATION=1)"
    );
    eprintln!("skipped: needs root to mount");
    false
}

fn features() -> OverlayFeatures {
    OverlayFeatures {
        index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        userxattr: false,
    }
}

#[test]
fn layers_stack_and_views_are_read_only() {
    if !can_mount() {
        return;
    }
    let (t, s) = open(Options {
        features: features(),
        ..Options::default()
    });
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    let m = s.prepare("l1", "", Labels::new()).unwrap();
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        fs::create_dir(mnt.join("etc")).unwrap();
        fs::write(mnt.join("etc/keep"), b"one").unwrap();
        fs::write(mnt.join("etc/drop"), b"gone soon").unwrap();
    }
    s.commit("c1", "l1", Labels::new()).unwrap();

    let m = s.prepare("l2", "c1", Labels::new()).unwrap();
    assert_eq!(m[0].fstype, "overlay");
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read(mnt.join("etc/keep")).unwrap(), b"one");
        fs::remove_file(mnt.join("etc/drop")).unwrap();
        fs::write(mnt.join("etc/keep"), b"two").unwrap();
        fs::write(mnt.join("new"), b"n").unwrap();
    }
    let usage = s.usage("l2").unwrap();
    assert!(
        usage.inodes >= 4,
        "root, etc, keep, new, whiteout: {usage:?}"
    );
    s.commit("c2", "l2", Labels::new()).unwrap();

    let m = s.view("v2", "c2", Labels::new()).unwrap();
    assert_eq!(m[0].fstype, "overlay");
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read(mnt.join("etc/keep")).unwrap(), b"two");
        assert_eq!(
            fs::read(mnt.join("etc/drop")).unwrap_err().kind(),
            IoKind::NotFound
        );
        let err = fs::write(mnt.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    let m = s.view("v1", "c1", Labels::new()).unwrap();
    assert_eq!(m[0].fstype, "bind");
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read(mnt.join("etc/drop")).unwrap(), b"gone soon");
        let err = fs::write(mnt.join("etc/keep"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    assert!(!is_mountpoint(&mnt).unwrap());
    for k in ["v1", "v2", "c2", "c1"] {
        s.remove(k).unwrap();
    }
    assert_eq!(fs::read_dir(s.layout().snapshots_dir()).unwrap().count(), 0);
}

/// Mounts a tmpfs on the mountpoint (a stand-in for FUSE) and "forgets" to unmount it on
/// remove, so the core must detach it before deleting the directory.
struct TmpfsHook;

impl RemoteLayers for TmpfsHook {
    fn prepare(&self, req: &LayerRequest<'_>) -> LayerOutcome {
        mount(
            Some("tmpfs"),
            req.mountpoint,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        fs::write(req.mountpoint.join("from-remote"), b"lazy").unwrap();
        LayerOutcome::Mounted {
            labels: Labels::new(),
        }
    }
    fn restore(&self, _: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        Ok(())
    }
    fn remove(&self, _: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        Err("simulated unmount failure".into())
    }
}

#[test]
fn remote_mounts_stack_and_are_detached_before_deletion() {
    if !can_mount() {
        return;
    }
    let (t, s) = open(Options {
        features: features(),
        remote: Some(Arc::new(TmpfsHook)),
        ..Options::default()
    });
    let l = labels(&[
        (crate::labels::TARGET_REF, "sha256:r1"),
        (crate::labels::STARGZ_REFERENCE, "127.0.0.1:1/i:1"),
        (crate::labels::STARGZ_DIGEST, "sha256:d"),
    ]);
    let err = s.prepare("ns/1/extract", "", l).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::AlreadyExists);
    let remote_fs = s.layout().fs_dir(1);
    assert!(is_mountpoint(&remote_fs).unwrap());

    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = s.prepare("ns/1/ctr", "sha256:r1", Labels::new()).unwrap();
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read(mnt.join("from-remote")).unwrap(), b"lazy");
    }
    s.remove("ns/1/ctr").unwrap();
    s.remove("sha256:r1").unwrap();
    assert!(!is_mountpoint(&remote_fs).unwrap());
    assert_eq!(fs::read_dir(s.layout().snapshots_dir()).unwrap().count(), 0);
}

#[test]
fn cleanup_detaches_mounts_left_in_stray_directories() {
    if !can_mount() {
        return;
    }
    let (t, s) = open(Options::default());
    let stray = s.layout().snapshots_dir().join("42/fs");
    fs::create_dir_all(&stray).unwrap();
    // Something precious outside the snapshot dir, bind-mounted into the stray: cleanup
    // must detach, not delete through the mount.
    let precious = t.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("data"), b"keep me").unwrap();
    mount(
        Some(&precious),
        &stray,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    assert_eq!(s.cleanup().unwrap(), 1);
    assert!(!is_mountpoint(&stray).unwrap());
    assert_eq!(fs::read(precious.join("data")).unwrap(), b"keep me");
    assert_eq!(fs::read_dir(s.layout().snapshots_dir()).unwrap().count(), 0);
}
