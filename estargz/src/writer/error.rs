//! Errors of the writer.

use std::io;

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    ReadInput(#[source] io::Error),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    WriteOutput(#[source] io::Error),
    /// The temporary file for prioritizing failed.
    #[error("temporary file for reordering: {0}")]
    Spool(#[source] io::Error),
    /// Compression failed.
    #[error("compressing: {0}")]
    Compress(#[source] io::Error),
    /// The input is not a valid tar.
    #[error("malformed tar at input offset {offset}: {detail}")]
    Tar {
        /// Offset in the uncompressed input.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The input has an entry the format cannot carry.
    #[error("tar entry {name:?}: {detail}")]
    UnsupportedEntry {
        /// Entry name.
        name: String,
        /// Why.
        detail: String,
    },
    /// The input is compressed with an unsupported algorithm.
    #[error("input is {0}-compressed; only plain, gzip and zstd tars are supported")]
    UnsupportedInputCompression(&'static str),
    /// An option is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A compression thread stopped.
    #[error("compression pipeline stopped unexpectedly")]
    PipelineStopped,
}
