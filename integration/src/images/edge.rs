//! The hand-made edge-case image: three layers written entry by entry covering what lazy
//! filesystems and snapshotters get wrong — hardlinks (incl. to files in subdirs),
//! whiteouts of files and dirs, opaque dirs, file<->dir<->symlink replacements, xattrs
//! (`security.capability`, `user.*` with binary values), relative/absolute/dangling/long
//! symlinks, char/block devices, fifos, empty files, a multi-chunk patterned file, a
//! mostly-zero file (optionally > 4 GiB), deep and long paths (GNU and PAX), non-UTF-8
//! names, odd modes, big uids/gids, odd mtimes, and a last layer without parent dir entries.
//!
//! The expected contents of each layer are the entries themselves ([`EdgeImage::layers`])
//! and, as trees, the harness's own extraction of the built blobs
//! ([`crate::oci::OciImage::extract_layers`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::oci::{Content, Entry, ImageBuilder, LayerBuilder};

/// Paths inside the edge image that tests commonly check.
pub mod paths {
    /// 9 MiB + 12345 bytes of pattern (seed [`super::CHUNKED_SEED`]): spans three 4 MiB chunks.
    pub const CHUNKED: &str = "data/chunked.bin";
    /// 64 MiB, zero except a few marks.
    pub const SPARSE: &str = "data/sparse.bin";
    /// 4 GiB + 4097 bytes, zero except marks (only with [`super::EdgeOptions::huge_file`]).
    pub const HUGE: &str = "data/huge.bin";
    /// Empty regular file.
    pub const EMPTY: &str = "data/empty";
    /// File with `security.capability`.
    pub const CAPABILITY: &str = "bin/netcap";
    /// Deleted in layer 1 by a whiteout, re-created in layer 2.
    pub const READDED: &str = "lower/gone-file";
}

/// Seed of the pattern in [`paths::CHUNKED`].
pub const CHUNKED_SEED: u64 = 0x5EED;
/// Length of [`paths::CHUNKED`].
pub const CHUNKED_LEN: u64 = 9 * 1024 * 1024 + 12345;
/// Length of [`paths::SPARSE`].
pub const SPARSE_LEN: u64 = 64 * 1024 * 1024;
/// Length of [`paths::HUGE`].
pub const HUGE_LEN: u64 = 4 * 1024 * 1024 * 1024 + 4097;

/// Options of the edge image.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeOptions {
    /// Include [`paths::HUGE`] (> 4 GiB, mostly zeros; adds tens of seconds to build and
    /// extraction).
    pub huge_file: bool,
}

/// The edge image: its layers (bottom first) and what a merged view must synthesize.
#[derive(Debug, Clone)]
pub struct EdgeImage {
    /// The layers, bottom first; entries are the expected contents of each layer.
    pub layers: Vec<LayerBuilder>,
    /// Directories of the merged view that exist only implicitly in the top layer (no
    /// entries there; their mtime comes from whoever synthesizes them).
    pub implicit_dirs: BTreeSet<PathBuf>,
}

impl EdgeImage {
    /// An [`ImageBuilder`] with the layers (cmd `/bin/sh`, which does not exist: the image
    /// is for mounting and comparing, not running).
    pub fn builder(&self) -> ImageBuilder {
        let mut b = ImageBuilder::new().cmd(["/bin/sh"]);
        for l in &self.layers {
            b = b.layer(l.clone());
        }
        b
    }
}

/// `security.capability` v2 value granting CAP_NET_RAW (permitted + effective).
pub fn capability_net_raw() -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes()); // VFS_CAP_REVISION_2 | EFFECTIVE
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted lo: CAP_NET_RAW
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable lo
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted hi
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable hi
    v
}

fn deep_dirs(root: &str, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = root.to_string();
    for i in 0..n {
        cur = format!("{cur}/c{}", i % 10);
        v.push(cur.clone());
    }
    v
}

