//! Writes seed inputs for the fuzz targets: `fuzz_seeds FUZZ_DIR` fills
//! `FUZZ_DIR/seeds/{open_blob,toc_index}` with small blobs in every format and their TOCs.

use estargz::testutil::{Meta, TarBuilder};
use estargz::{BuildOptions, Format};

fn main() {
    let dir =
        std::path::PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_seeds FUZZ_DIR"));
    let blobs = dir.join("seeds/open_blob");
    let tocs = dir.join("seeds/toc_index");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&tocs).unwrap();
    let m = Meta::default();
    let mut t = TarBuilder::new();
    t.dir(b"./", &m)
        .dir(
            b"d/",
            &Meta {
                pax: vec![("SCHILY.xattr.user.k".into(), b"v".to_vec())],
                ..m.clone()
            },
        )
        .file(b"d/f", &m, b"0123456789abcdefghijklmnopqrstuvwxyz")
        .file(b"d/.wh.gone", &m, b"")
        .file(b"d/.wh..wh..opq", &m, b"")
        .link(b"d/l", &m, b"f", false)
        .link(b"h", &m, b"d/f", true)
        .file(b"e", &m, b"")
        .special(b"c", &m, tar_char(), (1, 3));
    let tar = t.finish();
    for (name, format, prio) in [
        ("estargz", Format::Estargz, false),
        ("legacy", Format::LegacyStargz, false),
        ("zstd", Format::ZstdChunked, false),
        ("prio", Format::Estargz, true),
    ] {
        let opts = BuildOptions {
            format,
            chunk_size: 16,
            threads: 1,
            prioritized_files: if prio {
                vec![b"d/f".to_vec()]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let mut blob = Vec::new();
        estargz::build(&tar[..], &mut blob, &opts).unwrap();
        let footer = estargz::parse_footer(
            &blob[blob.len() - estargz::MAX_FOOTER_SIZE..],
            blob.len() as u64,
        )
        .unwrap();
        let json = estargz::toc::decompress_toc(
            &footer,
            &blob[footer.toc_offset as usize..],
            &Default::default(),
        )
        .unwrap();
        std::fs::write(blobs.join(name), &blob).unwrap();
        std::fs::write(tocs.join(format!("{name}.json")), &json).unwrap();
    }
}

fn tar_char() -> tar::EntryType {
    tar::EntryType::Char
}
