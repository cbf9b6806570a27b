//! Interop with the reference converter: layers produced by Debian's
//! `ctr-remote image convert --oci --estargz|--zstdchunked` (fixtures made by
//! `tests/fixtures/regen.sh`) are read, verified and give the same tree as the original
//! tar; and starling's writer lays the same tar out like the reference does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use estargz::testutil::{manifest_from_layer, manifest_from_tar};
use estargz::{open, BuildOptions, Compression, Format, OpenOptions, Sha256Digest, Toc, TocEntry};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("ctr-remote.json")).unwrap()).unwrap()
}

fn original_tar() -> Vec<u8> {
    let gz = std::fs::read(fixtures().join("layer.tar.gz")).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar)
        .unwrap();
    let want: Sha256Digest = meta()["original"]["diffID"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(Sha256Digest::of(&tar), want);
    tar
}

fn decompress(c: Compression, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match c {
        Compression::Gzip => flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap(),
        Compression::Zstd => zstd::stream::read::Decoder::new(blob)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap(),
    };
    out
}

fn toc_json(blob: &[u8]) -> Toc {
    let footer = estargz::parse_footer(
        &blob[blob.len() - estargz::MAX_FOOTER_SIZE..],
        blob.len() as u64,
    )
    .unwrap();
    let range = footer.toc_range();
    let json =
        estargz::toc::decompress_toc(&footer, &blob[range.start as usize..], &Default::default())
            .unwrap();
    Toc::parse(&json).unwrap()
}

#[test]
fn ctr_remote_layers_read_verify_and_match_the_original_tar() {
    let tar = original_tar();
    let expected = manifest_from_tar(&tar);
    for (key, format) in [
        ("estargz", Format::Estargz),
        ("zstdchunked", Format::ZstdChunked),
    ] {
        let m = &meta()[key];
        let blob = std::fs::read(fixtures().join(m["blob"].as_str().unwrap())).unwrap();
        assert_eq!(
            Sha256Digest::of(&blob).to_string(),
            m["digest"].as_str().unwrap()
        );
        assert_eq!(blob.len() as u64, m["size"].as_u64().unwrap());
        let toc_digest: Sha256Digest = m["tocDigest"].as_str().unwrap().parse().unwrap();
        let layer = open(
            &blob,
            &OpenOptions {
                expected_toc_digest: Some(toc_digest),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(layer.footer.format, format);
        assert!(layer.index.has_no_prefetch_landmark());
        let report = layer.verify_all(&blob).unwrap();
        assert!(
            report.chunks > report.files,
            "{key}: multi-chunk files expected"
        );
        expected.assert_same(&manifest_from_layer(&layer, &blob));

        // The decompressed stream is what the manifest's diffID and size describe.
        let plain = decompress(format.compression(), &blob);
        assert_eq!(
            Sha256Digest::of(&plain).to_string(),
            m["diffID"].as_str().unwrap()
        );
        assert_eq!(plain.len() as u64, m["uncompressedSize"].as_u64().unwrap());

        // A wrong expected TOC digest is refused.
        let wrong = OpenOptions {
            expected_toc_digest: Some(Sha256Digest::of(b"other")),
            ..Default::default()
        };
        assert!(open(&blob, &wrong)
            .unwrap_err()
            .to_string()
            .contains("TOC digest mismatch"));
    }
}

/// The fields a reader relies on, per (name, type, chunkOffset); offsets are left out
/// (compression differs) but their presence is kept.
fn comparable(toc: &Toc) -> BTreeMap<(Vec<u8>, String, i64), TocEntry> {
    toc.entries
        .iter()
        .map(|e| {
            let mut c = e.clone();
            c.offset = i64::from(e.offset != 0);
            c.xattrs.sort();
            ((e.name.clone(), e.kind.clone(), e.chunk_offset), c)
        })
        .collect()
}

#[test]
fn starling_lays_out_the_toc_like_ctr_remote() {
    let tar = original_tar();
    let chunk_size = meta()["chunkSize"].as_u64().unwrap();
    for (key, format) in [
        ("estargz", Format::Estargz),
        ("zstdchunked", Format::ZstdChunked),
    ] {
        let theirs = std::fs::read(fixtures().join(meta()[key]["blob"].as_str().unwrap())).unwrap();
        let mut ours = Vec::new();
        let opts = BuildOptions {
            format,
            chunk_size,
            ..Default::default()
        };
        let out = estargz::build(&tar[..], &mut ours, &opts).unwrap();
        let (a, b) = (comparable(&toc_json(&theirs)), comparable(&toc_json(&ours)));
        let keys_a: Vec<_> = a.keys().collect();
        let keys_b: Vec<_> = b.keys().collect();
        assert_eq!(keys_a, keys_b, "{key}: same TOC entries");
        for (k, ea) in &a {
            assert_eq!(
                ea,
                &b[k],
                "{key}: entry {:?}",
                String::from_utf8_lossy(&k.0)
            );
        }
        eprintln!(
            "{key}: ctr-remote blob {} bytes, starling {} bytes ({:+.2}%)",
            theirs.len(),
            out.blob_size,
            (out.blob_size as f64 / theirs.len() as f64 - 1.0) * 100.0
        );
    }
}

fn lost_meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("ctr-remote-lostnames.json")).unwrap())
        .unwrap()
}

