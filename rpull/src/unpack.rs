//! Unpacking an image's layers into a snapshotter through containerd, bottom first, the way
//! containerd's unpacker does it for remote snapshotters:
//!
//! 1. `Stat(chainID)`: the layer's snapshot exists → nothing to do.
//! 2. `Prepare("extract-<unique> <chainID>", parent chainID, labels)` with the labels of
//!    [`super::labels::snapshot_labels`]. AlreadyExists → the snapshotter committed the
//!    layer itself (lazily, if the snapshot carries `containerd.io/snapshot/remote`):
//!    `Stat(chainID)` and go on; a missing target means a key clash: up to 3 tries.
//! 3. Otherwise (not eStargz, TOC not verifiable, no remote hook, or a plain snapshotter)
//!    the layer falls back: its blob goes into the content store, containerd's diff
//!    service applies it onto the Prepare's mounts, the diff ID is checked against the
//!    config, the snapshot is committed as the chain ID and the blob labelled
//!    `containerd.io/uncompressed`. On failure the extract snapshot is removed.
//!
//! After the first fallback, blobs of later layers that will fall back too (all of them if
//! the snapshotter declined an eStargz layer before mounting any layer remotely, else those
//! without a TOC digest) are fetched ahead, a few at a time, as containerd does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use containerd_client::tonic::Code;
use containerd_client::types::{Descriptor as CdDescriptor, Mount};
use registry::RegistryClient;
use tokio::sync::Semaphore;

use super::client::Containerd;
use super::content::{self, AbortOnDrop, BlobSpec, Source, Stored};
use super::image::ResolvedImage;
use super::labels::{snapshot_labels, LayerIdentity, UNCOMPRESSED};
use super::progress::{Event, LayerOutcome, Progress};
use super::RpullError;
use snapshotter::labels as snap;

/// Prepare attempts when AlreadyExists comes without the target snapshot (containerd: 3).
const PREPARE_TRIES: usize = 3;
/// Layer blobs fetched ahead at once.
const AHEAD: usize = 3;

type Download = AbortOnDrop<Result<u64, RpullError>>;

/// Unpacks one image into one snapshotter.
pub(crate) struct Unpacker {
    shared: Arc<Shared>,
    ahead: Mutex<HashMap<usize, Download>>,
    ahead_started: AtomicBool,
    /// Whether the snapshotter mounted (or had mounted) a layer of this image remotely.
    seen_remote: AtomicBool,
}

/// What background downloads need too.
struct Shared {
    c: Containerd,
    registry: RegistryClient,
    snapshotter: String,
    image: Arc<ResolvedImage>,
    progress: Arc<dyn Progress>,
    slots: Semaphore,
}

impl Unpacker {
    pub(crate) fn new(
        c: Containerd,
        registry: RegistryClient,
        snapshotter: &str,
        image: Arc<ResolvedImage>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        Unpacker {
            shared: Arc::new(Shared {
                c,
                registry,
                snapshotter: snapshotter.to_string(),
                image,
                progress,
                slots: Semaphore::new(AHEAD),
            }),
            ahead: Mutex::new(HashMap::new()),
            ahead_started: AtomicBool::new(false),
            seen_remote: AtomicBool::new(false),
        }
    }

