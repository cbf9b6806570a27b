//! The lazy layer filesystem against the real thing: every layer of the realistic image
//! (`pydeb`, tags `latest` and `implicit-parents`) and of the edge-case image, converted by
//! starling (`starling estargz build`, eStargz and zstd:chunked) and by
//! `ctr-remote image convert` (eStargz and zstd:chunked), is mounted with
//! `starling mount` and compared with the original layer extracted by the harness — tree,
//! types, modes, owners, sizes, contents, symlink targets, devices, xattrs (incl. the
//! overlay opaque marker and `security.capability`), hardlink groups and mtimes — and an
//! overlay stack of the FUSE mounts is compared with the overlay stack of the extracted
//! layers. Block counts and `tar` listings are compared too. The `ctr-remote`
//! conversions of the edge image lost its three non-UTF-8 names in their TOCs (Go's JSON
//! encoder writes U+FFFD for the invalid bytes); the mounts show the tar headers' names,
//! so they are compared in full too.
//!
//! Fields left out, and why:
//! - mtimes of directories a layer does not list (implicit parents, and the root when the
//!   layer has no `./` entry): the extractor creates them at extraction time, the lazy
//!   filesystem synthesizes them with mtime 0; in the merged view, such a directory's mtime
//!   is that of the topmost layer holding it.
//! - block counts of files the extractor wrote sparse (it leaves holes for zero blocks; the
//!   lazy filesystem reports a fully allocated file, as containerd's applier writes it).

mod fuse_common;

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fuse_common::*;
use integration::extract::{extract_layer, ExtractOptions};
use integration::images::{edge_image, EdgeOptions};
use integration::oci::OciImage;
use integration::overlay::OverlayStack;
use integration::prereq;
use integration::process::run_cmd;
use integration::registry::Registry;
use integration::require;
use integration::treecmp::{compare_trees, CompareOptions};
use integration::workdir::Workdir;

/// One converted image to check against the original.
struct Variant {
    name: String,
    layout: PathBuf,
    tag: String,
    /// Paths left out on both sides (see the module docs).
    ignore: Vec<PathBuf>,
}

impl Variant {
    fn new(name: &str, layout: &Path, tag: &str) -> Self {
        Variant {
            name: name.into(),
            layout: layout.to_path_buf(),
            tag: tag.into(),
            ignore: Vec::new(),
        }
    }
}

/// The original layers extracted, their implicit dirs, and their overlay stack.
struct Expected {
    dirs: Vec<PathBuf>,
    implicit: Vec<BTreeSet<PathBuf>>,
}

fn extract(original: &OciImage, dir: &Path) -> Expected {
    let mut dirs = Vec::new();
    let mut implicit = Vec::new();
    for (i, l) in original.layers.iter().enumerate() {
        let d = dir.join(i.to_string());
        let report = extract_layer(&l.path, &d, &ExtractOptions::overlay()).unwrap();
        dirs.push(d);
        implicit.push(report.implicit_dirs);
    }
    Expected { dirs, implicit }
}

/// `tar --sort=name` listing of a tree, without the lines of `skip` paths.
fn tar_listing(dir: &Path, skip: &BTreeSet<PathBuf>) -> Vec<String> {
    let out = run_cmd(
        Command::new("sh").arg("-c").arg(format!(
            "tar --sort=name --numeric-owner -C '{}' -cf - . | tar -tvf -",
            dir.display()
        )),
        Duration::from_secs(600),
    )
    .unwrap()
    .check()
    .unwrap();
    out.stdout
        .lines()
        .filter(|l| {
            let path = l.split_whitespace().nth(5).unwrap_or("");
            let path = path.strip_prefix('.').unwrap_or(path);
            let path = path.trim_start_matches('/').trim_end_matches('/');
            !skip
                .iter()
                .any(|s| s.as_os_str().as_bytes() == path.as_bytes())
        })
        .map(str::to_string)
        .collect()
}

/// Regular files whose block counts differ (files the extractor wrote sparse excepted).
fn block_mismatches(expected: &Path, actual: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let e = expected.join(&rel);
        let Ok(rd) = std::fs::read_dir(&e) else {
            continue;
        };
        for ent in rd.flatten() {
            let r = rel.join(ent.file_name());
            let Ok(em) = std::fs::symlink_metadata(expected.join(&r)) else {
                continue;
            };
            if em.is_dir() {
                stack.push(r);
                continue;
            }
            if !em.is_file() {
                continue;
            }
            let Ok(am) = std::fs::symlink_metadata(actual.join(&r)) else {
                continue;
            };
            let full = em.len().div_ceil(4096) * 8;
            if em.blocks() == full && am.blocks() != full {
                out.push(format!(
                    "{}: {} blocks, expected {full}",
                    r.display(),
                    am.blocks()
                ));
            }
        }
    }
    out
}

