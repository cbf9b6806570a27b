//! Fetching the next layer's footer and TOC while the current one is prepared. containerd
//! prepares an image's layers one after the other, and each Prepare names the layers from
//! itself on (`containerd.io/snapshot/remote/stargz.layers`,
//! `containerd.io/snapshot/cri.image-layers`); so while a layer is opened and mounted, the
//! head of the one after it (one or two requests) is already on its way, as the stargz
//! snapshotter pre-resolves neighbouring layers. A head fetched ahead is only bytes: its
//! TOC is verified against the digest of its own Prepare like any other
//! ([`fusefs::layer::RemoteLayer::open_head`]); one that failed or went unused is dropped.
//!
//! Bounded: at most [`MAX_PENDING`] heads at once, each kept [`KEEP`] at most. A next layer
//! that containerd already has (no Prepare comes) costs its head's requests once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fusefs::layer::LayerContext;
use fusefs::layer::{LayerError, LayerHead, LayerSource};
use tokio::task::JoinHandle;

use crate::labels;
use crate::store::Labels;

/// Most heads fetched ahead and not yet used.
pub const MAX_PENDING: usize = 8;
/// How long an unused head is kept.
pub const KEEP: Duration = Duration::from_secs(60);

type Fetch = JoinHandle<Result<LayerHead, LayerError>>;

/// Heads fetched ahead, by repository and blob digest.
#[derive(Default)]
pub struct Ahead {
    pending: Mutex<Pending>,
}

type Pending = HashMap<(String, String), (Instant, Fetch)>;

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// The layer after `digest` in the Prepare's layer list (stargz family first, then CRI).
pub fn next_layer<'a>(l: &'a Labels, digest: &str) -> Option<&'a str> {
    let list = image_layers(l, digest)?;
    let at = list.iter().position(|d| *d == digest)?;
    list.get(at + 1).copied()
}

/// The image's layer list (base first) from the labels that name `digest` in it (stargz
/// family first, then CRI).
pub fn image_layers<'a>(l: &'a Labels, digest: &str) -> Option<Vec<&'a str>> {
    [labels::STARGZ_LAYERS, labels::CRI_IMAGE_LAYERS]
        .iter()
        .filter_map(|k| l.get(*k))
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|list| list.contains(&digest))
}

fn key(source: &LayerSource) -> (String, String) {
    (source.repository.to_string(), source.digest.to_string())
}

impl Ahead {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding it leaves a map that is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the fetch started for `source`'s blob, if any.
    pub fn take(&self, source: &LayerSource) -> Option<Fetch> {
        self.lock().remove(&key(source)).map(|(_, f)| f)
    }

    /// Starts fetching the head of `next` (a layer of image `reference`) on the context's
    /// runtime, unless it is pending already or the bound is reached (after dropping heads
    /// older than [`KEEP`]).
    pub fn start(&self, ctx: &Arc<LayerContext>, reference: &str, next: &str) {
        let Ok(source) = LayerSource::new(reference, next, None, None) else {
            return;
        };
        let k = key(&source);
        let mut pending = self.lock();
        pending.retain(|_, (at, f)| {
            let keep = at.elapsed() < KEEP;
            if !keep {
                f.abort();
            }
            keep
        });
        if pending.contains_key(&k) || pending.len() >= MAX_PENDING {
            return;
        }
        let c = ctx.clone();
        let fetch = ctx
            .runtime()
            .spawn(async move { LayerHead::fetch(&c, &source).await });
        pending.insert(k, (Instant::now(), fetch));
    }

    /// Aborts every pending fetch.
    pub fn clear(&self) {
        for (_, (_, f)) in self.lock().drain() {
            f.abort();
        }
    }
}

/// Waits for a head fetched ahead; `None` (the caller fetches it itself) if it failed.
pub async fn finish(fetch: Fetch, digest: &str) -> Option<LayerHead> {
    match fetch.await {
        Ok(Ok(head)) => Some(head),
        Ok(Err(e)) => {
            tracing::debug!(layer = digest, error = %e, "footer and TOC fetched ahead failed; fetching again");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::test_labels::labels as l;

    #[test]
    fn next_layer_comes_from_the_layer_lists() {
        let s = l(&[(labels::STARGZ_LAYERS, "sha256:a, sha256:b,sha256:c")]);
        assert_eq!(next_layer(&s, "sha256:a"), Some("sha256:b"));
        assert_eq!(next_layer(&s, "sha256:b"), Some("sha256:c"));
        assert_eq!(next_layer(&s, "sha256:c"), None, "last layer");
        assert_eq!(next_layer(&s, "sha256:x"), None, "not listed");
        let c = l(&[(labels::CRI_IMAGE_LAYERS, "sha256:a,sha256:b")]);
        assert_eq!(next_layer(&c, "sha256:a"), Some("sha256:b"));
        assert_eq!(next_layer(&l(&[]), "sha256:a"), None);
        // A stargz list without the layer falls through to the CRI list.
        let both = l(&[
            (labels::STARGZ_LAYERS, "sha256:q"),
            (labels::CRI_IMAGE_LAYERS, "sha256:a,sha256:b"),
        ]);
        assert_eq!(next_layer(&both, "sha256:a"), Some("sha256:b"));
    }
}
