//! [`RemoteLayer`]: one lazily fetched layer as its users see it (the FUSE adapter, the
//! mount manager, the daemon's lazy-layer hook, the image optimizer), built from three parts
//! over one [`LayerCore`]: its read path ([`ReadPath`]), its fetch scheduling
//! ([`FetchSchedule`]: prefetch, background fetch, streams, progress) and its read-ahead
//! ([`ReadAhead`]).
//!
//! Life cycle: [`RemoteLayer::open`] reads the footer and TOC from the registry
//! ([`LayerHead::fetch`]; also usable ahead of time with [`RemoteLayer::open_head`]), verifies
//! the TOC against the expected digest and saves both in the layer's state directory;
//! [`RemoteLayer::restore`] builds the same layer from that directory without any network
//! access (fetching starts on the first read); [`RemoteLayer::from_source`] opens a layer
//! from any [`BlobSource`] (tests: an in-memory blob). [`RemoteLayer::start_fetching`] runs
//! the prefetch and background fetch; [`RemoteLayer::close`] stops them.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use estargz::lost_names::NameFixes;
use estargz::{EntryId, IndexOptions, LayerIndex, OpenOptions};
use registry::Priority;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::access::AccessLog;
use super::ahead::ReadAhead;
use super::chunks::LayerDecoder;
use super::context::LayerContext;
use super::core::LayerCore;
use super::error::{LayerError, ReadError};
use super::gate::StreamGate;
use super::names;
use super::progress::{FetchState, Progress};
use super::read::ReadPath;
use super::schedule::{FetchSchedule, Prefetch};
use super::source::{LayerHead, LayerSource};
use super::state;
use crate::cache::ChunkKey;
use crate::fetch::{BlobSource, ChunkFetcher};

/// Fetches of a TOC that fails verification before the layer is declared unusable.
const TOC_ATTEMPTS: u32 = 3;

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