fn check(
    test: &str,
    original: &OciImage,
    variants: Vec<Variant>,
    extra_implicit: &BTreeSet<PathBuf>,
) {
    let wd = Workdir::new(test).unwrap();
    let registry = Registry::start(&wd).unwrap();
    let expected = extract(original, &wd.join("expect"));
    let merged_expected =
        OverlayStack::mount(&expected.dirs, &wd.join("merged-expect"), &[]).unwrap();
    let config = wd.join("starling.toml");
    MountConfig::default().write(&config).unwrap();
    let root = wd.join("root");
    let mut all_implicit: BTreeSet<PathBuf> = expected.implicit.iter().flatten().cloned().collect();
    all_implicit.extend(extra_implicit.iter().cloned());
    for v in variants {
        let image = OciImage::open(&v.layout, &v.tag).unwrap();
        assert_eq!(image.layers.len(), original.layers.len(), "{}", v.name);
        let name = format!("{test}/{}:{}", v.name, v.tag);
        let reference = push(&registry, &v.layout, &v.tag, &name).unwrap();
        let mounts = mount_all(
            &root,
            &config,
            &reference,
            &image,
            &wd.join(format!("mnt-{}", v.name)),
        )
        .unwrap();
        for (i, m) in mounts.iter().enumerate() {
            // The root's mtime too, unless the layer has a root entry (see the module docs).
            let mut o = CompareOptions::default().with_mtime().ignore_mtime_of("");
            for d in &expected.implicit[i] {
                o = o.ignore_mtime_of(d);
            }
            for p in &v.ignore {
                o = o.ignore(p);
            }
            let what = format!("{}: layer {i} ({})", v.name, m.digest);
            compare_trees(&expected.dirs[i], &m.mountpoint, &o)
                .unwrap()
                .assert_equal(&what);
            let blocks = block_mismatches(&expected.dirs[i], &m.mountpoint);
            assert!(
                blocks.is_empty(),
                "{what}: block counts differ:\n{}",
                blocks.join("\n")
            );
            if v.ignore.is_empty() {
                let mut skip = expected.implicit[i].clone();
                skip.insert(PathBuf::new());
                let want = tar_listing(&expected.dirs[i], &skip);
                let got = tar_listing(&m.mountpoint, &skip);
                if want != got {
                    let diff: Vec<_> = want
                        .iter()
                        .filter(|l| !got.contains(l))
                        .map(|l| format!("- {l}"))
                        .chain(
                            got.iter()
                                .filter(|l| !want.contains(l))
                                .map(|l| format!("+ {l}")),
                        )
                        .take(40)
                        .collect();
                    panic!("{what}: tar listings differ:\n{}", diff.join("\n"));
                }
            }
            eprintln!("{what}: equal ({} vs extracted)", m.mountpoint.display());
        }
        let dirs: Vec<&Path> = mounts.iter().map(|m| m.mountpoint.as_path()).collect();
        let merged =
            OverlayStack::mount(&dirs, &wd.join(format!("merged-{}", v.name)), &[]).unwrap();
        let mut o = CompareOptions::default().with_mtime().ignore_mtime_of("");
        for d in &all_implicit {
            o = o.ignore_mtime_of(d);
        }
        for p in &v.ignore {
            o = o.ignore(p);
        }
        compare_trees(merged_expected.path(), merged.path(), &o)
            .unwrap()
            .assert_equal(&format!("{}: overlay stack of the FUSE mounts", v.name));
        eprintln!("{}: merged view equal", v.name);
        merged.unmount().unwrap();
        drop(mounts);
    }
}

#[test]
fn fuse_pydeb_layers_equal_extracted_layers() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::debian_images(),
        prereq::binaries(&["skopeo", "tar"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    let pydeb = integration::images::pydeb().unwrap();
    let starling = pydeb_starling(false).unwrap();
    let starling_zstd = pydeb_starling(true).unwrap();
    let ctr_remote = pydeb_ctr_remote(false).unwrap();
    for tag in ["latest", "implicit-parents"] {
        let mut variants = vec![
            Variant::new("starling-estargz", &starling.layout, tag),
            Variant::new("ctr-remote-estargz", &ctr_remote.layout, tag),
        ];
        if tag == "latest" {
            variants.push(Variant::new(
                "starling-zstdchunked",
                &starling_zstd.layout,
                tag,
            ));
        }
        check(
            &format!("fuse-pydeb-{tag}"),
            &pydeb.image(tag).unwrap(),
            variants,
            &BTreeSet::new(),
        );
    }
}

#[test]
fn fuse_edge_layers_equal_extracted_layers() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary(),
        prereq::binaries(&["skopeo", "tar"]),
        prereq::containerd_stack(),
        prereq::ctr_remote(),
    );
    let wd = Workdir::new("fuse-edge-src").unwrap();
    let edge = edge_image(&EdgeOptions::default());
    let original = edge
        .builder()
        .write_layout(&wd.join("orig"), "latest")
        .unwrap();
    let mut variants = Vec::new();
    for zstd in [false, true] {
        let format = if zstd { "zstdchunked" } else { "estargz" };
        let s = wd.join(format!("starling-{format}"));
        starling_convert(&original, &s, "latest", zstd).unwrap();
        variants.push(Variant::new(&format!("starling-{format}"), &s, "latest"));
        let c = wd.join(format!("ctr-remote-{format}"));
        ctr_remote_convert_layout(&original.layout, &["latest"], &c, zstd).unwrap();
        variants.push(Variant::new(&format!("ctr-remote-{format}"), &c, "latest"));
    }
    check("fuse-edge", &original, variants, &edge.implicit_dirs);
}
