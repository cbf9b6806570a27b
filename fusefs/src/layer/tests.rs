//! Read-ahead against an in-memory blob: for a given access pattern, which chunks are
//! fetched and in how many requests (next chunks only for files read in order, the rest of
//! a directory read file after file, only the loader's parts of a large ELF library).

use std::sync::Arc;
use std::time::Duration;

use estargz::testutil::{pattern, Meta, TarBuilder};
use estargz::writer::{build, BuildOptions};
use estargz::{EntryId, Sha256Digest};

use super::*;
use crate::cache::{CacheOptions, ChunkCache, ReadMode};
use crate::fetch::{MemoryBlob, RequestCounts};
use crate::metrics::Metrics;

/// Chunk size of the test layers.
pub(super) const CHUNK: u64 = 64 << 10;

struct Fixture {
    layer: Arc<RemoteLayer>,
    blob: Arc<MemoryBlob>,
    /// Counts after opening (footer and TOC).
    opened: RequestCounts,
    _dir: tempfile::TempDir,
}

/// Every read-ahead off: each test turns on what it looks at.
pub(super) fn quiet() -> config::FetchConfig {
    config::FetchConfig {
        prefetch: false,
        elf_read_ahead: false,
        program_read_ahead: false,
        neighbour_read_ahead: 0,
        next_chunk_read_ahead: config::NextChunk::Off,
        directory_read_ahead: 0,
        start_files: Vec::new(),
        background_fetch: false,
        // Test layers are small: reads would soon look like a scan and stream the rest.
        stream_threshold: 1.0,
        ..Default::default()
    }
}

/// [`quiet`] with ELF read-ahead on (and so script read-ahead, which needs it).
pub(super) fn elf_on() -> config::FetchConfig {
    config::FetchConfig {
        elf_read_ahead: true,
        ..quiet()
    }
}

/// An eStargz blob of `tar` (chunks of [`CHUNK`]) in memory, and its digest.
pub(super) fn memory_blob(tar: &[u8]) -> (Arc<MemoryBlob>, String) {
    let mut data = Vec::new();
    let opts = BuildOptions {
        chunk_size: CHUNK,
        ..Default::default()
    };
    build(tar, &mut data, &opts).unwrap();
    let digest = format!("sha256:{}", Sha256Digest::of(&data).hex());
    (MemoryBlob::new(data), digest)
}

/// A layer context with its chunk cache under `dir`, a registry client that is never
/// asked (layers read in-memory blobs) and `fetch`.
pub(super) fn memory_context(
    dir: &std::path::Path,
    fetch: config::FetchConfig,
) -> Arc<LayerContext> {
    let metrics = Arc::new(Metrics::default());
    let cache = ChunkCache::open(
        CacheOptions {
            dir: dir.join("cache"),
            max_size: 0,
            memory_size: 16 << 20,
            read_mode: ReadMode::Auto,
        },
        metrics.clone(),
    )
    .unwrap();
    let client =
        registry::RegistryClient::new(&config::Config::default(), metrics.registry.clone())
            .unwrap();
    let settings = LayerSettings {
        fetch,
        fuse: Default::default(),
        opaque_xattr: OpaqueXattr::Trusted,
        status_dir: None,
    };
    LayerContext::with_parts(client, cache, tokio::runtime::Handle::current(), settings)
}

impl Fixture {
    async fn new(tar: &[u8], fetch: config::FetchConfig) -> Self {
        let (blob, digest) = memory_blob(tar);
        let dir = tempfile::tempdir().unwrap();
        let ctx = memory_context(dir.path(), fetch);
        let source = LayerSource::new("memory/blob", &digest, None, None).unwrap();
        let layer = RemoteLayer::from_source(&ctx, source, blob.clone(), &dir.path().join("state"))
            .await
            .unwrap();
        let opened = blob.counts();
        Fixture {
            layer,
            blob,
            opened,
            _dir: dir,
        }
    }

    fn id(&self, path: &str) -> EntryId {
        self.layer.index().resolve(path.as_bytes()).unwrap()
    }

