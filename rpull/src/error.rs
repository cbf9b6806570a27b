//! Errors of a lazy pull. Each one names what it is about: the image, the layer, or the
//! containerd call that failed and the code containerd answered with.

use std::path::PathBuf;

use registry::RegistryError;

/// Errors of [`pull`](super::pull).
#[derive(Debug, thiserror::Error)]
pub enum RpullError {
    /// containerd's socket could not be reached.
    #[error("cannot connect to containerd at {}: {cause}", address.display())]
    Connect {
        /// The socket.
        address: PathBuf,
        /// Why.
        cause: String,
    },
    /// A command-line or configuration value is not usable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which value (e.g. "--platform", "namespace").
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry could not serve the image (resolve, manifest, config or a layer blob).
    /// The registry error (its source) names the object it was about.
    #[error("{what}")]
    Registry {
        /// What was being done (e.g. "resolve image", "fetch layer 2/3 sha256:… of IMAGE").
        what: String,
        /// The registry client's error.
        #[source]
        source: RegistryError,
    },
    /// The image's manifest, index or config is not usable.
    #[error("{image}: {reason}")]
    BadImage {
        /// The image reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// An index has no manifest for the wanted platform.
    #[error("{image}: no manifest for platform {wanted} in the image index (it has: {available})")]
    NoPlatform {
        /// The image reference.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A containerd call failed.
    #[error("{what}: containerd answered {code:?}: {message}")]
    Containerd {
        /// What was being done, naming the image or layer (e.g. "prepare snapshot of
        /// layer 2/3 sha256:… of IMAGE").
        what: String,
        /// The gRPC code.
        code: containerd_client::tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// A layer applied by containerd's diff service does not have the config's diff ID.
    #[error(
        "{image}: layer {index}/{total} {digest}: unpacked content has diff ID {actual}, \
         the image config says {expected}"
    )]
    DiffIdMismatch {
        /// The image reference.
        image: String,
        /// 1-based layer number.
        index: usize,
        /// Number of layers.
        total: usize,
        /// The layer's (compressed) digest.
        digest: String,
        /// The diff ID in the image config.
        expected: String,
        /// The diff ID containerd computed.
        actual: String,
    },
    /// A background task died (a bug or a runtime shutting down).
    #[error("{what}: {cause}")]
    Task {
        /// What the task was doing.
        what: String,
        /// The join error.
        cause: String,
    },
}

impl RpullError {
    /// A containerd call error from a gRPC status.
    pub(crate) fn containerd(
        what: impl Into<String>,
        status: &containerd_client::tonic::Status,
    ) -> Self {
        RpullError::Containerd {
            what: what.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}
