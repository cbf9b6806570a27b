//! What every lazy layer of one process shares: the registry client, the chunk cache, the
//! tokio runtime that runs fetches, the fetch and FUSE settings, the global bound on
//! background fetches and the link activity background fetch waits out.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use linuxfs::overlay::OpaqueXattr;
use registry::{RegistryClient, RegistryError};

use super::quiet::Activity;
use super::set::{LayerSet, Program};
use crate::cache::{CacheError, CacheOptions, ChunkCache};
use crate::metrics::Metrics;

/// Settings of the layers of one context.
#[derive(Debug, Clone)]
pub struct LayerSettings {
    /// `[fetch]`: prefetch, background fetch, streaming, timeouts.
    pub fetch: config::FetchConfig,
    /// `[fuse]`: kernel cache timeouts, passthrough, threads, access log.
    pub fuse: config::FuseConfig,
    /// The opaque-directory xattr the overlay on top of the mounts expects.
    pub opaque_xattr: OpaqueXattr,
    /// Directory for per-layer status files (`starling status` reads it); `None`: none.
    pub status_dir: Option<PathBuf>,
}

impl LayerSettings {
    /// Settings from the configuration; status files go to `<root>/status`.
    pub fn from_config(config: &config::Config) -> Self {
        LayerSettings {
            fetch: config.fetch.clone(),
            fuse: config.fuse.clone(),
            opaque_xattr: OpaqueXattr::Trusted,
            status_dir: Some(status_dir(&config.root)),
        }
    }
}

/// The status directory under a daemon or mount root.
pub fn status_dir(root: &std::path::Path) -> PathBuf {
    root.join("status")
}

/// Errors building a context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The registry client could not be built.
    #[error("registry client: {0}")]
    Registry(#[from] RegistryError),
    /// The chunk cache could not be opened.
    #[error("chunk cache: {0}")]
    Cache(#[from] CacheError),
}

/// Shared state of all layers of a process. Cheap to clone through `Arc`.
pub struct LayerContext {
    pub(crate) client: RegistryClient,
    pub(crate) cache: ChunkCache,
    pub(crate) runtime: Handle,
    pub(crate) settings: LayerSettings,
    /// Bounds background fetch requests over all layers.
    pub(crate) background: Arc<Semaphore>,
    /// Whether something waits on the link (background fetch waits for quiet).
    pub(crate) activity: Arc<Activity>,
    /// The live layers and their images (for reading ahead across layers).
    pub(crate) layers: LayerSet,
}

impl LayerContext {
    /// A context from the configuration: opens the cache (`[cache]`), builds the registry
    /// client (`[fetch]`, `[registry]`); fetches run on `runtime`. `settings` usually come
    /// from [`LayerSettings::from_config`] (then adjusted, e.g. the opaque xattr).
    pub fn new(
        config: &config::Config,
        settings: LayerSettings,
        runtime: Handle,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ContextError> {
        let client = RegistryClient::new(config, metrics.registry.clone())?;
        let cache = ChunkCache::open(CacheOptions::from_config(config), metrics)?;
        Ok(Self::with_parts(client, cache, runtime, settings))
    }

    /// A context from its parts.
    pub fn with_parts(
        client: RegistryClient,
        cache: ChunkCache,
        runtime: Handle,
        settings: LayerSettings,
    ) -> Arc<Self> {
        let slots = settings.fetch.background_concurrency.max(1);
        let ctx = Arc::new(LayerContext {
            client,
            cache,
            runtime,
            settings,
            background: Arc::new(Semaphore::new(slots)),
            activity: Arc::default(),
            layers: Default::default(),
        });
        let weak = Arc::downgrade(&ctx);
        ctx.runtime
            .spawn(crate::memory::trim_while_fetching(move || {
                let m = weak.upgrade()?.metrics().snapshot();
                Some(m.registry.bytes_fetched + m.disk_hits)
            }));
        ctx
    }

    /// The registry client.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// The runtime fetches run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// The settings.
    pub fn settings(&self) -> &LayerSettings {
        &self.settings
    }

    /// Records that layer `digest` is part of an image whose layers are `layers` (digests,
    /// base first), so reads in one layer can read ahead files of the others.
    pub fn note_image_layers(&self, digest: &str, layers: Vec<String>) {
        self.layers.note_image(digest, layers);
    }

    /// Reads ahead the program an image runs by default (`argv[0]` of its Entrypoint or
    /// Cmd) and what it loads, once every layer of the image whose top layer is `top` is
    /// open (mounted or opened ahead, see [`super::EarlyLayer`]) or `top` is mounted
    /// (`fetch.program_read_ahead`).
    pub fn note_image_program(&self, top: &str, program: Program) {
        if self.settings.fetch.program_read_ahead {
            self.layers.note_program(top, program);
        }
    }

    /// The counters shared by client and cache.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.cache.metrics()
    }
}