    /// Reads `len` bytes at `off` of `path` (fetching what is missing) and checks them.
    async fn read(&self, path: &str, off: u64, len: u32, want: &[u8]) {
        let got = self
            .layer
            .reads()
            .read(self.id(path), off, len)
            .await
            .unwrap();
        assert_eq!(got, want[off as usize..off as usize + len as usize]);
    }

    /// Range requests and bytes asked of the blob since it was opened.
    fn asked(&self) -> (u64, u64) {
        let c = self.blob.counts();
        (
            c.range_requests - self.opened.range_requests,
            c.bytes - self.opened.bytes,
        )
    }

    /// Whether the chunk holding byte `off` of `path` is local.
    fn local(&self, path: &str, off: u64) -> bool {
        self.layer
            .read_cached(self.id(path), off, 1)
            .unwrap()
            .is_some()
    }

    /// Waits (bounded) until `n` chunks are local, then lets anything else in flight
    /// land, so that counts taken next include every fetch started so far. A chunk is
    /// counted when it is answered, just before it is written to the cache: the fetcher
    /// going idle is what says it is readable from the cache.
    async fn settle(&self, n: u64) {
        for _ in 0..6000 {
            if self.layer.status().fetched_chunks >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Settled: no fetch in flight, no read-ahead task (a fetched file being examined may
        // start more fetches), and no request since the last look.
        let mut last = self.blob.counts();
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), self.layer.fetcher().wait_idle())
                .await;
            let now = self.blob.counts();
            if now == last && !self.layer.read_ahead_busy() {
                break;
            }
            last = now;
        }
    }

    /// Compressed bytes fetched for chunk `i` of `path`.
    fn chunk_bytes(&self, path: &str, chunks: &[u32]) -> u64 {
        let index = self.layer.index();
        let ids = index.entry(self.id(path)).unwrap().chunk_ids();
        chunks
            .iter()
            .map(|&i| {
                let c = index.chunk(ids.start + i).unwrap();
                let r = super::chunks::fetch_range(&c);
                r.end - r.start
            })
            .sum()
    }
}

