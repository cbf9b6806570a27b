//! Merge equivalence with real mounts (root): for merges of realistic and edge-case
//! chains, the stacked, hardlinked and copied results show exactly what an overlay mount
//! of all the inputs' layers in order shows (deletes, opaque directories replacing files
//! and the reverse, hardlinks within and across layers, xattrs with security.capability,
//! set-id bits and owners, devices, fifos, sockets, symlinks including hostile ones,
//! file↔directory replacements, non-UTF-8 names, a deep tree). Also: an input on another
//! file system is copied (EXDEV) with the same result; writes into a hardlinked merge
//! never reach the inputs; hostile symlinks are never followed.

mod merge_util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use merge_util::*;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::SFlag;
use snapshotter::merge::{MergeMode, MergeRequest, Strategy};
use snapshotter::overlay::OverlayFeatures;
use snapshotter::store::{Kind, Labels};
use snapshotter::{Options, Snapshots};

fn features() -> OverlayFeatures {
    OverlayFeatures {
        index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        userxattr: false,
    }
}

fn open(dir: &Path) -> Snapshots {
    Snapshots::open(
        dir.join("root"),
        Options {
            features: features(),
            ..Options::default()
        },
    )
    .unwrap()
}

fn req(kind: Kind, key: &str, sources: &[&str], mode: MergeMode) -> MergeRequest {
    MergeRequest {
        kind,
        key: key.into(),
        sources: sources.iter().map(|s| s.to_string()).collect(),
        mode: Some(mode),
        labels: Labels::new(),
    }
}

/// Chain A: a1 (a base with every file type) and a2 (deletes, replacements, opaque).
fn chain_a(s: &Snapshots, victim: &Path) -> PathBuf {
    let a1 = commit_layer(s, "a1", "", 1, |l| {
        l.dir_as("etc", 0o755, 0, 0)
            .file("etc/hosts", b"127.0.0.1 localhost\n")
            .file("etc/old", b"deleted in a2\n")
            .file("etc/to-dir", b"becomes a directory in a2\n")
            .dir("etc/to-file/sub")
            .file(
                "etc/to-file/sub/x",
                b"gone when etc/to-file becomes a file\n",
            )
            .file("etc/opq-over-file", b"an opaque dir replaces me\n")
            .file_as("bin/ping", b"\x7fELF ping", 0o4755, 0, 0)
            .xattr("bin/ping", "security.capability", &CAP_NET_RAW)
            .file_as(
                "bin/tool",
                b"\x7fELF tool, owned by 1000",
                0o2750,
                1000,
                1001,
            )
            .xattr("bin/tool", "security.capability", &CAP_NET_RAW)
            .xattr("bin/tool", "user.origin", b"a1")
            .xattr("bin/tool", "trusted.note", b"kept")
            .file("bin/busybox", &vec![0xb5u8; 300_000])
            .hardlink(l.0.join("bin/busybox"), "bin/sh")
            .hardlink(l.0.join("bin/busybox"), "bin/ls")
            .symlink("bin/cat", "busybox")
            .symlink("lib", "usr/lib")
            .file("usr/lib/libc.so", &vec![0x11u8; 70_000])
            .dir_as("home/user", 0o700, 1000, 1000)
            .file_as("home/user/.profile", b"export A=1\n", 0o600, 1000, 1000)
            .dir_as("tmp", 0o1777, 0, 0)
            .node("dev/null", SFlag::S_IFCHR, 1, 3)
            .node("dev/loop0", SFlag::S_IFBLK, 7, 0)
            .node("run/fifo", SFlag::S_IFIFO, 0, 0)
            .node("run/sock", SFlag::S_IFSOCK, 0, 0)
            .file("usr/share/doc/a/README", b"doc of a\n")
            .file("usr/share/doc/a/keep", b"kept\n")
            .dir("opt/app-dir")
            .file("opt/app-dir/inside", b"a dir that b replaces with a file\n")
            .file("var/becomes-dir", b"a file that b replaces with a dir\n")
            .file("srv/data", b"")
            .file_bytes_name("names", b"caf\xe9 \xff", b"latin-1 name\n")
            .file("names/with space\nand newline", b"odd name\n")
            .dir_as("dxattr", 0o750, 0, 0)
            .xattr("dxattr", "user.dir", b"dir xattr")
            .symlink("escape", victim)
            .symlink(
                "rel-escape",
                "../../../../../../../../../..".to_string() + &victim.display().to_string(),
            )
            .symlink("dangling", "no/such/file")
            .file(
                "mid-file/x/lower-only",
                b"hidden by a2's file and b's dir\n",
            )
            .file(
                "mid-whiteout/y/lower-only",
                b"hidden by a2's whiteout and b's dir\n",
            )
            .dir("d-then-link/keep")
            .file("d-then-link/keep/f", b"hidden under a2's symlink\n");
        let mut deep = String::from("deep");
        for i in 0..60 {
            deep.push_str(&format!("/level{i}"));
        }
        l.file(&format!("{deep}/leaf"), b"at the bottom\n");
    });
    commit_layer(s, "a2", "a1", 2, |l| {
        l.whiteout("etc/old")
            .dir("etc/to-dir")
            .file("etc/to-dir/now", b"etc/to-dir is a directory now\n")
            .file("etc/to-file", b"etc/to-file is a file now\n")
            .opaque("etc/opq-over-file")
            .file("etc/opq-over-file/in", b"opaque dir content\n")
            .opaque("usr/share/doc")
            .file("usr/share/doc/only", b"only this doc survives\n")
            .file("etc/hosts", b"127.0.0.1 localhost a2\n")
            .file("bin/busybox", b"busybox v2 (breaks a1's hardlink group)\n")
            .file("new/in-a2", b"new\n")
            .hardlink(l.0.join("new/in-a2"), "new/in-a2-link")
            .dir("escape")
            .file("escape/pwned", b"a dir replacing a lower symlink\n")
            .symlink("d-then-link", victim)
            .file("mid-file/x", b"a file between two directories\n")
            .whiteout("mid-whiteout/y")
            .whiteout("dangling");
        // a chmod of a lower file: the upper has a copy with the new mode
        l.file_as("srv/data", b"", 0o640, 0, 0);
    });
    a1
}

