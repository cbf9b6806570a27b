//! `starling rpull`: a lazy pull through containerd, without containerd's transfer service
//! (containerd 1.6 has none) — the client does what containerd's `ctr images pull` +
//! unpacker do, with the labels remote snapshotters need:
//!
//! 1. resolve the image on the registry ([`image`]): index → this platform's manifest →
//!    config and diff IDs;
//! 2. under a lease (so GC cannot take half-pulled content), store the config, manifest and
//!    index in containerd's content store with containerd's GC reference labels
//!    (`containerd.io/gc.ref.content.*`) and distribution-source labels (`content`,
//!    [`labels`]);
//! 3. unpack the layers through the snapshots service of the chosen snapshotter
//!    (`unpack`): remote layers are committed by the snapshotter itself (Prepare answers
//!    AlreadyExists), the others are fetched and applied with the diff service;
//! 4. label the config with `containerd.io/gc.ref.snapshot.<snapshotter>` = the top chain
//!    ID, create or update the image record, and delete the lease.
//!
//! A client crate: it talks to the registry (`registry`) and to containerd (its gRPC API),
//! and takes the remote-snapshot label names from the snapshotter that defines them
//! (`snapshotter::labels`); the `starling` binary draws its progress.

mod client;
mod content;
mod error;
pub mod image;
pub mod labels;
pub mod progress;
mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use registry::{Reference, RegistryClient};

pub use error::RpullError;
pub use image::{Platform, ResolvedImage};
pub use progress::{Event, LayerOutcome, LayerSummary, NoProgress, Progress, PullReport};

use client::Containerd;
use content::{BlobSpec, Source};
use image::RawBlob;

/// Where and how to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// Snapshotter to unpack into (as named in containerd).
    pub snapshotter: String,
    /// Platform to pick from an index (default: this host's).
    pub platform: Option<Platform>,
}

/// Pulls image `name` into containerd with `options.snapshotter`, reporting to `progress`.
/// The image record is named `name` as given; snapshot labels carry the normalised
/// reference (`host/repo:tag`).
pub async fn pull(
    registry: &RegistryClient,
    name: &str,
    options: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<PullReport, RpullError> {
    let started = Instant::now();
    let reference: Reference = name.parse().map_err(|e| RpullError::Registry {
        what: "parse image reference".into(),
        source: e,
    })?;
    if options.snapshotter.is_empty() {
        return Err(RpullError::InvalidArgument {
            what: "snapshotter",
            value: String::new(),
            reason: "must not be empty".into(),
        });
    }
    let root = Containerd::connect(&options.address, &options.namespace).await?;
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let image = Arc::new(image::resolve(registry, &reference, &platform).await?);
    let summaries: Vec<LayerSummary> = image
        .layers
        .iter()
        .zip(&image.chain_ids)
        .map(|(l, chain)| LayerSummary {
            digest: l.digest().to_string(),
            size: l.size(),
            chain_id: chain.clone(),
            estargz: unpack::is_estargz(l),
        })
        .collect();
    progress.event(Event::Resolved {
        image: name,
        manifest: &image.manifest.digest,
        layers: &summaries,
    });
    let lease = format!(
        "starling-rpull-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 6]>())
    );
    let leased = root.with_new_lease(&lease).await?;
    let result = pull_leased(&leased, registry, name, &image, options, progress).await;
    let released = root.delete_lease(&lease).await;
    let outcomes = result?;
    released?;
    Ok(PullReport {
        image: name.to_string(),
        target: image.target().digest.clone(),
        manifest: image.manifest.digest.clone(),
        layers: summaries.into_iter().zip(outcomes).collect(),
        elapsed: started.elapsed(),
    })
}

/// Steps 2-4 of the module docs, under the lease `c` carries.
async fn pull_leased(
    c: &Containerd,
    registry: &RegistryClient,
    name: &str,
    image: &Arc<ResolvedImage>,
    options: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Vec<LayerOutcome>, RpullError> {
    let repo = &image.reference.repository;
    let source = Some((repo.host.as_str(), repo.name.as_str()));
    let what = |kind: &str, b: &RawBlob| format!("{kind} {} of {name}", b.digest);
    // Children before parents, so every GC reference points at stored content.
    store(
        c,
        "config",
        &image.config,
        HashMap::new(),
        source,
        what("config", &image.config),
    )
    .await?;
    let mut children = vec![(
        image.config.media_type.as_str(),
        image.config.digest.as_str(),
    )];
    let layer_types: Vec<(String, String)> = image
        .layers
        .iter()
        .map(|l| (l.media_type().to_string(), l.digest().to_string()))
        .collect();
    children.extend(layer_types.iter().map(|(m, d)| (m.as_str(), d.as_str())));
    let manifest_labels = labels::children_gc_labels(children);
    store(
        c,
        "manifest",
        &image.manifest,
        manifest_labels,
        source,
        what("manifest", &image.manifest),
    )
    .await?;
    if let Some(index) = &image.index {
        let entries = image::index_children(&index.bytes);
        let index_labels =
            labels::children_gc_labels(entries.iter().map(|(m, d)| (m.as_str(), d.as_str())));
        store(
            c,
            "index",
            index,
            index_labels,
            source,
            what("index", index),
        )
        .await?;
    }

    let unpacker = unpack::Unpacker::new(
        c.clone(),
        registry.clone(),
        &options.snapshotter,
        image.clone(),
        progress,
    );
    let outcomes = unpacker.unpack().await?;

    let top = image.chain_ids.last().cloned().unwrap_or_default();
    let gc_ref = format!("{}.{}", labels::GC_REF_SNAPSHOT, options.snapshotter);
    content::update_labels(
        c,
        &image.config.digest,
        HashMap::from([(gc_ref, top)]),
        &what("config", &image.config),
    )
    .await?;
    let target = image.target();
    c.put_image(
        name,
        containerd_client::types::Descriptor {
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size: target.size() as i64,
            annotations: HashMap::new(),
        },
    )
    .await?;
    Ok(outcomes)
}

async fn store(
    c: &Containerd,
    kind: &'static str,
    blob: &RawBlob,
    labels: HashMap<String, String>,
    source_repo: Option<(&str, &str)>,
    what: String,
) -> Result<(), RpullError> {
    let spec = BlobSpec {
        kind,
        digest: &blob.digest,
        size: blob.size(),
        labels,
        source_repo,
        what,
    };
    content::ensure_blob(c, spec, &Source::Bytes(blob.bytes.clone()), &|_| {}).await?;
    Ok(())
}
