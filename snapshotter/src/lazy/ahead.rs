//! Opening the image's later layers while the current one is prepared. containerd
//! prepares an image's layers one after the other, and each Prepare names the layers from
//! itself on (`containerd.io/snapshot/remote/stargz.layers`,
//! `containerd.io/snapshot/cri.image-layers`); so while a layer is opened and mounted, the
//! heads (footer and TOC, one or two requests each) of the layers above it are already on
//! their way, as the stargz snapshotter pre-resolves neighbouring layers, and each is
//! opened ahead ([`fusefs::layer::EarlyLayer`]: indexed and known to the other layers'
//! read-ahead, not mounted). With `fetch.program_read_ahead` these are all the layers
//! above, the top one first, so the image's program (usually in an upper layer) is read
//! ahead as soon as its image's layers are all open, long before the top layer's Prepare;
//! without it, the next layer only.
//!
//! An early layer's TOC is checked against the TOC digest annotation of the image's
//! manifest when the program lookup ([`super::program`]) brings it in time, and always
//! against the digest of its own Prepare when that comes
//! ([`fusefs::layer::EarlyLayer::fits`]); until then it can only steer fetches into the
//! content-addressed chunk cache (see `fusefs::layer::early`). One that failed, does not fit
//! or went unused is dropped.
//!
//! Bounded: at most [`MAX_PENDING`] layers at once, each kept [`KEEP`] at most. A later
//! layer that containerd already has (no Prepare comes) costs its head's requests once.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use estargz::Sha256Digest;
use fusefs::layer::{EarlyLayer, LayerContext};
use fusefs::layer::{LayerError, LayerHead, LayerSource, RemoteLayer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::labels;
use crate::store::Labels;

/// Most layers opened ahead and not yet used.
pub const MAX_PENDING: usize = 8;
/// How long an unused layer opened ahead is kept.
pub const KEEP: Duration = Duration::from_secs(60);
/// How long a layer opened ahead waits, once its head is in, for the image manifest's TOC
/// digests (its Prepare may be waiting for it).
pub const MANIFEST_GRACE: Duration = Duration::from_millis(250);

/// The TOC digests of an image's layers from its manifest (annotation
/// `containerd.io/snapshot/stargz/toc.digest`), by layer digest: `None` until the image is
/// resolved, then the map (empty if it could not be resolved). Layers opened ahead of their
/// Prepare are checked against them ([`Ahead::start`]).
pub type Tocs = watch::Receiver<Option<Arc<HashMap<String, String>>>>;

type Fetch = JoinHandle<Result<EarlyLayer, LayerError>>;

/// Layers opened ahead, by repository and blob digest.
#[derive(Default)]
pub struct Ahead {
    pending: Arc<Mutex<Pending>>,
}

type Pending = HashMap<(String, String), (Instant, Fetch)>;

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// The layers above `digest` in the Prepare's layer list (stargz family first, then CRI):
/// with `all`, every one, the top first, then from the next one up; else the next one.
pub fn later_layers<'a>(l: &'a Labels, digest: &str, all: bool) -> Vec<&'a str> {
    let Some(list) = image_layers(l, digest) else {
        return Vec::new();
    };
    let Some(at) = list.iter().position(|d| *d == digest) else {
        return Vec::new();
    };
    let mut later = list[at + 1..].to_vec();
    if !all {
        later.truncate(1);
    } else if let Some(top) = later.pop() {
        later.insert(0, top);
    }
    later
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

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // A panic while holding it leaves a map that is still consistent.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(source: &LayerSource) -> (String, String) {
    (source.repository.to_string(), source.digest.to_string())
}

impl Ahead {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// Takes the fetch started for `source`'s blob, if any.
    pub fn take(&self, source: &LayerSource) -> Option<Fetch> {
        self.lock().remove(&key(source)).map(|(_, f)| f)
    }

