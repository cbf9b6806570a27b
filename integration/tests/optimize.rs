//! `starling optimize` against the real parts: a loopback `docker-registry`, runc, FUSE
//! lazy mounts and overlayfs. The pydeb image is optimized for an import workload; the
//! result is read back with the eStargz reader (accessed files before
//! `.prefetch.landmark` in the layer that provides them, the rest after it) and its
//! merged tree is compared with the original's. With containerd and `ctr-remote`, the
//! same workload is optimized by `ctr-remote image optimize` and both are printed
//! (figures, not assertions).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::containerd::{Containerd, ContainerdOptions};
use integration::extract::ExtractOptions;
use integration::oci::OciImage;
use integration::overlay::OverlayStack;
use integration::prereq;
use integration::process::{run_cmd, CmdOutput};
use integration::registry::Registry;
use integration::require;
use integration::treecmp::{compare_trees, CompareOptions};
use integration::workdir::Workdir;
use serde_json::Value;

const WORKLOAD: &str = "import json; print(json.dumps([1]))";

/// Runs `starling ARGS...`.
fn starling(args: &[&str]) -> CmdOutput {
    integration::client::run(args, Duration::from_secs(900)).unwrap()
}

/// Copies `reference` from the registry into an OCI layout at `dir` (tag `t`).
fn pull_layout(reference: &str, dir: &Path) -> OciImage {
    let out = run_cmd(
        Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:t", dir.display()),
        ]),
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(out.success(), "{}", out.stderr);
    OciImage::open(dir, "t").unwrap()
}

/// Per layer: the regular files whose data lies before `.prefetch.landmark`, the ones
/// after it, and whether the layer has the landmark (vs `.no.prefetch.landmark`).
struct LayerOrder {
    before: HashSet<String>,
    after: HashSet<String>,
    prefetch_landmark: bool,
    before_bytes: u64,
}

fn layer_order(blob: &Path) -> LayerOrder {
    let f = std::fs::File::open(blob).unwrap();
    let layer = estargz::open(&f, &estargz::OpenOptions::default()).unwrap();
    let ix = &layer.index;
    let landmark = ix.prefetch_landmark();
    let mut o = LayerOrder {
        before: HashSet::new(),
        after: HashSet::new(),
        prefetch_landmark: landmark.is_some(),
        before_bytes: 0,
    };
    for id in 0..ix.len() as estargz::EntryId {
        let Some(e) = ix.entry(id) else { continue };
        if e.kind() != estargz::EntryKind::Reg || e.size() == 0 {
            continue;
        }
        let Some(first) = ix.chunks_of(id).next() else {
            continue;
        };
        let path = String::from_utf8_lossy(&ix.path_of(id)).into_owned();
        if landmark.is_some_and(|l| first.compressed_range().start < l) {
            o.before_bytes += e.size();
            o.before.insert(path);
        } else {
            o.after.insert(path);
        }
    }
    o
}

