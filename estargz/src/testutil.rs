//! Test support (feature `testutil`): an edge-case tar generator and "tree manifests" that
//! describe a layer's resulting tree independently of how it was produced (from a tar
//! read with the `tar` crate and overlay conventions applied, or from a [`Layer`]), so
//! that tests can compare trees with readable differences.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::digest::Sha256Digest;
use crate::index::{EntryKind, ROOT_ID};
use crate::layer::Layer;
use crate::name::normalize;
use crate::ReadAt;

/// One node of a tree manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 'd' dir, 'f' file, 'l' symlink, 'c' char, 'b' block, 'p' fifo, 'w' whiteout.
    pub kind: char,
    /// Permission bits (0o7777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time; `None` when unknown (an implicit directory).
    pub mtime: Option<(i64, u32)>,
    /// Contents digest of a regular file.
    pub digest: Option<Sha256Digest>,
    /// File size.
    pub size: u64,
    /// Symlink target.
    pub link: Vec<u8>,
    /// Device numbers.
    pub rdev: (u32, u32),
    /// Extended attributes (without overlay markers).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Opaque directory.
    pub opaque: bool,
}

impl Node {
    fn new(kind: char) -> Self {
        Node {
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: None,
            digest: None,
            size: 0,
            link: Vec::new(),
            rdev: (0, 0),
            xattrs: BTreeMap::new(),
            opaque: false,
        }
    }

    fn implicit_dir() -> Self {
        Node {
            mode: 0o755,
            ..Node::new('d')
        }
    }
}

/// A tree: nodes by path (root is the empty path) and hardlink groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Nodes by normalized path.
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Sets of paths that are the same file (two or more names).
    pub hardlinks: BTreeSet<BTreeSet<Vec<u8>>>,
}

impl Manifest {
    /// Differences between `self` (expected) and `other` (actual), readable.
    pub fn diff(&self, other: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        for (p, a) in &self.nodes {
            match other.nodes.get(p) {
                None => out.push(format!("missing {:?}", show(p))),
                Some(b) => {
                    let mut a = a.clone();
                    let mut b = b.clone();
                    if a.mtime.is_none() || b.mtime.is_none() {
                        a.mtime = None;
                        b.mtime = None;
                    }
                    if a.kind == 'w' && b.kind == 'w' {
                        (a.mode, a.uid, a.gid, a.mtime) = (0, 0, 0, None);
                        (b.mode, b.uid, b.gid, b.mtime) = (0, 0, 0, None);
                    }
                    if a != b {
                        out.push(format!("{:?}: expected {a:?}, got {b:?}", show(p)));
                    }
                }
            }
        }
        for p in other.nodes.keys() {
            if !self.nodes.contains_key(p) {
                out.push(format!("unexpected {:?}", show(p)));
            }
        }
        if self.hardlinks != other.hardlinks {
            out.push(format!(
                "hardlinks: expected {:?}, got {:?}",
                self.hardlinks, other.hardlinks
            ));
        }
        out
    }

    /// Panics with the differences unless the manifests match.
    pub fn assert_same(&self, actual: &Manifest) {
        let d = self.diff(actual);
        assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
    }
}

