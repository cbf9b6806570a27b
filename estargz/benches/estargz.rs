//! Benchmarks (plain `harness = false`; timings are reported, never asserted):
//! - writer throughput (MB of input tar per second) for gzip eStargz and zstd:chunked;
//! - index build rate (TOC entries per second) and memory per entry;
//! - whole-layer verification throughput.
//!
//! Input: `ESTARGZ_BENCH_TAR=path.tar` (e.g. from `benches/realistic-layer.sh`), else a
//! synthetic 96 MB tar of half-compressible files.
//! Run: `cargo bench -p estargz` (add `-- --quick` for one iteration each).

use std::time::{Duration, Instant};

use estargz::testutil::{pattern, Meta, TarBuilder};
use estargz::{open, BuildOptions, Footer, Format, IndexOptions, LayerIndex, OpenOptions};

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("n > 0"))
}

fn synthetic_tar() -> Vec<u8> {
    let mut t = TarBuilder::new();
    let m = Meta::default();
    let mut total = 0usize;
    let mut i = 0u64;
    while total < 96 << 20 {
        let size = match i % 10 {
            0 => 3 << 20,
            1..=3 => 200_000,
            _ => 6_000,
        };
        let name = format!("usr/lib/pkg{:03}/file{i:06}", i / 50);
        t.file(name.as_bytes(), &m, &pattern(size, i));
        total += size;
        i += 1;
    }
    t.finish()
}

fn synthetic_toc(files: usize) -> Vec<u8> {
    let mut s = String::from("{\"version\":1,\"entries\":[");
    let mut off = 100u64;
    for i in 0..files {
        if i % 50 == 0 {
            s.push_str(&format!(
                r#"{{"name":"usr/lib/pkg{:05}/","type":"dir","mode":493}},"#,
                i / 50
            ));
        }
        let digest = format!("sha256:{i:064x}");
        s.push_str(&format!(
            r#"{{"name":"usr/lib/pkg{:05}/libfile-{i:08}.so.1","type":"reg","size":1000,"modtime":"2024-01-01T00:00:00Z","mode":420,"offset":{off},"digest":"{digest}","chunkDigest":"{digest}"}},"#,
            i / 50
        ));
        off += 500;
    }
    s.pop();
    s.push_str("]}");
    s.into_bytes()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 1 } else { 3 };
    let (tar, source) = match std::env::var_os("ESTARGZ_BENCH_TAR") {
        Some(p) => (
            std::fs::read(&p).expect("read ESTARGZ_BENCH_TAR"),
            p.to_string_lossy().into_owned(),
        ),
        None => (synthetic_tar(), "synthetic".to_string()),
    };
    let mb = tar.len() as f64 / 1e6;
    println!(
        "input: {source}, {mb:.1} MB, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    for (name, format, level) in [
        ("estargz gzip-9", Format::Estargz, 9),
        ("estargz gzip-6", Format::Estargz, 6),
        ("zstd:chunked zstd-3", Format::ZstdChunked, 3),
    ] {
        let opts = BuildOptions {
            format,
            level: Some(level),
            ..Default::default()
        };
        let (d, blob) = best_of(n, || {
            let mut blob = Vec::with_capacity(tar.len() / 2);
            estargz::build(&tar[..], &mut blob, &opts).expect("build");
            blob
        });
        println!(
            "writer {name:<22} {:>7.1} MB/s  ({:.2} s, output {:.1} MB, ratio {:.3})",
            mb / d.as_secs_f64(),
            d.as_secs_f64(),
            blob.len() as f64 / 1e6,
            blob.len() as f64 / tar.len() as f64
        );
        if format == Format::Estargz && level == 9 {
            let layer = open(&blob, &OpenOptions::default()).expect("open");
            let (d, _) = best_of(n, || layer.verify_all(&blob).expect("verify"));
            println!(
                "verify {name:<22} {:>7.1} MB/s (uncompressed)",
                layer.index.uncompressed_file_bytes() as f64 / 1e6 / d.as_secs_f64()
            );
        }
    }

    let entries = 200_000;
    let json = synthetic_toc(entries);
    let footer = Footer {
        format: Format::Estargz,
        toc_offset: 1 << 40,
        toc_compressed_size: 1,
        toc_uncompressed_size: None,
        blob_size: (1 << 40) + 52,
    };
    let (d, ix) = best_of(n, || {
        LayerIndex::from_toc_json(&json, &footer, &IndexOptions::default()).expect("index")
    });
    println!(
        "index  {entries} TOC entries: {:>9.0} entries/s ({:.3} s, {:.1} MB/s of JSON), {:.1} bytes/entry",
        entries as f64 / d.as_secs_f64(),
        d.as_secs_f64(),
        json.len() as f64 / 1e6 / d.as_secs_f64(),
        ix.heap_bytes() as f64 / ix.len() as f64
    );
}
