//! Image-level conversion to eStargz or zstd:chunked (`starling convert`).
//!
//! Owns: resolving the source image ([`source`]: registry reference or OCI layout, index
//! → platform manifests), converting its layers in parallel ([`layer`]: stream download
//! → decompress → eStargz writer → temporary file → push, keeping layers that already are
//! eStargz of the target kind), prioritized files per layer ([`prioritize`]), and writing
//! the new config, manifest and index ([`image`]) to the destination ([`sink`]: registry
//! push — blobs first, manifest last — or OCI layout). Progress goes to a [`Progress`].
//!
//! Nothing is written under the destination tag unless every layer and the config were
//! stored: a failed conversion leaves at most unreferenced blobs behind.

mod ctx;
mod error;
pub mod image;
mod layer;
pub mod layout;
mod location;
mod options;
pub mod prioritize;
mod progress;
mod report;
mod sink;
mod source;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use registry::RegistryClient;
use serde_json::Value;
use tokio::sync::Semaphore;

pub(crate) use ctx::Ctx;
pub use error::{ConvertError, LayerError};
pub use image::Platform;
pub use location::{ImageLocation, OCI_PREFIX};
pub use options::{ConvertOptions, OutputFormat, PlatformChoice, Prioritize, DEFAULT_JOBS};
pub use progress::{LayerId, NoProgress, Progress, Stage};
pub use report::{ConvertReport, ImageReport, LayerReport};

use layer::{LayerJob, LayerOutcome};
use prioritize::Assigner;
use sink::Sink;
use source::{Source, SourceImage};