/// One lazily fetched layer. Shared (`Arc`) by its FUSE mount and its users; its fetch
/// tasks hold its parts, and dropping the layer closes it.
pub struct RemoteLayer {
    core: Arc<LayerCore>,
    reads: ReadPath,
    schedule: Arc<FetchSchedule>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for RemoteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayer")
            .field("digest", &self.core.source.digest.to_string())
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

fn index_options() -> IndexOptions {
    IndexOptions::default()
}

/// A layer's footer and TOC verified and indexed, not saved yet.
pub(super) struct Opened {
    pub(super) source: LayerSource,
    pub(super) layer: estargz::Layer,
    pub(super) blob: Arc<dyn BlobSource>,
    pub(super) state: Unsaved,
}

/// What [`state::save`] keeps of an opened layer.
pub(super) struct Unsaved {
    source: LayerSource,
    size: u64,
    /// The blob's last bytes holding the footer.
    tail: Bytes,
    /// The compressed TOC.
    toc: Bytes,
    toc_digest: estargz::Sha256Digest,
    fixes: NameFixes,
}

impl Opened {
    /// Checks `head` against `source` (and its TOC against `source.toc_digest`, when
    /// given) and builds the index. `state_dir` only names the layer in errors.
    pub(super) async fn index(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        head: LayerHead,
        state_dir: &Path,
    ) -> Result<Self, LayerError> {
        let digest = source.digest.to_string();
        if !head.is_of(&source) {
            return Err(LayerError::Source(format!(
                "fetched footer and TOC are of {}, not of layer {digest}",
                head.digest
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
            ..
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
        let parsed = loop {
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
        let (json, toc_digest, toc) = parsed;
        // Names the TOC lost come from their tar headers (only layers that have such).
        let fixes = names::recover(blob.as_ref(), &footer, &json, &digest).await?;
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
        Ok(Opened {
            state: Unsaved {
                source: src.clone(),
                size,
                tail,
                toc,
                toc_digest,
                fixes,
            },
            source: src,
            layer,
            blob,
        })
    }
}

impl Unsaved {
    /// Saves footer and TOC in `state_dir` (created if needed) for
    /// [`RemoteLayer::restore`].
    pub(super) async fn save(self, state_dir: &Path) -> Result<(), LayerError> {
        let dir = state_dir.to_path_buf();
        let Unsaved {
            source,
            size,
            tail,
            toc,
            toc_digest,
            fixes,
        } = self;
        tokio::task::spawn_blocking(move || {
            state::save(&dir, &source, size, &tail, &toc, &toc_digest, &fixes)
        })
        .await
        .map_err(|e| LayerError::State {
            dir: state_dir.to_path_buf(),
            reason: format!("state task failed: {e}"),
        })?
    }
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
        let opened = Opened::index(ctx, source, head, state_dir).await?;
        opened.state.save(state_dir).await?;
        Self::build(ctx, opened.source, opened.layer, opened.blob, state_dir).await
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
        let blob: Arc<dyn BlobSource> = Arc::new(blob);
        Self::build(ctx, saved.source, layer, blob, state_dir).await
    }

    /// Opens a layer whose blob is read through `blob` (any [`BlobSource`]: the registry,
    /// or an in-memory blob in tests): reads footer and TOC from it, then as
    /// [`RemoteLayer::open_head`].
    pub async fn from_source(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        blob: Arc<dyn BlobSource>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let head = LayerHead::read(&source, blob).await?;
        Self::open_head(ctx, source, head, state_dir).await
    }

    async fn build(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        layer: estargz::Layer,
        blob: Arc<dyn BlobSource>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let (core, ahead) = Self::core_of(ctx, source, layer, blob).await?;
        Self::assemble(core, ahead, state_dir)
    }

    /// The shared state and read-ahead of a layer, with the chunks already in the cache
    /// (an earlier mount, another layer with the same files) marked local; registered in
    /// the context's [`super::LayerSet`] so read-ahead in the image's other layers finds
    /// its files.
    pub(super) async fn core_of(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        layer: estargz::Layer,
        blob: Arc<dyn BlobSource>,
    ) -> Result<(Arc<LayerCore>, Arc<ReadAhead>), LayerError> {
        let layer = Arc::new(layer);
        let fetcher = ChunkFetcher::new(
            blob,
            ctx.cache.clone(),
            Arc::new(LayerDecoder {
                index: layer.clone(),
            }),
            &ctx.settings.fetch,
        );
        let progress = Progress::new(&layer.index);
        let (closed, _) = watch::channel(false);
        let core = Arc::new(LayerCore {
            ctx: ctx.clone(),
            source,
            layer,
            fetcher,
            progress,
            gate: StreamGate::default(),
            closed,
            fetching: AtomicBool::new(false),
        });
        let scanned = core.clone();
        tokio::task::spawn_blocking(move || scanned.scan_cache())
            .await
            .map_err(|e| LayerError::State {
                dir: Default::default(),
                reason: format!("cache scan failed: {e}"),
            })?;
        let ahead = ReadAhead::new(core.clone());
        ctx.layers.register(ahead.clone());
        Ok((core, ahead))
    }

    /// The layer over `core` and `ahead`, its state in `state_dir`.
    pub(super) fn assemble(
        core: Arc<LayerCore>,
        ahead: Arc<ReadAhead>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        let access = if core.ctx.settings.fuse.access_log {
            Some(
                AccessLog::create(state_dir, core.index()).map_err(|e| LayerError::State {
                    dir: state_dir.to_path_buf(),
                    reason: format!("access log: {e}"),
                })?,
            )
        } else {
            None
        };
        Ok(Arc::new(RemoteLayer {
            reads: ReadPath::new(core.clone(), ahead.clone(), access),
            schedule: FetchSchedule::new(core.clone(), ahead),
            core,
            state_dir: state_dir.to_path_buf(),
        }))
    }

    /// The layer's tree and chunks.
    pub fn index(&self) -> &LayerIndex {
        self.core.index()
    }

    /// Where it comes from.
    pub fn source(&self) -> &LayerSource {
        &self.core.source
    }

    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The verified TOC digest.
    pub fn toc_digest(&self) -> estargz::Sha256Digest {
        self.core.layer.toc_digest
    }

    /// The context it belongs to.
    pub fn context(&self) -> &Arc<LayerContext> {
        &self.core.ctx
    }

    /// The fetch layer of its blob.
    pub fn fetcher(&self) -> &ChunkFetcher {
        &self.core.fetcher
    }

    /// True while read-ahead tasks are under way (tests wait for them to settle).
    #[cfg(test)]
    pub(crate) fn read_ahead_busy(&self) -> bool {
        self.reads.ahead().is_busy()
    }

    /// Current fetch progress.
    pub fn status(&self) -> LayerStatus {
        let core = &self.core;
        let p = &core.progress;
        let (fetched, total) = (p.fetched_bytes(), p.total_bytes());
        LayerStatus {
            digest: core.source.digest.to_string(),
            repository: core.source.repository.to_string(),
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

    /// Starts prefetch and background fetch as configured (`[fetch] prefetch`,
    /// `background_fetch`) on the context's runtime; returns a handle on the prefetch.
    /// When it returns, reads of the prefetched region already wait for the prefetch.
    /// Later calls start nothing.
    pub fn start_fetching(&self) -> Prefetch {
        self.schedule.start_fetching()
    }

    /// Reads `[offset, offset + size)` of file `id` (short at the end of the file),
    /// fetching what is not local. Fails within `fetch.read_timeout`; a failure is logged
    /// once per file.
    pub async fn read(&self, id: EntryId, offset: u64, size: u32) -> Result<Vec<u8>, ReadError> {
        self.reads.read(id, offset, size).await
    }

    /// Reads `[offset, offset + size)` of file `id` from local chunks only: `Ok(None)` if
    /// some chunk is not local. Never touches the network.
    pub fn read_cached(
        &self,
        id: EntryId,
        offset: u64,
        size: u32,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        self.reads.read_cached(id, offset, size)
    }

    /// The read path, for the FUSE adapter (reads into reused buffers).
    pub(crate) fn reads(&self) -> &ReadPath {
        &self.reads
    }

    /// Notes a read of file `id` for the access log.
    pub(crate) fn note_read(&self, id: EntryId) {
        self.reads.note_read(id)
    }

    /// The key of the cache entry holding the whole contents of file `id` if it is local
    /// as one entry (a single-chunk file), for passthrough opens.
    pub fn whole_file_key(&self, id: EntryId) -> Option<ChunkKey> {
        self.reads.whole_file_key(id)
    }

    /// The files read so far, in first-read order, when the access log is on (`[fuse]
    /// access_log`); they are also in `access.log` of the state directory.
    pub fn accessed_files(&self) -> Option<Vec<Vec<u8>>> {
        self.reads.accessed_files()
    }

    /// Stops prefetch, background fetch and streaming (reads still work). Idempotent.
    pub fn close(&self) {
        self.core.closed.send_replace(true);
        self.core.gate.wake_all();
    }

    /// True once [`RemoteLayer::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }
}

impl Drop for RemoteLayer {
    fn drop(&mut self) {
        self.close();
    }
}
