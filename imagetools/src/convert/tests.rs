//! End-to-end conversions between OCI layouts in temporary directories (no registry, no
//! root): what the converted image holds, kept layers, platforms, prioritized files, and
//! failures that must leave the destination untouched. The registry paths are covered by
//! `integration/tests/convert.rs`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use estargz::{OpenOptions, Sha256Digest};
use serde_json::{json, Value};

use super::*;

fn client() -> RegistryClient {
    RegistryClient::new(
        &config::Config::default(),
        Arc::new(registry::Metrics::default()),
    )
    .unwrap()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
        } else {
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
        }
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn put(dir: &Path, data: &[u8]) -> String {
    let d = image::sha256_digest(data);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(d.digest()), data).unwrap();
    d.to_string()
}

/// Writes an image (gzip layers from tars, or raw `(media type, blob, diff)` layers) and
/// returns its manifest descriptor.
fn write_image(dir: &Path, arch: &str, layers: &[RawLayer]) -> Value {
    let descs: Vec<Value> = layers
        .iter()
        .map(|(mt, blob, _)| json!({"mediaType": mt, "digest": put(dir, blob), "size": blob.len()}))
        .collect();
    let diff_ids: Vec<&String> = layers.iter().map(|(_, _, d)| d).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}]
    }))
    .unwrap();
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": image::OCI_MANIFEST,
        "config": {"mediaType": image::OCI_CONFIG, "digest": put(dir, &config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    json!({"mediaType": image::OCI_MANIFEST, "digest": put(dir, &m), "size": m.len(),
           "platform": {"os": "linux", "architecture": arch}})
}

/// A layer as (media type, blob, diff ID).
type RawLayer = (&'static str, Vec<u8>, String);

fn gz_layer(tar: &[u8]) -> RawLayer {
    (
        image::OCI_LAYER_GZIP,
        gzip(tar),
        Sha256Digest::of(tar).to_string(),
    )
}

fn write_index(dir: &Path, manifests: Vec<Value>) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    )
    .unwrap();
}

fn tagged(mut desc: Value, tag: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    desc
}

fn loc(dir: &Path, tag: &str) -> ImageLocation {
    format!("oci:{}:{tag}", dir.display()).parse().unwrap()
}

fn run(
    src: &ImageLocation,
    dst: &ImageLocation,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(convert(&client(), src, dst, opts, Arc::new(NoProgress)))
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

fn json_blob(dir: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(dir, digest)).unwrap()
}

