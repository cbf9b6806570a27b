//! A lazy layer answers every call like the same layer extracted: call by call, a table
//! of syscalls is made on every path of each layer under its lazy mount (`starling mount`,
//! with passthrough off — the default — and on) and under a read-only bind mount of the
//! layer extracted by the harness (the fair comparison for a read-only layer); then on
//! every path of the merged view through a read-only overlay of the lazy mounts and of
//! the extracted layers (what a container image view sees); then through a writable
//! overlay of each (what a container sees), where the changes of the table really happen
//! (copy-ups of lazy files included) and the resulting upper directories are compared.
//!
//! Images: the harness's edge image (3 layers: `security.capability` and binary `user.*`
//! xattrs, an opaque directory, whiteouts, devices, FIFO, hardlinks, long and dangling
//! symlinks, a sparse file, a layer without directory entries and without any xattr) and
//! busybox (one layer without any xattr), converted by `starling estargz build`.
//!
//! Every difference fails the test unless it is one of the documented exceptions in
//! [`expected_difference`], each with the reason it cannot (or need not) be equal. The
//! full table (call, paths compared, equal, differences with an example) is printed.

mod fuse_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fuse_common::*;
use integration::extract::{extract_layer, ExtractOptions};
use integration::fscompat::{
    compare, show, statfs_fields, walk, Call, Ioctl, Kind, Lock, Mutation, OpenMode, Row, Seek,
    StatField,
};
use integration::images::{edge_image, EdgeOptions};
use integration::mounts::{self, bind_ro};
use integration::oci::OciImage;
use integration::overlay::{self, OverlayStack};
use integration::registry::Registry;
use integration::treecmp::{compare_trees, CompareOptions};
use integration::workdir::Workdir;
use integration::{prereq, require};
use nix::mount::MsFlags;

/// xattr names asked of every path: present on some entries of the edge image, absent
/// elsewhere, and the ones overlayfs asks of its lowers.
const XATTRS: [&str; 10] = [
    "security.capability",
    "user.comment",
    "user.binary",
    "user.dirattr",
    "user.missing",
    "trusted.overlay.opaque",
    "trusted.overlay.metacopy",
    "trusted.overlay.redirect",
    "trusted.overlay.origin",
    "system.posix_acl_access",
];

/// Calls that only read.
fn read_calls() -> Vec<Call> {
    use StatField::*;
    let mut v: Vec<Call> = [
        Mode,
        Nlink,
        Uid,
        Gid,
        Size,
        Blocks,
        Blksize,
        Atime,
        Mtime,
        Ctime,
        Rdev,
        DevIsRoot,
        Mask,
        AttributesMask,
        Attributes,
    ]
    .into_iter()
    .map(Call::Stat)
    .collect();
    for n in XATTRS {
        v.extend([
            Call::GetxattrSize(n),
            Call::Getxattr(n),
            Call::GetxattrSmall(n),
        ]);
    }
    v.extend([
        Call::ListxattrSize,
        Call::Listxattr,
        Call::ListxattrSmall,
        Call::Readlink,
    ]);
    use OpenMode as O;
    for m in [
        O::ReadOnly,
        O::WriteOnly,
        O::ReadWrite,
        O::Creat,
        O::CreatExcl,
        O::Directory,
        O::NoFollow,
        O::Path,
        O::PathNoFollow,
        O::NoAtime,
        O::Direct,
    ] {
        v.push(Call::Open(m));
    }
    v.extend([Call::ReadHead, Call::Fsync, Call::Fdatasync]);
    for s in [Seek::Data0, Seek::Hole0, Seek::DataAtEnd, Seek::End] {
        v.push(Call::Seek(s));
    }
    for a in [libc::F_OK, libc::R_OK, libc::W_OK, libc::X_OK] {
        v.push(Call::Access(a));
    }
    for l in [
        Lock::FlockShared,
        Lock::FlockExclusive,
        Lock::PosixRead,
        Lock::PosixWrite,
        Lock::OfdRead,
        Lock::GetLock,
    ] {
        v.push(Call::Lock(l));
    }
    v.extend([Call::CopyOut, Call::CopyWithin]);
    for i in [Ioctl::Fionread, Ioctl::GetFlags, Ioctl::FsGetXattr] {
        v.push(Call::Ioctl(i));
    }
    v.push(Call::Getdents);
    // Last: on a writable tree it truncates (through symlinks too).
    v.push(Call::Open(O::Trunc));
    v
}

