//! Errors of the registry client. Every error names the registry host, repository and object
//! (digest or tag) it is about, and the HTTP status when there is one. Credentials, tokens and
//! signed URLs never appear in them: URLs are reported without their query.

use std::fmt;
use std::time::Duration;

/// What a request was about: `host/repo@digest` or `host/repo:tag`. Small to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(std::sync::Arc<TargetParts>);

#[derive(Debug, PartialEq, Eq)]
struct TargetParts {
    host: String,
    repo: String,
    object: String,
}

impl Target {
    /// A target for a blob or manifest digest.
    pub fn digest(host: &str, repo: &str, digest: &str) -> Self {
        Target::new(host, repo, format!("@{digest}"))
    }

    /// A target for a tag.
    pub fn tag(host: &str, repo: &str, tag: &str) -> Self {
        Target::new(host, repo, format!(":{tag}"))
    }

    fn new(host: &str, repo: &str, object: String) -> Self {
        Target(std::sync::Arc::new(TargetParts {
            host: host.into(),
            repo: repo.into(),
            object,
        }))
    }

    /// Registry host as written in the reference (e.g. `docker.io`, `10.0.0.5:5000`).
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// Repository (e.g. `library/ubuntu`).
    pub fn repo(&self) -> &str {
        &self.0.repo
    }

    /// `@sha256:...` or `:tag`.
    pub fn object(&self) -> &str {
        &self.0.object
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.0.host, self.0.repo, self.0.object)
    }
}

/// Errors of the registry client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered with an unexpected HTTP status.
    #[error("{target}: HTTP {status} from {endpoint}{}", code_suffix(code))]
    Status {
        /// What was requested.
        target: Target,
        /// The endpoint that answered (registry, mirror or redirect host).
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error code (e.g. `BLOB_UNKNOWN`), if any.
        code: String,
    },
    /// The object does not exist (HTTP 404).
    #[error("{target}: not found (HTTP 404 from {endpoint})")]
    NotFound {
        /// What was requested.
        target: Target,
        /// The endpoint that answered.
        endpoint: String,
    },
    /// Authentication failed even after fetching fresh credentials (HTTP 401/403).
    #[error("{target}: unauthorized by {endpoint} (HTTP {status}): {reason}")]
    Unauthorized {
        /// What was requested.
        target: Target,
        /// The endpoint that refused.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// Why (no credentials, refused credentials, ...).
        reason: String,
    },
    /// A connection, TLS, timeout or body read failure.
    #[error("{target}: network error talking to {endpoint}: {cause}")]
    Network {
        /// What was requested.
        target: Target,
        /// The endpoint.
        endpoint: String,
        /// The cause (without URLs).
        cause: String,
    },
    /// The read could not finish within its deadline (retries included).
    #[error("{target}: gave up after {:.1}s and {attempts} attempt(s); last error: {}", after.as_secs_f64(), without_target(last, target))]
    Timeout {
        /// What was requested.
        target: Target,
        /// Time spent.
        after: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last: Box<RegistryError>,
    },
    /// The server's answer did not follow the protocol (bad Content-Range, truncated
    /// multipart body, missing Location, ...).
    #[error("{target}: bad response from {endpoint}: {reason}")]
    Protocol {
        /// What was requested.
        target: Target,
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// Content did not match its digest.
    #[error("{target}: content does not match digest {expected} (got {actual})")]
    DigestMismatch {
        /// What was requested.
        target: Target,
        /// The expected digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// Getting a bearer token failed.
    #[error("token endpoint {realm} for {target}: {reason}")]
    Token {
        /// What the token was for.
        target: Target,
        /// The token endpoint (scheme, host and path only).
        realm: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest or index could not be used.
    #[error("{target}: bad manifest: {reason}")]
    Manifest {
        /// The manifest.
        target: Target,
        /// What is wrong.
        reason: String,
    },
    /// An index has no manifest for this platform.
    #[error("{target}: no manifest for platform {platform} (index has: {available})")]
    NoPlatform {
        /// The index.
        target: Target,
        /// The wanted platform, e.g. `linux/amd64`.
        platform: String,
        /// The platforms present.
        available: String,
    },
    /// The docker credentials file could not be used.
    #[error("docker credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: String,
        /// What is wrong (never the credentials themselves).
        reason: String,
    },
    /// A requested range lies outside the blob, or a response would exceed a size limit.
    #[error("{target}: {reason}")]
    Range {
        /// The blob.
        target: Target,
        /// What is wrong.
        reason: String,
    },
    /// Reading the data to push failed.
    #[error("{target}: cannot read data to push: {cause}")]
    Source {
        /// The blob being pushed.
        target: Target,
        /// The cause.
        cause: String,
    },
    /// The client could not be built from the configuration.
    #[error("registry client setup: {0}")]
    Setup(String),
}

/// An error's message without its leading `target: ` (when nested under the same target).
fn without_target(e: &RegistryError, target: &Target) -> String {
    let text = e.to_string();
    let prefix = format!("{target}: ");
    match text.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

fn code_suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" ({code})")
    }
}

impl RegistryError {
    /// True if trying again (after a backoff) may succeed: network errors, 5xx, 429, 408,
    /// malformed or corrupted responses.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Network { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::DigestMismatch { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RegistryError::Token { reason, .. } => {
                reason.starts_with("network") || reason.contains("HTTP 5")
            }
            _ => false,
        }
    }

    /// The HTTP status this error carries, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Unauthorized { status, .. } => {
                Some(*status)
            }
            RegistryError::NotFound { .. } => Some(404),
            RegistryError::Timeout { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The target (host, repo, object) this error is about, if any.
    pub fn target(&self) -> Option<&Target> {
        match self {
            RegistryError::Status { target, .. }
            | RegistryError::NotFound { target, .. }
            | RegistryError::Unauthorized { target, .. }
            | RegistryError::Network { target, .. }
            | RegistryError::Timeout { target, .. }
            | RegistryError::Protocol { target, .. }
            | RegistryError::DigestMismatch { target, .. }
            | RegistryError::Token { target, .. }
            | RegistryError::Manifest { target, .. }
            | RegistryError::NoPlatform { target, .. }
            | RegistryError::Range { target, .. }
            | RegistryError::Source { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// Describes a reqwest error without its URL (which may carry signed query parameters).
pub(crate) fn describe(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "reading the response body failed"
    } else if err.is_request() {
        "sending the request failed"
    } else {
        "request failed"
    };
    let err = err.without_url();
    let mut cause = String::new();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !cause.contains(&text) {
            cause.push_str(": ");
            cause.push_str(&text);
        }
        source = s.source();
    }
    format!("{kind}{cause}")
}

/// A URL without query or fragment, for messages.
pub(crate) fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}
