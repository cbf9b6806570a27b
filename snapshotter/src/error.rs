//! The crate's error type. Every error carries a [`ErrorKind`] that says what containerd
//! should make of it; `service` turns kinds into gRPC codes in one place.

use std::io;
use std::path::{Path, PathBuf};

use crate::filter::FilterError;
use crate::merge::flatten::FlattenError;
use crate::store::StoreError;

/// What kind of failure an [`Error`] is, in containerd's `errdefs` terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The snapshot (or its parent) does not exist.
    NotFound,
    /// A snapshot with that key or name exists already.
    AlreadyExists,
    /// The snapshot is in the wrong state for the operation (e.g. has children).
    FailedPrecondition,
    /// The request itself is malformed (bad filter, immutable field, wrong kind).
    InvalidArgument,
    /// A remote layer the snapshot stands on cannot be served right now.
    Unavailable,
    /// Anything else: I/O, the metadata store, a bug.
    Internal,
}

/// Errors of snapshot operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::NotFound`].
    #[error("{0}")]
    NotFound(String),
    /// See [`ErrorKind::AlreadyExists`].
    #[error("{0}")]
    AlreadyExists(String),
    /// See [`ErrorKind::FailedPrecondition`].
    #[error("{0}")]
    FailedPrecondition(String),
    /// See [`ErrorKind::InvalidArgument`].
    #[error("{0}")]
    InvalidArgument(String),
    /// See [`ErrorKind::Unavailable`].
    #[error("{0}")]
    Unavailable(String),
    /// A list filter did not parse.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create snapshot directory".
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A merge could not be completed: a layer changed while it was copied, or there
    /// was nothing to merge.
    #[error(transparent)]
    Flatten(FlattenError),
    /// A blocking task failed to complete (panicked or was cancelled).
    #[error("internal error: {op} did not complete: {source}")]
    Task {
        /// The snapshot operation the task ran.
        op: &'static str,
        /// Why it did not complete.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::InvalidArgument(_) | Error::Filter(_) => ErrorKind::InvalidArgument,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Store(_) | Error::Io { .. } | Error::Flatten(_) | Error::Task { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// Wraps an I/O error with what was being done and where.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Result of snapshot operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