fn base_layer(opts: &EdgeOptions) -> LayerBuilder {
    let mut l = LayerBuilder::new();
    for d in ["bin", "etc", "usr", "usr/lib", "data", "dev", "lower"] {
        l = l.dir(d);
    }
    l = l.entry(Entry::dir("lower/sub").xattr("user.dirattr", "on a dir"));
    for d in [
        "lower/gone-dir",
        "lower/gone-dir/b",
        "opq",
        "opq/olddir",
        "replace",
        "replace/dir-becomes-file",
        "srv",
        "srv/www",
    ] {
        l = l.dir(d);
    }
    l = l
        .entry(Entry::dir("tmp").mode(0o1777))
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        .file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
        .file("usr/lib/existing.so", "lib")
        // contents
        .file(paths::EMPTY, "")
        .file(paths::CHUNKED, Content::Pattern { len: CHUNKED_LEN, seed: CHUNKED_SEED })
        .file(
            paths::SPARSE,
            Content::Sparse {
                len: SPARSE_LEN,
                marks: vec![
                    (0, b"start".to_vec()),
                    (4 * 1024 * 1024 - 2, b"XY".to_vec()),
                    (33 * 1024 * 1024, b"middle".to_vec()),
                    (SPARSE_LEN - 3, b"end".to_vec()),
                ],
            },
        );
    if opts.huge_file {
        l = l.file(
            paths::HUGE,
            Content::Sparse {
                len: HUGE_LEN,
                marks: vec![
                    (0, b"huge".to_vec()),
                    (1 << 32, b"past4G".to_vec()),
                    (HUGE_LEN - 1, b"!".to_vec()),
                ],
            },
        );
    }
    // hardlinks: same dir, into a subdir, a chain of three names
    l = l
        .file("data/hl-a", "hardlinked content\n")
        .hardlink("data/hl-b", "data/hl-a")
        .file("lower/sub/deep-target", "target in a subdir\n")
        .hardlink("hl-to-sub", "lower/sub/deep-target")
        .hardlink("data/hl-c", "lower/sub/deep-target");
    // symlinks
    let long_target = format!("../{}", "long-target-component/".repeat(8));
    l = l
        .entry(Entry::symlink("bin/rel", "../data/hl-a").owner(7, 8))
        .symlink("bin/abs", "/etc/passwd")
        .symlink("bin/dangling", "../nope/missing")
        .symlink("bin/dirlink", "../lower/sub")
        .symlink("bin/longlink", long_target);
    // devices and fifos
    l = l
        .entry(Entry::char_dev("dev/null", 1, 3).mode(0o666))
        .entry(Entry::block_dev("dev/loop9", 7, 9).mode(0o660).owner(0, 6))
        .entry(Entry::fifo("dev/fifo").mode(0o620));
    // xattrs
    let mut binary = b"bin\0ary\xff".to_vec();
    binary.extend_from_slice(&[0u8; 3]);
    l = l
        .entry(
            Entry::file(paths::CAPABILITY, "#!/bin/true\n")
                .mode(0o755)
                .xattr("security.capability", capability_net_raw()),
        )
        .entry(
            Entry::file("data/xattrs", "x")
                .xattr("user.comment", "plain text")
                .xattr("user.binary", binary),
        );
    // odd modes
    l = l
        .entry(Entry::file("data/setuid", "su").mode(0o4755))
        .entry(Entry::file("data/setgid", "sg").mode(0o2755).owner(0, 50))
        .entry(Entry::dir("data/sticky").mode(0o1777))
        .entry(Entry::file("data/mode000", "nobody reads me").mode(0o000))
        .entry(Entry::file("data/exec-only", "x").mode(0o111))
        .entry(Entry::dir("data/private").mode(0o700).owner(1000, 1000))
        .entry(
            Entry::file("data/private/inside", "p")
                .owner(1000, 1000)
                .mode(0o600),
        );
    // owners and times
    l = l
        .entry(Entry::file("data/owned", "o").owner(1000, 1000))
        .entry(
            Entry::file("data/nobody", "n")
                .owner(65534, 65534)
                .names("nobody", "nogroup"),
        )
        .entry(Entry::file("data/bigid", "b").owner(3_000_000, 2_097_153))
        .entry(Entry::file("data/epoch", "e").mtime(0))
        .entry(Entry::file("data/y2038", "y").mtime((1u64 << 31) + 10))
        .entry(Entry::file("data/future", "f").mtime(4_102_444_800));
    // deep and long paths: > 100 components, > 255 bytes; GNU long names and PAX path
    let deep = deep_dirs("deep", 120);
    l = l.dir("deep");
    for d in &deep {
        l = l.dir(d);
    }
    let bottom = deep.last().expect("deep dirs").clone();
    l = l
        .file(format!("{bottom}/leaf-gnu"), "deep gnu")
        .entry(Entry::file(format!("{bottom}/leaf-pax"), "deep pax").pax_path())
        .file(format!("data/{}", "n".repeat(255)), "NAME_MAX");
    // non-UTF-8 names
    l = l
        .file(b"data/bad-\xff\xfe".as_slice(), "invalid utf-8")
        .file(b"data/latin1-caf\xe9".as_slice(), "latin-1")
        .dir(b"data/\xc3(".as_slice())
        .file(b"data/\xc3(/inside".as_slice(), "in a non-utf8 dir");
    // things later layers delete or replace
    l.file("lower/keep", "kept")
        .file("lower/gone-file", "deleted in layer 1")
        .file("lower/gone-dir/a", "a")
        .file("lower/gone-dir/b/c", "c")
        .file("opq/old1", "hidden by opaque")
        .file("opq/olddir/x", "hidden by opaque")
        .file("replace/file-becomes-dir", "I was a file")
        .file("replace/dir-becomes-file/child", "I was in a dir")
        .symlink("replace/link-becomes-file", "../etc/passwd")
        .file("srv/www/index.html", "<html></html>")
}