/// Converts the image at `src` and stores the result at `dst`.
pub async fn convert(
    client: &RegistryClient,
    src: &ImageLocation,
    dst: &ImageLocation,
    opts: &ConvertOptions,
    progress: Arc<dyn Progress>,
) -> Result<ConvertReport, ConvertError> {
    opts.validate()?;
    let started = Instant::now();
    let source = Source::new(client, src)?;
    let sink = Sink::new(client, dst)?;
    let resolved = source.resolve(&opts.platform).await?;
    sink.check(&resolved.images[0].manifest.config.digest)
        .await?;
    let temp = sink.temp_dir(opts.temp_dir.as_deref())?;
    let ctx = Ctx {
        source,
        sink,
        opts: opts.clone(),
        progress,
        temp: temp.path().to_path_buf(),
        permits: Arc::new(Semaphore::new(opts.jobs)),
    };
    let mut done: HashMap<(String, Vec<Vec<u8>>), LayerOutcome> = HashMap::new();
    let mut images = Vec::new();
    let mut manifests = Vec::new();
    let single = resolved.index.is_none();
    for (i, img) in resolved.images.iter().enumerate() {
        let (report, body) = convert_image(&ctx, i, img, &mut done).await?;
        let digest = ctx
            .sink
            .put_manifest(image::OCI_MANIFEST, body.clone(), single)
            .await?;
        ctx.progress.stored("manifest", digest.as_ref());
        let mut entry = image::descriptor(image::OCI_MANIFEST, &digest, body.len() as u64);
        if let Some(p) = img.index_entry.as_ref().and_then(|e| e.raw.get("platform")) {
            entry.insert("platform".into(), p.clone());
        }
        manifests.push(Value::Object(entry));
        images.push(report);
    }
    let (digest, media_type) = match &resolved.index {
        None => (images[0].manifest_digest.clone(), image::OCI_MANIFEST),
        Some((_, index)) => {
            let body = image::new_index(index, manifests);
            let d = ctx.sink.put_manifest(image::OCI_INDEX, body, true).await?;
            ctx.progress.stored("index", d.as_ref());
            (d.to_string(), image::OCI_INDEX)
        }
    };
    drop(temp);
    let layers = || images.iter().flat_map(|i| i.layers.iter());
    Ok(ConvertReport {
        source: src.to_string(),
        destination: ctx.sink.name(),
        digest,
        media_type: media_type.into(),
        source_layer_bytes: layers().map(|l| l.source_size).sum(),
        layer_bytes: layers().map(|l| l.size).sum(),
        images,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Converts one image's layers and stores them and the config; returns the report and
/// the new manifest (not stored yet).
async fn convert_image(
    ctx: &Ctx,
    image_no: usize,
    img: &SourceImage,
    done: &mut HashMap<(String, Vec<Vec<u8>>), LayerOutcome>,
) -> Result<(ImageReport, Vec<u8>), ConvertError> {
    let layers = &img.manifest.layers;
    let count = layers.len();
    let platform = img
        .index_entry
        .as_ref()
        .and_then(|e| e.platform.as_ref())
        .map(Platform::to_string);
    ctx.progress
        .image(image_no, &img.name, platform.as_deref(), count);
    let image_err = |reason: String| ConvertError::Image {
        image: img.name.clone(),
        reason,
    };
    let layer_err = |pos: usize, source: LayerError| ConvertError::Layer {
        image: img.name.clone(),
        position: pos + 1,
        count,
        digest: layers[pos].digest.to_string(),
        cause: Box::new(source),
    };
    let diff_ids = image::config_diff_ids(&img.config).map_err(&image_err)?;
    if diff_ids.len() != count {
        return Err(image_err(format!(
            "the config lists {} diff IDs for {count} layers",
            diff_ids.len()
        )));
    }
    for (pos, d) in layers.iter().enumerate() {
        image::layer_compression(&d.media_type)
            .map_err(|e| layer_err(pos, LayerError::MediaType(e)))?;
    }
    let id = |layer| LayerId {
        image: image_no,
        layer,
    };

    // Prioritized files per layer (spooling every layer first when paths must be found).
    let mut spools: Vec<Option<tempfile::NamedTempFile>> = (0..count).map(|_| None).collect();
    let mut missing = Vec::new();
    let per_layer: Vec<Vec<Vec<u8>>> = match &ctx.opts.prioritize {
        Prioritize::None => vec![Vec::new(); count],
        Prioritize::PerLayer(v) => (0..count)
            .map(|i| v.get(i).cloned().unwrap_or_default())
            .collect(),
        Prioritize::Paths(paths) => {
            let assigner = Arc::new(Assigner::new(paths.clone()));
            let scanned =
                futures::future::try_join_all(layers.iter().enumerate().map(|(pos, d)| {
                    let a = assigner.clone();
                    let diff = &diff_ids[pos];
                    async move {
                        layer::spool(ctx, id(pos), d, diff, a)
                            .await
                            .map_err(|e| layer_err(pos, e))
                    }
                }))
                .await?;
            let mut names = Vec::new();
            for (pos, (spool, n)) in scanned.into_iter().enumerate() {
                spools[pos] = Some(spool);
                names.push(n);
            }
            let (per, miss) = assigner.assign(&names);
            missing = miss
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            per
        }
    };
    let reconvert = ctx.opts.reconvert || ctx.opts.prioritize != Prioritize::None;

    // Convert each distinct (blob, prioritized files) once.
    let mut first_of: HashMap<(String, Vec<Vec<u8>>), usize> = HashMap::new();
    let mut jobs = Vec::new();
    for (pos, d) in layers.iter().enumerate() {
        let key = (d.digest.to_string(), per_layer[pos].clone());
        if done.contains_key(&key) || first_of.contains_key(&key) {
            continue;
        }
        first_of.insert(key, pos);
        jobs.push(LayerJob {
            id: id(pos),
            desc: d,
            expected_diff: &diff_ids[pos],
            prioritized: per_layer[pos].clone(),
            spool: spools[pos].take(),
            reconvert,
        });
    }
    let outcomes = futures::future::try_join_all(jobs.into_iter().map(|job| {
        let pos = job.id.layer;
        async move {
            let o = job.run(ctx).await.map_err(|e| layer_err(pos, e))?;
            ctx.progress.layer_done(id(pos), &o.report);
            Ok::<_, ConvertError>((pos, o))
        }
    }))
    .await?;
    for (pos, o) in outcomes {
        let key = (layers[pos].digest.to_string(), per_layer[pos].clone());
        done.insert(key, o);
    }
    let results: Vec<&LayerOutcome> = layers
        .iter()
        .enumerate()
        .map(|(pos, d)| &done[&(d.digest.to_string(), per_layer[pos].clone())])
        .collect();

    let new_diff_ids: Vec<String> = results.iter().map(|o| o.diff_id.clone()).collect();
    let config = image::new_config(&img.config, &new_diff_ids).map_err(&image_err)?;
    let config_digest = image::sha256_digest(&config);
    let config_size = config.len() as u64;
    ctx.sink.put_bytes(&config_digest, config).await?;
    let body = image::new_manifest(
        &img.manifest.raw,
        image::descriptor(image::OCI_CONFIG, &config_digest, config_size),
        results.iter().map(|o| o.descriptor.clone()).collect(),
    );
    let report = ImageReport {
        platform,
        source_manifest_digest: img.manifest_digest.to_string(),
        manifest_digest: image::sha256_digest(&body).to_string(),
        manifest_size: body.len() as u64,
        config_digest: config_digest.to_string(),
        layers: results.iter().map(|o| o.report.clone()).collect(),
        missing_prioritized: missing,
    };
    Ok((report, body))
}

#[cfg(test)]
mod tests;