/// A layer with one incompressible file of 8 chunks.
fn big_file() -> (Vec<u8>, Vec<u8>) {
    let data = pattern(8 * CHUNK as usize, 7);
    let mut t = TarBuilder::new();
    t.file(b"data/big", &Meta::default(), &data);
    (t.finish(), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_chunks_follow_a_file_read_in_order() {
    let (tar, data) = big_file();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            next_chunk_read_ahead: config::NextChunk::Sequential,
            next_chunk_window: CHUNK,
            ..quiet()
        },
    )
    .await;
    // The first read of a file: just its chunk.
    f.read("data/big", 0, 4096, &data).await;
    f.settle(1).await;
    assert_eq!(f.asked(), (1, f.chunk_bytes("data/big", &[0])));
    // The next chunk right after it: the file is read in order, one chunk comes ahead.
    f.read("data/big", CHUNK, 4096, &data).await;
    f.settle(3).await;
    assert!(f.local("data/big", 2 * CHUNK));
    assert!(!f.local("data/big", 3 * CHUNK));
    // Reading on: the chunk ahead is local, the one after it keeps the window moving.
    f.read("data/big", 2 * CHUNK, 4096, &data).await;
    f.read("data/big", 3 * CHUNK, 4096, &data).await;
    f.settle(5).await;
    assert!(f.local("data/big", 4 * CHUNK));
    assert_eq!(f.asked().1, f.chunk_bytes("data/big", &[0, 1, 2, 3, 4]));
    assert_eq!(f.layer.status().fetched_chunks, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_ahead_grows_with_the_run_of_reads_in_order() {
    let (tar, data) = big_file();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            next_chunk_read_ahead: config::NextChunk::Sequential,
            next_chunk_window: 4 * CHUNK,
            ..quiet()
        },
    )
    .await;
    let local = |f: &Fixture| -> Vec<u64> {
        (0..8)
            .filter(|i| f.local("data/big", i * CHUNK))
            .collect::<Vec<_>>()
    };
    f.read("data/big", 0, 4096, &data).await;
    f.read("data/big", CHUNK, 4096, &data).await;
    // The first step in order: as much ahead as it fetched (one chunk).
    f.settle(3).await;
    assert_eq!(local(&f), [0, 1, 2]);
    f.read("data/big", 2 * CHUNK, 4096, &data).await;
    f.read("data/big", 3 * CHUNK, 4096, &data).await;
    // The next: twice that.
    f.settle(6).await;
    assert_eq!(local(&f), [0, 1, 2, 3, 4, 5]);
    f.read("data/big", 4 * CHUNK, 4096, &data).await;
    f.read("data/big", 5 * CHUNK, 4096, &data).await;
    f.read("data/big", 6 * CHUNK, 4096, &data).await;
    // Then four (the file ends after one).
    f.settle(8).await;
    assert_eq!(local(&f), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        f.asked().0,
        7,
        "4 on demand (0, 1, 3, 6), 3 ahead (2; 4-5; 7)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_chunks_skip_scattered_faults() {
    let (tar, data) = big_file();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            next_chunk_read_ahead: config::NextChunk::Sequential,
            ..quiet()
        },
    )
    .await;
    // A mapped file paged in here and there: each fault costs its own chunk only.
    for i in [5u64, 1, 3, 7] {
        f.read("data/big", i * CHUNK + 100, 4096, &data).await;
    }
    f.settle(4).await;
    assert_eq!(
        f.asked(),
        (4, f.chunk_bytes("data/big", &[1, 3, 5, 7])),
        "one request and one chunk per fault, nothing ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_chunks_always_and_window() {
    let (tar, data) = big_file();
    // `always`: every on-demand fetch brings the chunks after it, here two (window).
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            next_chunk_read_ahead: config::NextChunk::Always,
            next_chunk_window: 2 * CHUNK,
            ..quiet()
        },
    )
    .await;
    f.read("data/big", 5 * CHUNK, 4096, &data).await;
    f.settle(3).await;
    assert!(f.local("data/big", 6 * CHUNK) && f.local("data/big", 7 * CHUNK));
    assert_eq!(f.asked().1, f.chunk_bytes("data/big", &[5, 6, 7]));
    // `off`: nothing ahead, even in order.
    let f = Fixture::new(&tar, quiet()).await;
    f.read("data/big", 0, 4096, &data).await;
    f.read("data/big", CHUNK, 4096, &data).await;
    f.settle(2).await;
    assert_eq!(f.asked(), (2, f.chunk_bytes("data/big", &[0, 1])));
}

/// A directory of small files, each followed in the blob by a file of another directory
/// (so neighbour read-ahead would find nothing), and that other directory.
fn package() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut t = TarBuilder::new();
    let m = Meta::default();
    let mut files = Vec::new();
    for i in 0..10u64 {
        let d = pattern(3000 + i as usize * 100, i + 1);
        t.file(format!("pkg/m{i}.py").as_bytes(), &m, &d);
        t.file(
            format!("other/o{i}").as_bytes(),
            &m,
            &pattern(2000, 100 + i),
        );
        files.push(d);
    }
    (t.finish(), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_read_file_after_file_comes_in_one_request() {
    let (tar, files) = package();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            directory_read_ahead: 1 << 20,
            ..quiet()
        },
    )
    .await;
    f.read("pkg/m0.py", 0, 100, &files[0]).await;
    assert_eq!(f.asked().0, 1, "a first file: nothing else");
    f.read("pkg/m1.py", 0, 100, &files[1]).await;
    // The second file of the directory: the other eight come in one more request.
    f.settle(10).await;
    assert_eq!(f.asked().0, 3);
    for (i, d) in files.iter().enumerate() {
        f.read(&format!("pkg/m{i}.py"), 0, 100, d).await;
    }
    assert_eq!(f.asked().0, 3, "the rest of the package is local");
    assert!(
        !f.local("other/o5", 0),
        "files of other directories are not fetched"
    );
    // Off: one request per file.
    let f = Fixture::new(&tar, quiet()).await;
    for (i, d) in files.iter().enumerate() {
        f.read(&format!("pkg/m{i}.py"), 0, 100, d).await;
    }
    f.settle(10).await;
    assert_eq!(f.asked().0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_read_ahead_stays_within_its_budget() {
    let (tar, files) = package();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            directory_read_ahead: 10 << 10,
            ..quiet()
        },
    )
    .await;
    f.read("pkg/m0.py", 0, 100, &files[0]).await;
    f.read("pkg/m1.py", 0, 100, &files[1]).await;
    f.settle(3).await;
    let (_, bytes) = f.asked();
    let first_two = f.chunk_bytes("pkg/m0.py", &[0]) + f.chunk_bytes("pkg/m1.py", &[0]);
    assert!(bytes > first_two, "some files came ahead");
    assert!(bytes - first_two <= 10 << 10, "{bytes} bytes");
    assert!(f.layer.status().fetched_chunks < 10);
}

