//! Fixtures for the lazy-layer tests: eStargz layers built from test tars and pushed to a
//! real docker-registry (and opened), test tars of pattern files, the tests' runtime, layer
//! contexts over a temporary cache, and a tree walker that
//! turns a mounted directory into an `estargz::testutil::Manifest` to compare with the
//! tree the tar describes.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use estargz::testutil::{pattern, Manifest, Meta, Node, TarBuilder};
use estargz::{BuildOptions, BuildOutput, Sha256Digest};
use fusefs::cache::{CacheOptions, ChunkCache};
use fusefs::layer::{LayerContext, LayerSettings, OpaqueXattr};
use fusefs::layer::{LayerSource, RemoteLayer};
use fusefs::metrics::Metrics;
use registry::{RegistryClient, Repository};

use crate::common;

/// A built layer blob.
pub struct BuiltLayer {
    pub blob: Bytes,
    pub out: BuildOutput,
}

/// Builds an eStargz (or other format) blob from a tar.
pub fn build(tar: &[u8], opts: &BuildOptions) -> BuiltLayer {
    let mut blob = Vec::new();
    let out = estargz::build(tar, &mut blob, opts).expect("build layer");
    BuiltLayer {
        blob: Bytes::from(blob),
        out,
    }
}

/// Pushes `layer` to `repo`; returns its source (with size and TOC digest).
pub async fn push(client: &RegistryClient, repo: &Repository, layer: &BuiltLayer) -> LayerSource {
    let d = common::push(client, repo, &layer.blob).await;
    LayerSource {
        repository: repo.clone(),
        digest: d,
        size: Some(layer.blob.len() as u64),
        toc_digest: Some(layer.out.toc_digest),
    }
}

/// Pushes `layer` to `repo` and opens it with its state directory at `state`.
pub fn push_and_open(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<LayerContext>,
    repo: &Repository,
    layer: &BuiltLayer,
    state: &Path,
) -> Arc<RemoteLayer> {
    rt.block_on(async {
        let source = push(ctx.client(), repo, layer).await;
        RemoteLayer::open(ctx, source, state).await.unwrap()
    })
}

/// Pushes `layer` to `repo` and makes the mountpoint `<dir>/mnt`: (source, mountpoint).
pub fn push_for_mount(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<LayerContext>,
    repo: &Repository,
    layer: &BuiltLayer,
    dir: &Path,
) -> (LayerSource, PathBuf) {
    let source = rt.block_on(push(ctx.client(), repo, layer));
    let mp = dir.join("mnt");
    std::fs::create_dir(&mp).unwrap();
    (source, mp)
}

/// The runtime the lazy-layer tests drive layers and mounts with (two workers).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tar of `n` regular files: file `i` is named `name(i)` and holds `pattern(size, i)`.
pub fn pattern_files_tar(n: u64, size: usize, name: impl Fn(u64) -> String) -> Vec<u8> {
    let mut t = TarBuilder::new();
    for i in 0..n {
        t.file(name(i).as_bytes(), &Meta::default(), &pattern(size, i));
    }
    t.finish()
}

/// Layer settings for tests: fast timeouts, prefetch/background as given.
pub fn settings(
    fetch: config::FetchConfig,
    passthrough: bool,
    status_dir: Option<&Path>,
) -> LayerSettings {
    LayerSettings {
        fetch,
        fuse: config::FuseConfig {
            passthrough,
            threads: 2,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        opaque_xattr: OpaqueXattr::Trusted,
        status_dir: status_dir.map(Path::to_path_buf),
    }
}

/// [`context`] on `rt` with `fetch`, no passthrough and no status files.
pub fn fetch_context(
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    registry_dir: &Path,
    fetch: config::FetchConfig,
) -> (Arc<LayerContext>, Arc<Metrics>) {
    context(
        dir,
        rt.handle().clone(),
        registry_dir,
        settings(fetch, false, None),
    )
}

/// A context over a fresh cache in `dir`.
pub fn context(
    dir: &Path,
    runtime: tokio::runtime::Handle,
    registry_dir: &Path,
    settings: LayerSettings,
) -> (Arc<LayerContext>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let client = RegistryClient::with_settings(
        &settings.fetch,
        &common::registry_config(registry_dir),
        metrics.registry.clone(),
    )
    .unwrap();
    let cache = ChunkCache::open(
        CacheOptions {
            dir: dir.join("cache"),
            max_size: 0,
            memory_size: 1 << 20,
            read_mode: fusefs::cache::DEFAULT_READ_MODE,
        },
        metrics.clone(),
    )
    .unwrap();
    (
        LayerContext::with_parts(client, cache, runtime, settings),
        metrics,
    )
}

/// No prefetch, no background fetch, no streaming: only what is read is fetched.
pub fn on_demand_only(fetch: config::FetchConfig) -> config::FetchConfig {
    config::FetchConfig {
        prefetch: false,
        background_fetch: false,
        stream_threshold: 1.0,
        ..fetch
    }
}

/// True when FUSE mounts can be made here (root and /dev/fuse); prints why not, and panics
/// when `STARLING_REQUIRE_INTEGRATION=1`.
pub fn fuse_available() -> bool {
    let why = if !nix_is_root() {
        Some("not root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            if std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
                panic!(
                    "FUSE tests need root and /dev/fuse ({w}) and STARLING_REQUIRE_INTEGRATION=1"
                );
            }
            eprintln!("SKIP: FUSE tests need root and /dev/fuse ({w})");
            false
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

/// The tree under `root` as a manifest (overlay conventions: 0/0 char devices are
/// whiteouts, `trusted.overlay.opaque=y` marks opaque directories).
pub fn manifest_from_dir(root: &Path) -> Manifest {
    let mut nodes = BTreeMap::new();
    let mut by_ino: HashMap<u64, BTreeSet<Vec<u8>>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((path, rel)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let mut xattrs = xattrs_of(&path);
        let opaque = xattrs
            .remove(b"trusted.overlay.opaque".as_slice())
            .is_some();
        let (mut kind, mut digest, mut link, mut rdev, mut size) =
            ('?', None, Vec::new(), (0, 0), 0);
        if ft.is_dir() {
            kind = 'd';
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), r));
            }
        } else if ft.is_file() {
            kind = 'f';
            let data = std::fs::read(&path).unwrap();
            size = data.len() as u64;
            digest = Some(Sha256Digest::of(&data));
            if md.nlink() > 1 {
                by_ino.entry(md.ino()).or_default().insert(rel.clone());
            }
        } else if ft.is_symlink() {
            kind = 'l';
            link = std::fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            size = link.len() as u64;
        } else if ft.is_char_device() || ft.is_block_device() {
            let (ma, mi) = (libc::major(md.rdev()), libc::minor(md.rdev()));
            kind = if ft.is_char_device() {
                if (ma, mi) == (0, 0) {
                    'w'
                } else {
                    'c'
                }
            } else {
                'b'
            };
            rdev = if kind == 'w' { (0, 0) } else { (ma, mi) };
        } else if ft.is_fifo() {
            kind = 'p';
        }
        nodes.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: Some((md.mtime(), md.mtime_nsec() as u32)),
                digest,
                size,
                link,
                rdev,
                xattrs,
                opaque,
            },
        );
    }
    Manifest {
        nodes,
        hardlinks: by_ino.into_values().filter(|s| s.len() > 1).collect(),
    }
}
