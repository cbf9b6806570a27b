//! Writer tests: round trips through every output format and input compression, the
//! reference's landmark and prioritization rules, and the values returned for manifests.

use std::io::{Read, Write};

use super::*;
use crate::layer::{open, OpenOptions};
use crate::testutil::{edge_case_tar, manifest_from_layer, manifest_from_tar, Meta, TarBuilder};
use crate::toc::Toc;

fn opts(format: Format) -> BuildOptions {
    BuildOptions {
        format,
        chunk_size: 64 * 1024,
        ..Default::default()
    }
}

fn decompress_all(format: Format, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match format.compression() {
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

fn toc_of(blob: &[u8]) -> Toc {
    let footer = crate::parse_footer(&blob[blob.len() - 72..], blob.len() as u64).unwrap();
    let json = crate::toc::decompress_toc(
        &footer,
        &blob[footer.toc_range().start as usize..],
        &Default::default(),
    )
    .unwrap();
    Toc::parse(&json).unwrap()
}

#[test]
fn round_trips_every_format() {
    let tar = edge_case_tar();
    let expected = manifest_from_tar(&tar);
    for format in [Format::Estargz, Format::LegacyStargz, Format::ZstdChunked] {
        let mut blob = Vec::new();
        let out = build(&tar[..], &mut blob, &opts(format)).unwrap();
        assert_eq!(out.blob_size, blob.len() as u64);
        assert_eq!(out.blob_digest, Sha256Digest::of(&blob));
        let plain = decompress_all(format, &blob);
        assert_eq!(out.uncompressed_size, plain.len() as u64, "{format:?}");
        assert_eq!(out.diff_id, Sha256Digest::of(&plain), "{format:?}");

        let layer = open(
            &blob,
            &OpenOptions {
                expected_toc_digest: Some(out.toc_digest),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(layer.footer.format, format);
        assert_eq!(layer.toc_digest, out.toc_digest);
        assert!(layer.index.has_no_prefetch_landmark());
        assert_eq!(layer.index.prefetch_landmark(), None);
        expected.assert_same(&manifest_from_layer(&layer, &blob));
        let report = layer.verify_all(&blob).unwrap();
        assert_eq!(report.bytes, layer.index.uncompressed_file_bytes());
        assert!(report.chunks > report.files, "multi-chunk files exist");

        // The uncompressed stream is a valid tar that extracts to the same tree.
        let from_stream = manifest_from_tar(&plain);
        expected.assert_same(&from_stream);
        // Its first entry is the landmark; for gzip, its last entry is the TOC.
        let mut ar = tar::Archive::new(&plain[..]);
        let names: Vec<Vec<u8>> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path_bytes().into_owned())
            .collect();
        assert_eq!(names[0], b".no.prefetch.landmark");
        if format.compression() == Compression::Gzip {
            assert_eq!(names.last().unwrap(), b"stargz.index.json");
        }
    }
}

#[test]
fn compressed_inputs_give_the_same_blob() {
    let tar = edge_case_tar();
    let mut plain_blob = Vec::new();
    let plain = build(&tar[..], &mut plain_blob, &opts(Format::Estargz)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zs = zstd::bulk::compress(&tar, 3).unwrap();
    for input in [gz, zs] {
        let mut blob = Vec::new();
        let out = build(&input[..], &mut blob, &opts(Format::Estargz)).unwrap();
        assert_eq!(out, plain);
        assert_eq!(blob, plain_blob);
    }
    // An eStargz blob as input is converted again without keeping its TOC or landmark.
    let mut again = Vec::new();
    let out = build(&plain_blob[..], &mut again, &opts(Format::Estargz)).unwrap();
    assert_eq!(out.toc_digest, plain.toc_digest);
}

#[test]
fn output_is_deterministic_across_thread_counts() {
    let tar = edge_case_tar();
    let mut blobs = Vec::new();
    for threads in [1, 2, 5] {
        let mut blob = Vec::new();
        build(
            &tar[..],
            &mut blob,
            &BuildOptions {
                threads,
                ..opts(Format::ZstdChunked)
            },
        )
        .unwrap();
        blobs.push(blob);
    }
    assert_eq!(blobs[0], blobs[1]);
    assert_eq!(blobs[0], blobs[2]);
}

#[test]
fn toc_follows_the_reference_layout() {
    let tar = edge_case_tar();
    let mut blob = Vec::new();
    build(&tar[..], &mut blob, &opts(Format::Estargz)).unwrap();
    let toc = toc_of(&blob);
    let find = |name: &[u8]| toc.entries.iter().position(|e| e.name == name).unwrap();
    let big = &toc.entries[find(b"etc/big")];
    assert_eq!(
        (big.kind.as_str(), big.size, big.chunk_size),
        ("reg", 200_000, 65536)
    );
    assert!(big.digest.starts_with("sha256:") && big.chunk_digest.starts_with("sha256:"));
    assert_ne!(big.digest, big.chunk_digest);
    let i = find(b"etc/big");
    let chunks: Vec<_> = toc.entries[i + 1..i + 4].iter().collect();
    assert!(chunks
        .iter()
        .all(|c| c.kind == "chunk" && c.name == b"etc/big"));
    assert_eq!(
        chunks.iter().map(|c| c.chunk_offset).collect::<Vec<_>>(),
        [65536, 131072, 196608]
    );
    assert_eq!(
        chunks[2].chunk_size, 0,
        "the last chunk runs to the end of the file"
    );
    let small = &toc.entries[find(b"etc/passwd")];
    assert_eq!(small.digest, small.chunk_digest);
    assert_eq!(small.chunk_size, 0);
    let empty = &toc.entries[find(b"etc/empty")];
    assert_eq!(
        (empty.offset, empty.digest.as_str()),
        (0, Sha256Digest::of(b"").to_string().as_str())
    );
    // Names are kept as in the tar; a duplicate keeps only its last entry.
    assert_eq!(toc.entries.iter().filter(|e| e.name == b"dup").count(), 1);
    assert_eq!(toc.entries[find(b"dup")].mode, 0o600);
    assert_eq!(toc.entries[find(b"./")].kind, "dir");
    // User names only where they change for an id.
    assert_eq!(toc.entries[find(b"home-file")].user_name, b"user");
    assert_eq!(
        toc.entries[find(b"nanos")].modtime,
        "2023-11-14T22:13:20.123456789Z"
    );
    // Offsets strictly increase.
    let offs: Vec<i64> = toc
        .entries
        .iter()
        .filter(|e| e.offset > 0)
        .map(|e| e.offset)
        .collect();
    assert!(offs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn prioritized_files_come_first_then_the_landmark() {
    let tar = edge_case_tar();
    let o = BuildOptions {
        prioritized_files: vec![
            b"/bin/hard".to_vec(),
            b"./etc/passwd".to_vec(),
            b"nope".to_vec(),
        ],
        ..opts(Format::Estargz)
    };
    let mut blob = Vec::new();
    let out = build(&tar[..], &mut blob, &o).unwrap();
    assert_eq!(out.missing_prioritized, vec![b"nope".to_vec()]);
    let toc = toc_of(&blob);
    let names: Vec<&[u8]> = toc
        .entries
        .iter()
        .filter(|e| e.kind != "chunk")
        .map(|e| e.name.as_slice())
        .take(7)
        .collect();
    assert_eq!(
        names,
        vec![
            &b"./"[..],
            b"bin/",
            b"bin/busybox",
            b"bin/hard",
            b"etc/",
            b"etc/passwd",
            b".prefetch.landmark"
        ]
    );
    let layer = open(&blob, &OpenOptions::default()).unwrap();
    let landmark = layer.index.prefetch_landmark().expect("landmark");
    assert!(!layer.index.has_no_prefetch_landmark());
    let busybox = layer.index.resolve(b"bin/busybox").unwrap();
    assert!(layer
        .index
        .chunks_of(busybox)
        .all(|c| c.compressed_offset < landmark));
    let big = layer.index.resolve(b"etc/big").unwrap();
    assert!(layer
        .index
        .chunks_of(big)
        .all(|c| c.compressed_offset > landmark));
    manifest_from_tar(&tar).assert_same(&manifest_from_layer(&layer, &blob));

    // From a file (re-read in place) and from a compressed stream (spooled): same blob.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar");
    std::fs::write(&path, &tar).unwrap();
    let mut from_file = Vec::new();
    assert_eq!(build_file(&path, &mut from_file, &o).unwrap(), out);
    assert_eq!(from_file, blob);
    let zs = zstd::bulk::compress(&tar, 1).unwrap();
    let mut from_zstd = Vec::new();
    assert_eq!(build(&zs[..], &mut from_zstd, &o).unwrap(), out);
}

#[test]
fn all_prioritized_missing_still_writes_the_prefetch_landmark() {
    let tar = edge_case_tar();
    let o = BuildOptions {
        prioritized_files: vec![b"does/not/exist".to_vec()],
        ..opts(Format::ZstdChunked)
    };
    let mut blob = Vec::new();
    build(&tar[..], &mut blob, &o).unwrap();
    let layer = open(&blob, &OpenOptions::default()).unwrap();
    assert!(layer.index.prefetch_landmark().is_some());
}

#[test]
fn rejects_bad_input_with_a_clear_error() {
    let mut sink = Vec::new();
    let err = build(&[0x42u8; 1024][..], &mut sink, &BuildOptions::default()).unwrap_err();
    assert!(matches!(err, WriteError::Tar { offset: 0, .. }), "{err}");
    let err = build(&b"BZh91AY&SY"[..], &mut sink, &BuildOptions::default()).unwrap_err();
    assert!(matches!(
        err,
        WriteError::UnsupportedInputCompression("bzip2")
    ));
    let mut t = TarBuilder::new();
    t.file(b"a", &Meta::default(), &[1u8; 5000]);
    let mut tar = t.finish();
    tar.truncate(2048);
    let err = build(&tar[..], &mut sink, &BuildOptions::default()).unwrap_err();
    assert!(matches!(err, WriteError::Tar { .. }), "{err}");
    let err = build(
        &edge_case_tar()[..],
        &mut sink,
        &BuildOptions {
            chunk_size: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, WriteError::InvalidOption(_)));
}

#[test]
fn output_write_errors_surface() {
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 < b.len() {
                return Err(io::Error::other("disk full"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let tar = edge_case_tar();
    let err = build(&tar[..], Failing(1000), &opts(Format::Estargz)).unwrap_err();
    assert!(matches!(err, WriteError::WriteOutput(_)), "{err}");
}

#[test]
fn empty_tar_gives_a_valid_layer() {
    for format in [Format::Estargz, Format::ZstdChunked] {
        let mut blob = Vec::new();
        build(&[0u8; 1024][..], &mut blob, &opts(format)).unwrap();
        let layer = open(&blob, &OpenOptions::default()).unwrap();
        assert_eq!(layer.index.len(), 1);
        assert_eq!(layer.index.children(ROOT_ID_FOR_TEST).len(), 0);
    }
}

const ROOT_ID_FOR_TEST: u32 = crate::ROOT_ID;

#[test]
fn large_files_are_cut_in_their_own_chunk_size() {
    let mut t = TarBuilder::new();
    let m = Meta::default();
    t.file(b"small", &m, &crate::testutil::pattern(60_000, 1));
    t.file(b"mid", &m, &crate::testutil::pattern(64 * 1024, 2));
    t.file(b"large", &m, &crate::testutil::pattern(100_000, 3));
    let tar = t.finish();
    let o = BuildOptions {
        large_file_chunk_size: 16 * 1024,
        ..opts(Format::Estargz)
    };
    let mut blob = Vec::new();
    build(&tar[..], &mut blob, &o).unwrap();
    let toc = toc_of(&blob);
    let chunks_of = |name: &[u8]| -> Vec<(i64, i64)> {
        toc.entries
            .iter()
            .filter(|e| e.name == name && (e.kind == "reg" || e.kind == "chunk"))
            .map(|e| (e.chunk_offset, e.chunk_size))
            .collect()
    };
    // Up to `chunk_size`: one chunk, as without the option (a file of exactly
    // `chunk_size` bytes has it as its chunk size, as the reference writes it).
    assert_eq!(chunks_of(b"small"), [(0, 0)]);
    assert_eq!(chunks_of(b"mid"), [(0, 65536)]);
    // Larger: cut every 16 KiB, the last chunk running to the end.
    let large = chunks_of(b"large");
    assert_eq!(large.len(), 7, "{large:?}");
    assert!(large[..6]
        .iter()
        .enumerate()
        .all(|(i, c)| *c == (i as i64 * 16384, 16384)));
    assert_eq!(large[6], (6 * 16384, 0));
    // The blob reads back as the input.
    let layer = open(&blob, &OpenOptions::default()).unwrap();
    manifest_from_tar(&tar).assert_same(&manifest_from_layer(&layer, &blob));
}