/// ctr-remote writes the non-UTF-8 names of `testutil::lost_names_tar` as U+FFFD into its
/// TOC; opening the layer reads them back from the tar headers, so the tree is the
/// original's, byte for byte — and the TOC alone is not.
#[test]
fn names_the_ctr_remote_toc_lost_come_from_the_tar_headers() {
    let gz = std::fs::read(fixtures().join("lostnames.tar.gz")).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(
        tar,
        estargz::testutil::lost_names_tar(),
        "fixture is current"
    );
    let expected = manifest_from_tar(&tar);
    for key in ["estargz", "zstdchunked"] {
        let m = &lost_meta()[key];
        let blob = std::fs::read(fixtures().join(m["blob"].as_str().unwrap())).unwrap();
        let toc_digest: Sha256Digest = m["tocDigest"].as_str().unwrap().parse().unwrap();
        let opts = OpenOptions {
            expected_toc_digest: Some(toc_digest),
            ..Default::default()
        };
        // The TOC lost them: 11 entries carry U+FFFD, two collapse into one name.
        let toc = toc_json(&blob);
        let mangled = toc
            .entries
            .iter()
            .filter(|e| e.kind != "chunk" && String::from_utf8_lossy(&e.name).contains('\u{FFFD}'))
            .count();
        assert_eq!(mangled, 11, "{key}");
        let footer = estargz::parse_footer(
            &blob[blob.len() - estargz::MAX_FOOTER_SIZE..],
            blob.len() as u64,
        )
        .unwrap();
        let range = footer.toc_range();
        let toc_only = estargz::Layer::from_toc_bytes(
            footer,
            &blob[range.start as usize..range.end as usize],
            &opts,
        )
        .unwrap();
        assert_ne!(
            manifest_from_layer(&toc_only, &blob).diff(&expected),
            Vec::<String>::new(),
            "{key}: the TOC alone differs from the tar"
        );

        let plan = estargz::lost_names::HeaderPlan::from_json(
            &estargz::toc::decompress_toc(
                &footer,
                &blob[range.start as usize..range.end as usize],
                &Default::default(),
            )
            .unwrap(),
            &footer,
        )
        .unwrap()
        .expect("lost names found");
        assert_eq!(plan.lost(), 11, "{key}");
        eprintln!(
            "{key}: {} lost names in {} ranges, {} of {} bytes read",
            plan.lost(),
            plan.spans().len(),
            plan.total_bytes(),
            blob.len()
        );

        let layer = open(&blob, &opts).unwrap_or_else(|e| panic!("{key}: {e}"));
        layer.verify_all(&blob).unwrap();
        expected.assert_same(&manifest_from_layer(&layer, &blob));
    }
}

/// A blob whose headers do not line up with its TOC keeps the TOC's names (with a
/// warning), never a wrong name.
#[test]
fn headers_that_do_not_match_their_toc_entries_are_not_used() {
    let m = &lost_meta()["estargz"];
    let blob = std::fs::read(fixtures().join(m["blob"].as_str().unwrap())).unwrap();
    let footer = estargz::parse_footer(
        &blob[blob.len() - estargz::MAX_FOOTER_SIZE..],
        blob.len() as u64,
    )
    .unwrap();
    let mut toc = toc_json(&blob);
    // Claim another size for the first lost file: its header no longer matches.
    let e = toc
        .entries
        .iter_mut()
        .find(|e| e.name.starts_with(b"bad-"))
        .unwrap();
    e.size += 1;
    let plan = estargz::lost_names::HeaderPlan::from_toc(&toc.entries, &footer);
    let (fixes, errors) = plan.recover_from(&blob);
    assert!(!errors.is_empty());
    assert!(
        errors[0].to_string().contains("the tar header says"),
        "{}",
        errors[0]
    );
    assert!(
        fixes
            .keys()
            .all(|&i| !toc.entries[i].name.starts_with(b"bad-")),
        "no fix from the span that did not match"
    );
    // The other spans still recovered their names.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(fixes.len() >= 8, "{} fixes", fixes.len());
}