/// The tree a layer tar produces when applied as an overlay diff, read with the `tar`
/// crate (independent of this crate's reader): later entries win, `.wh.` entries become
/// whiteouts (a real entry wins over a whiteout), `.wh..wh..opq` marks its directory
/// opaque, missing parents are implicit 0755 directories, and the root-level
/// `stargz.index.json` and landmarks are not part of the tree.
pub fn manifest_from_tar(tar_bytes: &[u8]) -> Manifest {
    let mut nodes: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
    nodes.insert(Vec::new(), Node::implicit_dir());
    // path -> group id for hardlinks
    let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut next_group = 0usize;
    let mut ar = tar::Archive::new(tar_bytes);
    for entry in ar.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let raw_path = entry.path_bytes().into_owned();
        let path = normalize(&raw_path).expect("test tars have sane names");
        if matches!(
            &path[..],
            b"stargz.index.json" | b".prefetch.landmark" | b".no.prefetch.landmark"
        ) {
            continue;
        }
        let h = entry.header().clone();
        let mut node = Node::new('f');
        node.mode = h.mode().unwrap() & 0o7777;
        node.uid = h.uid().unwrap() as u32;
        node.gid = h.gid().unwrap() as u32;
        node.mtime = Some((h.mtime().unwrap() as i64, 0));
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                let k = ext.key_bytes();
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    node.xattrs
                        .insert(name.to_vec(), ext.value_bytes().to_vec());
                } else if k == b"mtime" {
                    let v = std::str::from_utf8(ext.value_bytes()).unwrap();
                    let (s, f) = v.split_once('.').unwrap_or((v, ""));
                    let mut nanos = 0u32;
                    for (i, d) in f.bytes().take(9).enumerate() {
                        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
                    }
                    node.mtime = Some((s.parse().unwrap(), nanos));
                } else if k == b"uid" {
                    node.uid = std::str::from_utf8(ext.value_bytes())
                        .unwrap()
                        .parse()
                        .unwrap();
                } else if k == b"gid" {
                    node.gid = std::str::from_utf8(ext.value_bytes())
                        .unwrap()
                        .parse()
                        .unwrap();
                }
            }
        }
        if node.mtime == Some((0, 0)) {
            // The TOC cannot tell "epoch" from "unknown"; both read back as the epoch.
            node.mtime = Some((0, 0));
        }
        let (parent, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.clone()),
        };
        // Implicit parents.
        if !path.is_empty() {
            let mut p = Vec::new();
            for comp in parent.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(comp);
                match nodes.get(&p) {
                    Some(n) if n.kind == 'd' => {}
                    _ => {
                        nodes.insert(p.clone(), Node::implicit_dir());
                    }
                }
            }
        }
        if base == b".wh..wh..opq" {
            nodes.get_mut(&parent).unwrap().opaque = true;
            continue;
        }
        if let Some(target) = base.strip_prefix(b".wh.") {
            let mut t = parent.clone();
            if !t.is_empty() {
                t.push(b'/');
            }
            t.extend_from_slice(target);
            if nodes.get(&t).is_none_or(|n| n.kind == 'w') {
                let mut w = Node::new('w');
                w.mode = node.mode;
                nodes.insert(t, w);
            }
            continue;
        }
        let ty = h.entry_type();
        match ty {
            tar::EntryType::Directory => {
                node.kind = 'd';
                if let Some(old) = nodes.get(&path) {
                    if old.kind == 'd' {
                        node.opaque = old.opaque;
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                node.size = data.len() as u64;
                node.digest = Some(Sha256Digest::of(&data));
            }
            tar::EntryType::Symlink => {
                node.kind = 'l';
                node.link = entry.link_name_bytes().unwrap().into_owned();
                node.size = node.link.len() as u64;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                node.kind = if ty == tar::EntryType::Char { 'c' } else { 'b' };
                node.rdev = (
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                );
            }
            tar::EntryType::Fifo => node.kind = 'p',
            tar::EntryType::Link => {
                let target = normalize(&entry.link_name_bytes().unwrap()).unwrap();
                let tnode = nodes.get(&target).expect("hardlink target exists").clone();
                let g = *group_of.entry(target.clone()).or_insert_with(|| {
                    next_group += 1;
                    next_group
                });
                remove_subtree(&mut nodes, &mut group_of, &path);
                group_of.insert(path.clone(), g);
                nodes.insert(path, tnode);
                continue;
            }
            other => panic!("unexpected entry type {other:?}"),
        }
        if node.kind != 'd' || nodes.get(&path).is_some_and(|o| o.kind != 'd') {
            remove_subtree(&mut nodes, &mut group_of, &path);
        }
        nodes.insert(path, node);
    }
    let mut groups: HashMap<usize, BTreeSet<Vec<u8>>> = HashMap::new();
    for (p, g) in group_of {
        if nodes.contains_key(&p) {
            groups.entry(g).or_default().insert(p);
        }
    }
    Manifest {
        nodes,
        hardlinks: groups.into_values().filter(|s| s.len() > 1).collect(),
    }
}

