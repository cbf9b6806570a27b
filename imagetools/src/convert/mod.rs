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

mod error;
pub mod image;
mod layer;
pub mod layout;
mod location;
pub mod prioritize;
mod progress;
mod sink;
mod source;
mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use registry::RegistryClient;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::{ConvertError, LayerError};
pub use image::Platform;
pub use location::{ImageLocation, OCI_PREFIX};
pub use progress::{LayerId, NoProgress, Progress, Stage};

use layer::{LayerJob, LayerOutcome};
use prioritize::Assigner;
use sink::Sink;
use source::{Source, SourceImage};

/// The layer format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// gzip eStargz (`application/vnd.oci.image.layer.v1.tar+gzip`).
    #[default]
    Estargz,
    /// zstd:chunked (`application/vnd.oci.image.layer.v1.tar+zstd`).
    ZstdChunked,
}

/// Which manifests of an image index to convert.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformChoice {
    /// This host's platform (a plain manifest is converted whatever its platform).
    #[default]
    Host,
    /// This platform (a plain manifest's config must declare it).
    Exact(Platform),
    /// Every platform; the result is an index.
    All,
}

/// Files to place first in the layers (followed by `.prefetch.landmark`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Prioritize {
    /// None: every layer starts with `.no.prefetch.landmark`.
    #[default]
    None,
    /// Paths, each prioritized in the topmost layer that has it (see [`prioritize`]).
    Paths(Vec<Vec<u8>>),
    /// Paths per layer position (bottom first), e.g. from a workload profile.
    PerLayer(Vec<Vec<Vec<u8>>>),
}

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Layer format.
    pub format: OutputFormat,
    /// Largest uncompressed chunk of a file (bytes).
    pub chunk_size: u64,
    /// Compression level (`None`: gzip 9, zstd 3).
    pub level: Option<u32>,
    /// Prioritized files.
    pub prioritize: Prioritize,
    /// Platforms to convert.
    pub platform: PlatformChoice,
    /// Layers converted at the same time (each uses `threads` compression threads).
    pub jobs: usize,
    /// Compression threads per layer (0: one per CPU).
    pub threads: usize,
    /// Rebuild layers that already are eStargz of the target format.
    pub reconvert: bool,
    /// Directory for temporary blobs (default: the system's; a layout destination uses
    /// its own directory).
    pub temp_dir: Option<PathBuf>,
}

/// Layers converted at once by default. Each layer's writer already compresses on every
/// core; a second layer overlaps one layer's download, decompression and upload with the
/// other's compression (on 2 cores with pydeb a little faster than 1, within noise; see
/// the README).
pub const DEFAULT_JOBS: usize = 2;

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            format: OutputFormat::Estargz,
            chunk_size: estargz::writer::DEFAULT_CHUNK_SIZE,
            level: None,
            prioritize: Prioritize::None,
            platform: PlatformChoice::Host,
            jobs: DEFAULT_JOBS,
            threads: 0,
            reconvert: false,
            temp_dir: None,
        }
    }
}

/// What happened to one layer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerReport {
    /// Source blob digest.
    pub source_digest: String,
    /// Source blob size.
    pub source_size: u64,
    /// Source media type.
    pub source_media_type: String,
    /// New blob digest.
    pub digest: String,
    /// New blob size.
    pub size: u64,
    /// New media type.
    pub media_type: String,
    /// diffID (uncompressed digest) of the new blob.
    pub diff_id: String,
    /// `containerd.io/snapshot/stargz/toc.digest`.
    pub toc_digest: String,
    /// `io.containers.estargz.uncompressed-size`.
    pub uncompressed_size: u64,
    /// True if the source blob was already eStargz and kept as it is.
    pub kept: bool,
    /// Prioritized paths placed in this layer.
    pub prioritized: usize,
    /// What the destination did: `uploaded`, `exists`, `mounted` or `stored`.
    pub stored: String,
    /// Why a layer that looked like eStargz was rebuilt, or that it was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Time spent on the layer (seconds).
    #[serde(skip)]
    pub seconds: f64,
}

/// One converted image (platform).
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Its platform (from the source index), if it came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Source manifest digest.
    pub source_manifest_digest: String,
    /// New manifest digest.
    pub manifest_digest: String,
    /// New manifest size.
    pub manifest_size: u64,
    /// New config digest.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerReport>,
    /// Prioritized paths no layer has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_prioritized: Vec<String>,
}

/// The result of [`convert`].
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The source as given.
    pub source: String,
    /// The destination.
    pub destination: String,
    /// Digest of what the destination tag names (the manifest, or the index).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The converted images.
    pub images: Vec<ImageReport>,
    /// Sum of the source layer sizes.
    pub source_layer_bytes: u64,
    /// Sum of the new layer sizes.
    pub layer_bytes: u64,
    /// Wall time (seconds).
    pub seconds: f64,
}

/// Shared state of one conversion.
pub(crate) struct Ctx {
    source: Source,
    sink: Sink,
    opts: ConvertOptions,
    progress: Arc<dyn Progress>,
    temp: PathBuf,
    permits: Arc<Semaphore>,
}

impl Ctx {
    async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

impl ConvertOptions {
    fn validate(&self) -> Result<(), ConvertError> {
        if self.chunk_size == 0 || self.chunk_size > (1 << 30) {
            return Err(ConvertError::Option(format!(
                "chunk size {} must be between 1 byte and 1 GiB",
                self.chunk_size
            )));
        }
        if let Some(l) = self.level {
            let ok = match self.format {
                OutputFormat::Estargz => (1..=9).contains(&l),
                OutputFormat::ZstdChunked => (1..=22).contains(&l),
            };
            if !ok {
                return Err(ConvertError::Option(format!(
                    "compression level {l} is out of range (gzip 1-9, zstd 1-22)"
                )));
            }
        }
        if self.jobs == 0 || self.jobs > 64 {
            return Err(ConvertError::Option(format!(
                "jobs {} must be between 1 and 64",
                self.jobs
            )));
        }
        if matches!(self.prioritize, Prioritize::PerLayer(_))
            && self.platform == PlatformChoice::All
        {
            return Err(ConvertError::Option(
                "per-layer prioritized files need a single platform".into(),
            ));
        }
        Ok(())
    }
}

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
