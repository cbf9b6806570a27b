//! A lazily fetched eStargz layer, independent of FUSE: the tree (the TOC's [`LayerIndex`])
//! is there as soon as the layer is opened; file contents are read through the chunk cache
//! and fetched on a miss (see [`read`]); prefetch, background fetch and streaming bring the
//! rest (see [`fetching`] and [`stream`]); [`progress`] tracks what is local.
//!
//! Life cycle: [`RemoteLayer::open`] reads the footer and TOC from the registry
//! ([`LayerHead::fetch`]; also usable ahead of time with [`RemoteLayer::open_head`]), verifies
//! the TOC against the expected digest and saves both in the layer's state directory;
//! [`RemoteLayer::restore`] builds the same layer from that directory without any network
//! access (fetching starts on the first read). [`RemoteLayer::start_fetching`] runs the
//! prefetch and background fetch; [`RemoteLayer::close`] stops them.

mod access;
mod chunks;
mod deps;
mod elf;
mod error;
mod fetching;
mod names;
mod progress;
mod quiet;
mod read;
mod source;
mod state;
mod stream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use estargz::{EntryId, IndexOptions, LayerIndex, OpenOptions};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use deps::{LayerSet, Program};
pub use error::{LayerError, ReadError};
pub use progress::FetchState;
pub(crate) use quiet::Activity;
pub use source::{LayerHead, LayerSource};
pub use state::has_saved_state;

use crate::context::LayerContext;
use crate::registry::{Blob, ChunkFetcher, Priority};
use access::AccessLog;
use progress::Progress;
use stream::StreamGate;

/// Fetches of a TOC that fails verification before the layer is declared unusable.
const TOC_ATTEMPTS: u32 = 3;
/// Most distinct files whose read errors are logged per layer (then one summary line).
const MAX_LOGGED_ERRORS: usize = 1024;

/// A snapshot of a layer's fetch progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStatus {
    /// The layer blob's digest.
    pub digest: String,
    /// `host/repository` it is read from.
    pub repository: String,
    /// What fetching is doing.
    pub state: FetchState,
    /// Compressed bytes of the chunks that are local.
    pub fetched_bytes: u64,
    /// Compressed bytes of all chunks.
    pub total_bytes: u64,
    /// `fetched_bytes` in percent of `total_bytes` (100 for a layer without data).
    pub percent: f64,
    /// Chunks that are local.
    pub fetched_chunks: u64,
    /// All chunks.
    pub chunks: u64,
}

/// One lazily fetched layer. Shared (`Arc`) by its FUSE mount and its fetch tasks.
pub struct RemoteLayer {
    ctx: Arc<LayerContext>,
    source: LayerSource,
    layer: Arc<estargz::Layer>,
    blob: Blob,
    fetcher: ChunkFetcher,
    progress: Progress,
    stream: StreamGate,
    state_dir: PathBuf,
    access: Option<AccessLog>,
    logged: Mutex<HashSet<EntryId>>,
    closed: watch::Sender<bool>,
    fetching: AtomicBool,
    deps: deps::Deps,
}

impl std::fmt::Debug for RemoteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayer")
            .field("digest", &self.source.digest.to_string())
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

fn index_options() -> IndexOptions {
    IndexOptions::default()
}

impl RemoteLayer {
    /// Opens a layer from the registry: fetches the footer and the TOC, checks the TOC
    /// against `source.toc_digest`, builds the index and saves footer and TOC in
    /// `state_dir` (created if needed) for [`RemoteLayer::restore`].
    pub async fn open(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let head = LayerHead::fetch(ctx, &source).await?;
        Self::open_head(ctx, source, head, state_dir).await
    }