fn remove_subtree(
    nodes: &mut BTreeMap<Vec<u8>, Node>,
    groups: &mut HashMap<Vec<u8>, usize>,
    path: &[u8],
) {
    let mut prefix = path.to_vec();
    prefix.push(b'/');
    let doomed: Vec<Vec<u8>> = nodes
        .keys()
        .filter(|k| k.as_slice() == path || k.starts_with(&prefix))
        .cloned()
        .collect();
    for k in doomed {
        nodes.remove(&k);
        groups.remove(&k);
    }
}

/// The tree of an opened layer, reading (and verifying) every file's contents.
pub fn manifest_from_layer(layer: &Layer, blob: &dyn ReadAt) -> Manifest {
    let index = &layer.index;
    let mut nodes = BTreeMap::new();
    let mut by_id: HashMap<u32, BTreeSet<Vec<u8>>> = HashMap::new();
    let mut stack = vec![(ROOT_ID, Vec::new())];
    while let Some((id, path)) = stack.pop() {
        let e = index.entry(id).unwrap();
        let mut node = Node::new(match e.kind() {
            EntryKind::Dir => 'd',
            EntryKind::Reg => 'f',
            EntryKind::Symlink => 'l',
            EntryKind::Char if e.is_whiteout() => 'w',
            EntryKind::Char => 'c',
            EntryKind::Block => 'b',
            EntryKind::Fifo => 'p',
        });
        node.mode = e.mode();
        node.uid = e.uid();
        node.gid = e.gid();
        node.mtime = (!e.is_synthesized()).then(|| e.mtime());
        node.opaque = e.is_opaque();
        node.rdev = e.rdev();
        node.xattrs = e.xattrs().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        if let Some(t) = e.symlink_target() {
            node.link = t.to_vec();
            node.size = t.len() as u64;
        }
        if e.kind() == EntryKind::Reg {
            let mut data = Vec::new();
            for c in index.chunks_of(id) {
                data.extend_from_slice(&layer.read_chunk(blob, &c).expect("chunk verifies"));
            }
            assert_eq!(data.len() as u64, e.size());
            node.size = e.size();
            node.digest = Some(Sha256Digest::of(&data));
            by_id.entry(id).or_default().insert(path.clone());
        }
        if e.kind() != EntryKind::Dir && !e.is_whiteout() {
            by_id.entry(id).or_default().insert(path.clone());
        }
        for (name, child) in index.children(id) {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            if index.entry(child).unwrap().kind() != EntryKind::Dir {
                by_id.entry(child).or_default().insert(p.clone());
            }
            stack.push((child, p));
        }
        nodes.insert(path, node);
    }
    Manifest {
        nodes,
        hardlinks: by_id.into_values().filter(|s| s.len() > 1).collect(),
    }
}

/// Builder for test tars with exact control over headers.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Common metadata of a test entry.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// User name.
    pub uname: &'static str,
    /// Group name.
    pub gname: &'static str,
    /// Seconds.
    pub mtime: u64,
    /// PAX records (e.g. `SCHILY.xattr.user.x`, `mtime`).
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: "",
            gname: "",
            mtime: 1_600_000_000,
            pax: Vec::new(),
        }
    }
}

