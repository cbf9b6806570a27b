//! The image being converted: resolving SRC (a registry reference or an OCI layout) to
//! one or more platform manifests with their configs, and reading its layer blobs (byte
//! ranges for probing, whole streams for converting).

use std::ops::Range;
use std::sync::Arc;

use oci_spec::image::Digest;
use registry::{Priority, Reference, RegistryClient};
use serde_json::Value;

use super::image::{self, Desc, Manifest, Platform};
use super::layout::Layout;
use super::progress::{LayerId, Progress};
use super::stream::SourceReader;
use super::{ConvertError, ImageLocation, LayerError, PlatformChoice};

/// Where the source image is read from.
pub enum Source {
    /// A registry.
    Registry {
        /// The client.
        client: RegistryClient,
        /// The reference as given.
        reference: Reference,
    },
    /// An OCI layout.
    Layout {
        /// The layout.
        layout: Layout,
        /// The ref name, if given.
        tag: Option<String>,
    },
}

/// One platform's image of the source.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// For messages: `host/repo@digest` or `oci:DIR@digest`.
    pub name: String,
    /// Digest of its manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The config JSON.
    pub config: Value,
    /// Its entry in the source index, if it came from one.
    pub index_entry: Option<Desc>,
}

/// What SRC resolved to.
pub struct Resolved {
    /// The index JSON and digest when SRC named an index and every platform is converted.
    pub index: Option<(Digest, Value)>,
    /// The images to convert (one, unless every platform is converted).
    pub images: Vec<SourceImage>,
}

/// A fetched manifest or index.
struct Fetched {
    digest: Digest,
    media_type: String,
    body: Value,
}

impl Source {
    /// A source for `location`.
    pub fn new(client: &RegistryClient, location: &ImageLocation) -> Result<Source, ConvertError> {
        Ok(match location {
            ImageLocation::Registry(r) => Source::Registry {
                client: client.clone(),
                reference: r.clone(),
            },
            ImageLocation::Layout { dir, tag } => Source::Layout {
                layout: Layout::open(dir)?,
                tag: tag.clone(),
            },
        })
    }

    /// The source as written.
    pub fn name(&self) -> String {
        match self {
            Source::Registry { reference, .. } => reference.to_string(),
            Source::Layout { layout, tag } => ImageLocation::Layout {
                dir: layout.dir().to_path_buf(),
                tag: tag.clone(),
            }
            .to_string(),
        }
    }

    /// The name of the object with `digest`, for messages.
    fn name_at(&self, digest: &Digest) -> String {
        match self {
            Source::Registry { reference, .. } => {
                format!("{}@{digest}", reference.repository)
            }
            Source::Layout { layout, .. } => format!("oci:{}@{digest}", layout.dir().display()),
        }
    }

    fn registry_err(&self, e: registry::RegistryError) -> ConvertError {
        ConvertError::Registry {
            image: self.name(),
            cause: e,
        }
    }

    fn image_err(&self, image: String, reason: impl Into<String>) -> ConvertError {
        ConvertError::Image {
            image,
            reason: reason.into(),
        }
    }

    async fn fetch_root(&self) -> Result<Fetched, ConvertError> {
        match self {
            Source::Registry { client, reference } => {
                let f = client
                    .fetch_manifest(&reference.repository, &reference.object())
                    .await
                    .map_err(|e| self.registry_err(e))?;
                self.parse_fetched(f.digest, &f.media_type, &f.body)
            }
            Source::Layout { layout, tag } => {
                let desc = layout.find(tag.as_deref())?;
                self.fetch_manifest(&desc).await
            }
        }
    }

    async fn fetch_manifest(&self, desc: &Desc) -> Result<Fetched, ConvertError> {
        match self {
            Source::Registry { client, reference } => {
                let f = client
                    .fetch_manifest(&reference.repository, desc.digest.as_ref())
                    .await
                    .map_err(|e| self.registry_err(e))?;
                self.parse_fetched(f.digest, &f.media_type, &f.body)
            }
            Source::Layout { layout, .. } => {
                let body = layout.read_blob(&desc.digest, desc.size, image::MAX_MANIFEST)?;
                self.parse_fetched(desc.digest.clone(), &desc.media_type, &body)
            }
        }
    }