/// Calls that change the tree, the destructive ones last (each path gets them in order).
fn mutation_calls() -> Vec<Call> {
    use Mutation::*;
    [
        Setxattr,
        Removexattr,
        Chmod,
        Chown,
        Utimes,
        Append,
        Truncate,
        Mkdir,
        Symlink,
        Mknod,
        Create,
        Link,
        Rename,
        Unlink,
        Rmdir,
    ]
    .into_iter()
    .map(Call::Mutate)
    .collect()
}

/// Where a table runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// One layer: read-only bind of the extracted layer vs the lazy mount.
    Layer,
    /// Read-only overlay of all layers.
    Overlay,
    /// Writable overlay (container) of all layers.
    Container,
}

/// What a table needs to know about its paths.
struct Known<'a> {
    /// Paths the extractor wrote sparse.
    sparse: &'a [PathBuf],
    /// Directories the layer (or, merged, the topmost layer holding them) does not list,
    /// the root included.
    implicit: &'a BTreeSet<PathBuf>,
    /// When the test started (Unix seconds).
    start: f64,
}

/// Whether a `statx` time (`secs.nanos`) is not before `start`.
fn changed_during_test(t: &str, start: f64) -> bool {
    t.parse::<f64>().is_ok_and(|v| v >= start)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Why a difference is expected, or `None` when it is a bug.
fn expected_difference(place: Place, row: &Row, known: &Known) -> Option<&'static str> {
    let is_sparse = known.sparse.iter().any(|s| s == &row.path);
    let implicit = known.implicit.contains(&row.path);
    match (&row.call, row.kind) {
        (Call::Stat(StatField::Ctime), _) => Some(
            "ctime: the extracted copy's is the time of extraction (no tool can set it); the lazy layer reports the TOC's mtime",
        ),
        (Call::Stat(StatField::Size | StatField::Blocks), Kind::Dir) => Some(
            "directory size and blocks are the filesystem's own (ext4 grows them with entries); the lazy layer reports ext4's 4096 / 8 of a small directory",
        ),
        (Call::Stat(StatField::Blocks) | Call::Seek(_), Kind::Reg) if is_sparse => Some(
            "the harness extractor writes zero runs as holes; containerd's applier (and the lazy layer) report a fully allocated file",
        ),
        (Call::Stat(StatField::Mtime | StatField::Atime), _)
            if place == Place::Container
                && changed_during_test(&row.reference, known.start)
                && changed_during_test(&row.actual, known.start) =>
        {
            Some("changed by an earlier call of the table (e.g. O_TRUNC through a symlink): the time is when that happened on each side")
        }
        (Call::Stat(StatField::Mtime | StatField::Atime), Kind::Dir) if implicit => {
            Some("a directory the layer does not list (implicit parent, root without `./`): an extraction creates it at extraction time, the lazy layer at time 0")
        }
        (Call::Stat(StatField::Mask), _) if row.reference == "basic|btime" && row.actual == "basic" => Some(
            "birth time: FUSE reports it only through FUSE_STATX, which fuser 0.18 does not implement (an extracted copy's btime is its extraction time anyway)",
        ),
        (Call::Stat(StatField::AttributesMask), _) => Some(
            "which statx attribute bits the filesystem can report is its own (ext4 more than FUSE); the attributes themselves are compared",
        ),
        (Call::Ioctl(Ioctl::GetFlags), _) if row.reference == "ok 0x80000" && row.actual == "ok 0x0" => Some(
            "ext4 marks its files with its own EXTENTS_FL ('e' in lsattr); the layer's entries carry no flags (as on xfs, tmpfs)",
        ),
        (Call::Stat(StatField::DevIsRoot), k) if place != Place::Layer && k != Kind::Dir => Some(
            "overlayfs gives non-directories the pseudo device of their layer's filesystem unless all layers share one (directories, what -xdev walks compare, keep the overlay's)",
        ),
        _ => None,
    }
}

/// Differences per call: (paths compared, equal, expected differences, unexpected rows).
#[derive(Default)]
struct Tally {
    paths: usize,
    equal: usize,
    expected: BTreeMap<&'static str, usize>,
    unexpected: Vec<Row>,
}

fn tally(place: Place, rows: Vec<Row>, known: &Known, out: &mut BTreeMap<String, Tally>) {
    let verbose = std::env::var_os("STL_COMPAT_ROWS").is_some();
    for r in rows {
        if verbose {
            eprintln!(
                "row {place:?} | {} | `{}` ({:?}) | {} | {}",
                r.call.name(),
                show(&r.path),
                r.kind,
                r.reference,
                r.actual
            );
        }
        let t = out.entry(r.call.name()).or_default();
        t.paths += 1;
        if r.equal() {
            t.equal += 1;
        } else if let Some(why) = expected_difference(place, &r, known) {
            *t.expected.entry(why).or_default() += 1;
        } else {
            t.unexpected.push(r);
        }
    }
}