/// The tar entry names of a gzip or zstd blob, in order.
fn names(data: &[u8]) -> Vec<String> {
    let plain = {
        let mut r = stream::decompress(std::io::Cursor::new(data.to_vec())).unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut v).unwrap();
        v
    };
    tar::Archive::new(&plain[..])
        .entries()
        .unwrap()
        .map(|e| {
            String::from_utf8_lossy(&e.unwrap().path_bytes())
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

fn two_layer_image(dir: &Path) -> Value {
    let l1 = tar_of(&[
        ("bin/", b""),
        ("bin/sh", b"shell"),
        ("etc/", b""),
        ("etc/conf", b"old"),
    ]);
    let l2 = tar_of(&[
        ("etc/", b""),
        ("etc/conf", b"new"),
        ("usr/", b""),
        ("usr/x", &[7u8; 100_000]),
    ]);
    write_image(dir, "amd64", &[gz_layer(&l1), gz_layer(&l2)])
}

#[test]
fn layout_to_layout_gzip_has_verified_layers_annotations_and_config() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    let desc = two_layer_image(&src);
    write_index(&src, vec![tagged(desc, "v1")]);
    let r = run(
        &loc(&src, "v1"),
        &loc(&out, "esgz"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(r.images.len(), 1);
    assert_eq!(r.media_type, image::OCI_MANIFEST);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], r.digest);
    assert_eq!(
        index["manifests"][0]["annotations"][layout::REF_NAME],
        "esgz"
    );
    let m = json_blob(&out, &r.digest);
    let cfg = json_blob(&out, m["config"]["digest"].as_str().unwrap());
    assert_eq!(cfg["history"], json!([{"created_by": "test"}]));
    assert_eq!(cfg["config"]["Cmd"], json!(["/bin/sh"]));
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let rep = &r.images[0].layers[i];
        assert_eq!(l["mediaType"], image::OCI_LAYER_GZIP);
        assert!(!rep.kept);
        assert_eq!(rep.stored, "stored");
        let data = blob(&out, l["digest"].as_str().unwrap());
        assert_eq!(data.len() as u64, rep.size);
        let toc: Sha256Digest = l["annotations"][image::TOC_DIGEST]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let layer = estargz::open(
            &data,
            &OpenOptions {
                expected_toc_digest: Some(toc),
                ..Default::default()
            },
        )
        .unwrap();
        layer.verify_all(&data).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&data[..]),
            &mut plain,
        )
        .unwrap();
        assert_eq!(
            cfg["rootfs"]["diff_ids"][i],
            Sha256Digest::of(&plain).to_string()
        );
        assert_eq!(
            l["annotations"][image::UNCOMPRESSED_SIZE],
            plain.len().to_string()
        );
        let n = names(&data);
        assert_eq!(n[0], ".no.prefetch.landmark");
        assert_eq!(n.last().unwrap(), "stargz.index.json");
    }
    // No temporary directory is left in the layout.
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));

    // Again from the result: every layer is kept, the manifest is the same.
    let again = run(
        &loc(&out, "esgz"),
        &loc(&out, "again"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(again.digest, r.digest);
    assert!(again.images[0]
        .layers
        .iter()
        .all(|l| l.kept && l.stored == "exists"));
}

#[test]
fn zstd_chunked_layers_carry_the_manifest_annotations() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    let desc = two_layer_image(&src);
    write_index(&src, vec![tagged(desc, "v1")]);
    let opts = ConvertOptions {
        format: OutputFormat::ZstdChunked,
        ..Default::default()
    };
    let r = run(&loc(&src, "v1"), &loc(&out, "z"), &opts).unwrap();
    let m = json_blob(&out, &r.digest);
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], image::OCI_LAYER_ZSTD);
        let data = blob(&out, l["digest"].as_str().unwrap());
        let footer = estargz::parse_footer(
            &data[data.len() - estargz::MAX_FOOTER_SIZE..],
            data.len() as u64,
        )
        .unwrap();
        let toc = &data[footer.toc_range().start as usize..footer.toc_range().end as usize];
        let a = &l["annotations"];
        assert_eq!(
            a[image::ZSTD_MANIFEST_CHECKSUM],
            image::sha256_digest(toc).to_string()
        );
        assert_eq!(
            a[image::ZSTD_MANIFEST_POSITION],
            format!(
                "{}:{}:{}:1",
                footer.toc_offset,
                footer.toc_compressed_size,
                footer.toc_uncompressed_size.unwrap()
            )
        );
        let toc_digest: Sha256Digest = a[image::TOC_DIGEST].as_str().unwrap().parse().unwrap();
        estargz::open(
            &data,
            &OpenOptions {
                expected_toc_digest: Some(toc_digest),
                ..Default::default()
            },
        )
        .unwrap()
        .verify_all(&data)
        .unwrap();
    }
    // The gzip target does not keep zstd:chunked layers; the zstd target keeps them.
    let back = run(&loc(&out, "z"), &loc(&out, "g"), &ConvertOptions::default()).unwrap();
    assert!(back.images[0].layers.iter().all(|l| !l.kept));
    let kept = run(&loc(&out, "z"), &loc(&out, "z2"), &opts).unwrap();
    assert!(kept.images[0].layers.iter().all(|l| l.kept));
    assert_eq!(kept.digest, r.digest);
}

