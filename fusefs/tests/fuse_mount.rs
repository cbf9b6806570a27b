//! The FUSE mount of a lazy layer (needs root, /dev/fuse and docker-registry): the mounted
//! tree equals the tar's (types, modes, owners, times, contents, symlinks, devices,
//! whiteouts, opaque dirs, xattrs, hardlinks); `stat` sizes and blocks, EROFS for writes,
//! passthrough for cached files, restore from state, busy unmounts; and faults seen through
//! the filesystem: a stopped or frozen registry gives EIO within the read timeout while
//! cached files and metadata keep working, reads recover when it is back, and a
//! byte-flipping proxy never gets a corrupted byte to a reader.

mod common;
mod lazy;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use estargz::testutil::{edge_case_tar, manifest_from_tar, pattern};
use estargz::BuildOptions;
use fusefs::mount::{MountManager, Unmounted};
use registry::testutil::proxy::{Proxy, ProxyMode};
use registry::Repository;

macro_rules! require_fuse {
    () => {
        require_registry!();
        if !lazy::fuse_available() {
            return;
        }
    };
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn mounted_layer_matches_the_tar() {
    require_fuse!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let tar = edge_case_tar();
    let built = lazy::build(
        &tar,
        &BuildOptions {
            chunk_size: 64 << 10,
            ..Default::default()
        },
    );
    let status_dir = dir.path().join("status");
    let (ctx, _) = lazy::context(
        dir.path(),
        rt.handle().clone(),
        reg.dir.path(),
        lazy::settings(
            lazy::on_demand_only(fetch_config()),
            true,
            Some(&status_dir),
        ),
    );
    let repo = Repository::new(reg.host(), "fuse/edge");
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx.clone());
    let state = dir.path().join("state");
    let mounted = manager.mount(source.clone(), &state, &mp).unwrap();
    let expected = manifest_from_tar(&tar);
    expected.assert_same(&lazy::manifest_from_dir(&mp));

    // stat agrees with an extracted copy on a 4 KiB-block filesystem.
    let big = std::fs::metadata(mp.join("etc/big")).unwrap();
    assert_eq!(
        (big.len(), big.blocks(), big.blksize()),
        (200_000, 200_000u64.div_ceil(4096) * 8, 4096)
    );
    let hard = std::fs::metadata(mp.join("bin/hard")).unwrap();
    let busybox = std::fs::metadata(mp.join("bin/busybox")).unwrap();
    assert_eq!((hard.ino(), hard.nlink()), (busybox.ino(), 2));
    assert_eq!(std::fs::metadata(mp.join("etc/empty")).unwrap().blocks(), 0);
    let wh = std::fs::symlink_metadata(mp.join("var/gone")).unwrap();
    assert_eq!(
        (wh.mode() & 0o170000, wh.mode() & 0o7777, wh.rdev()),
        (0o020000, 0, 0)
    );
    assert_eq!(
        xattr_get(&mp.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr_get(&mp.join("var"), "trusted.overlay.opaque"), None);
    // Inode numbers are stable.
    assert_eq!(
        std::fs::metadata(mp.join("etc/big")).unwrap().ino(),
        big.ino()
    );

    // Read-only.
    assert_eq!(
        errno_of(std::fs::write(mp.join("etc/new"), b"x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open(mp.join("etc/passwd"))
        ),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(mp.join("d"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::remove_file(mp.join("etc/passwd"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::rename(mp.join("etc/passwd"), mp.join("etc/p2"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::read(mp.join("no/such"))),
        Some(libc::ENOENT)
    );

    // Files read once are cached whole: a new open goes through passthrough, same bytes.
    let want = std::fs::read(mp.join("etc/passwd")).unwrap();
    let before = mounted
        .stats()
        .passthrough_opens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(std::fs::read(mp.join("etc/passwd")).unwrap(), want);
    let after = mounted
        .stats()
        .passthrough_opens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > before, "no passthrough open ({before} -> {after})");

    // Status file while mounted.
    let records = fusefs::status::read_status_dir(&status_dir).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].mountpoint, std::fs::canonicalize(&mp).unwrap());
    assert_eq!(records[0].layer.digest, source.digest.to_string());

    // A busy mount is detached; the reader keeps its file.
    let mut f = std::fs::File::open(mp.join("etc/big")).unwrap();
    assert_eq!(manager.unmount(&mp).unwrap(), Unmounted::Detached);
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), 200_000);
    drop(f);
    assert!(
        std::fs::read_dir(&mp).unwrap().next().is_none(),
        "mountpoint not empty"
    );
    assert!(fusefs::status::read_status_dir(&status_dir)
        .unwrap()
        .is_empty());
    drop(mounted);

    // Restored from its state (registry not needed for cached files), then dropped.
    let restored = manager.restore(&state, &mp).unwrap();
    assert_eq!(std::fs::read(mp.join("etc/passwd")).unwrap(), want);
    assert!(restored.check().is_ok());
    drop(restored);
    drop(manager);
    assert!(
        std::fs::read_dir(&mp).unwrap().next().is_none(),
        "mountpoint not empty after drop"
    );
}

/// Layers converted by ctr-remote lost their non-UTF-8 names in the TOC (U+FFFD): the
/// mount shows the tar headers' names, equal to the original tar (what a full pull
/// unpacks), and so does a restore without the registry (the names are saved with the
/// layer's state).
#[test]
fn names_the_toc_lost_are_the_tar_headers_names() {
    require_fuse!();
    let rt = lazy::runtime();
    let mut reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../estargz/tests/fixtures");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("ctr-remote-lostnames.json")).unwrap())
            .unwrap();
    let expected = manifest_from_tar(&estargz::testutil::lost_names_tar());
    let (ctx, _) = lazy::context(
        dir.path(),
        rt.handle().clone(),
        reg.dir.path(),
        lazy::settings(lazy::on_demand_only(fetch_config()), false, None),
    );
    let manager = MountManager::new(ctx.clone());
    for key in ["estargz", "zstdchunked"] {
        let m = &meta[key];
        let blob =
            bytes::Bytes::from(std::fs::read(fixtures.join(m["blob"].as_str().unwrap())).unwrap());
        let repo = Repository::new(reg.host(), "fuse/lost-names");
        let digest = rt.block_on(push(ctx.client(), &repo, &blob));
        let source = fusefs::layer::LayerSource {
            repository: repo,
            digest,
            size: Some(blob.len() as u64),
            toc_digest: Some(m["tocDigest"].as_str().unwrap().parse().unwrap()),
        };
        let mp = dir.path().join(format!("mnt-{key}"));
        std::fs::create_dir(&mp).unwrap();
        let state = dir.path().join(format!("state-{key}"));
        let mounted = manager.mount(source, &state, &mp).unwrap();
        expected.assert_same(&lazy::manifest_from_dir(&mp));
        drop(mounted);
        manager.unmount(&mp).unwrap();
        // Every file was read (cached): the restore needs no registry at all.
        reg.kill();
        let restored = manager.restore(&state, &mp).unwrap();
        expected.assert_same(&lazy::manifest_from_dir(&mp));
        drop(restored);
        manager.unmount(&mp).unwrap();
        reg.restart();
    }
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn a_layer_without_xattrs_answers_like_an_extracted_layer() {
    require_fuse!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let built = files_layer(3);
    let (ctx, _) = lazy::fetch_context(
        dir.path(),
        &rt,
        reg.dir.path(),
        lazy::on_demand_only(fetch_config()),
    );
    let repo = Repository::new(reg.host(), "fuse/noxattr");
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx);
    let m = manager
        .mount(source, &dir.path().join("state"), &mp)
        .unwrap();
    let xattr_calls = || m.stats().xattrs.load(std::sync::atomic::Ordering::Relaxed);
    // Every call, not only the first, answers ENODATA (a missing attribute) and an empty
    // list: containerd's and BuildKit's diff code accept only ENODATA for a missing
    // `security.capability` (EOPNOTSUPP failed every image export on a lazy base).
    for f in ["f0", "f1", "f2", "f0", ""] {
        let p = mp.join(f);
        for name in ["trusted.overlay.metacopy", "security.capability", "user.x"] {
            assert_eq!(xattr_get(&p, name), None);
            assert_eq!(
                errno_of(xattr_get_errno(&p, name)),
                Some(libc::ENODATA),
                "{name} of {p:?}"
            );
        }
        assert_eq!(xattr_list_len(&p).unwrap(), 0, "listxattr of {p:?}");
    }
    assert_eq!(xattr_calls(), 5 * (3 * 2 + 1));
    assert_eq!(std::fs::read(mp.join("f1")).unwrap(), pattern(100_000, 1));
    // Inode flags (lsattr; overlayfs asks them on copy-ups): none, as a local filesystem
    // answers for a file without flags.
    assert_eq!(inode_flags(&mp.join("f1")).unwrap(), 0);
    assert_eq!(inode_flags(&mp).unwrap(), 0);
}

/// `FS_IOC_GETFLAGS` of `p`.
fn inode_flags(p: &Path) -> std::io::Result<libc::c_long> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: a valid open fd and a pointer to a long the kernel writes the flags into.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(flags)
    }
}

