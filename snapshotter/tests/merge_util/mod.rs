//! Helpers of the merge tests: building layer directories with overlay diff semantics
//! (whiteout = char 0/0, opaque = `trusted.overlay.opaque=y`), committing them as
//! snapshots, mounting, and a compact tree comparison (type, mode, owner, size,
//! content digest, symlink target, device number, xattrs, mtime, hardlink groups).
//!
//! TODO(dedup): the integration harness on main has `integration::treecmp`; switch the
//! comparison to it once this crate's tests can use it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use linuxfs::MountGuard;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest, Sha256};
use snapshotter::overlay::Mount;
use snapshotter::store::Labels;
use snapshotter::Snapshots;

/// True when the test may mount; otherwise prints why it is skipped (or fails when
/// STARLING_REQUIRE_INTEGRATION=1).
pub fn can_mount() -> bool {
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

/// A v2 `security.capability` value granting CAP_NET_RAW (effective).
pub const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic: revision 2 | effective
    0x00, 0x20, 0x00, 0x00, // permitted (low): 1 << 13
    0x00, 0x00, 0x00, 0x00, // inheritable (low)
    0x00, 0x00, 0x00, 0x00, // permitted (high)
    0x00, 0x00, 0x00, 0x00, // inheritable (high)
];

/// Writes one layer directory.
pub struct LayerDir<'a>(pub &'a Path);

impl LayerDir<'_> {
    fn p(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    pub fn file(&self, rel: &str, content: &[u8]) -> &Self {
        fs::write(self.p(rel), content).unwrap();
        self
    }

    /// A file with mode and owner (chown first: it clears set-id bits).
    pub fn file_as(&self, rel: &str, content: &[u8], mode: u32, uid: u32, gid: u32) -> &Self {
        let p = self.p(rel);
        fs::write(&p, content).unwrap();
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.0.join(rel)).unwrap();
        self
    }

    pub fn dir_as(&self, rel: &str, mode: u32, uid: u32, gid: u32) -> &Self {
        let p = self.0.join(rel);
        fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn symlink(&self, rel: &str, target: impl AsRef<Path>) -> &Self {
        std::os::unix::fs::symlink(target, self.p(rel)).unwrap();
        self
    }

    pub fn whiteout(&self, rel: &str) -> &Self {
        mknod(&self.p(rel), SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
        self
    }

    /// An opaque directory (hides what the layers below have there).
    pub fn opaque(&self, rel: &str) -> &Self {
        let p = self.0.join(rel);
        fs::create_dir_all(&p).unwrap();
        xattr::set(&p, "trusted.overlay.opaque", b"y").unwrap();
        self
    }

    pub fn hardlink(&self, existing: impl AsRef<Path>, rel: &str) -> &Self {
        fs::hard_link(existing, self.p(rel)).unwrap();
        self
    }

    pub fn node(&self, rel: &str, kind: SFlag, major: u64, minor: u64) -> &Self {
        mknod(
            &self.p(rel),
            kind,
            Mode::from_bits_truncate(0o640),
            makedev(major, minor),
        )
        .unwrap();
        self
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        xattr::set(self.0.join(rel), name, value).unwrap();
        self
    }

    /// Raw-byte names (non-UTF-8).
    pub fn file_bytes_name(&self, dir: &str, name: &[u8], content: &[u8]) -> &Self {
        let d = self.0.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(std::ffi::OsStr::from_bytes(name)), content).unwrap();
        self
    }
}

/// Gives every entry of `dir` a distinct, old mtime (directories after their contents).
pub fn settle_times(dir: &Path, seed: i64) {
    let mut n = 0i64;
    fn walk(p: &Path, seed: i64, n: &mut i64) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for c in names {
                walk(&c, seed, n);
            }
        }
        *n += 1;
        let t = nix::sys::time::TimeSpec::new(1_500_000_000 + seed * 100_000 + *n, *n * 7919);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    walk(dir, seed, &mut n);
}

/// Prepares `name`-active on `parent`, lets `fill` write its layer directory, settles
/// the times and commits it as `name`. Returns the layer directory.
pub fn commit_layer(
    s: &Snapshots,
    name: &str,
    parent: &str,
    seed: i64,
    fill: impl FnOnce(&LayerDir),
) -> PathBuf {
    let key = format!("{name}-active");
    s.prepare(&key, parent, Labels::new()).unwrap();
    let dir = s.layers(&key).unwrap()[0].dir.clone();
    fill(&LayerDir(&dir));
    settle_times(&dir, seed);
    s.commit(name, &key, Labels::new()).unwrap();
    dir
}