#[test]
fn index_platforms_one_or_all() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    let host = Platform::host().architecture;
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let a = write_image(&src, &host, &[gz_layer(&tar_of(&[("a", b"host")]))]);
    let b = write_image(&src, other, &[gz_layer(&tar_of(&[("a", b"other")]))]);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": image::OCI_INDEX,
        "manifests": [a.clone(), b.clone()], "annotations": {"x": "y"}}))
    .unwrap();
    let idx =
        json!({"mediaType": image::OCI_INDEX, "digest": put(&src, &index), "size": index.len()});
    write_index(&src, vec![tagged(idx, "multi")]);

    let r = run(
        &loc(&src, "multi"),
        &loc(&out, "host"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_eq!(r.media_type, image::OCI_MANIFEST);
    assert_eq!(r.images[0].source_manifest_digest, a["digest"]);

    let opts = ConvertOptions {
        platform: PlatformChoice::Exact(format!("linux/{other}").parse().unwrap()),
        ..Default::default()
    };
    let r = run(&loc(&src, "multi"), &loc(&out, "other"), &opts).unwrap();
    assert_eq!(r.images[0].source_manifest_digest, b["digest"]);

    let opts = ConvertOptions {
        platform: PlatformChoice::All,
        ..Default::default()
    };
    let r = run(&loc(&src, "multi"), &loc(&out, "all"), &opts).unwrap();
    assert_eq!(r.media_type, image::OCI_INDEX);
    let new_index = json_blob(&out, &r.digest);
    assert_eq!(new_index["annotations"], json!({"x": "y"}));
    let ms = new_index["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0]["platform"]["architecture"], host.as_str());
    assert_eq!(ms[1]["platform"]["architecture"], other);
    for (m, rep) in ms.iter().zip(&r.images) {
        assert_eq!(m["digest"], rep.manifest_digest);
        assert_eq!(
            json_blob(&out, m["digest"].as_str().unwrap())["layers"][0]["annotations"]
                [image::TOC_DIGEST],
            rep.layers[0].toc_digest
        );
    }

    let opts = ConvertOptions {
        platform: PlatformChoice::Exact("linux/s390x".parse().unwrap()),
        ..Default::default()
    };
    let e = run(&loc(&src, "multi"), &loc(&out, "none"), &opts).unwrap_err();
    assert!(matches!(e, ConvertError::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains(&format!("linux/{host}")), "{e}");
}

#[test]
fn prioritized_paths_are_placed_per_layer() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    let desc = two_layer_image(&src);
    write_index(&src, vec![tagged(desc, "v1")]);
    let opts = ConvertOptions {
        prioritize: Prioritize::Paths(prioritize::parse_list(b"etc/conf\nbin/sh\nnope\n").unwrap()),
        ..Default::default()
    };
    let r = run(&loc(&src, "v1"), &loc(&out, "p"), &opts).unwrap();
    assert_eq!(r.images[0].missing_prioritized, ["nope"]);
    let m = json_blob(&out, &r.digest);
    let n1 = names(&blob(&out, m["layers"][0]["digest"].as_str().unwrap()));
    let n2 = names(&blob(&out, m["layers"][1]["digest"].as_str().unwrap()));
    assert_eq!(&n1[..3], ["bin", "bin/sh", ".prefetch.landmark"], "{n1:?}");
    assert_eq!(
        &n2[..3],
        ["etc", "etc/conf", ".prefetch.landmark"],
        "{n2:?}"
    );
    assert_eq!(r.images[0].layers[0].prioritized, 1);
    assert_eq!(r.images[0].layers[1].prioritized, 1);
}

#[test]
fn failures_name_the_layer_and_write_no_image() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("out"));
    let good = tar_of(&[("f", b"x")]);
    let junk = vec![0x5au8; 4096];
    let cases: Vec<(&str, Vec<RawLayer>, &str)> = vec![
        (
            "notar",
            vec![gz_layer(&good), gz_layer(&junk)],
            "not a tar archive",
        ),
        (
            "diff",
            vec![(
                image::OCI_LAYER_GZIP,
                gzip(&good),
                Sha256Digest::of(b"x").to_string(),
            )],
            "rootfs.diff_ids says",
        ),
        (
            "xz",
            vec![(
                image::OCI_LAYER_GZIP,
                b"\xfd7zXZ\0rest".to_vec(),
                Sha256Digest::of(b"x").to_string(),
            )],
            "xz-compressed",
        ),
        (
            "media",
            vec![(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                gzip(&good),
                Sha256Digest::of(&good).to_string(),
            )],
            "non-distributable",
        ),
    ];
    let mut descs = Vec::new();
    for (tag, layers, _) in &cases {
        descs.push(tagged(write_image(&src, "amd64", layers), tag));
    }
    write_index(&src, descs);
    for (tag, layers, want) in &cases {
        let e = run(&loc(&src, tag), &loc(&out, tag), &ConvertOptions::default()).unwrap_err();
        let msg = e.to_string();
        let pos = layers.len();
        assert!(
            msg.contains(&format!("layer {pos}/{pos}")) && msg.contains(want),
            "{tag}: {msg}"
        );
        assert!(!out.join("index.json").exists(), "{tag}: no image written");
    }
    let e = run(
        &loc(&src, "absent"),
        &loc(&out, "x"),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no image named \"absent\""), "{e}");
    let bad = ConvertOptions {
        level: Some(10),
        ..Default::default()
    };
    assert!(matches!(
        run(&loc(&src, "diff"), &loc(&out, "x"), &bad),
        Err(ConvertError::Option(_))
    ));
}