/// Chain B: an independent base that deletes and replaces A's paths when stacked above.
fn chain_b(s: &Snapshots, a1: &Path) {
    commit_layer(s, "b1", "", 3, |l| {
        l.dir("etc")
            .file("etc/b-only", b"from b\n")
            .opaque("etc/ssl")
            .file("etc/ssl/cert", b"b's cert\n")
            .file("opt/app-dir", b"b replaces a's directory with a file\n")
            .dir("var/becomes-dir")
            .file("var/becomes-dir/x", b"b replaces a's file with a dir\n")
            .file("usr/share/doc/b/README", b"doc of b\n")
            .file("mid-file/x/from-b", b"b's dir over a2's file\n")
            .file("mid-whiteout/y/from-b", b"b's dir over a2's whiteout\n")
            // Hardlink across layers: the same inode as a1's libc.
            .hardlink(a1.join("usr/lib/libc.so"), "usr/lib/libc-b.so")
            .file_as("bin/b-tool", b"b tool", 0o755, 2000, 2000)
            .xattr("bin/b-tool", "security.capability", &CAP_NET_RAW);
    });
    commit_layer(s, "b2", "b1", 4, |l| {
        l.whiteout("etc/hosts")
            .whiteout("home")
            .file("etc/ssl/cert2", b"second cert\n")
            .dir("bin/cat")
            .file("bin/cat/not-a-link", b"a dir replacing a symlink\n")
            .dir_as("dxattr", 0o711, 3, 3)
            .xattr("dxattr", "user.dir", b"b's dir xattr");
    });
}

/// Chain C: on top of A (so A's chain is a prefix of C's).
fn chain_c(s: &Snapshots) {
    commit_layer(s, "c1", "a2", 5, |l| {
        l.file("etc/c", b"c on a\n")
            .whiteout("srv")
            .file("bin/sh", b"c's own sh\n");
    });
}