    /// [`RemoteLayer::open`] with footer and TOC fetched earlier by [`LayerHead::fetch`]
    /// (e.g. ahead of the layer's Prepare); they are verified here as in `open`.
    pub async fn open_head(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        head: LayerHead,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let digest = source.digest.to_string();
        if !head.is_of(&source) {
            return Err(LayerError::Source(format!(
                "fetched footer and TOC are of {}, not of layer {digest}",
                head.blob.digest()
            )));
        }
        let reg = |e| LayerError::Registry {
            digest: digest.clone(),
            source: e,
        };
        let format = {
            let digest = digest.clone();
            move |e: estargz::Error| LayerError::Format {
                digest: digest.clone(),
                source: e,
            }
        };
        // Prioritized traffic: background fetch of every layer waits while this runs.
        let _busy = ctx.activity.begin();
        let LayerHead {
            blob,
            tail,
            footer,
            toc: fetched_toc,
        } = head;
        let size = blob.size();
        let src = LayerSource {
            size: Some(size),
            ..source
        };
        // A TOC that fails to decode or to match its digest may have been damaged in
        // transit: fetch it again (a few times) before declaring the layer unusable.
        let attempts = if src.toc_digest.is_some() {
            TOC_ATTEMPTS
        } else {
            1
        };
        let mut attempt = 0;
        let layer = loop {
            attempt += 1;
            let toc = if attempt == 1 {
                fetched_toc.clone()
            } else {
                blob.read_range(footer.toc_range(), Priority::OnDemand)
                    .await
                    .map_err(reg)?
            };
            let opts = OpenOptions {
                index: index_options(),
                expected_toc_digest: src.toc_digest,
            };
            let parsed = tokio::task::spawn_blocking(move || {
                estargz::Layer::toc_json(&footer, &toc, &opts).map(|(json, d)| (json, d, toc))
            })
            .await
            .map_err(|e| LayerError::State {
                dir: state_dir.to_path_buf(),
                reason: format!("indexing task failed: {e}"),
            })?;
            match parsed {
                Ok(done) => break done,
                Err(e @ estargz::Error::Toc(_)) if attempt < attempts => {
                    tracing::debug!(layer = %digest, error = %e, attempt, "TOC unusable; fetching it again");
                }
                Err(e) => return Err(format(e)),
            }
        };
        let (json, toc_digest, toc) = layer;
        // Names the TOC lost come from their tar headers (only layers that have such).
        let fixes = names::recover(&blob, &footer, &json, &digest).await?;
        let opts = OpenOptions {
            index: index_options(),
            expected_toc_digest: src.toc_digest,
        };
        let built = {
            let fixes = fixes.clone();
            tokio::task::spawn_blocking(move || {
                estargz::Layer::from_toc_json(footer, &json, toc_digest, &opts, &fixes)
            })
        };
        let layer = built
            .await
            .map_err(|e| LayerError::State {
                dir: state_dir.to_path_buf(),
                reason: format!("indexing task failed: {e}"),
            })?
            .map_err(format)?;
        let (dir, saved_src) = (state_dir.to_path_buf(), src.clone());
        tokio::task::spawn_blocking(move || {
            state::save(&dir, &saved_src, size, &tail, &toc, &toc_digest, &fixes)
        })
        .await
        .map_err(|e| LayerError::State {
            dir: state_dir.to_path_buf(),
            reason: format!("state task failed: {e}"),
        })??;
        Self::build(ctx, src, layer, blob, state_dir).await
    }

    /// Builds the layer saved in `state_dir` by an earlier [`RemoteLayer::open`], without
    /// network access (the registry is first contacted by a read or by fetching).
    pub async fn restore(
        ctx: &Arc<LayerContext>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let dir = state_dir.to_path_buf();
        let (saved, layer) = tokio::task::spawn_blocking(move || {
            let saved = state::load(&dir)?;
            let opts = OpenOptions {
                index: index_options(),
                expected_toc_digest: saved.source.toc_digest,
            };
            let bad = |e: estargz::Error| LayerError::State {
                dir: dir.clone(),
                reason: format!("saved TOC: {e}"),
            };
            let (json, toc_digest) =
                estargz::Layer::toc_json(&saved.footer, &saved.toc, &opts).map_err(bad)?;
            let layer =
                estargz::Layer::from_toc_json(saved.footer, &json, toc_digest, &opts, &saved.names)
                    .map_err(bad)?;
            Ok::<_, LayerError>((saved, layer))
        })
        .await
        .map_err(|e| LayerError::State {
            dir: state_dir.to_path_buf(),
            reason: format!("indexing task failed: {e}"),
        })??;
        let blob = ctx
            .client
            .blob(
                &saved.source.repository,
                &saved.source.digest,
                Some(saved.size),
            )
            .await
            .map_err(|e| LayerError::Registry {
                digest: saved.source.digest.to_string(),
                source: e,
            })?;
        Self::build(ctx, saved.source, layer, blob, state_dir).await
    }

