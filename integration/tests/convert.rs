//! `starling convert` against the real parts: a loopback `docker-registry`, OCI layouts,
//! containerd + overlayfs unpacking and running the converted images, `ctr-remote`
//! reading their TOCs, and the reference peer lazily pulling them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration::containerd::{Containerd, ContainerdOptions, Ctr};
use integration::images::{edge_image, EdgeOptions};
use integration::oci::{ImageBuilder, LayerBuilder};
use integration::prereq;
use integration::process::{run_cmd, CmdOutput};
use integration::registry::Registry;
use integration::require;
use integration::treecmp::{compare_trees, CompareOptions};
use integration::workdir::Workdir;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
const ZSTD_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const ZSTD_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Runs `starling ARGS...`.
fn starling(args: &[&str]) -> CmdOutput {
    integration::client::run(args, Duration::from_secs(900)).unwrap()
}

/// `starling convert SRC DST --json EXTRA...`, which must succeed; the JSON result.
fn convert(src: &str, dst: &str, extra: &[&str]) -> Value {
    let mut a = vec!["convert", src, dst, "--json"];
    a.extend_from_slice(extra);
    let out = starling(&a);
    assert!(out.success(), "{}\n{}", out.command, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `starling convert` that must fail; its stderr.
fn convert_fails(src: &str, dst: &str, extra: &[&str]) -> String {
    let mut a = vec!["convert", src, dst];
    a.extend_from_slice(extra);
    let out = starling(&a);
    assert!(!out.success(), "{} succeeded:\n{}", out.command, out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("starling: error:"))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    // Each cause is printed once.
    for part in line.split(": ").filter(|p| p.len() > 30) {
        assert_eq!(line.matches(part).count(), 1, "{part:?} repeated in {line}");
    }
    out.stderr
}

fn manifest(reg: &Registry, repo: &str, tag: &str) -> Value {
    serde_json::from_slice(&reg.manifest(repo, tag).unwrap().body).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks what the report says against the manifest the registry serves: media types,
/// digests, sizes and the eStargz annotations.
fn check_manifest(report: &Value, m: &Value, zstd: bool) {
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    let rl = report["images"][0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), rl.len());
    for (l, r) in layers.iter().zip(rl) {
        assert_eq!(l["mediaType"], if zstd { ZSTD_LAYER } else { GZIP_LAYER });
        assert_eq!(l["digest"], r["digest"]);
        assert_eq!(l["size"], r["size"]);
        let a = &l["annotations"];
        assert_eq!(a[TOC_DIGEST], r["toc_digest"]);
        assert_eq!(
            a[UNCOMPRESSED_SIZE].as_str().unwrap(),
            r["uncompressed_size"].as_u64().unwrap().to_string()
        );
        assert_eq!(a[ZSTD_CHECKSUM].is_string(), zstd, "{a}");
        assert_eq!(a[ZSTD_POSITION].is_string(), zstd, "{a}");
    }
}

/// `ctr-remote image get-toc-digest` of every layer (pulled into containerd's content
/// store) equals its annotation.
fn ctr_remote_reads_tocs(ctr: &Ctr, m: &Value, zstd: bool) {
    for l in m["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        let mut a = vec!["image", "get-toc-digest"];
        if zstd {
            a.push("--zstdchunked");
        }
        a.push(digest);
        let out = ctr.ctr_remote_ok(a).unwrap();
        assert_eq!(
            out.trim(),
            l["annotations"][TOC_DIGEST].as_str().unwrap(),
            "ctr-remote get-toc-digest {digest}"
        );
    }
}

/// Mounts an image's root file system read-only. The view snapshot has no GC root, so
/// containerd's garbage collector (scheduled by the pulls just before) may remove it
/// between `ctr snapshots view` and `ctr snapshots mounts`: then try again.
fn mount_view(ctr: &Ctr, reference: &str, target: &Path) -> integration::containerd::SnapshotMount {
    let mut last = String::new();
    for _ in 0..5 {
        match ctr.mount_image(reference, "overlayfs", target) {
            Ok(m) => return m,
            Err(e) if e.to_string().contains("does not exist") => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("mount {reference}: {e}"),
        }
    }
    panic!("mount {reference}: {last}")
}

/// Pulls both images with plain containerd + overlayfs and compares the unpacked root
/// file systems: equal except the files the eStargz layers add at the root — the top
/// layer's landmark (one byte 0x0f) and, for gzip eStargz, its TOC `stargz.index.json`
/// (whose SHA-256 is the top layer's TOC digest); zstd:chunked keeps the TOC outside the
/// tar stream. The mtimes of the root and of `synthesized` directories (parents a layer
/// lacks, which containerd creates at unpack time) are not compared.
#[allow(clippy::too_many_arguments)]
fn assert_unpacks_like(
    ctr: &Ctr,
    wd: &Workdir,
    original: &str,
    converted: &str,
    m: &Value,
    zstd: bool,
    landmark: &str,
    synthesized: &[&std::path::Path],
) {
    ctr.pull(original, "overlayfs").unwrap();
    ctr.pull(converted, "overlayfs").unwrap();
    let token = sha256_hex(converted.as_bytes());
    let a = mount_view(ctr, original, &wd.join(format!("a-{}", &token[..8])));
    let b = mount_view(ctr, converted, &wd.join(format!("b-{}", &token[..8])));
    let added = [
        "stargz.index.json",
        ".no.prefetch.landmark",
        ".prefetch.landmark",
    ];
    let mut opts = CompareOptions::default().with_mtime().ignore_mtime_of("");
    for d in synthesized {
        opts = opts.ignore_mtime_of(d);
    }
    for f in added {
        assert!(!a.path().join(f).exists(), "the original has no {f}");
        opts = opts.ignore(f);
    }
    let diff = compare_trees(a.path(), b.path(), &opts).unwrap();
    diff.assert_equal(&format!("{original} vs {converted} unpacked by containerd"));
    assert!(diff.left_entries > 5, "{}", diff.left_entries);
    assert_eq!(
        std::fs::read(b.path().join(landmark)).unwrap(),
        [0x0f],
        "{landmark}"
    );
    let top = m["layers"].as_array().unwrap().last().unwrap();
    let toc = std::fs::read(b.path().join("stargz.index.json"));
    if zstd {
        assert!(
            toc.is_err(),
            "zstd:chunked keeps its TOC out of the tar stream"
        );
    } else {
        let toc = toc.unwrap();
        assert_eq!(
            format!("sha256:{}", sha256_hex(&toc)),
            top["annotations"][TOC_DIGEST].as_str().unwrap()
        );
    }
}

#[test]
fn edge_image_registry_to_registry_gzip_and_zstd_unpacks_like_the_original() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::starling_binary()
    );
    let wd = Workdir::new("cvedge").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let edge = edge_image(&EdgeOptions::default());
    let img = edge.builder().push(&reg, "edge:latest").unwrap();
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    let src = reg.reference("edge:latest");
    let implicit: Vec<&Path> = edge.implicit_dirs.iter().map(|p| p.as_path()).collect();
    for (tag, zstd) in [("esgz", false), ("zstd", true)] {
        let dst = reg.reference(&format!("edge:{tag}"));
        let extra: &[&str] = if zstd { &["--zstdchunked"] } else { &[] };
        let report = convert(&src, &dst, extra);
        let m = manifest(&reg, "edge", tag);
        assert_eq!(
            report["digest"].as_str().unwrap(),
            format!(
                "sha256:{}",
                sha256_hex(&reg.manifest("edge", tag).unwrap().body)
            )
        );
        check_manifest(&report, &m, zstd);
        let layers = report["images"][0]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), img.layers.len());
        for (l, orig) in layers.iter().zip(&img.layers) {
            assert_eq!(l["source_digest"], orig.digest.as_str());
            assert_eq!(l["kept"], false);
            assert_eq!(l["stored"], "uploaded");
        }
        // The config keeps everything but the diff IDs, which match the new blobs.
        let cfg: Value = serde_json::from_slice(
            &integration::http::get(
                &reg.blob_url("edge", m["config"]["digest"].as_str().unwrap()),
                &[],
            )
            .unwrap()
            .body,
        )
        .unwrap();
        let orig_cfg: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["history"], orig_cfg["history"]);
        assert_eq!(cfg["config"], orig_cfg["config"]);
        let diff_ids: Vec<&str> = layers
            .iter()
            .map(|l| l["diff_id"].as_str().unwrap())
            .collect();
        assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
        assert_unpacks_like(
            ctr,
            &wd,
            &src,
            &dst,
            &m,
            zstd,
            ".no.prefetch.landmark",
            &implicit,
        );
        ctr_remote_reads_tocs(ctr, &m, zstd);
        // Converting again changes nothing (the writer is deterministic) and uploads nothing.
        let again = convert(&src, &dst, extra);
        assert_eq!(again["digest"], report["digest"]);
        for l in again["images"][0]["layers"].as_array().unwrap() {
            assert_eq!(l["stored"], "exists");
        }
    }
    // gzip eStargz → zstd:chunked is rebuilt, not kept.
    let r = convert(
        &reg.reference("edge:esgz"),
        &reg.reference("edge:esgz-to-zstd"),
        &["--zstdchunked"],
    );
    let zstd_direct = manifest(&reg, "edge", "zstd");
    for (l, d) in r["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(zstd_direct["layers"].as_array().unwrap())
    {
        assert_eq!(l["kept"], false);
        // The regenerated landmark and TOC replace the old ones: same blob as converting
        // the original directly.
        assert_eq!(l["digest"], d["digest"]);
    }
}