/// Little-endian ELF64 shared object of `len` bytes (incompressible filler), loaded at
/// vaddr = file offset: `loads` as (flags, offset, size), a dynamic section at `dynamic`
/// with `tags`, `strings` at `strtab`.
pub(super) fn elf(
    len: usize,
    loads: &[(u32, u64, u64)],
    dynamic: u64,
    tags: &[(u64, u64)],
    strtab: u64,
    strings: &[u8],
) -> Vec<u8> {
    let mut f = pattern(len, len as u64);
    f[..64].fill(0);
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    let n = loads.len() + 1;
    f[56..58].copy_from_slice(&(n as u16).to_le_bytes());
    let dyn_size = (tags.len() as u64 + 1) * 16;
    let headers: Vec<(u32, u32, u64, u64)> = loads
        .iter()
        .map(|&(flags, off, size)| (1u32, flags, off, size))
        .chain(std::iter::once((2u32, 6u32, dynamic, dyn_size)))
        .collect();
    for (i, (kind, flags, off, size)) in headers.iter().enumerate() {
        let b = 64 + i * 56;
        f[b..b + 56].fill(0);
        f[b..b + 4].copy_from_slice(&kind.to_le_bytes());
        f[b + 4..b + 8].copy_from_slice(&flags.to_le_bytes());
        f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
        f[b + 16..b + 24].copy_from_slice(&off.to_le_bytes());
        f[b + 32..b + 40].copy_from_slice(&size.to_le_bytes());
        f[b + 40..b + 48].copy_from_slice(&size.to_le_bytes());
    }
    for (i, (t, v)) in tags.iter().chain(std::iter::once(&(0, 0))).enumerate() {
        let b = dynamic as usize + i * 16;
        f[b..b + 8].copy_from_slice(&t.to_le_bytes());
        f[b + 8..b + 16].copy_from_slice(&v.to_le_bytes());
    }
    f[strtab as usize..strtab as usize + strings.len()].copy_from_slice(strings);
    f
}