/// Chain R: realistic trees copied from the host.
fn chain_r(s: &Snapshots) {
    commit_layer(s, "r1", "", 6, |l| {
        for src in ["/etc", "/usr/share/zoneinfo", "/usr/share/doc"] {
            if Path::new(src).exists() {
                let dst = l.0.join(src.trim_start_matches('/'));
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                let out = std::process::Command::new("cp")
                    .args(["-a", "--no-preserve=links"])
                    .arg(src)
                    .arg(&dst)
                    .output()
                    .unwrap();
                // Unreadable or vanishing files of a live /etc are fine to skip.
                let _ = out;
            }
        }
    });
    commit_layer(s, "r2", "r1", 7, |l| {
        l.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .opaque("usr/share/zoneinfo/Europe")
            .file("usr/share/zoneinfo/Europe/Nowhere", b"TZif")
            .whiteout("usr/share/zoneinfo/America");
    });
}

#[test]
fn stack_hardlink_and_copy_match_an_overlay_of_all_layers() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("stl-merge-")
        .tempdir_in("/tmp")
        .unwrap();
    // A host directory the layers point symlinks at: merging must neither show its
    // content (following a symlink as a directory) nor write into it.
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("secret"), b"host file\n").unwrap();
    let s = open(tmp.path());
    let a1 = chain_a(&s, &victim);
    chain_b(&s, &a1);
    chain_c(&s);
    chain_r(&s);

    let merges: &[(&str, &[&str])] = &[
        ("ab", &["a2", "b2"]),
        ("ba", &["b2", "a2"]),
        ("ac", &["a2", "c1"]),
        ("abc", &["a2", "b2", "c1"]),
        ("cba", &["c1", "b2", "a2"]),
        ("bab", &["b2", "a2", "b2"]),
        ("ra", &["r2", "a2"]),
        ("single", &["c1"]),
    ];
    let mut n = 0;
    for (name, sources) in merges {
        let mut full = Vec::new();
        for src in *sources {
            full.extend(chain_bottom_first(&s, src));
        }
        let scratch = tmp.path().join(format!("ref-{name}"));
        let reference = {
            let target = scratch.join("mnt");
            let _g = reference_mount(&scratch, &full, &target);
            scan(&target)
        };
        assert!(
            reference.entries.len() > 10,
            "{name}: reference is populated"
        );
        for mode in [MergeMode::Stack, MergeMode::Hardlink, MergeMode::Copy] {
            for kind in [Kind::View, Kind::Active] {
                n += 1;
                let key = format!("{name}-{mode}-{}", kind.as_str());
                let merged = s.merge(&req(kind, &key, sources, mode)).unwrap();
                let want = match mode {
                    MergeMode::Stack => Strategy::Stack,
                    MergeMode::Copy => Strategy::Copy,
                    _ => Strategy::Hardlink,
                };
                assert_eq!(merged.strategy, want, "{key}");
                let target = tmp.path().join(format!("m{n}"));
                let tree = {
                    let _g = mount_at(&merged.mounts, &target);
                    scan(&target)
                };
                assert_same(&key, &reference, &tree);
            }
        }
    }
    let left: Vec<_> = fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["secret"],
        "nothing was written through a hostile symlink"
    );
    // Copy and hardlink results of the same inputs: hardlinks share the inputs' inodes.
    let hl = s.layers("ab-hardlink-view").unwrap()[1].dir.clone();
    let cp = s.layers("ab-copy-view").unwrap()[1].dir.clone();
    let ino = |p: PathBuf| fs::symlink_metadata(p).unwrap().ino();
    let b1_lib = s.layers("b1").unwrap()[0].dir.join("usr/lib/libc-b.so");
    assert_eq!(ino(hl.join("usr/lib/libc.so")), ino(b1_lib.clone()));
    assert_eq!(ino(hl.join("usr/lib/libc-b.so")), ino(b1_lib.clone()));
    assert_ne!(ino(cp.join("usr/lib/libc.so")), ino(b1_lib));
    assert_eq!(
        ino(cp.join("usr/lib/libc.so")),
        ino(cp.join("usr/lib/libc-b.so")),
        "a copied inode keeps its other names as hardlinks"
    );
}

