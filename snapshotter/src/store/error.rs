//! Failures of the metadata database itself (never the snapshot rules; those are the
//! crate's [`crate::Error`] kinds).

use crate::clip::clip;

/// The schema version this build reads and writes.
pub(crate) const SCHEMA_VERSION: u64 = 1;

/// Failures of the database itself (never the snapshot rules; those are [`crate::Error`] kinds).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (open, transaction, table, commit, storage).
    #[error("metadata store: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("metadata store: record of snapshot {:?} is corrupt: {source}", clip(.key))]
    Corrupt {
        /// The snapshot key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A record cannot be encoded (the system clock is before 1970).
    #[error("metadata store: cannot encode the record of snapshot {:?}: {source}", clip(.key))]
    Encode {
        /// The snapshot key.
        key: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by an incompatible version of starling.
    #[error("metadata store: schema version {found} is not supported (expected {SCHEMA_VERSION})")]
    Schema {
        /// The version found in the database.
        found: u64,
    },
    /// The `children` index names a snapshot that does not exist.
    #[error("metadata store: snapshot {:?} refers to missing snapshot {:?}", clip(.key), clip(.missing))]
    Dangling {
        /// The snapshot whose chain is broken.
        key: String,
        /// The key that is missing.
        missing: String,
    },
}
