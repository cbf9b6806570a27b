//! Merges over a lazily mounted layer (root, /dev/fuse): a small read-only FUSE file
//! system that counts file opens and reads stands in for a remote (eStargz) layer
//! mounted on a snapshot's `fs`. A stacked merge, mounting it and walking its metadata
//! read no file data; a flattened merge copies (EXDEV) and so reads through FUSE; an
//! input removed while a flattened merge reads it makes the merge fail with nothing
//! left behind.
//!
//! The same check against real half-pulled eStargz layers (the daemon's fetched-bytes
//! metric, through containerd) is `stack_merge_over_half_pulled_estargz_layers_fetches_nothing`
//! in `integration/tests/lazy_containerd.rs`.

mod merge_util;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use merge_util::*;
use snapshotter::merge::{MergeMode, MergeRequest, Strategy};
use snapshotter::overlay::OverlayFeatures;
use snapshotter::remote::{HookError, LayerOutcome, LayerRequest, RemoteLayers, RemoteSnapshot};
use snapshotter::store::{Kind, Labels};
use snapshotter::{labels, ErrorKind, Options, Snapshots};

const TTL: Duration = Duration::from_secs(60);

struct Node {
    name: OsString,
    attr: FileAttr,
    data: Vec<u8>,
    target: OsString,
    children: Vec<u64>,
}

/// Counts of what the lazy layer served.
#[derive(Default)]
struct Counters {
    opens: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
}

/// A read gate: while closed, reads wait.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

struct LazyLayer {
    nodes: BTreeMap<u64, Node>,
    counters: Arc<Counters>,
    gate: Arc<Gate>,
}

fn attr(ino: u64, kind: FileType, size: u64, perm: u16) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + ino);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl LazyLayer {
    /// `files`: path → content; a content starting with "->" makes a symlink.
    fn new(files: &[(&str, Vec<u8>)], counters: Arc<Counters>, gate: Arc<Gate>) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1,
            Node {
                name: OsString::new(),
                attr: attr(1, FileType::Directory, 0, 0o755),
                data: Vec::new(),
                target: OsString::new(),
                children: Vec::new(),
            },
        );
        let mut next = 2u64;
        for (path, content) in files {
            let mut parent = 1u64;
            let parts: Vec<&str> = path.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i == parts.len() - 1;
                let existing = nodes[&parent]
                    .children
                    .iter()
                    .copied()
                    .find(|c| nodes[c].name == *part);
                let ino = match existing {
                    Some(c) => c,
                    None => {
                        let ino = next;
                        next += 1;
                        let (kind, data, target) = if !last {
                            (FileType::Directory, Vec::new(), OsString::new())
                        } else if let Some(t) = content.strip_prefix(b"->") {
                            (
                                FileType::Symlink,
                                Vec::new(),
                                OsStr::new(std::str::from_utf8(t).unwrap()).to_os_string(),
                            )
                        } else {
                            (FileType::RegularFile, content.clone(), OsString::new())
                        };
                        let size = match kind {
                            FileType::Symlink => target.len() as u64,
                            _ => data.len() as u64,
                        };
                        let perm = if kind == FileType::RegularFile {
                            0o644
                        } else {
                            0o755
                        };
                        nodes.insert(
                            ino,
                            Node {
                                name: OsString::from(part),
                                attr: attr(ino, kind, size, perm),
                                data,
                                target,
                                children: Vec::new(),
                            },
                        );
                        nodes.get_mut(&parent).unwrap().children.push(ino);
                        ino
                    }
                };
                parent = ino;
            }
        }
        LazyLayer {
            nodes,
            counters,
            gate,
        }
    }
}

