//! A layer opened ahead of its Prepare ([`EarlyLayer`]): footer and TOC fetched and
//! indexed, the layer registered in the context's [`super::LayerSet`] with its read-ahead,
//! but not mounted, not fetching and without a state directory. The image's program can
//! then be found in it and fetched (see [`super::LayerSet::note_program`]) while the layers
//! below are still being prepared; the Prepare of the layer then takes it over
//! ([`RemoteLayer::adopt`]): same index, same fetch layer (fetches in flight are joined,
//! not repeated), same read-ahead bookkeeping (files read ahead are not read ahead again).
//!
//! Safety: the TOC of an early layer may not be verified yet (its Prepare brings the TOC
//! digest the layer must have; [`EarlyLayer::fits`] checks it before the take-over, and a
//! layer that does not fit is dropped). Until then it only steers fetches into the chunk
//! cache, whose keys are the chunks' content digests (`ChunkKey::Digest`, see
//! `chunks::key_of`) and whose fetches are verified against them before anything is
//! cached (`crate::fetch`): a wrong TOC can waste bytes, never make a read return bytes
//! other than those its own verified TOC names. Reads only ever go through a mounted
//! layer's own index.

use std::path::Path;
use std::sync::Arc;

use super::ahead::ReadAhead;
use super::context::LayerContext;
use super::core::LayerCore;
use super::error::LayerError;
use super::remote::{Opened, RemoteLayer, Unsaved};
use super::source::{LayerHead, LayerSource};
use crate::fetch::BlobSource;

/// A layer opened ahead of its Prepare; dropping it lets it go (read-ahead tasks under way
/// finish their fetches into the cache).
pub struct EarlyLayer {
    core: Arc<LayerCore>,
    ahead: Arc<ReadAhead>,
    /// Footer and TOC bytes, saved when the layer is taken over.
    state: Unsaved,
}

impl std::fmt::Debug for EarlyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyLayer")
            .field("digest", &self.core.source.digest.to_string())
            .field("toc_digest", &self.core.layer.toc_digest.to_string())
            .finish()
    }
}

impl EarlyLayer {
    /// Where it comes from (the TOC digest is the one it was checked against, if any).
    pub fn source(&self) -> &LayerSource {
        &self.core.source
    }

    /// Its tree and chunks.
    pub fn index(&self) -> &estargz::LayerIndex {
        self.core.index()
    }

    /// The digest of its TOC (as fetched).
    pub fn toc_digest(&self) -> estargz::Sha256Digest {
        self.core.layer.toc_digest
    }

    /// True if this is `source`'s layer: same repository and blob, and a TOC with the
    /// digest `source` requires (any TOC when it requires none).
    pub fn fits(&self, source: &LayerSource) -> bool {
        let mine = &self.core.source;
        mine.repository == source.repository
            && mine.digest == source.digest
            && source.size.is_none_or(|s| Some(s) == mine.size)
            && source.toc_digest.is_none_or(|d| d == self.toc_digest())
    }
}

impl RemoteLayer {
    /// Opens a layer ahead of its Prepare from its footer and TOC (`head`), checked
    /// against `source.toc_digest` when given (e.g. from the image manifest), without a
    /// state directory; see [`EarlyLayer`].
    pub async fn open_early(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        head: LayerHead,
    ) -> Result<EarlyLayer, LayerError> {
        let opened = Opened::index(ctx, source, head, Path::new("(opened ahead)")).await?;
        let Opened {
            source,
            layer,
            blob,
            state,
        } = opened;
        let (core, ahead) = Self::core_of(ctx, source, layer, blob).await?;
        Ok(EarlyLayer { core, ahead, state })
    }

    /// [`RemoteLayer::open_early`] reading footer and TOC through any [`BlobSource`].
    pub async fn open_early_from_source(
        ctx: &Arc<LayerContext>,
        source: LayerSource,
        blob: Arc<dyn BlobSource>,
    ) -> Result<EarlyLayer, LayerError> {
        let head = LayerHead::read(&source, blob).await?;
        Self::open_early(ctx, source, head).await
    }

    /// Takes over a layer opened ahead for `source` (which must [`EarlyLayer::fits`]):
    /// saves its footer and TOC in `state_dir` and returns it as an opened layer, as
    /// [`RemoteLayer::open`] would, keeping what it fetched and has in flight.
    pub async fn adopt(
        early: EarlyLayer,
        source: &LayerSource,
        state_dir: &Path,
    ) -> Result<Arc<Self>, LayerError> {
        if !early.fits(source) {
            return Err(LayerError::Source(format!(
                "layer {} opened ahead (TOC {}) is not layer {} with TOC {}",
                early.core.source.digest,
                early.toc_digest(),
                source.digest,
                source
                    .toc_digest
                    .map_or_else(|| "any".to_string(), |d| d.to_string())
            )));
        }
        early.state.save(state_dir).await?;
        Self::assemble(early.core, early.ahead, state_dir)
    }
}