    async fn build(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        layer: estargz::Layer,
        blob: Blob,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let layer = Arc::new(layer);
        let fetcher = ChunkFetcher::new(
            blob.clone(),
            ctx.cache.clone(),
            Arc::new(chunks::LayerDecoder {
                index: layer.clone(),
            }),
        );
        let access = if ctx.settings.fuse.access_log {
            Some(
                AccessLog::create(state_dir, &layer.index).map_err(|e| LayerError::State {
                    dir: state_dir.to_path_buf(),
                    reason: format!("access log: {e}"),
                })?,
            )
        } else {
            None
        };
        let progress = Progress::new(&layer.index);
        let (closed, _) = watch::channel(false);
        let this = Arc::new(RemoteLayer {
            ctx: ctx.clone(),
            source,
            layer,
            blob,
            fetcher,
            progress,
            stream: StreamGate::default(),
            state_dir: state_dir.to_path_buf(),
            access,
            logged: Mutex::new(HashSet::new()),
            closed,
            fetching: AtomicBool::new(false),
            deps: deps::Deps::default(),
        });
        ctx.layers.register(&this);
        // Chunks already in the cache (an earlier mount, another layer with the same files).
        let scan = this.clone();
        tokio::task::spawn_blocking(move || scan.scan_cache())
            .await
            .map_err(|e| LayerError::State {
                dir: state_dir.to_path_buf(),
                reason: format!("cache scan failed: {e}"),
            })?;
        Ok(this)
    }

    /// Marks the chunks found in the cache as local.
    fn scan_cache(&self) {
        let index = &self.layer.index;
        for c in index.chunks_in_blob_order() {
            if let Some(k) = chunks::key_of(&c) {
                if self.ctx.cache.contains(&k) {
                    self.progress.mark(index, c.id);
                }
            }
        }
    }

    /// The layer's tree and chunks.
    pub fn index(&self) -> &LayerIndex {
        &self.layer.index
    }

    /// Where it comes from.
    pub fn source(&self) -> &LayerSource {
        &self.source
    }

    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The verified TOC digest.
    pub fn toc_digest(&self) -> estargz::Sha256Digest {
        self.layer.toc_digest
    }

    /// The context it belongs to.
    pub fn context(&self) -> &Arc<LayerContext> {
        &self.ctx
    }

    /// Current fetch progress.
    pub fn status(&self) -> LayerStatus {
        let p = &self.progress;
        let (fetched, total) = (p.fetched_bytes(), p.total_bytes());
        LayerStatus {
            digest: self.source.digest.to_string(),
            repository: self.source.repository.to_string(),
            state: p.state(),
            fetched_bytes: fetched,
            total_bytes: total,
            percent: if total == 0 {
                100.0
            } else {
                (fetched as f64 * 100.0 / total as f64).min(100.0)
            },
            fetched_chunks: p.fetched_chunks(),
            chunks: p.chunks() as u64,
        }
    }

    /// The files read so far, in first-read order, when the access log is on (`[fuse]
    /// access_log`); they are also in `access.log` of the state directory.
    pub fn accessed_files(&self) -> Option<Vec<Vec<u8>>> {
        self.access.as_ref().map(|a| a.files())
    }

    /// Stops prefetch, background fetch and streaming (reads still work). Idempotent.
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.stream.wake_all();
    }

    /// True once [`RemoteLayer::close`] was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Logs a read failure once per file.
    fn log_read_error(&self, id: EntryId, err: &ReadError) {
        let first = {
            let mut l = self.logged.lock();
            if l.len() > MAX_LOGGED_ERRORS {
                false
            } else {
                l.insert(id)
            }
        };
        if !first {
            return;
        }
        let path = String::from_utf8_lossy(&self.layer.index.path_of(id)).into_owned();
        if self.logged.lock().len() > MAX_LOGGED_ERRORS {
            tracing::warn!(layer = %self.source.digest, "too many files failing to read; not logging more");
        } else {
            tracing::warn!(layer = %self.source.digest, path = %format!("/{path}"), error = %err, "read failed (EIO)");
        }
    }

    fn fetching_started(&self) -> bool {
        self.fetching.swap(true, Ordering::SeqCst)
    }
}

impl Drop for RemoteLayer {
    fn drop(&mut self) {
        self.closed.send_replace(true);
    }
}