#[test]
fn pydeb_registry_to_registry_runs_like_the_original() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let py = integration::images::pydeb().unwrap();
    let wd = Workdir::new("cvpy").unwrap();
    let reg = Registry::start(&wd).unwrap();
    py.push(&reg, "latest", "pydeb:latest").unwrap();
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    let src = reg.reference("pydeb:latest");
    let cmd = [
        "sh",
        "-c",
        "python3 -c 'import sys, json, sqlite3; print(sys.version_info[:2], json.dumps([1]))'; \
         ls -l /usr/lib/python3*/json | wc -l; head -2 /etc/os-release",
    ];
    ctr.pull(&src, "overlayfs").unwrap();
    let expected = ctr.run_ok(&src, "overlayfs", &cmd).unwrap();
    assert!(expected.starts_with("(3, "), "{expected}");
    for (tag, zstd) in [("esgz", false), ("zstd", true)] {
        let dst = reg.reference(&format!("pydeb:{tag}"));
        let extra: &[&str] = if zstd { &["--zstdchunked"] } else { &[] };
        let report = convert(&src, &dst, extra);
        let m = manifest(&reg, "pydeb", tag);
        check_manifest(&report, &m, zstd);
        println!(
            "pydeb {tag}: {} -> {} bytes in {:.1} s",
            report["source_layer_bytes"], report["layer_bytes"], report["seconds"]
        );
        assert_unpacks_like(ctr, &wd, &src, &dst, &m, zstd, ".no.prefetch.landmark", &[]);
        assert_eq!(ctr.run_ok(&dst, "overlayfs", &cmd).unwrap(), expected);
        ctr_remote_reads_tocs(ctr, &m, zstd);
    }
}

