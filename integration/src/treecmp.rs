//! Tree comparison for equivalence tests: walks two directory trees (a FUSE mount, an
//! extracted layer, an overlay stack...) without following symlinks and reports every
//! difference in file type, permission bits, owner, size, content digest, symlink target,
//! device number, xattrs, hardlink grouping and (optionally) mtime, as readable lines.
//! Also the `treecmp` binary's engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare mtimes (whole seconds). Off by default.
    pub mtime: bool,
    /// Paths (relative) whose mtime is not compared even with `mtime` on (e.g. directories a
    /// lazy filesystem synthesizes).
    pub mtime_ignore: BTreeSet<PathBuf>,
    /// Paths (relative) left out on both sides, with everything below them.
    pub ignore: BTreeSet<PathBuf>,
    /// Xattr names not compared; a trailing `*` makes a prefix (`trusted.overlay.*`).
    pub ignore_xattrs: Vec<String>,
    /// Compare file contents (SHA-256). On by default.
    pub contents: bool,
    /// Compare hardlink grouping (which paths share an inode). On by default.
    pub hardlinks: bool,
    /// Compare the size of directories (file systems disagree; off by default).
    pub dir_sizes: bool,
    /// Stop collecting after this many mismatches.
    pub max_mismatches: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            mtime: false,
            mtime_ignore: BTreeSet::new(),
            ignore: BTreeSet::new(),
            ignore_xattrs: Vec::new(),
            contents: true,
            hardlinks: true,
            dir_sizes: false,
            max_mismatches: 1000,
        }
    }
}

impl CompareOptions {
    /// Turns mtime comparison on.
    pub fn with_mtime(mut self) -> Self {
        self.mtime = true;
        self
    }

    /// Leaves `rel` (and below) out.
    pub fn ignore(mut self, rel: impl Into<PathBuf>) -> Self {
        self.ignore.insert(rel.into());
        self
    }

    /// Does not compare the mtime of `rel`.
    pub fn ignore_mtime_of(mut self, rel: impl Into<PathBuf>) -> Self {
        self.mtime_ignore.insert(rel.into());
        self
    }

    /// Does not compare xattr `name` (trailing `*` = prefix).
    pub fn ignore_xattr(mut self, name: &str) -> Self {
        self.ignore_xattrs.push(name.into());
        self
    }

    fn xattr_ignored(&self, name: &str) -> bool {
        self.ignore_xattrs
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p,
            })
    }
}

/// File type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// What the scan recorded about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File type.
    pub kind: Kind,
    /// Permission and special bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (st_size).
    pub size: u64,
    /// Device (major, minor) for devices.
    pub rdev: (u64, u64),
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Xattrs (after ignores).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// SHA-256 of regular file contents (when contents are compared).
    pub digest: Option<[u8; 32]>,
    /// mtime, seconds.
    pub mtime: i64,
    /// (st_dev, st_ino), for hardlink grouping.
    pub inode: (u64, u64),
}

/// A scanned tree: relative path -> node (the root itself is "").
pub type Tree = BTreeMap<PathBuf, Node>;

/// Shows path bytes with non-UTF-8 and control bytes escaped as `\xNN`.
pub fn display_path(p: &Path) -> String {
    let mut s = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

fn kind_of(ft: std::fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    }
}

fn is_ignored(rel: &Path, opts: &CompareOptions) -> bool {
    opts.ignore.iter().any(|i| rel.starts_with(i))
}