fn change_layer() -> LayerBuilder {
    LayerBuilder::new()
        .dir("etc")
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .dir("lower")
        .whiteout("lower/gone-file")
        .whiteout("lower/gone-dir")
        .whiteout("srv")
        .dir("opq")
        .opaque("opq")
        .file("opq/new1", "after opaque")
        .dir("replace")
        .dir("replace/file-becomes-dir")
        .file("replace/file-becomes-dir/inner", "now a dir")
        .file("replace/dir-becomes-file", "now a file")
        .file("replace/link-becomes-file", "now a regular file")
        .dir("data")
        .entry(
            Entry::file("data/owned", "o2")
                .owner(2000, 3000)
                .mode(0o640),
        )
        .dir("new")
        .dir("new/sub")
        .file("new/sub/t", "linked in layer 1")
        .hardlink("new/hl", "new/sub/t")
}

fn implicit_layer() -> LayerBuilder {
    // no directory entries at all: every parent is implicit
    LayerBuilder::new()
        .file("usr/lib/implicit/lib.so", "implicit parents")
        .file("brand-new/deeper/file", "in dirs nobody declared")
        .file(paths::READDED, "back again")
        .whiteout(b"data/latin1-caf\xe9".as_slice())
}

/// Builds the edge image description.
pub fn edge_image(opts: &EdgeOptions) -> EdgeImage {
    let implicit_dirs = [
        "usr",
        "usr/lib",
        "usr/lib/implicit",
        "brand-new",
        "brand-new/deeper",
        "lower",
        "data",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    EdgeImage {
        layers: vec![base_layer(opts), change_layer(), implicit_layer()],
        implicit_dirs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{extract_layers, ExtractOptions};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn capability_blob_is_v2() {
        let c = capability_net_raw();
        assert_eq!(c.len(), 20);
        assert_eq!(&c[..4], &[1, 0, 0, 2]);
    }

    #[test]
    fn edge_layers_extract_and_cover_the_cases() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let wd = crate::workdir::Workdir::new("edge").unwrap();
        let e = edge_image(&EdgeOptions::default());
        let img = e
            .builder()
            .write_layout(&wd.join("layout"), "latest")
            .unwrap();
        assert_eq!(img.layers.len(), 3);
        let blobs: Vec<_> = img.layers.iter().map(|l| l.path.clone()).collect();
        let dirs = extract_layers(&blobs, &wd.join("x"), &ExtractOptions::overlay()).unwrap();
        let l0 = &dirs[0];
        let chunked = std::fs::read(l0.join(paths::CHUNKED)).unwrap();
        assert_eq!(chunked.len() as u64, CHUNKED_LEN);
        assert_eq!(
            chunked[5_000_000],
            crate::oci::content::pattern_byte(CHUNKED_SEED, 5_000_000)
        );
        assert_eq!(
            xattr::get(l0.join(paths::CAPABILITY), "security.capability")
                .unwrap()
                .unwrap(),
            capability_net_raw()
        );
        let bottom = deep_dirs("deep", 120).pop().unwrap();
        assert!(l0.join(&bottom).join("leaf-pax").exists());
        assert!(bottom.len() > 255);
        assert_eq!(
            std::fs::metadata(l0.join("data/bigid")).unwrap().uid(),
            3_000_000
        );
        assert_eq!(
            std::fs::metadata(l0.join("hl-to-sub")).unwrap().ino(),
            std::fs::metadata(l0.join("lower/sub/deep-target"))
                .unwrap()
                .ino()
        );
        let rep =
            crate::extract::extract_layer(&blobs[2], &wd.join("again"), &ExtractOptions::overlay())
                .unwrap();
        let mut expect = e.implicit_dirs.clone();
        expect.insert("".into());
        expect.remove(std::path::Path::new(""));
        assert_eq!(rep.implicit_dirs, expect);
    }
}