#[test]
fn converted_image_is_lazily_pulled_by_the_reference_peer() {
    use integration::stack::{Stack, StackOptions};
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let bin = match integration::peer::peer_binary() {
        Ok(b) => b,
        Err(reason) => return prereq::skip_optional(module_path!(), &reason),
    };
    let stack = Stack::start(
        "cvpeer",
        StackOptions {
            peer: Some((bin, Default::default())),
            peer_name: Some("stargz".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let ctr = stack.ctr();
    let py = integration::images::pydeb().unwrap();
    py.push(&stack.registry, "latest", "pydeb:latest").unwrap();
    let src = stack.registry.reference("pydeb:latest");
    let dst = stack.registry.reference("pydeb:esgz");
    convert(&src, &dst, &[]);
    let mark = stack.registry.access_mark();
    ctr.rpull(&dst, "stargz").unwrap();
    let out = ctr
        .run_ok(&dst, "stargz", &["python3", "-c", "print(6*7)"])
        .unwrap();
    assert_eq!(out, "42\n");
    let log = stack.registry.access_since_settled(mark);
    assert!(
        log.iter().any(|e| e.status == 206),
        "the peer read ranges of the converted layers: {log:?}"
    );
    let peer_root = stack.peer.as_ref().unwrap().root().to_path_buf();
    assert!(
        !integration::mounts::mounts_under(&peer_root)
            .unwrap()
            .is_empty(),
        "the peer mounted the converted layers lazily"
    );
}

/// Names of the entries of a gzip or plain tar blob, in order.
fn tar_names(blob: &[u8]) -> Vec<String> {
    let r: Box<dyn std::io::Read> = if blob.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut a = tar::Archive::new(r);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes())
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

fn read_layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

#[test]
fn oci_layout_to_registry_and_back_keeps_estargz_layers() {
    require!(prereq::registry(), prereq::starling_binary());
    let wd = Workdir::new("cvlayout").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let src_dir = wd.join("src");
    let edge = edge_image(&EdgeOptions::default());
    let img = edge.builder().write_layout(&src_dir, "v1").unwrap();
    let src = format!("oci:{}:v1", src_dir.display());

    // layout → registry: converted.
    let dst = reg.reference("edge:esgz");
    let a = convert(&src, &dst, &[]);
    let m = manifest(&reg, "edge", "esgz");
    check_manifest(&a, &m, false);
    for (l, orig) in a["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&img.layers)
    {
        assert_eq!(l["source_digest"], orig.digest.as_str());
        assert_eq!(l["kept"], false);
    }

    // registry → layout: the layers already are eStargz and are kept byte for byte; the
    // result is the same manifest.
    let out_dir = wd.join("out");
    let out = format!("oci:{}:conv", out_dir.display());
    let b = convert(&dst, &out, &[]);
    assert_eq!(b["digest"], a["digest"]);
    for (l, la) in b["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(a["images"][0]["layers"].as_array().unwrap())
    {
        assert_eq!(l["kept"], true, "{l}");
        assert_eq!(l["digest"], la["digest"]);
        assert_eq!(l["toc_digest"], la["toc_digest"]);
        assert_eq!(l["stored"], "stored");
        // Each blob in the layout verifies against its TOC digest.
        let blob = out_dir.join("blobs/sha256").join(
            l["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap(),
        );
        let v = starling(&[
            "estargz",
            "verify",
            "--toc-digest",
            l["toc_digest"].as_str().unwrap(),
            blob.to_str().unwrap(),
        ]);
        assert!(v.success(), "{}", v.stderr);
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "conv"
    );
    assert_eq!(entry["digest"], a["digest"]);
    assert!(out_dir.join("oci-layout").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".starling"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // registry → registry on the same host: kept layers are mounted from the source
    // repository, not downloaded and uploaded.
    let mounted = convert(&dst, &reg.reference("other:kept"), &[]);
    assert_eq!(mounted["digest"], a["digest"]);
    for l in mounted["images"][0]["layers"].as_array().unwrap() {
        assert_eq!(l["kept"], true, "{l}");
        assert_eq!(l["stored"], "mounted", "{l}");
    }
    assert!(reg.has_tag("other", "kept"));

    // Without the annotations, a kept layer gets them back (TOC digest from the TOC, the
    // uncompressed size by decompressing it).
    let mut stripped =
        serde_json::from_slice::<Value>(&read_layout_blob(&out_dir, a["digest"].as_str().unwrap()))
            .unwrap();
    for l in stripped["layers"].as_array_mut().unwrap() {
        l.as_object_mut().unwrap().remove("annotations");
    }
    let body = serde_json::to_vec(&stripped).unwrap();
    let hexd = sha256_hex(&body);
    std::fs::write(out_dir.join("blobs/sha256").join(&hexd), &body).unwrap();
    let mut index = index;
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{hexd}"), "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": "stripped"}
        }));
    std::fs::write(
        out_dir.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let c = convert(
        &format!("oci:{}:stripped", out_dir.display()),
        &format!("oci:{}:again", out_dir.display()),
        &[],
    );
    assert_eq!(
        c["digest"], a["digest"],
        "annotations recomputed identically"
    );
    assert!(c["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["kept"] == true && l["stored"] == "exists"));

    // --reconvert rebuilds them (same bytes: the writer is deterministic on its own output
    // minus the TOC and landmark it regenerates).
    let d = convert(&dst, &reg.reference("edge:re"), &["--reconvert"]);
    assert!(d["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["kept"] == false));
}

#[test]
fn prioritized_files_go_to_the_topmost_layer_that_has_them() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::starling_binary()
    );
    let wd = Workdir::new("cvprio").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let l1 = LayerBuilder::new()
        .dir("bin")
        .file("bin/sh", "shell")
        .dir("etc")
        .file("etc/conf", "old")
        .file("etc/gone", "x")
        .dir("lib")
        .file("lib/a", "liba")
        .file("lib/b", "libb");
    let l2 = LayerBuilder::new()
        .dir("etc")
        .file("etc/conf", "new")
        .whiteout("etc/gone")
        .dir("usr")
        .file("usr/x", "x2");
    ImageBuilder::new()
        .layer(l1)
        .layer(l2)
        .push(&reg, "prio:latest")
        .unwrap();
    let list = wd.join("list");
    std::fs::write(&list, "/etc/conf\nlib/a\n./etc/gone\nusr/x\n/nope\n").unwrap();
    let src = reg.reference("prio:latest");
    let dst = reg.reference("prio:esgz");
    let r = convert(&src, &dst, &["--prioritize", list.to_str().unwrap()]);
    let layers = r["images"][0]["layers"].as_array().unwrap();
    assert_eq!(layers[0]["prioritized"], 1);
    assert_eq!(layers[1]["prioritized"], 2);
    assert_eq!(
        r["images"][0]["missing_prioritized"],
        serde_json::json!(["nope"])
    );
    let m = manifest(&reg, "prio", "esgz");
    let names = |i: usize| {
        let d = m["layers"][i]["digest"].as_str().unwrap();
        tar_names(
            &integration::http::get(&reg.blob_url("prio", d), &[])
                .unwrap()
                .body,
        )
    };
    let n1 = names(0);
    assert_eq!(&n1[..3], ["lib", "lib/a", ".prefetch.landmark"], "{n1:?}");
    assert_eq!(n1.last().unwrap(), "stargz.index.json");
    let n2 = names(1);
    assert_eq!(
        &n2[..5],
        ["etc", "etc/conf", "usr", "usr/x", ".prefetch.landmark"],
        "{n2:?}"
    );
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    assert_unpacks_like(
        cd.ctr(),
        &wd,
        &src,
        &dst,
        &m,
        false,
        ".prefetch.landmark",
        &[],
    );
    ctr_remote_reads_tocs(cd.ctr(), &m, false);
}

/// Writes a one-image layout whose layers are the given (media type, blob, diff ID).
fn raw_layout(dir: &Path, tag: &str, layers: &[(&str, Vec<u8>, String)]) {
    use integration::oci::image::{init_layout, write_blob};
    init_layout(dir).unwrap();
    let blobs = dir.join("blobs/sha256");
    let mut descs = Vec::new();
    for (mt, blob, _) in layers {
        let d = write_blob(&blobs, blob).unwrap();
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let diff_ids: Vec<&String> = layers.iter().map(|(_, _, d)| d).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": integration::oci::image::host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = write_blob(&blobs, &config).unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = write_blob(&blobs, &m).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn bad_input_fails_with_clear_errors_and_pushes_no_manifest() {
    require!(prereq::registry(), prereq::starling_binary());
    let wd = Workdir::new("cvbad").unwrap();
    let mut reg = Registry::start(&wd).unwrap();
    integration::images::busybox()
        .unwrap()
        .push(&reg, "bb:latest")
        .unwrap();
    let host = reg.host();

    // Missing image.
    let e = convert_fails(&reg.reference("nothere:v1"), &reg.reference("out:a"), &[]);
    assert!(
        e.contains(&format!("{host}/nothere:v1")) && e.contains("not found"),
        "{e}"
    );
    // Wrong platform.
    let e = convert_fails(
        &reg.reference("bb:latest"),
        &reg.reference("out:b"),
        &["--platform", "linux/s390x"],
    );
    assert!(e.contains("no image for platform linux/s390x"), "{e}");
    // A missing layout, a bad reference.
    let e = convert_fails("oci:/nonexistent/layout:x", &reg.reference("out:c"), &[]);
    assert!(
        e.contains("OCI layout /nonexistent/layout") && e.contains("oci-layout"),
        "{e}"
    );
    let e = convert_fails("Bad//Ref", &reg.reference("out:c"), &[]);
    assert!(e.contains("invalid image location"), "{e}");

    // A layer that is not a tar (second of two: the first converts and is pushed, the
    // manifest is not).
    let good = small_tar();
    let junk: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let diff = |b: &[u8]| format!("sha256:{}", sha256_hex(b));
    let lay = wd.join("junk");
    raw_layout(
        &lay,
        "v1",
        &[
            (GZIP_LAYER, gzip(&good), diff(&good)),
            (GZIP_LAYER, gzip(&junk), diff(&junk)),
        ],
    );
    let junk_digest = format!("sha256:{}", sha256_hex(&gzip(&junk)));
    let e = convert_fails(
        &format!("oci:{}:v1", lay.display()),
        &reg.reference("out:junk"),
        &[],
    );
    assert!(
        e.contains("layer 2/2") && e.contains(&junk_digest) && e.contains("not a tar archive"),
        "{e}"
    );
    assert!(!reg.has_tag("out", "junk"));

    // A wrong diff ID in the config.
    let lay = wd.join("baddiff");
    raw_layout(&lay, "v1", &[(GZIP_LAYER, gzip(&good), diff(b"other"))]);
    let e = convert_fails(
        &format!("oci:{}:v1", lay.display()),
        &reg.reference("out:diff"),
        &[],
    );
    assert!(
        e.contains("rootfs.diff_ids says") && e.contains(&diff(b"other")),
        "{e}"
    );
    assert!(!reg.has_tag("out", "diff"));

    // A corrupted layout blob.
    let lay = wd.join("corrupt");
    let blob = gzip(&good);
    raw_layout(&lay, "v1", &[(GZIP_LAYER, blob.clone(), diff(&good))]);
    let p = lay.join("blobs/sha256").join(sha256_hex(&blob));
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 9] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    let e = convert_fails(
        &format!("oci:{}:v1", lay.display()),
        &reg.reference("out:cor"),
        &[],
    );
    assert!(
        e.contains("layer 1/1") && (e.contains("corrupt") || e.contains("decompress")),
        "{e}"
    );
    assert!(!reg.has_tag("out", "cor"));

    // Not a container image (unknown layer media type).
    let lay = wd.join("media");
    raw_layout(
        &lay,
        "v1",
        &[("application/x-junk", good.clone(), diff(&good))],
    );
    let e = convert_fails(
        &format!("oci:{}:v1", lay.display()),
        &reg.reference("out:m"),
        &[],
    );
    assert!(
        e.contains("unsupported layer: \"application/x-junk\" is not an image layer media type"),
        "{e}"
    );

    // Destination registry down: nothing is stored, the error names the host.
    let lay = wd.join("ok");
    raw_layout(&lay, "v1", &[(GZIP_LAYER, gzip(&good), diff(&good))]);
    let src_ok = format!("oci:{}:v1", lay.display());
    reg.stop().unwrap();
    let e = convert_fails(&src_ok, &reg.reference("out:down"), &[]);
    assert!(e.contains(&host) && e.contains("network error"), "{e}");
    // Source registry down.
    let e = convert_fails(
        &reg.reference("bb:latest"),
        &format!("oci:{}:x", wd.join("o").display()),
        &[],
    );
    assert!(e.contains(&host) && e.contains("network error"), "{e}");
    assert!(
        !wd.join("o/index.json").exists(),
        "no image written to the layout"
    );
    reg.start_again().unwrap();
    assert!(!reg.has_tag("out", "down"));
    // And once it is back, the same conversion works.
    convert(&src_ok, &reg.reference("out:down"), &[]);
    assert!(reg.has_tag("out", "down"));
}

#[test]
fn progress_lines_and_plain_http_flag() {
    require!(prereq::registry(), prereq::starling_binary());
    let wd = Workdir::new("cvprog").unwrap();
    let reg = Registry::start(&wd).unwrap();
    integration::images::busybox()
        .unwrap()
        .push(&reg, "bb:latest")
        .unwrap();
    // Loopback hosts use plain HTTP by default; `127.1` (inet_aton's short form of
    // 127.0.0.1) is not recognised as loopback, so HTTPS is tried unless --plain-http.
    let port = reg.addr().port();
    let (src, dst) = (
        format!("127.1:{port}/bb:latest"),
        format!("127.1:{port}/bb:esgz"),
    );
    let out = starling(&["convert", &src, &dst]);
    assert!(!out.success(), "HTTPS to a plain HTTP registry must fail");
    let out = starling(&["convert", &src, &dst, "--plain-http"]);
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stderr.contains("layer 1/1"), "{}", out.stderr);
    assert!(out.stderr.contains("converting"), "{}", out.stderr);
    assert!(
        out.stderr.contains("stored manifest sha256:"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("layer 1:"), "{}", out.stdout);
    assert!(reg.has_tag("bb", "esgz"));
}

#[test]
fn docker_schema2_image_becomes_oci_and_runs() {
    require!(
        prereq::containerd_stack(),
        prereq::binaries(&["skopeo"]),
        prereq::starling_binary()
    );
    let wd = Workdir::new("cvdocker").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let layout = wd.join("bb");
    integration::images::busybox()
        .unwrap()
        .write_layout(&layout, "latest")
        .unwrap();
    let src = reg.reference("bb:docker");
    let out = run_cmd(
        Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker://{src}"),
        ]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.success(), "{}", out.stderr);
    let orig = manifest(&reg, "bb", "docker");
    assert_eq!(
        orig["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        orig["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let dst = reg.reference("bb:esgz");
    let r = convert(&src, &dst, &[]);
    let m = manifest(&reg, "bb", "esgz");
    check_manifest(&r, &m, false);
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    ctr.pull(&dst, "overlayfs").unwrap();
    assert_eq!(
        ctr.run_ok(&dst, "overlayfs", &["/bin/sh", "-c", "echo converted"])
            .unwrap(),
        "converted\n"
    );
}
