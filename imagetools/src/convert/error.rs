//! Errors of the image converter: every one names the image (and, for a layer, its
//! position and digest) and what failed. Causes are part of each message (not chained as
//! `source`, so `{:#}` prints them once).

use std::io;
use std::path::PathBuf;

use registry::RegistryError;

/// Errors of [`convert`](super::convert).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// SRC or DST could not be parsed.
    #[error("invalid image location {location:?}: {reason}")]
    Location {
        /// As given.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// An option is invalid.
    #[error("invalid option: {0}")]
    Option(String),
    /// A registry request failed (the error names host, repository and object).
    #[error("{cause}")]
    Registry {
        /// The image being read or written.
        image: String,
        /// The registry error.
        cause: RegistryError,
    },
    /// An OCI layout is missing, malformed or could not be written.
    #[error("OCI layout {}: {reason}", dir.display())]
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image (index, manifest or config) is not something we can convert.
    #[error("{image}: {reason}")]
    Image {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The requested platform is not in the image index (or not the image's).
    #[error("{image}: no image for platform {wanted} (available: {available})")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// One layer failed.
    #[error("{image}: layer {position}/{count} {digest}: {cause}")]
    Layer {
        /// The image.
        image: String,
        /// 1-based position, bottom first.
        position: usize,
        /// Layers in the image.
        count: usize,
        /// The source layer's digest.
        digest: String,
        /// What failed.
        cause: Box<LayerError>,
    },
    /// Temporary files could not be created.
    #[error("temporary directory {}: {cause}", dir.display())]
    Temp {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        cause: io::Error,
    },
}

/// What failed while converting or copying one layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The layer's media type is not an image layer we can convert.
    #[error("unsupported layer: {0}")]
    MediaType(String),
    /// Fetching the source blob failed.
    #[error("fetching the source blob: {0}")]
    Fetch(#[source] RegistryError),
    /// Reading the source blob from an OCI layout failed.
    #[error("reading the source blob: {0}")]
    Read(#[source] io::Error),
    /// The source blob does not match its digest or size.
    #[error("source blob is corrupt: {0}")]
    Corrupt(String),
    /// The source blob could not be decompressed.
    #[error("decompressing the source blob: {0}")]
    Decompress(#[source] io::Error),
    /// The source is compressed with an algorithm we do not read.
    #[error("source blob is {0}-compressed; only plain, gzip and zstd layers are supported")]
    Compression(&'static str),
    /// The uncompressed layer does not match the image config's diffID.
    #[error("uncompressed layer has digest {actual}, but the image config's rootfs.diff_ids says {expected}")]
    DiffId {
        /// From the config.
        expected: String,
        /// Of the content.
        actual: String,
    },
    /// The eStargz writer failed (malformed tar, unsupported entry, I/O).
    #[error("building the eStargz blob: {0}")]
    Build(#[source] estargz::WriteError),
    /// Reading back the built blob failed.
    #[error("reading the built blob: {0}")]
    Output(#[source] io::Error),
    /// Scanning the layer's tar for prioritized files failed.
    #[error("scanning the layer for prioritized files: {0}")]
    Scan(#[source] io::Error),
    /// A temporary file for the layer could not be created.
    #[error("temporary file in {}: {source}", dir.display())]
    TempFile {
        /// Where.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Storing the converted blob in the OCI layout failed.
    #[error("storing the converted blob: {0}")]
    Store(#[source] Box<ConvertError>),
    /// Pushing the blob failed.
    #[error("pushing the blob: {0}")]
    Push(#[source] RegistryError),
    /// A worker thread stopped.
    #[error("conversion worker stopped unexpectedly: {0}")]
    Worker(#[source] tokio::task::JoinError),
    /// The writer reported a blob digest that is not a sha256 digest.
    #[error("the built blob's digest {0:?} is not a sha256 digest")]
    BlobDigest(String),
}