    /// Unpacks every layer, bottom first; returns what happened to each.
    pub(crate) async fn unpack(&self) -> Result<Vec<LayerOutcome>, RpullError> {
        let mut outcomes = Vec::new();
        for i in 0..self.shared.image.layers.len() {
            let outcome = self.layer(i).await?;
            if matches!(
                outcome,
                LayerOutcome::Lazy | LayerOutcome::Present { remote: true }
            ) {
                self.seen_remote.store(true, Ordering::Relaxed);
            }
            self.shared
                .progress
                .event(Event::LayerDone { index: i, outcome });
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn layer(&self, i: usize) -> Result<LayerOutcome, RpullError> {
        let s = &self.shared;
        let img = &s.image;
        let chain = img.chain_ids[i].as_str();
        let parent = if i == 0 {
            ""
        } else {
            img.chain_ids[i - 1].as_str()
        };
        let what = s.layer_what(i);
        if let Some(info) = s.stat(chain, &what).await? {
            return Ok(LayerOutcome::Present {
                remote: info.labels.contains_key(snap::REMOTE),
            });
        }
        let manifest_digest = img.manifest.digest.clone();
        let image_name = img.reference.to_string();
        let labels = snapshot_labels(&LayerIdentity {
            image: &image_name,
            manifest_digest: &manifest_digest,
            layers: &img.layers,
            index: i,
            chain_id: chain,
        });
        let mut prepared = None;
        for _ in 0..PREPARE_TRIES {
            let key = format!("extract-{} {chain}", unique_part());
            match s
                .c
                .prepare_snapshot(&s.snapshotter, &key, parent, labels.clone())
                .await
            {
                Ok(mounts) => {
                    prepared = Some((key, mounts));
                    break;
                }
                Err(st) if st.code() == Code::AlreadyExists => {
                    if let Some(info) = s.stat(chain, &what).await? {
                        return Ok(if info.labels.contains_key(snap::REMOTE) {
                            LayerOutcome::Lazy
                        } else {
                            LayerOutcome::Present { remote: false }
                        });
                    }
                    tracing::debug!(
                        key,
                        chain,
                        "extract key exists but the chain ID does not; retrying"
                    );
                }
                Err(st) => {
                    return Err(RpullError::containerd(
                        format!("prepare snapshot of {what}"),
                        &st,
                    ))
                }
            }
        }
        let Some((key, mounts)) = prepared else {
            return Err(RpullError::BadImage {
                image: image_name,
                reason: format!(
                    "{what}: Prepare kept answering AlreadyExists without a snapshot {chain}"
                ),
            });
        };
        tracing::debug!(
            layer = i,
            chain,
            "layer not mounted remotely: fetching and applying it"
        );
        match self.fall_back(i, &key, mounts, labels).await {
            Ok(o) => Ok(o),
            Err(e) => {
                if let Err(st) = s.c.remove_snapshot(&s.snapshotter, &key).await {
                    tracing::warn!(key, error = %st.message(), "could not remove the extract snapshot");
                }
                Err(e)
            }
        }
    }

    /// The normal pull of a layer onto its prepared snapshot `key`.
    async fn fall_back(
        &self,
        i: usize,
        key: &str,
        mounts: Vec<Mount>,
        labels: HashMap<String, String>,
    ) -> Result<LayerOutcome, RpullError> {
        let s = &self.shared;
        let img = &s.image;
        let layer = &img.layers[i];
        let what = s.layer_what(i);
        self.fetch_ahead(i);
        let downloaded = self.download(i).await?;
        s.progress.event(Event::Applying { index: i });
        let desc = CdDescriptor {
            media_type: layer.media_type().to_string(),
            digest: layer.digest().to_string(),
            size: layer.size() as i64,
            annotations: layer.annotations().clone().unwrap_or_default(),
        };
        let diff_id =
            s.c.apply_layer(desc, mounts)
                .await
                .map_err(|st| RpullError::containerd(format!("apply {what}"), &st))?;
        if diff_id != img.diff_ids[i] {
            return Err(RpullError::DiffIdMismatch {
                image: img.reference.to_string(),
                index: i + 1,
                total: img.layers.len(),
                digest: layer.digest().to_string(),
                expected: img.diff_ids[i].clone(),
                actual: diff_id,
            });
        }
        let chain = &img.chain_ids[i];
        match s
            .c
            .commit_snapshot(&s.snapshotter, chain, key, labels)
            .await
        {
            Ok(()) => {}
            Err(st) if st.code() == Code::AlreadyExists => {
                // Another pull committed the same layer first (containerd: fine).
                if let Err(st) = s.c.remove_snapshot(&s.snapshotter, key).await {
                    tracing::warn!(key, error = %st.message(), "could not remove the extract snapshot");
                }
                return Ok(LayerOutcome::Present { remote: false });
            }
            Err(st) => {
                return Err(RpullError::containerd(
                    format!("commit snapshot {chain} of {what}"),
                    &st,
                ))
            }
        }
        content::update_labels(
            &s.c,
            layer.digest().as_ref(),
            HashMap::from([(UNCOMPRESSED.to_string(), diff_id)]),
            &what,
        )
        .await?;
        Ok(LayerOutcome::Applied { downloaded })
    }

    /// The blob of layer `i` in the content store: from a download running ahead, or now.
    async fn download(&self, i: usize) -> Result<u64, RpullError> {
        let running = self
            .ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&i);
        match running {
            Some(mut d) => (&mut d.0).await.map_err(|e| RpullError::Task {
                what: format!("download of {}", self.shared.layer_what(i)),
                cause: e.to_string(),
            })?,
            None => self.shared.download(i).await,
        }
    }

    /// Starts downloads of the later layers that will fall back too (once per pull).
    fn fetch_ahead(&self, i: usize) {
        if self.ahead_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let img = &self.shared.image;
        // A declined eStargz layer, with no layer mounted remotely before it, means the
        // snapshotter is not lazy for this image: every later layer will fall back too.
        let all = is_estargz(&img.layers[i]) && !self.seen_remote.load(Ordering::Relaxed);
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        for j in i + 1..img.layers.len() {
            if !all && is_estargz(&img.layers[j]) {
                continue;
            }
            let shared = self.shared.clone();
            let task = tokio::spawn(async move {
                let _slot = shared.slots.acquire().await;
                let what = shared.layer_what(j);
                // A layer whose snapshot exists needs no blob.
                if shared
                    .stat(&shared.image.chain_ids[j], &what)
                    .await?
                    .is_some()
                {
                    return Ok(0);
                }
                shared.download(j).await
            });
            ahead.insert(j, AbortOnDrop(task));
        }
    }
}

impl Shared {
    /// "layer 2/3 sha256:… of IMAGE".
    fn layer_what(&self, i: usize) -> String {
        format!(
            "layer {}/{} {} of {}",
            i + 1,
            self.image.layers.len(),
            self.image.layers[i].digest(),
            self.image.reference
        )
    }