#[test]
fn optimizes_pydeb_for_an_import_workload() {
    require!(
        prereq::root(),
        prereq::registry(),
        prereq::fuse(),
        prereq::binaries(&["runc", "skopeo"]),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let wd = Workdir::new("optimize").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let pydeb = integration::images::pydeb().unwrap();
    pydeb.push(&reg, "latest", "pydeb:latest").unwrap();
    let src = reg.reference("pydeb:latest");
    let dst = reg.reference("pydeb:opt");

    let t = Instant::now();
    let out = starling(&[
        "optimize",
        "--plain-http",
        "--json",
        "--period",
        "60",
        "--work-dir",
        wd.path().to_str().unwrap(),
        &src,
        &dst,
        "--",
        "python3",
        "-c",
        WORKLOAD,
    ]);
    let stl_secs = t.elapsed().as_secs_f64();
    assert!(out.success(), "{}\n{}", out.command, out.stderr);
    assert!(
        out.stderr.contains("[1]"),
        "workload output: {}",
        out.stderr
    );
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["ending"], "exited");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["converted_first"], true, "pydeb is plain gzip");
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let listed: Vec<HashSet<String>> = layers
        .iter()
        .map(|l| {
            l["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .collect();

    // The eStargz reader's view of the result.
    let opt = pull_layout(&dst, &wd.join("opt"));
    assert_eq!(opt.layers.len(), 2);
    let order: Vec<LayerOrder> = opt.layers.iter().map(|l| layer_order(&l.path)).collect();
    let python = "usr/bin/python3.11";
    let libc = "usr/lib/x86_64-linux-gnu/libc.so.6";
    let json_init = "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc";
    let json_decoder = "usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc";
    for (layer, path) in [(0, libc), (1, python), (1, json_init), (1, json_decoder)] {
        assert!(
            listed[layer].contains(path),
            "{path} not listed in layer {}",
            layer + 1
        );
        assert!(
            order[layer].before.contains(path),
            "{path} not before the landmark of layer {}",
            layer + 1
        );
    }
    // Not read by the workload: after the landmark.
    for (layer, path) in [
        (1, "usr/lib/python3.11/__pycache__/asyncio.cpython-311.pyc"),
        (
            1,
            "usr/lib/python3.11/sqlite3/__pycache__/__init__.cpython-311.pyc",
        ),
        (
            1,
            "usr/lib/python3.11/email/__pycache__/parser.cpython-311.pyc",
        ),
        (0, "usr/bin/bash"),
    ] {
        if order[layer].after.contains(path) || order[layer].before.contains(path) {
            assert!(
                order[layer].after.contains(path),
                "{path} (not read) is before the landmark of layer {}",
                layer + 1
            );
        }
    }
    for (i, o) in order.iter().enumerate() {
        assert!(
            o.prefetch_landmark,
            "layer {} has no .prefetch.landmark",
            i + 1
        );
        // Exactly the listed regular files (empty ones have no data) are before it.
        let want: HashSet<String> = listed[i]
            .iter()
            .filter(|p| o.before.contains(*p) || o.after.contains(*p))
            .cloned()
            .collect();
        assert_eq!(o.before, want, "layer {}: files before the landmark", i + 1);
        assert!(o.after.len() > 100, "layer {}: few files after", i + 1);
    }

    // Same merged tree as the original.
    let orig = pydeb.image("latest").unwrap();
    let a = orig
        .extract_layers(&wd.join("xa"), &ExtractOptions::overlay())
        .unwrap();
    let b = opt
        .extract_layers(
            &wd.join("xb"),
            &ExtractOptions::overlay().skip_estargz_metadata(),
        )
        .unwrap();
    let sa = OverlayStack::mount(&a, &wd.join("ma"), &[]).unwrap();
    let sb = OverlayStack::mount(&b, &wd.join("mb"), &[]).unwrap();
    // The root's mtime is the eStargz metadata files' (landmark, TOC), as for `convert`.
    let cmp = CompareOptions::default().with_mtime().ignore_mtime_of("");
    compare_trees(sa.path(), sb.path(), &cmp)
        .unwrap()
        .assert_equal("optimized pydeb vs original");
    drop((sa, sb));

    let stl_files: usize = listed.iter().map(HashSet::len).sum();
    let stl_bytes: u64 = order.iter().map(|o| o.before_bytes).sum();
    let fetched: u64 = layers
        .iter()
        .map(|l| l["fetched_bytes"].as_u64().unwrap())
        .sum();
    println!(
        "starling optimize: {stl_files} files prioritized ({} + {}), {:.1} MB before the landmarks; \
         {:.1} MB fetched to profile; {stl_secs:.1} s (report: prepare {:.1} s, run {:.1} s, convert {:.1} s)",
        listed[0].len(),
        listed[1].len(),
        stl_bytes as f64 / 1e6,
        fetched as f64 / 1e6,
        report["prepare_seconds"].as_f64().unwrap(),
        report["run_seconds"].as_f64().unwrap(),
        report["convert_seconds"].as_f64().unwrap(),
    );

    // The reference on the same image and workload (figures only).
    if prereq::containerd_stack().is_err() || prereq::ctr_remote().is_err() {
        println!("ctr-remote comparison skipped: containerd or ctr-remote missing");
        return;
    }
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    ctr.pull(&src, "overlayfs").unwrap();
    let refdst = reg.reference("pydeb:ctr-opt");
    let t = Instant::now();
    ctr.optimize_estargz(
        &src,
        &refdst,
        &[
            "--period",
            "60",
            "--entrypoint",
            r#"["python3"]"#,
            "--args",
            &serde_json::to_string(&["-c", WORKLOAD]).unwrap(),
        ],
    )
    .unwrap();
    let ref_secs = t.elapsed().as_secs_f64();
    ctr.push(&refdst).unwrap();
    let ropt = pull_layout(&refdst, &wd.join("ropt"));
    let rorder: Vec<LayerOrder> = ropt.layers.iter().map(|l| layer_order(&l.path)).collect();
    let rfiles: Vec<usize> = rorder.iter().map(|o| o.before.len()).collect();
    let rbytes: u64 = rorder.iter().map(|o| o.before_bytes).sum();
    let sfiles: Vec<usize> = order.iter().map(|o| o.before.len()).collect();
    println!(
        "ctr-remote image optimize: {rfiles:?} files before the landmarks ({:.1} MB), {ref_secs:.1} s \
         (pull not included); starling: {sfiles:?} ({:.1} MB), {stl_secs:.1} s",
        rbytes as f64 / 1e6,
        stl_bytes as f64 / 1e6
    );
    for (i, (s, r)) in order.iter().zip(&rorder).enumerate() {
        let only_s: Vec<&String> = s.before.difference(&r.before).take(10).collect();
        let only_r: Vec<&String> = r.before.difference(&s.before).take(10).collect();
        println!(
            "layer {}: only starling {only_s:?}; only ctr-remote {only_r:?}",
            i + 1
        );
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    require!(
        prereq::root(),
        prereq::registry(),
        prereq::fuse(),
        prereq::binaries(&["runc"]),
        prereq::starling_binary()
    );
    let wd = Workdir::new("optbad").unwrap();
    let reg = Registry::start(&wd).unwrap();
    integration::images::busybox()
        .unwrap()
        .push(&reg, "bb:latest")
        .unwrap();
    let src = reg.reference("bb:latest");
    let dst = reg.reference("bb:opt");
    let w = wd.path().to_str().unwrap();
    let fails = |extra: &[&str]| -> String {
        let mut a = vec!["optimize", "--plain-http", "--work-dir", w, &src, &dst];
        a.extend_from_slice(extra);
        let out = starling(&a);
        assert!(!out.success(), "{} succeeded", out.command);
        out.stderr
    };
    let e = fails(&["--", "no-such-command"]);
    assert!(
        e.contains("command \"no-such-command\" not found in the image"),
        "{e}"
    );
    let e = fails(&["--period", "0", "--", "true"]);
    assert!(e.contains("--period"), "{e}");
    let e = fails(&["--runtime", "/nonexistent/runc", "--", "true"]);
    assert!(e.contains("/nonexistent/runc"), "{e}");
    let e = fails(&["--entrypoint", "sh -c", "--", "true"]);
    assert!(e.contains("JSON array"), "{e}");
    // Nothing left behind in the work dir.
    let left: Vec<_> = std::fs::read_dir(w)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stl-optimize-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A failing workload still gives an image (with a warning).
    let out = starling(&[
        "optimize",
        "--plain-http",
        "--json",
        "--work-dir",
        w,
        &src,
        &dst,
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "cat /etc/passwd >/dev/null; exit 3",
    ]);
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stderr.contains("non-zero"), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["exit_code"], 3);
    let files: Vec<&str> = r["layers"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.contains(&"etc/passwd"), "{files:?}");
    assert!(files.contains(&"bin/busybox"), "{files:?}");
}