    /// Starts opening `next` (a layer of image `reference`) ahead on the context's runtime,
    /// unless it is pending already or the bound is reached; it is dropped after [`KEEP`]
    /// unless taken. Its TOC is checked against the manifest's TOC digest annotation for it
    /// when `tocs` brings one by the time its head is in (or [`MANIFEST_GRACE`] after);
    /// otherwise only against its own Prepare's, at the take-over.
    pub fn start(&self, ctx: &Arc<LayerContext>, reference: &str, next: &str, tocs: Option<Tocs>) {
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
        // Unused after `KEEP` (its Prepare never came): dropped, with its index.
        let (map, started, key2) = (Arc::downgrade(&self.pending), Instant::now(), k.clone());
        ctx.runtime().spawn(async move {
            tokio::time::sleep(KEEP).await;
            let Some(map) = map.upgrade() else { return };
            let mut pending = lock(&map);
            if pending.get(&key2).is_some_and(|(at, _)| *at == started) {
                if let Some((_, f)) = pending.remove(&key2) {
                    f.abort();
                }
            }
        });
        let c = ctx.clone();
        let fetch = ctx.runtime().spawn(async move {
            let head = LayerHead::fetch(&c, &source).await?;
            // The layer's own Prepare waits for this: a slow manifest must not hold it up.
            let wait = c.settings().fetch.request_timeout.min(MANIFEST_GRACE);
            let toc = toc_of(tocs, source.digest.as_ref(), wait).await;
            let source = LayerSource {
                toc_digest: toc,
                ..source
            };
            RemoteLayer::open_early(&c, source, head).await
        });
        pending.insert(k, (started, fetch));
    }

    /// Aborts every pending fetch.
    pub fn clear(&self) {
        for (_, (_, f)) in self.lock().drain() {
            f.abort();
        }
    }
}

/// The TOC digest the image's manifest gives layer `digest`, if `tocs` brings it within
/// `wait`.
async fn toc_of(tocs: Option<Tocs>, digest: &str, wait: Duration) -> Option<Sha256Digest> {
    let mut tocs = tocs?;
    let known = tokio::time::timeout(wait, tocs.wait_for(Option::is_some))
        .await
        .ok()?
        .ok()?
        .as_ref()?
        .get(digest)
        .cloned()?;
    Sha256Digest::from_str(known.trim()).ok()
}

/// Waits for a layer opened ahead; `None` (the caller opens it itself) if that failed.
pub async fn finish(fetch: Fetch, digest: &str) -> Option<EarlyLayer> {
    match fetch.await {
        Ok(Ok(early)) => Some(early),
        Ok(Err(e)) => {
            tracing::debug!(layer = digest, error = %e, "layer opened ahead failed; opening it again");
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
    fn the_toc_digest_comes_from_the_manifest_when_it_is_in_time() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let toc = format!("sha256:{}", "b".repeat(64));
        let wait = Duration::from_secs(30);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let got = rt.block_on(async {
            let asked = tokio::spawn(toc_of(Some(rx.clone()), "sha256:a", wait));
            let map = [("sha256:a".to_string(), toc.clone())]
                .into_iter()
                .collect();
            tx.send_replace(Some(Arc::new(map)));
            asked.await.unwrap()
        });
        assert_eq!(got.map(|d| d.to_string()), Some(toc.clone()));
        let none = |layer: &'static str, rx| rt.block_on(toc_of(Some(rx), layer, wait));
        assert_eq!(none("sha256:x", rx.clone()), None, "no annotation");
        let bad = [("sha256:a".to_string(), "sha256:zz".to_string())];
        tx.send_replace(Some(Arc::new(bad.into_iter().collect())));
        assert_eq!(none("sha256:a", rx.clone()), None, "malformed annotation");
        // Never resolved: given up when the lookup is gone (or after `wait`).
        let (gone, rx) = tokio::sync::watch::channel(None);
        drop(gone);
        assert_eq!(none("sha256:a", rx), None);
        assert_eq!(rt.block_on(toc_of(None, "sha256:a", wait)), None);
    }

    #[test]
    fn later_layers_come_from_the_layer_lists() {
        let s = l(&[(
            labels::STARGZ_LAYERS,
            "sha256:a, sha256:b,sha256:c,sha256:d",
        )]);
        assert_eq!(
            later_layers(&s, "sha256:a", true),
            ["sha256:d", "sha256:b", "sha256:c"],
            "top first"
        );
        assert_eq!(later_layers(&s, "sha256:a", false), ["sha256:b"]);
        assert_eq!(later_layers(&s, "sha256:c", true), ["sha256:d"]);
        assert!(later_layers(&s, "sha256:d", true).is_empty(), "last layer");
        assert!(later_layers(&s, "sha256:x", true).is_empty(), "not listed");
        let c = l(&[(labels::CRI_IMAGE_LAYERS, "sha256:a,sha256:b")]);
        assert_eq!(later_layers(&c, "sha256:a", false), ["sha256:b"]);
        assert!(later_layers(&l(&[]), "sha256:a", true).is_empty());
        // A stargz list without the layer falls through to the CRI list.
        let both = l(&[
            (labels::STARGZ_LAYERS, "sha256:q"),
            (labels::CRI_IMAGE_LAYERS, "sha256:a,sha256:b"),
        ]);
        assert_eq!(later_layers(&both, "sha256:a", true), ["sha256:b"]);
    }
}