    fn parse_fetched(
        &self,
        digest: Digest,
        header_type: &str,
        body: &[u8],
    ) -> Result<Fetched, ConvertError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            self.image_err(self.name_at(&digest), format!("manifest is not JSON: {e}"))
        })?;
        Ok(Fetched {
            media_type: image::body_media_type(&value, header_type),
            digest,
            body: value,
        })
    }

    /// Reads a small blob whole (digest-checked).
    async fn fetch_small_blob(&self, desc: &Desc, limit: u64) -> Result<Vec<u8>, ConvertError> {
        match self {
            Source::Registry { client, reference } => {
                if desc.size > limit {
                    return Err(self.image_err(
                        self.name_at(&desc.digest),
                        format!("blob is {} bytes, more than the {limit} allowed", desc.size),
                    ));
                }
                let blob = client
                    .blob(&reference.repository, &desc.digest, Some(desc.size))
                    .await
                    .map_err(|e| self.registry_err(e))?;
                let b = blob
                    .read_all(limit)
                    .await
                    .map_err(|e| self.registry_err(e))?;
                Ok(b.to_vec())
            }
            Source::Layout { layout, .. } => layout.read_blob(&desc.digest, desc.size, limit),
        }
    }

    /// Resolves SRC to the images to convert.
    pub async fn resolve(&self, choice: &PlatformChoice) -> Result<Resolved, ConvertError> {
        let root = self.fetch_root().await?;
        if !image::is_index(&root.media_type, &root.body) {
            let img = self.load_image(root, None).await?;
            if let PlatformChoice::Exact(want) = choice {
                let have = config_platform(&img.config);
                if !want.matches(&have) {
                    return Err(ConvertError::NoPlatform {
                        image: self.name(),
                        wanted: want.to_string(),
                        available: have.to_string(),
                    });
                }
            }
            return Ok(Resolved {
                index: None,
                images: vec![img],
            });
        }
        let index_name = self.name_at(&root.digest);
        let entries =
            image::index_entries(&root.body).map_err(|e| self.image_err(index_name.clone(), e))?;
        let chosen: Vec<&Desc> = match choice {
            PlatformChoice::All => image::all_platforms(&entries),
            PlatformChoice::Host | PlatformChoice::Exact(_) => {
                let want = match choice {
                    PlatformChoice::Exact(p) => p.clone(),
                    _ => Platform::host(),
                };
                match image::pick_platform(&entries, &want) {
                    Some(d) => vec![d],
                    None => {
                        return Err(ConvertError::NoPlatform {
                            image: self.name(),
                            wanted: want.to_string(),
                            available: image::platform_list(&entries),
                        })
                    }
                }
            }
        };
        if chosen.is_empty() {
            return Err(self.image_err(index_name, "the image index lists no image manifests"));
        }
        let mut images = Vec::new();
        for d in chosen {
            let m = self.fetch_manifest(d).await?;
            if image::is_index(&m.media_type, &m.body) {
                return Err(self.image_err(
                    self.name_at(&m.digest),
                    "nested image indexes are not supported",
                ));
            }
            images.push(self.load_image(m, Some(d.clone())).await?);
        }
        let index = matches!(choice, PlatformChoice::All).then_some((root.digest, root.body));
        Ok(Resolved { index, images })
    }

    async fn load_image(
        &self,
        m: Fetched,
        index_entry: Option<Desc>,
    ) -> Result<SourceImage, ConvertError> {
        let name = self.name_at(&m.digest);
        let manifest =
            Manifest::parse(&m.media_type, &m.body).map_err(|e| self.image_err(name.clone(), e))?;
        let bytes = self
            .fetch_small_blob(&manifest.config, image::MAX_CONFIG)
            .await?;
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.image_err(name.clone(), format!("image config is not JSON: {e}")))?;
        Ok(SourceImage {
            name,
            manifest_digest: m.digest,
            manifest,
            config,
            index_entry,
        })
    }

    /// Reads a byte range of a layer blob.
    pub async fn read_range(&self, desc: &Desc, range: Range<u64>) -> Result<Vec<u8>, LayerError> {
        match self {
            Source::Registry { client, reference } => {
                let blob = client
                    .blob(&reference.repository, &desc.digest, Some(desc.size))
                    .await
                    .map_err(LayerError::Fetch)?;
                let b = blob
                    .read_range(range, Priority::OnDemand)
                    .await
                    .map_err(LayerError::Fetch)?;
                Ok(b.to_vec())
            }
            Source::Layout { layout, .. } => {
                let f = layout
                    .open_blob(&desc.digest, desc.size)
                    .map_err(LayerError::Corrupt)?;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, range.start)
                    .map_err(LayerError::Read)?;
                Ok(buf)
            }
        }
    }

    /// Opens a layer blob for reading from a conversion thread (call inside the runtime).
    pub async fn reader(
        &self,
        desc: &Desc,
        id: LayerId,
        progress: Arc<dyn Progress>,
    ) -> Result<SourceReader, LayerError> {
        match self {
            Source::Registry { client, reference } => {
                let blob = client
                    .blob(&reference.repository, &desc.digest, Some(desc.size))
                    .await
                    .map_err(LayerError::Fetch)?;
                Ok(SourceReader::registry(blob, id, progress))
            }
            Source::Layout { layout, .. } => {
                let f = layout
                    .open_blob(&desc.digest, desc.size)
                    .map_err(LayerError::Corrupt)?;
                Ok(SourceReader::file(
                    f,
                    desc.digest.clone(),
                    desc.size,
                    id,
                    progress,
                ))
            }
        }
    }
}

/// The platform an image config declares.
fn config_platform(config: &Value) -> Platform {
    let s = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Platform {
        os: s("os"),
        architecture: s("architecture"),
        variant: config
            .get("variant")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}