/// Prints the table; returns the unexpected rows as lines.
fn report(title: &str, t: &BTreeMap<String, Tally>) -> Vec<String> {
    eprintln!("\n### {title}\n");
    eprintln!("| call | paths | equal | expected differences | unexpected (first) |");
    eprintln!("|---|---|---|---|---|");
    let mut bad = Vec::new();
    for (call, t) in t {
        let exp: Vec<String> = t
            .expected
            .iter()
            .map(|(why, n)| format!("{n}: {why}"))
            .collect();
        let first = t
            .unexpected
            .first()
            .map(|r| {
                format!(
                    "{} `{}` ({:?}): extracted {} / lazy {}",
                    t.unexpected.len(),
                    show(&r.path),
                    r.kind,
                    r.reference,
                    r.actual
                )
            })
            .unwrap_or_default();
        eprintln!(
            "| {call} | {} | {} | {} | {first} |",
            t.paths,
            t.equal,
            exp.join("; ")
        );
        for r in &t.unexpected {
            bad.push(format!(
                "{title}: {call} on `{}` ({:?}): extracted {} / lazy {}",
                show(&r.path),
                r.kind,
                r.reference,
                r.actual
            ));
        }
    }
    bad
}

struct Subject {
    name: &'static str,
    original: OciImage,
    /// Paths the extractor wrote sparse (their blocks and holes differ by design).
    sparse: Vec<PathBuf>,
    /// Directories of the merged view that no layer holding them lists.
    implicit: BTreeSet<PathBuf>,
    /// Paths whose xattr list an unprivileged process also compares.
    listed: Vec<PathBuf>,
}

