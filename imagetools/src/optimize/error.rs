//! Errors of `starling optimize`: each names the step that failed and why (causes are
//! part of the message, so `{:#}` prints them once).

use std::io;

use crate::convert::ConvertError;

/// Errors of [`optimize`](super::optimize).
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// An option is invalid.
    #[error("invalid option: {0}")]
    Option(String),
    /// The container runtime is not there.
    #[error("{0}")]
    NoRuntime(String),
    /// Resolving the image or setting up its lazy layers failed.
    #[error("{0}")]
    Source(String),
    /// The source cannot be mounted lazily and cannot be converted first.
    #[error("{0}")]
    NotLazy(String),
    /// Mounting one layer lazily failed.
    #[error("layer {position}/{count}: {reason}")]
    Layer {
        /// 1-based position, bottom first.
        position: usize,
        /// Number of layers.
        count: usize,
        /// Why.
        reason: String,
    },
    /// The workload cannot be run as configured (no command, command or user not in the
    /// image, bad overrides).
    #[error("workload: {0}")]
    Workload(String),
    /// A filesystem or process operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        cause: io::Error,
    },
    /// Converting (to the lazy source first, or to DST) failed.
    #[error("converting: {0}")]
    Convert(ConvertError),
    /// Stopped by the user (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

impl OptimizeError {
    pub(crate) fn io(what: impl Into<String>, cause: io::Error) -> Self {
        OptimizeError::Io {
            what: what.into(),
            cause,
        }
    }
}
