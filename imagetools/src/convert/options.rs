//! What a conversion is asked to do ([`ConvertOptions`]: output format, platforms,
//! prioritized files, parallelism).

use std::path::PathBuf;

use super::error::ConvertError;
use super::image::Platform;

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

impl ConvertOptions {
    pub(crate) fn validate(&self) -> Result<(), ConvertError> {
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