fn run(wd: &Workdir, registry: &Registry, s: &Subject, bad: &mut Vec<String>) {
    let start = now();
    let esgz = starling_convert(
        &s.original,
        &wd.join(format!("esgz-{}", s.name)),
        "latest",
        false,
    )
    .unwrap();
    let reference = push(
        registry,
        &esgz.layout,
        "latest",
        &format!("compat/{}:latest", s.name),
    )
    .unwrap();
    // The reference: each original layer extracted, seen through a read-only bind mount.
    let mut extracted = Vec::new();
    let mut binds = Vec::new();
    let mut implicit = Vec::new();
    let mut merged_implicit = s.implicit.clone();
    merged_implicit.insert(PathBuf::new());
    for (i, l) in s.original.layers.iter().enumerate() {
        let d = wd.join(format!("{}-x/{i}", s.name));
        let mut report = extract_layer(&l.path, &d, &ExtractOptions::overlay()).unwrap();
        merged_implicit.extend(report.implicit_dirs.iter().cloned());
        report.implicit_dirs.insert(PathBuf::new());
        implicit.push(report.implicit_dirs);
        let b = wd.join(format!("{}-ro/{i}", s.name));
        std::fs::create_dir_all(&b).unwrap();
        binds.push(bind_ro(&d, &b).unwrap());
        extracted.push(d);
    }
    let scratch = wd.join("scratch");
    let calls: Vec<Call> = read_calls().into_iter().chain(mutation_calls()).collect();
    for passthrough in [false, true] {
        let tag = if passthrough {
            "passthrough"
        } else {
            "default"
        };
        let config = wd.join(format!("{}-{tag}.toml", s.name));
        MountConfig {
            passthrough,
            background_fetch: false,
            ..Default::default()
        }
        .write(&config)
        .unwrap();
        let mounts = mount_all(
            &wd.join(format!("root-{}-{tag}", s.name)),
            &config,
            &reference,
            &esgz,
            &wd.join(format!("{}-lazy-{tag}", s.name)),
        )
        .unwrap();
        // Layer by layer.
        let mut table = BTreeMap::new();
        for (i, m) in mounts.iter().enumerate() {
            let paths = walk(binds[i].path());
            let rows = compare(binds[i].path(), &m.mountpoint, &paths, &calls, &scratch);
            let known = Known {
                sparse: &s.sparse,
                implicit: &implicit[i],
                start,
            };
            tally(Place::Layer, rows, &known, &mut table);
            let rows = compare(
                binds[i].path(),
                &m.mountpoint,
                &s.listed,
                &[Call::ListxattrAsNobody],
                &scratch,
            );
            tally(Place::Layer, rows, &known, &mut table);
            for ((field, r), (_, a)) in statfs_fields(binds[i].path())
                .into_iter()
                .zip(statfs_fields(&m.mountpoint))
            {
                eprintln!(
                    "statfs {} layer {i} {field}: extracted {r} / lazy {a}",
                    s.name
                );
                let expected = matches!(
                    field,
                    "f_type"
                        | "f_blocks"
                        | "f_bfree"
                        | "f_bavail"
                        | "f_files"
                        | "f_ffree"
                        | "f_fsid"
                );
                if r != a && !expected {
                    bad.push(format!(
                        "{} layer {i} ({tag}): statfs {field}: extracted {r} / lazy {a}",
                        s.name
                    ));
                }
            }
        }
        bad.extend(report(&format!("{} layers, {tag}", s.name), &table));
        // Read-only overlays (an image view).
        let lazy_dirs: Vec<PathBuf> = mounts.iter().map(|m| m.mountpoint.clone()).collect();
        let ov_x = OverlayStack::mount(&extracted, &wd.join(format!("{}-ovx-{tag}", s.name)), &[])
            .unwrap();
        let ov_l = OverlayStack::mount(&lazy_dirs, &wd.join(format!("{}-ovl-{tag}", s.name)), &[])
            .unwrap();
        let paths = walk(ov_x.path());
        let known = Known {
            sparse: &s.sparse,
            implicit: &merged_implicit,
            start,
        };
        let rows = compare(ov_x.path(), ov_l.path(), &paths, &calls, &scratch);
        let mut table = BTreeMap::new();
        tally(Place::Overlay, rows, &known, &mut table);
        let rows = compare(
            ov_x.path(),
            ov_l.path(),
            &s.listed,
            &[Call::ListxattrAsNobody],
            &scratch,
        );
        tally(Place::Overlay, rows, &known, &mut table);
        bad.extend(report(&format!("{} overlay, {tag}", s.name), &table));
        drop(ov_l);
        drop(ov_x);
        // Writable overlays (a container): the changes happen, copy-ups included.
        let (cx, upper_x) =
            overlay::container(&extracted, &wd.join(format!("{}-cx-{tag}", s.name))).unwrap();
        let (cl, upper_l) =
            overlay::container(&lazy_dirs, &wd.join(format!("{}-cl-{tag}", s.name))).unwrap();
        let paths = walk(cx.path());
        let rows = compare(cx.path(), cl.path(), &paths, &calls, &scratch);
        let mut table = BTreeMap::new();
        tally(Place::Container, rows, &known, &mut table);
        bad.extend(report(&format!("{} container, {tag}", s.name), &table));
        drop(cl);
        drop(cx);
        let diff = compare_trees(
            &upper_x,
            &upper_l,
            &CompareOptions::default().ignore_xattr("trusted.overlay.*"),
        )
        .unwrap();
        if !diff.is_equal() {
            bad.push(format!(
                "{} ({tag}): container upper dirs differ: {diff:?}",
                s.name
            ));
        }
        drop(mounts);
    }
    drop(binds);
}

#[test]
fn lazy_layers_answer_every_call_like_extracted_layers() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::binaries(&["skopeo", "/bin/busybox", "/usr/bin/python3"]),
    );
    let wd = Workdir::new("fuse-compat").unwrap();
    let registry = Registry::start(&wd).unwrap();
    // Scratch on another filesystem than both trees (copy_file_range out of them).
    std::fs::create_dir_all(wd.join("scratch")).unwrap();
    let _scratch = mounts::mount(
        "tmpfs",
        &wd.join("scratch"),
        "tmpfs",
        MsFlags::empty(),
        "size=16m",
    )
    .unwrap();
    let edge_desc = edge_image(&EdgeOptions::default());
    let edge = edge_desc
        .builder()
        .write_layout(&wd.join("edge"), "latest")
        .unwrap();
    let busybox = integration::images::busybox()
        .unwrap()
        .write_layout(&wd.join("busybox"), "latest")
        .unwrap();
    let subjects = [
        Subject {
            name: "edge",
            original: edge,
            sparse: vec![PathBuf::from(integration::images::edge::paths::SPARSE)],
            implicit: edge_desc.implicit_dirs.clone(),
            listed: ["", "opq", "data/xattrs", "bin/netcap", "lower/sub", "data"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        },
        Subject {
            name: "busybox",
            original: busybox,
            sparse: Vec::new(),
            implicit: BTreeSet::new(),
            listed: ["", "bin", "bin/busybox"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        },
    ];
    let mut bad = Vec::new();
    for s in &subjects {
        run(&wd, &registry, s, &mut bad);
    }
    assert!(
        bad.is_empty(),
        "{} unexpected differences:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