impl TarBuilder {
    /// An empty tar.
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(&mut self, ty: tar::EntryType, m: &Meta, size: u64) -> tar::Header {
        if !m.pax.is_empty() {
            self.b
                .append_pax_extensions(m.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        if !m.uname.is_empty() {
            h.set_username(m.uname).unwrap();
        }
        if !m.gname.is_empty() {
            h.set_groupname(m.gname).unwrap();
        }
        h
    }

    /// A directory.
    pub fn dir(&mut self, path: &[u8], m: &Meta) -> &mut Self {
        let mut h = self.header(tar::EntryType::Directory, m, 0);
        self.b.append_data(&mut h, p(path), &[][..]).unwrap();
        self
    }

    /// A regular file.
    pub fn file(&mut self, path: &[u8], m: &Meta, data: &[u8]) -> &mut Self {
        let mut h = self.header(tar::EntryType::Regular, m, data.len() as u64);
        self.b.append_data(&mut h, p(path), data).unwrap();
        self
    }

    /// A symlink or hardlink.
    pub fn link(&mut self, path: &[u8], m: &Meta, target: &[u8], hard: bool) -> &mut Self {
        let ty = if hard {
            tar::EntryType::Link
        } else {
            tar::EntryType::Symlink
        };
        let mut h = self.header(ty, m, 0);
        self.b.append_link(&mut h, p(path), p(target)).unwrap();
        self
    }

    /// A device or fifo.
    pub fn special(
        &mut self,
        path: &[u8],
        m: &Meta,
        ty: tar::EntryType,
        dev: (u32, u32),
    ) -> &mut Self {
        let mut h = self.header(ty, m, 0);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        self.b.append_data(&mut h, p(path), &[][..]).unwrap();
        self
    }

    /// The finished tar (with its end-of-archive marker).
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn p(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

/// Deterministic pseudo-random bytes (compressible in part).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 33) as u8
            } else {
                (i % 7) as u8
            }
        })
        .collect()
}

/// A layer tar with the edge cases a converter must preserve: root entry, nested and
/// implicit directories, empty/small/multi-chunk files (for chunk sizes <= 64 KiB),
/// symlinks (also pointing outside), hardlinks (same and other directory), char/block
/// devices, a fifo, whiteouts, an opaque directory, xattrs (incl. binary
/// `security.capability`), setuid/sticky modes, large ids, user/group names, sub-second
/// PAX mtimes, long and non-UTF-8 names, a duplicate path, and a nested landmark-named
/// file.
pub fn edge_case_tar() -> Vec<u8> {
    edge_tar(false)
}

/// [`edge_case_tar`] without what the reference converter's TOC cannot carry: non-UTF-8
/// names (Go's JSON encoder replaces them with U+FFFD) and sub-second mtimes (rounded to
/// seconds).
pub fn portable_edge_case_tar() -> Vec<u8> {
    edge_tar(true)
}