    async fn stat(
        &self,
        chain: &str,
        what: &str,
    ) -> Result<Option<containerd_client::services::v1::snapshots::Info>, RpullError> {
        self.c
            .stat_snapshot(&self.snapshotter, chain)
            .await
            .map_err(|st| RpullError::containerd(format!("look up the snapshot of {what}"), &st))
    }

    /// Puts layer `i`'s blob into the content store; returns the bytes fetched.
    async fn download(&self, i: usize) -> Result<u64, RpullError> {
        let layer = &self.image.layers[i];
        let repo = &self.image.reference.repository;
        let what = self.layer_what(i);
        let blob = self
            .registry
            .blob(repo, layer.digest(), Some(layer.size()))
            .await
            .map_err(|e| RpullError::Registry {
                what: format!("fetch {what}"),
                source: e,
            })?;
        let total = layer.size();
        let progress = self.progress.clone();
        let report = move |done: u64| {
            progress.event(Event::Download {
                index: i,
                done,
                total,
            })
        };
        let spec = BlobSpec {
            kind: "layer",
            digest: layer.digest().as_ref(),
            size: total,
            labels: HashMap::new(),
            source_repo: Some((&repo.host, &repo.name)),
            what,
        };
        match content::ensure_blob(&self.c, spec, &Source::Registry(blob), &report).await? {
            Stored::Present => Ok(0),
            Stored::Written(n) => Ok(n),
        }
    }
}

/// Whether a layer descriptor carries an eStargz TOC digest.
pub(crate) fn is_estargz(layer: &oci_spec::image::Descriptor) -> bool {
    layer
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(snap::TOC_DIGEST))
}

/// The unique part of an extract key (containerd: `<nanoseconds>-<3 random bytes>`).
fn unique_part() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", hex::encode(rand::random::<[u8; 3]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_keys_differ() {
        let a = unique_part();
        let b = unique_part();
        assert_ne!(a, b);
        assert!(a.split('-').nth(1).is_some_and(|r| r.len() == 6));
    }
}