#[test]
fn writes_into_a_hardlinked_merge_never_reach_the_inputs() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("stl-merge-")
        .tempdir_in("/tmp")
        .unwrap();
    let s = open(tmp.path());
    let a = commit_layer(&s, "a", "", 1, |l| {
        l.file("f", b"input data\n")
            .file_as("g", b"mode and owner\n", 0o644, 0, 0);
    });
    commit_layer(&s, "b", "", 2, |l| {
        l.file("h", b"b\n");
    });
    let before = |p: &str| {
        let md = fs::symlink_metadata(a.join(p)).unwrap();
        (
            fs::read(a.join(p)).unwrap(),
            md.mode(),
            md.uid(),
            md.mtime(),
            md.ino(),
        )
    };
    let (f0, g0) = (before("f"), before("g"));
    let m = s
        .merge(&req(Kind::Active, "m", &["a", "b"], MergeMode::Hardlink))
        .unwrap();
    let node_dir = s.layers("m").unwrap()[1].dir.clone();
    assert_eq!(
        fs::symlink_metadata(node_dir.join("f")).unwrap().ino(),
        f0.4,
        "f is hardlinked"
    );
    let target = tmp.path().join("mnt");
    {
        let _g = mount_at(&m.mounts, &target);
        fs::write(target.join("f"), b"written in the container\n").unwrap();
        fs::set_permissions(target.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(target.join("g"), Some(42), Some(42)).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(target.join("h"))
            .unwrap();
        assert_eq!(
            fs::read(target.join("f")).unwrap(),
            b"written in the container\n"
        );
    }
    assert_eq!(before("f"), f0, "input f unchanged");
    assert_eq!(before("g"), g0, "input g unchanged");
    assert_eq!(fs::read(node_dir.join("f")).unwrap(), b"input data\n");
    let upper = &s.layers("m").unwrap()[0].dir;
    assert_eq!(
        fs::read(upper.join("f")).unwrap(),
        b"written in the container\n"
    );
}

#[test]
fn an_input_on_another_file_system_is_copied_with_the_same_result() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("stl-merge-")
        .tempdir_in("/tmp")
        .unwrap();
    let s = open(tmp.path());
    let a1 = commit_layer(&s, "a1", "", 1, |l| {
        l.file("etc/a", b"on the snapshotter's file system\n")
            .file("etc/shared", b"replaced by x\n")
            .file("bin/big", &vec![7u8; 200_000]);
    });
    // x1's layer directory is a tmpfs: linking from it fails with EXDEV.
    s.prepare("x1-active", "", Labels::new()).unwrap();
    let x_dir = s.layers("x1-active").unwrap()[0].dir.clone();
    mount(
        Some("tmpfs"),
        &x_dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=755,size=16m"),
    )
    .unwrap();
    {
        let l = LayerDir(&x_dir);
        l.file("etc/x", b"from the tmpfs layer\n")
            .file_as("etc/shared", b"x's version\n", 0o4711, 5, 6)
            .xattr("etc/shared", "security.capability", &CAP_NET_RAW)
            .xattr("etc/shared", "user.from", b"tmpfs")
            .hardlink(x_dir.join("etc/x"), "etc/x-link")
            .whiteout("bin/big")
            .symlink("lnk", "etc/x");
        settle_times(&x_dir, 9);
    }
    s.commit("x1", "x1-active", Labels::new()).unwrap();

    let full: Vec<PathBuf> = vec![a1, x_dir.clone()];
    let reference = {
        let target = tmp.path().join("ref/mnt");
        let _g = reference_mount(&tmp.path().join("ref"), &full, &target);
        scan(&target)
    };
    for mode in [MergeMode::Hardlink, MergeMode::Copy, MergeMode::Stack] {
        let key = format!("m-{mode}");
        let m = s
            .merge(&req(Kind::View, &key, &["a1", "x1"], mode))
            .unwrap();
        if mode == MergeMode::Hardlink {
            let st = m.stats.clone().unwrap();
            assert_eq!(
                (st.linked, st.copied, st.relinked),
                (1, 2, 1),
                "etc/a linked; etc/x and etc/shared copied; etc/x-link relinked: {st:?}"
            );
        }
        let target = tmp.path().join(format!("mnt-{mode}"));
        let tree = {
            let _g = mount_at(&m.mounts, &target);
            scan(&target)
        };
        assert_same(&key, &reference, &tree);
    }
    for k in ["m-hardlink", "m-copy", "m-stack", "x1"] {
        s.remove(k).unwrap();
    }
    assert!(
        !x_dir.exists(),
        "the tmpfs was detached and the directory removed"
    );
}
