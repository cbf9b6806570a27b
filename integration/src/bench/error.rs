//! Errors of the benchmark suite.

use std::path::PathBuf;

/// Benchmark errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad option value.
    #[error("invalid option: {0}")]
    Option(String),
    /// The harness failed (registry, containerd, a command...).
    #[error(transparent)]
    Harness(#[from] crate::Error),
    /// Setting something up failed.
    #[error("setup: {0}")]
    Setup(String),
    /// One step of a sample failed.
    #[error("{0}")]
    Step(String),
    /// Writing results failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the chart failed.
    #[error("chart: {0}")]
    Chart(String),
}