impl Filesystem for LazyLayer {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.nodes.get(&u64::from(parent)) else {
            return reply.error(Errno::ENOENT);
        };
        match p.children.iter().find(|c| self.nodes[c].name == name) {
            Some(c) => reply.entry(&TTL, &self.nodes[c].attr, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.nodes.get(&u64::from(ino)) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.nodes.get(&u64::from(ino)) {
            Some(n) if n.attr.kind == FileType::Symlink => reply.data(n.target.as_encoded_bytes()),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.opens.fetch_add(1, Ordering::SeqCst);
        reply.opened(FileHandle(0), FopenFlags::empty());
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
        {
            let mut closed = self.gate.closed.lock().unwrap();
            while *closed {
                closed = self.gate.opened.wait(closed).unwrap();
            }
        }
        let Some(n) = self.nodes.get(&u64::from(ino)) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(n.data.len());
        let end = (start + size as usize).min(n.data.len());
        self.counters.reads.fetch_add(1, Ordering::SeqCst);
        self.counters
            .bytes
            .fetch_add((end - start) as u64, Ordering::SeqCst);
        reply.data(&n.data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(n) = self.nodes.get(&u64::from(ino)) else {
            return reply.error(Errno::ENOENT);
        };
        let mut entries = vec![
            (u64::from(ino), FileType::Directory, OsString::from(".")),
            (u64::from(ino), FileType::Directory, OsString::from("..")),
        ];
        for c in &n.children {
            let child = &self.nodes[c];
            entries.push((*c, child.attr.kind, child.name.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}

fn lazy_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bin/app", vec![0x42; 256 * 1024]),
        ("etc/conf", b"lazy=1\n".to_vec()),
        ("etc/shared", b"the lazy layer's version\n".to_vec()),
        ("data/big", vec![0x17; 1 << 20]),
        ("lnk", b"->bin/app".to_vec()),
    ]
}

struct Setup {
    tmp: tempfile::TempDir,
    s: Snapshots,
    counters: Arc<Counters>,
    gate: Arc<Gate>,
    session: Option<fuser::BackgroundSession>,
    lazy_dir: PathBuf,
}

/// The remote-layer hook of these tests: the test mounts the lazy layer itself (no
/// Prepare is served remotely); the core only needs a hook to hand out mounts on a remote
/// layer (without one it answers Unavailable, as a daemon with lazy layers off does).
struct TestMountedLayers;

impl RemoteLayers for TestMountedLayers {
    fn prepare(&self, _: &LayerRequest<'_>) -> LayerOutcome {
        LayerOutcome::Declined {
            reason: "test hook".into(),
        }
    }

    fn restore(&self, _: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        Ok(())
    }

    fn remove(&self, _: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        Ok(())
    }
}

/// A store with a normal layer `a1` and a lazy layer `x1` (FUSE on its `fs`), both
/// committed; x1 carries the remote label like a real lazy layer.
fn setup() -> Setup {
    let tmp = tempfile::Builder::new()
        .prefix("stl-merge-")
        .tempdir_in("/tmp")
        .unwrap();
    let s = Snapshots::open(
        tmp.path().join("root"),
        Options {
            features: OverlayFeatures {
                index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
                userxattr: false,
            },
            remote: Some(Arc::new(TestMountedLayers)),
            ..Options::default()
        },
    )
    .unwrap();
    commit_layer(&s, "a1", "", 1, |l| {
        l.file("etc/a", b"from a\n")
            .file("etc/shared", b"a's version\n")
            .file("bin/a-tool", b"tool\n");
    });
    s.prepare("x1-active", "", Labels::new()).unwrap();
    let lazy_dir = s.layers("x1-active").unwrap()[0].dir.clone();
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Gate::default());
    let fs = LazyLayer::new(&lazy_files(), counters.clone(), gate.clone());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("stl-merge-lazy".into()),
    ];
    cfg.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, &lazy_dir, &cfg).unwrap();
    let mut l = Labels::new();
    l.insert(labels::REMOTE.into(), labels::REMOTE_VALUE.into());
    s.commit("x1", "x1-active", l).unwrap();
    Setup {
        tmp,
        s,
        counters,
        gate,
        session: Some(session),
        lazy_dir,
    }
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

/// Walks `root` reading metadata and symlinks only.
fn walk_metadata(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        n += 1;
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if md.file_type().is_symlink() {
            fs::read_link(&p).unwrap();
        }
        let _ = xattr::list(&p);
        let _ = md.size();
    }
    n
}

#[test]
fn stack_merge_over_a_lazy_layer_reads_no_file_data() {
    if !can_mount() {
        return;
    }
    let mut st = setup();
    let s = &st.s;
    let c = st.counters.clone();
    let reads = || {
        (
            c.opens.load(Ordering::SeqCst),
            c.reads.load(Ordering::SeqCst),
        )
    };
    assert_eq!(reads(), (0, 0));

    let view = s
        .merge(&req(Kind::View, "v", &["a1", "x1"], MergeMode::Stack))
        .unwrap();
    let active = s
        .merge(&req(Kind::Active, "m", &["x1", "a1"], MergeMode::Auto))
        .unwrap();
    assert_eq!(
        (view.strategy, active.strategy),
        (Strategy::Stack, Strategy::Stack)
    );
    assert_eq!(reads(), (0, 0), "merging read nothing");
    let target = st.tmp.path().join("mnt");
    {
        let _g = mount_at(&view.mounts, &target);
        assert!(walk_metadata(&target) > 10);
        assert_eq!(
            reads(),
            (0, 0),
            "mounting and walking metadata read nothing"
        );
        assert_eq!(
            fs::read(target.join("etc/shared")).unwrap(),
            b"the lazy layer's version\n"
        );
        assert_eq!(fs::read(target.join("etc/a")).unwrap(), b"from a\n");
    }
    let (opens, n) = reads();
    assert!(
        opens >= 1 && n >= 1,
        "reading a lazy file goes to FUSE: {opens} {n}"
    );

    // Flattening copies the lazy layer's files through FUSE (another file system).
    let before = c.bytes.load(Ordering::SeqCst);
    let flat = s
        .merge(&req(Kind::View, "flat", &["a1", "x1"], MergeMode::Hardlink))
        .unwrap();
    let stats = flat.stats.unwrap();
    assert_eq!((stats.copied, stats.linked), (4, 2), "{stats:?}");
    let fetched = c.bytes.load(Ordering::SeqCst) - before;
    assert!(fetched >= (256 * 1024 + (1 << 20)) as u64, "{fetched}");
    let target = st.tmp.path().join("mnt-flat");
    {
        let _g = mount_at(&flat.mounts, &target);
        assert_eq!(
            fs::read(target.join("data/big")).unwrap(),
            vec![0x17; 1 << 20]
        );
        assert_eq!(
            fs::read_link(target.join("lnk")).unwrap(),
            Path::new("bin/app")
        );
        assert_eq!(fs::read(target.join("bin/a-tool")).unwrap(), b"tool\n");
    }
    for k in ["v", "m", "flat", "x1"] {
        s.remove(k).unwrap();
    }
    drop(st.session.take());
    assert!(!st.lazy_dir.exists());
}

#[test]
fn an_input_removed_while_a_merge_reads_it_fails_cleanly() {
    if !can_mount() {
        return;
    }
    let mut st = setup();
    *st.gate.closed.lock().unwrap() = true;
    let s = Arc::new(std::mem::replace(
        &mut st.s,
        Snapshots::open(st.tmp.path().join("other"), Options::default()).unwrap(),
    ));
    let worker = {
        let s = s.clone();
        std::thread::spawn(move || s.merge(&req(Kind::Active, "m", &["a1", "x1"], MergeMode::Copy)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while st.counters.opens.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the merge never opened a lazy file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The merge is reading x1: remove x1 under it (nothing holds it yet).
    s.remove("x1").unwrap();
    {
        let mut closed = st.gate.closed.lock().unwrap();
        *closed = false;
        st.gate.opened.notify_all();
    }
    let err = worker.join().unwrap().unwrap_err();
    eprintln!("merge error: {err}");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::NotFound | ErrorKind::FailedPrecondition
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("x1"),
        "the error names the input: {err}"
    );
    assert!(s.stat("m").is_err(), "no merged snapshot");
    let names: Vec<String> = s.list(&[]).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["a1"]);
    let dirs = fs::read_dir(s.layout().snapshots_dir()).unwrap().count();
    assert_eq!(dirs, 1, "only a1's directory");
    let merging = s.layout().root().join("merging");
    assert_eq!(fs::read_dir(merging).unwrap().count(), 0, "no build left");
    drop(st.session.take());
}