/// The size of `p`'s xattr name list.
fn xattr_list_len(p: &Path) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated string; a zero-size query writes nothing.
    let r = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn xattr_get_errno(p: &Path, name: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings; a zero-size query writes nothing.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A layer of `n` files `f<i>` of 100 KB each.
fn files_layer(n: u64) -> lazy::BuiltLayer {
    let tar = lazy::pattern_files_tar(n, 100_000, |i| format!("f{i}"));
    lazy::build(&tar, &BuildOptions::default())
}

fn faulty_fetch() -> config::FetchConfig {
    config::FetchConfig {
        request_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(3),
        max_retries: 20,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        ..lazy::on_demand_only(fetch_config())
    }
}

/// Reads `f{i}` through the mount, timing it.
fn read_file(mp: &Path, i: u64) -> (std::io::Result<Vec<u8>>, Duration) {
    let t = Instant::now();
    let r = std::fs::read(mp.join(format!("f{i}")));
    (r, t.elapsed())
}

#[test]
fn registry_faults_give_eio_in_bounded_time_and_recover() {
    require_fuse!();
    let rt = lazy::runtime();
    let mut reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let built = files_layer(8);
    let (ctx, _) = lazy::context(
        dir.path(),
        rt.handle().clone(),
        reg.dir.path(),
        lazy::settings(faulty_fetch(), true, None),
    );
    let repo = Repository::new(reg.host(), "fuse/faults");
    let (source, mp) = lazy::push_for_mount(&rt, &ctx, &repo, &built, dir.path());
    let manager = MountManager::new(ctx);
    let _m = manager
        .mount(source, &dir.path().join("state"), &mp)
        .unwrap();
    assert_eq!(read_file(&mp, 0).0.unwrap(), pattern(100_000, 0));

    // Every read ends within the read timeout of the first request for its data, the
    // kernel's retry of the failed page included (margin for scheduling on a loaded VM).
    let bound = faulty_fetch().read_timeout + Duration::from_millis(1500);

    // Registry stopped: EIO within the read timeout, cached files and metadata still fine.
    reg.kill();
    let (r, took) = read_file(&mp, 1);
    assert_eq!(errno_of(r), Some(libc::EIO));
    assert!(took < bound, "EIO took {took:?}");
    assert_eq!(read_file(&mp, 0).0.unwrap(), pattern(100_000, 0));
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), 8);
    assert_eq!(std::fs::metadata(mp.join("f5")).unwrap().len(), 100_000);

    // Back: reads succeed again (the first one may still get the held failure while a
    // probe finds out that the registry answers).
    reg.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read_file(&mp, 1).0 {
            Ok(data) => break assert_eq!(data, pattern(100_000, 1)),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        }
        assert!(Instant::now() < deadline, "no recovery after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Frozen registry (accepts, never answers): EIO in bounded time too, and other reads of
    // cached data are not held up meanwhile.
    reg.pause();
    let mp2 = mp.clone();
    let frozen = std::thread::spawn(move || read_file(&mp2, 2));
    std::thread::sleep(Duration::from_millis(300));
    let (cached, took_cached) = read_file(&mp, 1);
    assert_eq!(cached.unwrap(), pattern(100_000, 1));
    assert!(
        took_cached < Duration::from_secs(1),
        "cached read waited {took_cached:?}"
    );
    let (r, took) = frozen.join().unwrap();
    assert_eq!(errno_of(r), Some(libc::EIO));
    assert!(took < bound, "EIO took {took:?}");
    // Reading it again while the registry is still frozen fails at once (the held
    // failure), instead of waiting the read timeout again.
    let (r, took) = read_file(&mp, 2);
    assert_eq!(errno_of(r), Some(libc::EIO));
    assert!(took < Duration::from_secs(1), "second EIO took {took:?}");
    reg.resume();
    // Once the registry answers (a read of another file), the held failure is dropped.
    assert_eq!(read_file(&mp, 3).0.unwrap(), pattern(100_000, 3));
    assert_eq!(read_file(&mp, 2).0.unwrap(), pattern(100_000, 2));
}

