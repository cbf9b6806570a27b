//! What `starling prefetch` and `starling cache export` share: the node's configuration
//! (file, `--root`, `--plain-http`), a layer context on the node's chunk cache, and an
//! image's eStargz layers opened from the registry (footer and TOC only, state in a
//! temporary directory under the root; nothing is mounted).
//!
//! These commands run as their own process next to a running daemon: the chunk cache is
//! safe to share (per-process temp files, entries written by one process found by the
//! others, each keeping the cap; see `fusefs::cache`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use config::Config;
use fusefs::layer::{LayerContext, LayerSettings, LayerSource, RemoteLayer};
use fusefs::metrics::Metrics;

/// Where the node's settings come from.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Configuration file (TOML) [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory whose chunk cache is used (unless `cache.dir` is set)
    /// [default: the configuration's `root`].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Reach the image's registry over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
}

/// The configuration with `args` applied; `references` are the images whose hosts
/// `--plain-http` applies to.
pub fn load_config(args: &NodeArgs, references: &[String]) -> anyhow::Result<Config> {
    super::settings::for_node(
        args.config.as_deref(),
        args.root.as_deref(),
        args.plain_http,
        references,
    )
}

/// A runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("starling-cli")
        .build()
        .context("start tokio runtime")
}

/// A layer context on the node's cache (no prefetch, background fetch or read-ahead:
/// only what the command asks for is fetched).
pub fn context(cfg: &Config, rt: &tokio::runtime::Runtime) -> anyhow::Result<Arc<LayerContext>> {
    let mut settings = LayerSettings::from_config(cfg);
    settings.fetch.prefetch = false;
    settings.fetch.background_fetch = false;
    settings.fetch.program_read_ahead = false;
    settings.fetch.elf_read_ahead = false;
    settings.fuse.access_log = false;
    settings.status_dir = None;
    LayerContext::new(
        cfg,
        settings,
        rt.handle().clone(),
        Arc::new(Metrics::default()),
    )
    .with_context(|| format!("open the chunk cache in {}", cfg.cache_dir().display()))
}

/// The eStargz layers of one image, opened (bottom first), and the layers left out.
pub struct ImageLayers {
    /// Opened layers.
    pub layers: Vec<Arc<RemoteLayer>>,
    /// Position of each opened layer in the image (1 = bottom, counting every layer).
    pub numbers: Vec<usize>,
    /// Layers without a TOC digest annotation (not eStargz): `(digest, size)`.
    pub not_lazy: Vec<(String, u64)>,
    _state: tempfile::TempDir,
}

/// Resolves `reference` (an index to this host's platform) and opens each layer that has a
/// TOC digest annotation: footer and TOC are fetched and verified, state goes to a
/// temporary directory under the root (removed when the result is dropped).
pub async fn open_image(
    ctx: &Arc<LayerContext>,
    cfg: &Config,
    reference: &str,
) -> anyhow::Result<ImageLayers> {
    let parsed: registry::Reference = reference
        .parse()
        .with_context(|| format!("reference {reference}"))?;
    let image = ctx
        .client()
        .resolve(&parsed)
        .await
        .with_context(|| format!("resolve {reference}"))?;
    std::fs::create_dir_all(&cfg.root).with_context(|| format!("create {}", cfg.root.display()))?;
    let state = tempfile::Builder::new()
        .prefix(".cli-layers-")
        .tempdir_in(&cfg.root)
        .with_context(|| format!("temporary directory in {}", cfg.root.display()))?;
    let mut layers = Vec::new();
    let mut numbers = Vec::new();
    let mut not_lazy = Vec::new();
    for (i, desc) in image.layers().iter().enumerate() {
        let digest = desc.digest().to_string();
        let toc = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(estargz::toc::TOC_DIGEST_ANNOTATION));
        let Some(toc) = toc else {
            not_lazy.push((digest, desc.size()));
            continue;
        };
        let source = LayerSource::new(reference, &digest, Some(desc.size()), Some(toc))?;
        let layer = RemoteLayer::open(ctx, source, &state.path().join(i.to_string()))
            .await
            .with_context(|| format!("open layer {digest} of {reference}"))?;
        layers.push(layer);
        numbers.push(i + 1);
    }
    if layers.is_empty() {
        bail!(
            "{reference} has no eStargz layers (no {} annotation on any layer)",
            estargz::toc::TOC_DIGEST_ANNOTATION
        );
    }
    Ok(ImageLayers {
        layers,
        numbers,
        not_lazy,
        _state: state,
    })
}

/// `n` bytes for people.
pub use rpull::progress::human_bytes as human;

/// Writes what a command put into the chunk cache in `dir` to disk before it returns
/// (`syncfs`): a node is warmed to start containers later, and the write-back of a
/// just-filled cache (164 MB for pydeb) slowed the next container start by half.
pub fn flush_cache(dir: &std::path::Path) -> anyhow::Result<()> {
    let d = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    nix::unistd::syncfs(&d).with_context(|| format!("flush the chunk cache in {}", dir.display()))
}