fn digest_file(p: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx(|| format!("read {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Scans `root` (not following symlinks). Unreadable files are errors.
pub fn scan_tree(root: &Path, opts: &CompareOptions) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = std::fs::symlink_metadata(&abs).ctx(|| format!("lstat {}", abs.display()))?;
        let kind = kind_of(md.file_type());
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&abs) {
            for n in names {
                let name = n.to_string_lossy().into_owned();
                if opts.xattr_ignored(&name) {
                    continue;
                }
                let v =
                    xattr::get(&abs, &n).ctx(|| format!("getxattr {name} {}", abs.display()))?;
                xattrs.insert(name, v.unwrap_or_default());
            }
        }
        let target = if kind == Kind::Symlink {
            Some(
                std::fs::read_link(&abs)
                    .ctx(|| format!("readlink {}", abs.display()))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else {
            None
        };
        let digest = if kind == Kind::File && opts.contents {
            Some(digest_file(&abs)?)
        } else {
            None
        };
        let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            (
                nix::sys::stat::major(md.rdev()),
                nix::sys::stat::minor(md.rdev()),
            )
        } else {
            (0, 0)
        };
        if kind == Kind::Dir {
            let mut children = Vec::new();
            for e in std::fs::read_dir(&abs).ctx(|| format!("read dir {}", abs.display()))? {
                let e = e.ctx(|| format!("read dir {}", abs.display()))?;
                let child = rel.join(e.file_name());
                if !is_ignored(&child, opts) {
                    children.push(child);
                }
            }
            stack.extend(children);
        }
        tree.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                rdev,
                target,
                xattrs,
                digest,
                mtime: md.mtime(),
                inode: (md.dev(), md.ino()),
            },
        );
    }
    Ok(tree)
}

/// Which property differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// Present only on the right.
    OnlyRight,
    /// Present only on the left.
    OnlyLeft,
    /// File type.
    Type,
    /// Permission/special bits.
    Mode,
    /// uid/gid.
    Owner,
    /// st_size.
    Size,
    /// Contents.
    Content,
    /// Symlink target.
    SymlinkTarget,
    /// Device number.
    Rdev,
    /// Xattrs.
    Xattrs,
    /// Hardlink grouping.
    Hardlinks,
    /// mtime.
    Mtime,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Relative path.
    pub path: PathBuf,
    /// What differs.
    pub kind: MismatchKind,
    /// Left value (text).
    pub left: String,
    /// Right value (text).
    pub right: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?}: left={} right={}",
            display_path(&self.path),
            self.kind,
            self.left,
            self.right
        )
    }
}

/// The result of a comparison.
#[derive(Debug, Clone, Default)]
pub struct TreeDiff {
    /// Every difference found (up to `max_mismatches`).
    pub mismatches: Vec<Mismatch>,
    /// Entries scanned on the left.
    pub left_entries: usize,
    /// Entries scanned on the right.
    pub right_entries: usize,
    /// More mismatches existed than were kept.
    pub truncated: bool,
}

impl TreeDiff {
    /// True when the trees are equal under the options.
    pub fn is_equal(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// Kinds of mismatch present.
    pub fn kinds(&self) -> BTreeSet<String> {
        self.mismatches
            .iter()
            .map(|m| format!("{:?}", m.kind))
            .collect()
    }

    /// Panics with the full diff unless equal.
    #[track_caller]
    pub fn assert_equal(&self, what: &str) {
        if !self.is_equal() {
            panic!("{what}: trees differ\n{self}");
        }
    }
}

impl fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mismatches {
            writeln!(f, "{m}")?;
        }
        if self.truncated {
            writeln!(f, "... more mismatches not shown")?;
        }
        write!(
            f,
            "{} mismatches ({} entries left, {} right)",
            self.mismatches.len(),
            self.left_entries,
            self.right_entries
        )
    }
}

fn kind_text(n: &Node) -> String {
    format!("{:?}", n.kind)
}

