//! Progress events of a conversion, for a terminal display or log lines. The converter
//! calls these from its tasks and worker threads; implementations must be cheap
//! (`layer_bytes` is called for every piece of a downloaded blob).

use super::LayerReport;

/// Identifies a layer: image number (0 unless converting every platform) and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerId {
    /// Index of the image (platform) in this conversion.
    pub image: usize,
    /// Position in the image, bottom first (0-based).
    pub layer: usize,
}

/// What is happening to a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the blob's footer and TOC to see whether it is already eStargz.
    Probing,
    /// Downloading and decompressing into a temporary tar (to find prioritized files).
    Spooling,
    /// Downloading, decompressing and writing the eStargz blob.
    Converting,
    /// Already in the target format: checking and copying it as it is.
    Keeping,
    /// Storing the blob at the destination.
    Uploading,
}

impl Stage {
    /// A lowercase word for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Probing => "probing",
            Stage::Spooling => "spooling",
            Stage::Converting => "converting",
            Stage::Keeping => "keeping",
            Stage::Uploading => "uploading",
        }
    }
}

/// Receives progress events. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// An image was resolved and its layers are about to be converted.
    fn image(&self, _image: usize, _name: &str, _platform: Option<&str>, _layers: usize) {}
    /// A layer entered a stage; `size` is the source blob size.
    fn layer_stage(&self, _id: LayerId, _digest: &str, _size: u64, _stage: Stage) {}
    /// Bytes of the source blob read so far (cumulative).
    fn layer_bytes(&self, _id: LayerId, _read: u64) {}
    /// A layer is done.
    fn layer_done(&self, _id: LayerId, _report: &LayerReport) {}
    /// A manifest (or index) was stored at the destination.
    fn stored(&self, _what: &str, _digest: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