fn edge_tar(portable: bool) -> Vec<u8> {
    let d = |mode| Meta {
        mode,
        ..Meta::default()
    };
    let mut t = TarBuilder::new();
    t.dir(
        b"./",
        &Meta {
            mtime: 1_500_000_000,
            ..d(0o755)
        },
    );
    t.dir(
        b"etc/",
        &Meta {
            pax: vec![("SCHILY.xattr.user.dirattr".into(), b"on".to_vec())],
            ..d(0o755)
        },
    );
    t.file(b"etc/passwd", &d(0o644), b"root:x:0:0:root:/root:/bin/sh\n");
    t.file(b"etc/empty", &d(0o600), b"");
    t.file(b"etc/big", &d(0o644), &pattern(200_000, 1));
    t.dir(b"bin/", &d(0o755));
    t.file(
        b"bin/busybox",
        &Meta {
            pax: vec![(
                "SCHILY.xattr.security.capability".into(),
                vec![
                    1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            )],
            ..d(0o4755)
        },
        &pattern(70_000, 2),
    );
    t.link(b"bin/sh", &d(0o777), b"busybox", false);
    t.link(b"bin/hard", &d(0o755), b"bin/busybox", true);
    t.dir(b"usr/", &d(0o755));
    t.link(b"usr/passwd-link", &d(0o644), b"etc/passwd", true);
    t.dir(b"dev/", &d(0o755));
    t.special(b"dev/null", &d(0o666), tar::EntryType::Char, (1, 3));
    t.special(b"dev/sda", &d(0o660), tar::EntryType::Block, (8, 0));
    t.dir(b"run/", &d(0o755));
    t.special(b"run/fifo", &d(0o644), tar::EntryType::Fifo, (0, 0));
    t.dir(b"var/", &d(0o755));
    t.file(b"var/.wh.gone", &d(0o644), b"");
    t.dir(b"var/cache/", &d(0o755));
    t.file(b"var/cache/.wh..wh..opq", &d(0o644), b"");
    t.file(b"var/cache/new", &d(0o644), b"fresh");
    t.dir(b"tmp/", &d(0o1777));
    t.file(
        b"home-file",
        &Meta {
            uid: 3_000_000,
            gid: 1000,
            uname: "user",
            gname: "group",
            ..d(0o640)
        },
        b"owned",
    );
    if !portable {
        t.file(
            b"nanos",
            &Meta {
                pax: vec![("mtime".into(), b"1700000000.123456789".to_vec())],
                ..d(0o644)
            },
            b"precise",
        );
    }
    let long = [
        b"long/".to_vec(),
        vec![b'x'; 150],
        b"/".to_vec(),
        vec![b'y'; 200],
    ]
    .concat();
    t.file(&long, &d(0o644), b"long name");
    if !portable {
        t.file(b"weird/\xff\xfe-not-utf8", &d(0o644), b"bytes");
    }
    t.file(b"implicit/sub/file", &d(0o644), b"parents are implicit");
    t.file(b"dup", &d(0o644), b"first version");
    t.file(b"dup", &d(0o600), b"second version wins");
    t.file(b"sub/.prefetch.landmark", &d(0o644), b"not a landmark");
    t.link(b"evil", &d(0o777), b"../../etc/shadow", false);
    t.file(b"zeros", &d(0o644), &vec![0u8; 150_000]);
    t.finish()
}

/// A layer tar whose names a TOC writer built on Go's JSON encoder loses (bytes that are
/// not UTF-8 become U+FFFD), in every place a header can be: the first entry, names
/// right after file data, after a multi-chunk file (64 KiB chunks), empty files and
/// directories between files, a directory with such a name and a file in it, a symlink
/// and a hardlink to such a name (link names lost too), two names that differ only in
/// such bytes, a long (PAX/GNU) name, and the last entry.
pub fn lost_names_tar() -> Vec<u8> {
    let d = |mode| Meta {
        mode,
        ..Meta::default()
    };
    let mut t = TarBuilder::new();
    t.file(b"bad-\xff\xfe", &d(0o644), b"first entry, data");
    t.file(b"plain", &d(0o644), b"a plain name");
    t.file(b"empty-\xe9", &d(0o600), b"");
    t.dir(b"dir-\xc3(/", &d(0o755));
    t.file(b"dir-\xc3(/inside", &d(0o644), b"in a dir with a lost name");
    t.file(b"big", &d(0o644), &pattern(200_000, 7));
    t.file(
        b"after-big-\xff",
        &d(0o644),
        b"after the last chunk of a large file",
    );
    t.file(
        b"after-big-\xfe",
        &d(0o644),
        b"same TOC name as the one before",
    );
    t.link(b"sym-\xfe", &d(0o777), b"bad-\xff\xfe", false);
    t.link(b"hard-\xe2\x82", &d(0o644), b"bad-\xff\xfe", true);
    t.special(b"fifo-\xff", &d(0o644), tar::EntryType::Fifo, (0, 0));
    let long = [b"long/".to_vec(), vec![b'x'; 120], b"-\xff".to_vec()].concat();
    t.dir(b"long/", &d(0o755));
    t.file(&long, &d(0o644), b"long lost name");
    t.file(b"last-\xfe", &d(0o644), b"");
    t.finish()
}