fn xattr_text(x: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| match std::str::from_utf8(v) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{k}={s:?}"),
            _ => format!("{k}=0x{}", hex::encode(v)),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn link_groups(tree: &Tree) -> HashMap<PathBuf, BTreeSet<PathBuf>> {
    let mut by_inode: HashMap<(u64, u64), BTreeSet<PathBuf>> = HashMap::new();
    for (p, n) in tree {
        if n.kind != Kind::Dir {
            by_inode.entry(n.inode).or_default().insert(p.clone());
        }
    }
    let mut out = HashMap::new();
    for group in by_inode.into_values().filter(|g| g.len() > 1) {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

fn group_text(g: Option<&BTreeSet<PathBuf>>) -> String {
    match g {
        None => "[not hardlinked]".into(),
        Some(g) => format!(
            "[{}]",
            g.iter()
                .map(|p| display_path(p))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Compares two scanned trees.
pub fn compare_scanned(left: &Tree, right: &Tree, opts: &CompareOptions) -> TreeDiff {
    let mut d = TreeDiff {
        left_entries: left.len(),
        right_entries: right.len(),
        ..Default::default()
    };
    let push = |d: &mut TreeDiff, path: &Path, kind: MismatchKind, l: String, r: String| {
        if d.mismatches.len() >= opts.max_mismatches {
            d.truncated = true;
            return;
        }
        d.mismatches.push(Mismatch {
            path: path.to_path_buf(),
            kind,
            left: l,
            right: r,
        });
    };
    let paths: BTreeSet<&PathBuf> = left.keys().chain(right.keys()).collect();
    for p in &paths {
        let (l, r) = match (left.get(*p), right.get(*p)) {
            (Some(l), Some(r)) => (l, r),
            (Some(l), None) => {
                push(
                    &mut d,
                    p,
                    MismatchKind::OnlyLeft,
                    kind_text(l),
                    "missing".into(),
                );
                continue;
            }
            (None, Some(r)) => {
                push(
                    &mut d,
                    p,
                    MismatchKind::OnlyRight,
                    "missing".into(),
                    kind_text(r),
                );
                continue;
            }
            (None, None) => continue,
        };
        if l.kind != r.kind {
            push(&mut d, p, MismatchKind::Type, kind_text(l), kind_text(r));
            continue;
        }
        if l.mode != r.mode {
            push(
                &mut d,
                p,
                MismatchKind::Mode,
                format!("{:04o}", l.mode),
                format!("{:04o}", r.mode),
            );
        }
        if (l.uid, l.gid) != (r.uid, r.gid) {
            push(
                &mut d,
                p,
                MismatchKind::Owner,
                format!("{}:{}", l.uid, l.gid),
                format!("{}:{}", r.uid, r.gid),
            );
        }
        if l.size != r.size && (l.kind != Kind::Dir || opts.dir_sizes) {
            push(
                &mut d,
                p,
                MismatchKind::Size,
                l.size.to_string(),
                r.size.to_string(),
            );
        }
        if l.digest != r.digest {
            let t = |x: &Option<[u8; 32]>| {
                x.map(|h| format!("sha256:{}", &hex::encode(h)[..16]))
                    .unwrap_or_default()
            };
            push(&mut d, p, MismatchKind::Content, t(&l.digest), t(&r.digest));
        }
        if l.target != r.target {
            let t = |x: &Option<Vec<u8>>| {
                display_path(Path::new(std::ffi::OsStr::from_bytes(
                    x.as_deref().unwrap_or_default(),
                )))
            };
            push(
                &mut d,
                p,
                MismatchKind::SymlinkTarget,
                t(&l.target),
                t(&r.target),
            );
        }
        if l.rdev != r.rdev {
            push(
                &mut d,
                p,
                MismatchKind::Rdev,
                format!("{}:{}", l.rdev.0, l.rdev.1),
                format!("{}:{}", r.rdev.0, r.rdev.1),
            );
        }
        if l.xattrs != r.xattrs {
            push(
                &mut d,
                p,
                MismatchKind::Xattrs,
                xattr_text(&l.xattrs),
                xattr_text(&r.xattrs),
            );
        }
        if opts.mtime && l.mtime != r.mtime && !opts.mtime_ignore.contains(*p) {
            push(
                &mut d,
                p,
                MismatchKind::Mtime,
                l.mtime.to_string(),
                r.mtime.to_string(),
            );
        }
    }
    if opts.hardlinks {
        let (gl, gr) = (link_groups(left), link_groups(right));
        for p in &paths {
            if !(left.contains_key(*p) && right.contains_key(*p)) {
                continue;
            }
            let (a, b) = (gl.get(*p), gr.get(*p));
            // compare only the members present on both sides (missing paths are reported already)
            let norm = |g: Option<&BTreeSet<PathBuf>>| -> BTreeSet<PathBuf> {
                g.map(|g| {
                    g.iter()
                        .filter(|x| left.contains_key(*x) && right.contains_key(*x))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
            };
            let (na, nb) = (norm(a), norm(b));
            let single = |s: &BTreeSet<PathBuf>| s.len() <= 1;
            if !(single(&na) && single(&nb)) && na != nb {
                push(
                    &mut d,
                    p,
                    MismatchKind::Hardlinks,
                    group_text(a),
                    group_text(b),
                );
            }
        }
    }
    d
}

/// Scans both trees (in parallel) and compares them.
pub fn compare_trees(left: &Path, right: &Path, opts: &CompareOptions) -> Result<TreeDiff> {
    let (l, r) = std::thread::scope(|s| {
        let h = s.spawn(|| scan_tree(left, opts));
        let r = scan_tree(right, opts);
        (h.join().expect("scan thread"), r)
    });
    Ok(compare_scanned(&l?, &r?, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn base(root: &Path) {
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        std::fs::write(root.join("d/f"), b"hello").unwrap();
        std::fs::write(root.join("d/sub/g"), b"world").unwrap();
        std::fs::hard_link(root.join("d/f"), root.join("d/f2")).unwrap();
        std::os::unix::fs::symlink("d/f", root.join("ln")).unwrap();
        nix::unistd::mkfifo(
            &root.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        xattr::set(root.join("d/sub/g"), "user.a", b"1").unwrap();
        let t = nix::sys::time::TimeSpec::new(1000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join("d/sub/g"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn pair() -> (crate::workdir::Workdir, PathBuf, PathBuf) {
        let wd = crate::workdir::Workdir::new("treecmp").unwrap();
        let (a, b) = (wd.join("a"), wd.join("b"));
        base(&a);
        base(&b);
        (wd, a, b)
    }

    fn diff(a: &Path, b: &Path, o: &CompareOptions) -> TreeDiff {
        compare_trees(a, b, o).unwrap()
    }

    #[test]
    fn equal_trees_are_equal() {
        let (_wd, a, b) = pair();
        let d = diff(
            &a,
            &b,
            &CompareOptions::default()
                .with_mtime()
                .ignore_mtime_of("")
                .ignore_mtime_of("d")
                .ignore_mtime_of("d/f")
                .ignore_mtime_of("d/f2")
                .ignore_mtime_of("ln")
                .ignore_mtime_of("p")
                .ignore_mtime_of("d/sub"),
        );
        d.assert_equal("identical trees");
        assert_eq!(d.left_entries, 8);
    }

    #[test]
    fn detects_each_kind() {
        let o = CompareOptions::default();
        let check = |f: &dyn Fn(&Path), kind: MismatchKind, path: &str| {
            let (_wd, a, b) = pair();
            f(&b);
            let d = diff(&a, &b, &o);
            assert!(
                d.mismatches
                    .iter()
                    .any(|m| m.kind == kind && m.path == Path::new(path)),
                "expected {kind:?} at {path}, got:\n{d}"
            );
        };
        check(
            &|b| std::fs::write(b.join("extra"), b"").unwrap(),
            MismatchKind::OnlyRight,
            "extra",
        );
        check(
            &|b| std::fs::remove_file(b.join("p")).unwrap(),
            MismatchKind::OnlyLeft,
            "p",
        );
        check(
            &|b| {
                std::fs::remove_file(b.join("p")).unwrap();
                std::fs::write(b.join("p"), b"").unwrap()
            },
            MismatchKind::Type,
            "p",
        );
        check(
            &|b| {
                std::fs::set_permissions(b.join("d/sub/g"), std::fs::Permissions::from_mode(0o4711))
                    .unwrap()
            },
            MismatchKind::Mode,
            "d/sub/g",
        );
        check(
            &|b| {
                nix::unistd::chown(
                    &b.join("d/sub/g"),
                    Some(nix::unistd::Uid::from_raw(nix::unistd::geteuid().as_raw())),
                    Some(nix::unistd::Gid::from_raw(12345)),
                )
                .map(drop)
                .unwrap_or_else(|_| std::fs::write(b.join("d/sub/g"), b"WORLD").unwrap())
            },
            if nix::unistd::geteuid().is_root() {
                MismatchKind::Owner
            } else {
                MismatchKind::Content
            },
            "d/sub/g",
        );
        check(
            &|b| std::fs::write(b.join("d/sub/g"), b"worldx").unwrap(),
            MismatchKind::Size,
            "d/sub/g",
        );
        check(
            &|b| std::fs::write(b.join("d/sub/g"), b"WORLD").unwrap(),
            MismatchKind::Content,
            "d/sub/g",
        );
        check(
            &|b| {
                std::fs::remove_file(b.join("ln")).unwrap();
                std::os::unix::fs::symlink("d/f2", b.join("ln")).unwrap()
            },
            MismatchKind::SymlinkTarget,
            "ln",
        );
        check(
            &|b| xattr::set(b.join("d/sub/g"), "user.a", b"2").unwrap(),
            MismatchKind::Xattrs,
            "d/sub/g",
        );
        check(
            &|b| {
                std::fs::remove_file(b.join("d/f2")).unwrap();
                std::fs::write(b.join("d/f2"), b"hello").unwrap()
            },
            MismatchKind::Hardlinks,
            "d/f",
        );
        if nix::unistd::geteuid().is_root() {
            check(
                &|b| {
                    std::fs::remove_file(b.join("p")).unwrap();
                    nix::sys::stat::mknod(
                        &b.join("p"),
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        nix::sys::stat::makedev(1, 3),
                    )
                    .unwrap()
                },
                MismatchKind::Type,
                "p",
            );
            let (_wd, a, b) = pair();
            for r in [&a, &b] {
                std::fs::remove_file(r.join("p")).unwrap();
            }
            nix::sys::stat::mknod(
                &a.join("p"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            nix::sys::stat::mknod(
                &b.join("p"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(1, 5),
            )
            .unwrap();
            let d = diff(&a, &b, &o);
            assert!(
                d.mismatches.iter().any(|m| m.kind == MismatchKind::Rdev),
                "{d}"
            );
        }
        // mtime only when asked
        let (_wd, a, b) = pair();
        let t = nix::sys::time::TimeSpec::new(2000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &b.join("d/sub/g"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        assert!(diff(&a, &b, &o).is_equal());
        let d = diff(&a, &b, &CompareOptions::default().with_mtime());
        assert!(
            d.mismatches
                .iter()
                .any(|m| m.kind == MismatchKind::Mtime && m.path == Path::new("d/sub/g")),
            "{d}"
        );
        assert!(!diff(
            &a,
            &b,
            &CompareOptions::default()
                .with_mtime()
                .ignore_mtime_of("d/sub/g")
        )
        .mismatches
        .iter()
        .any(|m| m.path == Path::new("d/sub/g")));
    }

    #[test]
    fn ignores_paths_and_xattrs() {
        let (_wd, a, b) = pair();
        std::fs::write(b.join("d/sub/new"), b"x").unwrap();
        xattr::set(b.join("d/f"), "user.skipme", b"1").unwrap();
        let o = CompareOptions::default()
            .ignore("d/sub")
            .ignore_xattr("user.skip*");
        let d = diff(&a, &b, &o);
        d.assert_equal("ignored");
        assert_eq!(d.left_entries, 6);
    }

    #[test]
    fn non_utf8_paths_are_escaped() {
        let p = Path::new(std::ffi::OsStr::from_bytes(b"a/\xff\x01b"));
        assert_eq!(display_path(p), "a/\\xff\\x01b");
        assert_eq!(display_path(Path::new("")), ".");
    }
}
