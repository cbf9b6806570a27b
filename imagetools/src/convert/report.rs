//! What a conversion answers: per layer ([`LayerReport`]), per image ([`ImageReport`]) and
//! for the whole run ([`ConvertReport`]); serialized by `starling convert --json`.

use serde::Serialize;

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
