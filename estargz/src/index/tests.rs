//! Index tests: tree semantics (overlay, duplicates, hardlinks, synthesized parents),
//! validation of hostile TOCs, chunk records, and the index's memory per entry.

use super::*;
use crate::footer::{Footer, Format};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn footer(data_end: u64) -> Footer {
    Footer {
        format: Format::Estargz,
        toc_offset: data_end,
        toc_compressed_size: 100,
        toc_uncompressed_size: None,
        blob_size: data_end + 151,
    }
}

fn build(entries: &str) -> Result<LayerIndex, IndexError> {
    let json = format!("{{\"version\":1,\"entries\":[{entries}]}}");
    LayerIndex::from_toc_json(json.as_bytes(), &footer(1 << 30), &IndexOptions::default())
}

fn ok(entries: &str) -> LayerIndex {
    build(entries).unwrap_or_else(|e| panic!("{e}"))
}

fn names(ix: &LayerIndex, dir: EntryId) -> Vec<String> {
    ix.children(dir).map(|(n, _)| lossy(n)).collect()
}

#[test]
fn builds_a_tree_with_sorted_children_and_metadata() {
    let ix = ok(&format!(
        r#"{{"name":"./","type":"dir","mode":493,"modtime":"2020-01-01T00:00:00Z","uid":1}},
        {{"name":"b/","type":"dir","mode":448}},
        {{"name":"b/z","type":"reg","size":3,"offset":10,"digest":"{D1}","chunkDigest":"{D1}","mode":420,"uid":5,"gid":6,"modtime":"2021-02-03T04:05:06.5Z","xattrs":{{"user.a":"eA==","security.capability":"AQI="}}}},
        {{"name":"b/a","type":"symlink","linkName":"../../outside"}},
        {{"name":"a","type":"char","devMajor":1,"devMinor":3,"mode":438}},
        {{"name":"b/dev","type":"block","devMajor":8,"devMinor":1}},
        {{"name":"f","type":"fifo"}}"#
    ));
    let root = ix.root();
    assert_eq!(
        (root.mode(), root.uid(), root.mtime()),
        (0o755, 1, (1_577_836_800, 0))
    );
    assert!(!root.is_synthesized());
    assert_eq!(names(&ix, ROOT_ID), ["a", "b", "f"]);
    let b = ix.lookup(ROOT_ID, b"b").unwrap();
    assert_eq!(names(&ix, b), ["a", "dev", "z"]);
    let z = ix.entry(ix.resolve(b"/b/z").unwrap()).unwrap();
    assert_eq!(
        (z.kind(), z.size(), z.mode(), z.uid(), z.gid()),
        (EntryKind::Reg, 3, 0o644, 5, 6)
    );
    assert_eq!(z.st_mode(), 0o100644);
    assert_eq!(z.mtime(), (1_612_325_106, 500_000_000));
    assert_eq!(z.xattr(b"user.a"), Some(&b"x"[..]));
    assert_eq!(z.xattr(b"security.capability"), Some(&[1u8, 2][..]));
    assert_eq!(z.xattrs().len(), 2);
    assert_eq!(z.nlink(), 1);
    assert_eq!(z.digest().unwrap().to_string(), D1);
    assert_eq!(z.parent(), b);
    assert_eq!(ix.path_of(z.id()), b"b/z");
    let l = ix.entry(ix.resolve(b"b/a").unwrap()).unwrap();
    assert_eq!(l.symlink_target(), Some(&b"../../outside"[..]));
    assert_eq!(l.size(), 13);
    assert_eq!(ix.entry(ix.resolve(b"a").unwrap()).unwrap().rdev(), (1, 3));
    assert_eq!(
        ix.entry(ix.resolve(b"b/dev").unwrap()).unwrap().kind(),
        EntryKind::Block
    );
    assert_eq!(
        ix.entry(ix.resolve(b"f").unwrap()).unwrap().kind(),
        EntryKind::Fifo
    );
    // dirs: 2 + subdirectories
    assert_eq!(root.nlink(), 3);
    assert_eq!(ix.entry(b).unwrap().nlink(), 2);
    assert_eq!(ix.lookup(ROOT_ID, b"missing"), None);
    assert_eq!(ix.lookup(z.id(), b"x"), None);
    // breadth-first ids: the root's children come right after it
    assert_eq!(
        ix.children(ROOT_ID).map(|(_, id)| id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn overlay_whiteouts_and_opaque_dirs() {
    let ix = ok(r#"{"name":"d/","type":"dir"},
        {"name":"d/.wh.gone","type":"reg"},
        {"name":"d/.wh..wh..opq","type":"reg"},
        {"name":"d/kept","type":"reg"},
        {"name":"d/.wh.kept","type":"reg"},
        {"name":"d/.wh.back","type":"reg"},
        {"name":"d/back","type":"dir"}"#);
    let d = ix.resolve(b"d").unwrap();
    assert!(ix.entry(d).unwrap().is_opaque());
    assert_eq!(names(&ix, d), ["back", "gone", "kept"]);
    let gone = ix.entry(ix.lookup(d, b"gone").unwrap()).unwrap();
    assert!(gone.is_whiteout());
    assert_eq!((gone.kind(), gone.rdev()), (EntryKind::Char, (0, 0)));
    assert!(!ix
        .entry(ix.lookup(d, b"kept").unwrap())
        .unwrap()
        .is_whiteout());
    assert_eq!(
        ix.entry(ix.lookup(d, b"back").unwrap()).unwrap().kind(),
        EntryKind::Dir
    );
    // an implicit parent through a whiteout turns it into a directory
    let ix = ok(r#"{"name":".wh.x","type":"reg"},{"name":"x/y","type":"reg"}"#);
    assert!(ix
        .entry(ix.resolve(b"x").unwrap())
        .unwrap()
        .is_synthesized());
}

#[test]
fn landmarks_and_the_toc_name_are_not_in_the_tree() {
    let ix = ok(&format!(
        r#"{{"name":"a","type":"reg","size":1,"offset":10,"chunkDigest":"{D1}"}},
        {{"name":".prefetch.landmark","type":"reg","size":1,"offset":50,"chunkDigest":"{D2}"}},
        {{"name":"stargz.index.json","type":"reg"}},
        {{"name":"sub/.prefetch.landmark","type":"reg"}}"#
    ));
    assert_eq!(ix.prefetch_landmark(), Some(50));
    assert!(!ix.has_no_prefetch_landmark());
    assert_eq!(names(&ix, ROOT_ID), ["a", "sub"]);
    assert!(ix.resolve(b"sub/.prefetch.landmark").is_some());
    // The chunk before the landmark ends at the landmark's member.
    assert_eq!(ix.chunk(0).unwrap().compressed_range(), 10..1 << 30);
    let ix = ok(
        r#"{"name":"./.no.prefetch.landmark","type":"reg","size":1,"offset":10,"chunkDigest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}"#,
    );
    assert!(ix.has_no_prefetch_landmark());
    assert_eq!(ix.len(), 1);
}

#[test]
fn duplicates_later_wins() {
    let ix = ok(&format!(
        r#"{{"name":"a/","type":"dir","mode":448}},
        {{"name":"a/child","type":"reg"}},
        {{"name":"a","type":"dir","mode":493}},
        {{"name":"f","type":"reg","size":1,"offset":1,"chunkDigest":"{D1}"}},
        {{"name":"f","type":"reg","size":2,"offset":2,"chunkDigest":"{D2}"}},
        {{"name":"g/","type":"dir"}},
        {{"name":"g/x","type":"reg"}},
        {{"name":"g","type":"reg"}}"#
    ));
    let a = ix.entry(ix.resolve(b"a").unwrap()).unwrap();
    assert_eq!(a.mode(), 0o755, "metadata of the later dir entry");
    assert_eq!(names(&ix, a.id()), ["child"], "children kept");
    let f = ix.entry(ix.resolve(b"f").unwrap()).unwrap();
    assert_eq!(f.size(), 2);
    assert_eq!(ix.num_chunks(), 1, "the replaced file's chunk is dropped");
    assert_eq!(
        ix.chunks_of(f.id())
            .next()
            .unwrap()
            .digest
            .unwrap()
            .to_string(),
        D2
    );
    assert_eq!(
        ix.entry(ix.resolve(b"g").unwrap()).unwrap().kind(),
        EntryKind::Reg
    );
    assert_eq!(ix.resolve(b"g/x"), None);
    assert_eq!(ix.len(), 5, "unreachable entries are dropped");
    assert_eq!(ix.uncompressed_file_bytes(), 2);
}

#[test]
fn hardlinks_share_an_id_and_count_links() {
    let ix = ok(&format!(
        r#"{{"name":"a","type":"reg","size":4,"offset":9,"chunkDigest":"{D1}"}},
        {{"name":"d/b","type":"hardlink","linkName":"./a"}},
        {{"name":"c","type":"hardlink","linkName":"d/b"}},
        {{"name":"a","type":"symlink","linkName":"x"}}"#
    ));
    let b = ix.resolve(b"d/b").unwrap();
    assert_eq!(ix.resolve(b"c"), Some(b));
    let e = ix.entry(b).unwrap();
    assert_eq!((e.kind(), e.nlink(), e.size()), (EntryKind::Reg, 2, 4));
    assert_eq!(ix.uncompressed_file_bytes(), 4);
    // "a" was replaced by a symlink; the file lives on through its other names.
    assert_eq!(
        ix.entry(ix.resolve(b"a").unwrap()).unwrap().kind(),
        EntryKind::Symlink
    );
    assert_eq!(
        ix.path_of(b).len(),
        1,
        "first name in breadth-first order: \"c\""
    );

    for (toc, want) in [
        (
            r#"{"name":"b","type":"hardlink","linkName":"missing"}"#,
            "not in the layer",
        ),
        (
            r#"{"name":"d/","type":"dir"},{"name":"b","type":"hardlink","linkName":"d"}"#,
            "points to directory",
        ),
        (
            r#"{"name":"b","type":"hardlink","linkName":"../../etc/passwd"}"#,
            "invalid hardlink target",
        ),
        (
            r#"{"name":"b","type":"hardlink","linkName":""}"#,
            "points to directory",
        ),
    ] {
        let err = build(toc).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn rejects_hostile_names_and_fields() {
    for (toc, want) in [
        (r#"{"name":"../x","type":"reg"}"#, "'..'"),
        (r#"{"name":"a/../../x","type":"reg"}"#, "'..'"),
        ("{\"name\":\"a\\u0000b\",\"type\":\"reg\"}", "NUL"),
        (r#"{"name":"a","type":"socket"}"#, "unknown type"),
        (r#"{"name":"./","type":"reg"}"#, "root entry"),
        (
            r#"{"name":"f","type":"reg"},{"name":"f/x","type":"reg"}"#,
            "not a directory",
        ),
        (r#"{"name":"a","type":"reg","uid":-1}"#, "uid"),
        (r#"{"name":"a","type":"reg","gid":4294967296}"#, "gid"),
        (r#"{"name":"a","type":"reg","mode":-5}"#, "mode"),
        (r#"{"name":"a","type":"reg","size":-5}"#, "size"),
        (r#"{"name":"a","type":"char","devMajor":-1}"#, "devMajor"),
        (
            r#"{"name":"a","type":"reg","modtime":"yesterday"}"#,
            "modtime",
        ),
        (
            r#"{"name":"a","type":"reg","size":1,"offset":5,"digest":"md5:00"}"#,
            "digest",
        ),
        (
            r#"{"name":"a","type":"symlink","linkName":"a\u0000b"}"#,
            "linkName",
        ),
        (r#"{"name":".wh.","type":"reg"}"#, "whiteout"),
        (r#"{"name":"a","type":"reg","xattrs":{"":"eA=="}}"#, "xattr"),
    ] {
        let err = build(toc).unwrap_err().to_string();
        assert!(err.contains(want), "{toc}: {err}");
    }
}

#[test]
fn validates_chunk_layout_and_offsets() {
    let c = |extra: &str| {
        format!(
            r#"{{"name":"f","type":"reg","size":10,"offset":100,"chunkSize":4,"chunkDigest":"{D1}"}}{extra}"#
        )
    };
    for (toc, want) in [
        (c(""), "cover 4 of 10"),
        (
            c(&format!(
                r#",{{"type":"chunk","offset":200,"chunkOffset":5,"chunkDigest":"{D2}"}}"#
            )),
            "expected 4",
        ),
        (
            c(&format!(
                r#",{{"type":"chunk","offset":200,"chunkOffset":4,"chunkSize":7,"chunkDigest":"{D2}"}}"#
            )),
            "overruns",
        ),
        (
            c(&format!(
                r#",{{"type":"chunk","offset":100,"chunkOffset":4,"chunkDigest":"{D2}"}}"#
            )),
            "does not follow",
        ),
        (
            c(&format!(
                r#",{{"type":"chunk","offset":50,"chunkOffset":4,"chunkDigest":"{D2}"}}"#
            )),
            "does not follow",
        ),
        (
            c(r#",{"type":"chunk","offset":200,"chunkOffset":4}"#),
            "no chunkDigest",
        ),
        (
            format!(r#"{{"type":"chunk","offset":5,"chunkDigest":"{D1}"}}"#),
            "does not follow a regular file",
        ),
        (
            format!(
                r#"{{"name":"f","type":"reg","size":1,"offset":{},"chunkDigest":"{D1}"}}"#,
                1u64 << 30
            ),
            "outside the data region",
        ),
        (
            format!(r#"{{"name":"f","type":"reg","size":1,"offset":-1,"chunkDigest":"{D1}"}}"#),
            "outside the data region",
        ),
        (
            r#"{"name":"f","type":"reg","size":1,"offset":5}"#.to_string(),
            "no chunkDigest",
        ),
        (
            format!(
                r#"{{"name":"e","type":"reg"}},{{"type":"chunk","offset":5,"chunkDigest":"{D1}"}}"#
            ),
            "overruns",
        ),
        (
            format!(
                r#"{{"name":"f","type":"reg","size":1,"offset":5,"chunkType":"holes","chunkDigest":"{D1}"}}"#
            ),
            "chunkType",
        ),
    ] {
        let err = build(&toc).unwrap_err().to_string();
        assert!(err.contains(want), "{toc}: {err}");
    }
}

#[test]
fn chunk_records_and_compressed_lengths() {
    let ix = ok(&format!(
        r#"{{"name":"big","type":"reg","size":10,"offset":100,"chunkSize":4,"digest":"{D3}","chunkDigest":"{D1}"}},
        {{"type":"chunk","offset":200,"chunkOffset":4,"chunkSize":4,"chunkDigest":"{D2}"}},
        {{"type":"chunk","offset":200,"innerOffset":4,"chunkOffset":8,"chunkDigest":"{D1}"}},
        {{"name":"one","type":"reg","size":3,"offset":300,"digest":"{D2}"}},
        {{"name":"cs","type":"reg","size":9,"offset":400,"endOffset":420,"chunkSize":5,"chunkDigest":"{D1}"}},
        {{"type":"chunk","chunkOffset":5,"chunkType":"zeros"}},
        {{"name":"empty","type":"reg","digest":"{D1}"}}"#
    ));
    let big = ix.resolve(b"big").unwrap();
    let chunks: Vec<Chunk> = ix.chunks_of(big).collect();
    assert_eq!(chunks.len(), 3);
    assert_eq!(
        chunks
            .iter()
            .map(|c| (
                c.file_offset,
                c.size,
                c.compressed_offset,
                c.compressed_len,
                c.inner_offset
            ))
            .collect::<Vec<_>>(),
        [
            (0, 4, 100, 100, 0),
            (4, 4, 200, 100, 0),
            (8, 2, 200, 100, 4)
        ]
    );
    assert_eq!(chunks[1].digest.unwrap().to_string(), D2);
    assert_eq!(ix.entry(big).unwrap().digest().unwrap().to_string(), D3);
    assert_eq!(ix.chunk_at(big, 0).unwrap().id, chunks[0].id);
    assert_eq!(ix.chunk_at(big, 5).unwrap().id, chunks[1].id);
    assert_eq!(ix.chunk_at(big, 9).unwrap().id, chunks[2].id);
    assert_eq!(ix.chunk_at(big, 10), None);
    let one = ix.chunks_of(ix.resolve(b"one").unwrap()).next().unwrap();
    assert_eq!(
        one.digest.unwrap().to_string(),
        D2,
        "a whole-file chunk falls back to the file digest"
    );
    assert_eq!(one.compressed_range(), 300..400);
    let cs: Vec<Chunk> = ix.chunks_of(ix.resolve(b"cs").unwrap()).collect();
    assert_eq!(cs[0].compressed_range(), 400..420, "endOffset is exact");
    assert!(cs[1].zeros && cs[1].compressed_len == 0 && cs[1].size == 4);
    assert_eq!(ix.chunks_of(ix.resolve(b"empty").unwrap()).count(), 0);
    let offs: Vec<u64> = ix
        .chunks_in_blob_order()
        .map(|c| c.compressed_offset)
        .collect();
    assert!(offs.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(ix.uncompressed_file_bytes(), 22);
}

#[test]
fn missing_digests_can_be_allowed() {
    let json = br#"{"version":1,"entries":[{"name":"f","type":"reg","size":1,"offset":5}]}"#;
    let opts = IndexOptions {
        allow_missing_digests: true,
        ..Default::default()
    };
    let ix = LayerIndex::from_toc_json(json, &footer(100), &opts).unwrap();
    assert_eq!(ix.chunk(0).unwrap().digest, None);
}

#[test]
fn rejects_malformed_json_and_enforces_limits() {
    let f = footer(1000);
    let o = IndexOptions::default();
    for (json, want) in [
        (
            &br#"{"version":1,"entries":[{"name":"a","type":"reg"}"#[..],
            "malformed",
        ),
        (br#"{"entries":[]}"#, "version"),
        (
            br#"{"version":2,"entries":[]}"#,
            "unsupported TOC version 2",
        ),
        (br#"{"version":1,"entries":[]} trailing"#, "malformed"),
        (br#"{"version":1,"entries":[],"entries":[]}"#, "duplicate"),
        (br#"[1,2,3]"#, "malformed"),
        (br#"{"version":1,"entries":[{"name":5}]}"#, "malformed"),
    ] {
        let err = LayerIndex::from_toc_json(json, &f, &o)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want),
            "{}: {err}",
            String::from_utf8_lossy(json)
        );
    }
    let ix =
        LayerIndex::from_toc_json(br#"{"version":1,"entries":null,"other":{"x":[1]}}"#, &f, &o)
            .unwrap();
    assert_eq!(ix.len(), 1);

    let few = IndexOptions {
        limits: crate::toc::TocLimits {
            max_entries: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let four = br#"{"version":1,"entries":[{"name":"a","type":"dir"},{"name":"b","type":"dir"},{"name":"c","type":"dir"},{"name":"d","type":"dir"}]}"#;
    assert!(matches!(
        LayerIndex::from_toc_json(four, &f, &few),
        Err(IndexError::TooManyEntries { limit: 3 })
    ));
    // Synthesized parents count too.
    let deep = br#"{"version":1,"entries":[{"name":"a/b/c/d/e","type":"reg"}]}"#;
    assert!(matches!(
        LayerIndex::from_toc_json(deep, &f, &few),
        Err(IndexError::TooManyEntries { .. })
    ));
    let small = IndexOptions {
        limits: crate::toc::TocLimits {
            max_uncompressed_size: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        LayerIndex::from_toc_json(four, &f, &small),
        Err(IndexError::Toc(
            crate::toc::TocError::UncompressedTooLarge { .. }
        ))
    ));
}

/// A synthetic layer shaped like a real rootfs: directories of files with 20-byte
/// average names, single-chunk files, a few symlinks.
fn synthetic_toc(files: usize) -> Vec<u8> {
    let mut s = String::from("{\"version\":1,\"entries\":[");
    let mut off = 100u64;
    let per_dir = 50;
    for i in 0..files {
        if i % per_dir == 0 {
            s.push_str(&format!(
                r#"{{"name":"usr/lib/pkg{:05}/","type":"dir","mode":493,"modtime":"2024-01-01T00:00:00Z"}},"#,
                i / per_dir
            ));
        }
        let dir = i / per_dir;
        if i % 10 == 9 {
            s.push_str(&format!(
                r#"{{"name":"usr/lib/pkg{dir:05}/link-{i:08}.so","type":"symlink","linkName":"libfile-{i:08}.so.1","mode":511}},"#
            ));
        } else {
            let digest = format!("sha256:{:064x}", i);
            s.push_str(&format!(
                r#"{{"name":"usr/lib/pkg{dir:05}/libfile-{i:08}.so.1","type":"reg","size":{},"modtime":"2024-01-01T00:00:00Z","mode":420,"offset":{off},"digest":"{digest}","chunkDigest":"{digest}"}},"#,
                1000 + i % 5000
            ));
            off += 500;
        }
    }
    s.pop();
    s.push_str("]}");
    s.into_bytes()
}

#[test]
fn memory_per_entry_is_small() {
    let json = synthetic_toc(100_000);
    let f = footer(1 << 40);
    let ix = LayerIndex::from_toc_json(&json, &f, &IndexOptions::default()).unwrap();
    assert_eq!(ix.len(), 100_000 + 2_000 + 3);
    let per_entry = ix.heap_bytes() as f64 / ix.len() as f64;
    eprintln!(
        "index: {} entries, {} chunks, {} heap bytes, {:.1} bytes/entry (TOC JSON {:.1} bytes/entry)",
        ix.len(),
        ix.num_chunks(),
        ix.heap_bytes(),
        per_entry,
        json.len() as f64 / ix.len() as f64
    );
    // 64 (entry) + 12 (dirent) + ~24 (names) + 90% x (48 chunk + 32 digest) ~ 172
    assert!(per_entry < 200.0, "{per_entry} bytes per entry");
}
