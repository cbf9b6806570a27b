//! The image's program read ahead before its layer's Prepare (`early`): two in-memory
//! layers of one image, the program in the top one and the library it needs in the base.

use std::sync::Arc;
use std::time::Duration;

use estargz::testutil::{Meta, TarBuilder};
use estargz::{EntryId, LayerIndex, Sha256Digest};

use super::chunks::key_of;
use super::tests::{elf, elf_on, memory_blob, memory_context, CHUNK};
use super::*;
use crate::fetch::MemoryBlob;

/// An eStargz blob of `tar` and its source (no TOC digest required).
fn blob(tar: &[u8]) -> (Arc<MemoryBlob>, LayerSource) {
    let (blob, digest) = memory_blob(tar);
    let source = LayerSource::new("memory/image", &digest, None, None).unwrap();
    (blob, source)
}

/// Base: `lib/libbig.so`, 16 chunks whose loader tables are in chunk 0, init code in chunk
/// 9 and writable data in chunk 14. Top: `bin/app`, needing it (runpath `$ORIGIN/../lib`).
fn image() -> (Vec<u8>, Vec<u8>) {
    let strings = b"\0libbig.so\0$ORIGIN/../lib\0";
    let app = elf(
        8192,
        &[(5, 0, 8192)],
        0x1000,
        &[(1, 1), (29, 11), (5, 0x800), (10, strings.len() as u64)],
        0x800,
        strings,
    );
    let c = CHUNK;
    let lib = elf(
        16 * c as usize,
        &[(5, 0, 12 * c), (6, 14 * c, c)],
        14 * c,
        &[
            (5, 0x1000),
            (10, 1),
            (6, 0x2000),
            (7, 0x3000),
            (8, 0x1000),
            (12, 9 * c + 0x100),
        ],
        0x1000,
        b"\0",
    );
    let m = Meta::default();
    let mut base = TarBuilder::new();
    base.file(b"lib/libbig.so", &m, &lib);
    let mut top = TarBuilder::new();
    top.file(b"bin/app", &m, &app);
    (base.finish(), top.finish())
}

fn context(dir: &std::path::Path) -> Arc<LayerContext> {
    memory_context(
        dir,
        config::FetchConfig {
            program_read_ahead: true,
            ..elf_on()
        },
    )
}

/// True when chunks `chunks` of file `path` of `index` are in the cache.
fn cached(ctx: &LayerContext, index: &LayerIndex, path: &str, chunks: &[u32]) -> bool {
    let id: EntryId = index.resolve(path.as_bytes()).unwrap();
    let first = index.entry(id).unwrap().chunk_ids().start;
    chunks.iter().all(|&i| {
        let key = key_of(&index.chunk(first + i).unwrap()).unwrap();
        ctx.cache().contains(&key)
    })
}

/// Waits (bounded) for `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_is_fetched_before_its_layer_is_prepared_and_not_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (base_tar, top_tar) = image();
    let (base_blob, base_src) = blob(&base_tar);
    let (top_blob, top_src) = blob(&top_tar);
    let layers = vec![base_src.digest.to_string(), top_src.digest.to_string()];
    ctx.note_image_layers(base_src.digest.as_ref(), layers);
    let program = Program {
        argv0: "app".into(),
        path: "/usr/bin:/bin".into(),
        cwd: "/".into(),
    };
    ctx.note_image_program(top_src.digest.as_ref(), program);

    // The top layer opened ahead first: its image's view is not whole (the base is not
    // open), so the program waits (read ahead now, its library would not be found).
    let early = RemoteLayer::open_early_from_source(&ctx, top_src.clone(), top_blob.clone())
        .await
        .unwrap();
    let opened_top = top_blob.counts();
    // The base's Prepare opens it: the view is whole, the program and then the part of the
    // library the loader touches are fetched, all before the top layer's Prepare.
    let base = RemoteLayer::from_source(&ctx, base_src, base_blob, &dir.path().join("base"))
        .await
        .unwrap();
    let top_index = early.index();
    until("program and library read ahead", || {
        cached(&ctx, top_index, "bin/app", &[0])
            && cached(&ctx, base.index(), "lib/libbig.so", &[0, 9, 14])
    })
    .await;
    assert!(!cached(&ctx, base.index(), "lib/libbig.so", &[1]));
    let before = top_blob.counts();
    assert_eq!(
        before.range_requests,
        opened_top.range_requests + 1,
        "one request for the program"
    );

    // The top layer's Prepare: the early layer fits its TOC digest and is taken over.
    let required = LayerSource {
        toc_digest: Some(early.toc_digest()),
        ..top_src.clone()
    };
    let wrong = LayerSource {
        toc_digest: Some(Sha256Digest([7; 32])),
        ..top_src.clone()
    };
    assert!(early.fits(&required) && early.fits(&top_src) && !early.fits(&wrong));
    let state = dir.path().join("top");
    let top = RemoteLayer::adopt(early, &required, &state).await.unwrap();
    top.start_fetching();
    let id = top.index().resolve(b"bin/app").unwrap();
    assert!(top.read_cached(id, 0, 8192).unwrap().is_some(), "local");
    let _ = tokio::time::timeout(Duration::from_secs(30), top.fetcher().wait_idle()).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), base.fetcher().wait_idle()).await;
    until("read-ahead settled", || !top.read_ahead_busy()).await;
    assert_eq!(
        top_blob.counts(),
        before,
        "no TOC fetch, no program fetch after the Prepare"
    );
    assert_eq!(
        top.status().fetched_chunks,
        1,
        "the program's chunk counts as local"
    );
    // Its state was saved: a restart restores it without the registry.
    let restored = RemoteLayer::restore(&ctx, &state).await.unwrap();
    assert_eq!(restored.toc_digest(), top.toc_digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_opened_ahead_that_does_not_fit_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (_, top_tar) = image();
    let (top_blob, top_src) = blob(&top_tar);
    let wrong = LayerSource {
        toc_digest: Some(Sha256Digest([7; 32])),
        ..top_src.clone()
    };
    // A TOC digest known ahead (the manifest's annotation) is checked at once.
    let e = RemoteLayer::open_early_from_source(&ctx, wrong.clone(), top_blob.clone())
        .await
        .unwrap_err();
    assert!(e.is_not_estargz(), "{e}");
    // Without it, the Prepare's label is checked when the layer is taken over.
    let early = RemoteLayer::open_early_from_source(&ctx, top_src, top_blob)
        .await
        .unwrap();
    let state = dir.path().join("top");
    let e = RemoteLayer::adopt(early, &wrong, &state).await.unwrap_err();
    assert!(e.to_string().contains("opened ahead"), "{e}");
    assert!(
        !has_saved_state(&state),
        "nothing saved for a layer that does not fit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_opened_ahead_does_not_displace_a_mounted_one() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (base_tar, _) = image();
    let (blob, src) = blob(&base_tar);
    let digest = src.digest.to_string();
    let mounted = RemoteLayer::from_source(&ctx, src.clone(), blob.clone(), &dir.path().join("a"))
        .await
        .unwrap();
    mounted.start_fetching();
    // Another image's pull opens the same blob ahead, and its Prepare never comes.
    let early = RemoteLayer::open_early_from_source(&ctx, src.clone(), blob.clone())
        .await
        .unwrap();
    drop(early);
    assert!(ctx.layers.is_live(&digest), "the mounted layer stays known");
    drop(mounted);
}