/// `bin/app` needs `libbig.so` (runpath `$ORIGIN/../lib`): 16 chunks, whose loader
/// tables are in chunk 0, init code in chunk 9 and writable data (with the dynamic
/// section) in chunk 14; the rest is code.
fn program_and_library() -> (Vec<u8>, Vec<u8>) {
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    const DT_SYMTAB: u64 = 6;
    const DT_RELA: u64 = 7;
    const DT_RELASZ: u64 = 8;
    const DT_STRSZ: u64 = 10;
    const DT_INIT: u64 = 12;
    const DT_RUNPATH: u64 = 29;
    let strings = b"\0libbig.so\0$ORIGIN/../lib\0";
    let app = elf(
        8192,
        &[(5, 0, 8192)],
        0x1000,
        &[
            (DT_NEEDED, 1),
            (DT_RUNPATH, 11),
            (DT_STRTAB, 0x800),
            (DT_STRSZ, strings.len() as u64),
        ],
        0x800,
        strings,
    );
    let c = CHUNK;
    let lib = elf(
        16 * c as usize,
        &[(5, 0, 12 * c), (6, 14 * c, c)],
        14 * c,
        &[
            (DT_STRTAB, 0x1000),
            (DT_STRSZ, 1),
            (DT_SYMTAB, 0x2000),
            (DT_RELA, 0x3000),
            (DT_RELASZ, 0x1000),
            (DT_INIT, 9 * c + 0x100),
        ],
        0x1000,
        b"\0",
    );
    let mut t = TarBuilder::new();
    let m = Meta::default();
    t.file(b"bin/app", &m, &app);
    t.file(b"lib/libbig.so", &m, &lib);
    (t.finish(), app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needed_library_is_read_ahead_as_far_as_the_loader_touches_it() {
    let (tar, app) = program_and_library();
    let f = Fixture::new(&tar, elf_on()).await;
    assert_eq!(
        f.layer
            .index()
            .entry(f.id("lib/libbig.so"))
            .unwrap()
            .chunk_ids()
            .len(),
        16
    );
    f.read("bin/app", 0, 4096, &app).await;
    // The program, then the library's first chunk, then its tables, init and data.
    f.settle(4).await;
    let wanted = [0u32, 9, 14];
    for i in 0..16u32 {
        assert_eq!(
            f.local("lib/libbig.so", u64::from(i) * CHUNK),
            wanted.contains(&i),
            "chunk {i} of the library"
        );
    }
    assert_eq!(
        f.asked().1,
        f.chunk_bytes("bin/app", &[0]) + f.chunk_bytes("lib/libbig.so", &wanted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_extent_reads_the_library_ahead_whole() {
    let (tar, app) = program_and_library();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            elf_read_ahead_extent: config::ElfExtent::Whole,
            ..elf_on()
        },
    )
    .await;
    f.read("bin/app", 0, 4096, &app).await;
    f.settle(17).await;
    assert_eq!(f.layer.status().fetched_chunks, 17);
    let all: Vec<u32> = (0..16).collect();
    assert_eq!(
        f.asked().1,
        f.chunk_bytes("bin/app", &[0]) + f.chunk_bytes("lib/libbig.so", &all)
    );
}

/// A shell entrypoint, its interpreter (through a symlink), programs its commands name and
/// one they do not.
fn script_image() -> (Vec<u8>, Vec<u8>) {
    let script = b"#!/bin/sh\nset -e\n# runs tool with what sed prints\nname=\"$(sed -n p /etc/x)\"\nexec tool \"$name\"\n".to_vec();
    let m = Meta::default();
    let mut t = TarBuilder::new();
    t.file(b"entry.sh", &m, &script);
    t.file(b"usr/bin/dash", &m, &pattern(3 * CHUNK as usize, 1));
    t.link(b"bin/sh", &m, b"/usr/bin/dash", false);
    t.file(b"usr/bin/sed", &m, &pattern(2 * CHUNK as usize, 2));
    t.file(b"usr/local/bin/tool", &m, &pattern(CHUNK as usize / 2, 3));
    t.file(b"usr/bin/unused", &m, &pattern(CHUNK as usize, 4));
    (t.finish(), script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_script_brings_its_interpreter_and_the_programs_it_runs() {
    let (tar, script) = script_image();
    let f = Fixture::new(&tar, elf_on()).await;
    f.read("entry.sh", 0, script.len() as u32, &script).await;
    f.settle(4).await;
    for (path, wanted) in [
        ("usr/bin/dash", true),
        ("usr/bin/sed", true),
        ("usr/local/bin/tool", true),
        ("usr/bin/unused", false),
    ] {
        assert_eq!(f.local(path, 0), wanted, "first chunk of {path}");
    }
    // First chunks only: the rest of a program comes when it runs.
    assert!(!f.local("usr/bin/dash", CHUNK));
    assert_eq!(
        f.asked().1,
        f.chunk_bytes("entry.sh", &[0])
            + f.chunk_bytes("usr/bin/dash", &[0])
            + f.chunk_bytes("usr/bin/sed", &[0])
            + f.chunk_bytes("usr/local/bin/tool", &[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_read_ahead_off_fetches_only_the_script() {
    let (tar, script) = script_image();
    let f = Fixture::new(
        &tar,
        config::FetchConfig {
            script_read_ahead: false,
            ..elf_on()
        },
    )
    .await;
    f.read("entry.sh", 0, script.len() as u32, &script).await;
    f.settle(1).await;
    assert_eq!(f.asked().1, f.chunk_bytes("entry.sh", &[0]));
}