#[test]
fn a_byte_flipping_proxy_never_corrupts_a_read() {
    require_fuse!();
    let rt = lazy::runtime();
    let reg = RegistryProc::start(RegistryAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let n = 12;
    let built = files_layer(n);
    // Push directly, read through the proxy.
    let (ctx0, _) = lazy::fetch_context(
        &dir.path().join("push"),
        &rt,
        reg.dir.path(),
        faulty_fetch(),
    );
    let pushed = rt.block_on(lazy::push(
        ctx0.client(),
        &Repository::new(reg.host(), "fuse/flip"),
        &built,
    ));
    let proxy = Proxy::start(
        reg.addr(),
        ProxyMode::FlipBodies {
            percent: 100,
            seed: 7,
        },
    );
    let fetch = config::FetchConfig {
        max_retries: 2,
        ..faulty_fetch()
    };
    let (ctx, metrics) = lazy::fetch_context(dir.path(), &rt, reg.dir.path(), fetch);
    // The footer and TOC come from the registry directly (a corrupted TOC only makes the
    // open fail); the saved state then names the proxy, so every chunk passes through it.
    let state = dir.path().join("state");
    rt.block_on(fusefs::layer::RemoteLayer::open(&ctx, pushed, &state))
        .unwrap();
    let saved = std::fs::read_to_string(state.join("layer.json")).unwrap();
    let saved = saved.replace(&reg.host(), &proxy.host());
    std::fs::write(state.join("layer.json"), saved).unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let manager = MountManager::new(ctx.clone());
    let _m = manager.restore(&state, &mp).unwrap();
    for i in 0..n {
        let (r, took) = read_file(&mp, i);
        match r {
            Ok(data) => assert_eq!(data, pattern(100_000, i), "f{i} read corrupted"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "f{i}: {e}"),
        }
        assert!(took < Duration::from_secs(8), "f{i} took {took:?}");
    }
    assert!(metrics.snapshot().digest_mismatches > 0);
    assert!(
        proxy
            .stats
            .corrupted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // Nothing bad was cached: every cache entry matches its name.
    let cache_dir = dir.path().join("cache/sha256");
    if let Ok(rd) = std::fs::read_dir(&cache_dir) {
        for sub in rd.flatten() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                let data = std::fs::read(f.path()).unwrap();
                let name = f.file_name().into_string().unwrap();
                assert_eq!(sha256_hex(&data), name, "corrupt cache entry");
            }
        }
    }
    let _ = Arc::strong_count(&ctx);
}
