//! The crate's error: what stops the mirror from starting or serving.

use crate::store::StoreError;

/// Errors of the mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The block cache cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A setting is out of range (names the flag or key).
    #[error("invalid setting {key}: {reason}")]
    Setting {
        /// The flag or configuration key.
        key: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