/// The layer directories of committed `name`'s chain, bottom first.
pub fn chain_bottom_first(s: &Snapshots, name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = s.layers(name).unwrap().into_iter().map(|l| l.dir).collect();
    v.reverse();
    v
}

/// Mounts an overlay of `layers` (bottom first, repeats allowed) read-only at `target`:
/// what a merge of their chains must show. A layer repeated lower down is copied
/// (overlay refuses the same directory twice; only its topmost place is visible anyway),
/// and an empty directory goes at the bottom (overlay wants two lowers without upper).
pub fn reference_mount(scratch: &Path, layers: &[PathBuf], target: &Path) -> MountGuard {
    let empty = scratch.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let mut top_first: Vec<PathBuf> = Vec::new();
    for (i, l) in layers.iter().enumerate().rev() {
        if top_first.contains(l) {
            let copy = scratch.join(format!("dup-{i}"));
            if !copy.exists() {
                let out = Command::new("cp")
                    .arg("-a")
                    .arg(l)
                    .arg(&copy)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "cp -a: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            top_first.push(copy);
        } else {
            top_first.push(l.clone());
        }
    }
    top_first.push(empty);
    let lowers: Vec<String> = top_first.iter().map(|p| p.display().to_string()).collect();
    let m = Mount {
        fstype: "overlay".into(),
        source: "overlay".into(),
        options: vec!["ro".into(), format!("lowerdir={}", lowers.join(":"))],
    };
    fs::create_dir_all(target).unwrap();
    MountGuard::new(&[m], target).unwrap()
}

pub fn mount_at(mounts: &[Mount], target: &Path) -> MountGuard {
    fs::create_dir_all(target).unwrap();
    MountGuard::new(mounts, target).unwrap()
}

/// One entry of a scanned tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub digest: Option<String>,
    pub target: Option<OsString>,
    pub rdev: u64,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub mtime: (i64, i64),
}

/// A scanned tree: entries by relative path, and hardlink groups (names sharing an
/// inode within the tree, for non-directories).
#[derive(Debug, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub links: BTreeSet<Vec<PathBuf>>,
}

pub fn scan(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        if kind == 'd' {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        let digest = (kind == 'f').then(|| {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        });
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&path) {
            for n in names {
                if let Ok(Some(v)) = xattr::get(&path, &n) {
                    xattrs.insert(n, v);
                }
            }
        }
        let root_entry = rel.as_os_str().is_empty();
        entries.insert(
            rel.clone(),
            Entry {
                kind,
                // The root is the merged snapshot's own directory: only its type counts.
                mode: if root_entry { 0 } else { md.mode() & 0o7777 },
                uid: if root_entry { 0 } else { md.uid() },
                gid: if root_entry { 0 } else { md.gid() },
                size: if kind == 'f' { md.size() } else { 0 },
                digest,
                target: (kind == 'l').then(|| fs::read_link(&path).unwrap().into_os_string()),
                rdev: if kind == 'c' || kind == 'b' {
                    md.rdev()
                } else {
                    0
                },
                xattrs: if root_entry { BTreeMap::new() } else { xattrs },
                mtime: if root_entry {
                    (0, 0)
                } else {
                    (md.mtime(), md.mtime_nsec())
                },
            },
        );
    }
    let links = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Tree { entries, links }
}

/// Human-readable differences (empty when equal).
pub fn diff(left: &Tree, right: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, l) in &left.entries {
        match right.entries.get(p) {
            None => out.push(format!("only left: {}", p.display())),
            Some(r) if r != l => out.push(format!("{}: {l:?} != {r:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in right.entries.keys() {
        if !left.entries.contains_key(p) {
            out.push(format!("only right: {}", p.display()));
        }
    }
    if left.links != right.links {
        out.push(format!(
            "hardlink groups: {:?} != {:?}",
            left.links, right.links
        ));
    }
    out
}

pub fn assert_same(what: &str, left: &Tree, right: &Tree) {
    let d = diff(left, right);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}
