//! Errors of the registry client. Every error names the registry host, repository and object
//! (digest or tag) it is about, and the HTTP status when there is one. Credentials, tokens and
//! signed URLs never appear in them: URLs are reported without their query.
//!
//! [`RegistryError::permanent`] tells errors that cannot heal by retrying (a plain-HTTP
//! server addressed with https, an untrusted certificate, 401/403 without usable
//! credentials, 404, 400) from transient ones; [`RegistryError::fix`] names the setting
//! that fixes a permanent one.

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
    /// TLS to the endpoint cannot work: it answered in plain HTTP, its certificate is not
    /// trusted, or it does not speak TLS. Never retried.
    #[error("{target}: https to {endpoint} failed: {problem} ({cause})")]
    Tls {
        /// What was requested.
        target: Target,
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        problem: TlsProblem,
        /// The TLS library's description (without URLs).
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
    /// The registry host directory (`registry.hosts_dir`) has a file that cannot be used.
    #[error("registry host directory: {0}")]
    HostsDir(#[source] std::sync::Arc<config::hosts_dir::HostsDirError>),
}

/// Why a TLS connection cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server answered the TLS handshake in plain HTTP.
    PlainHttp,
    /// The server's certificate is not trusted (unknown issuer, expired, wrong name, ...).
    Certificate,
    /// The server's answer is not TLS (another protocol or a broken handshake).
    Protocol,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsProblem::PlainHttp => "the server speaks plain HTTP",
            TlsProblem::Certificate => "its TLS certificate is not trusted",
            TlsProblem::Protocol => "the server does not speak TLS",
        })
    }
}

/// An error that retrying cannot heal, by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// https to a server that speaks plain HTTP (or no TLS at all).
    PlainHttp,
    /// The server's TLS certificate is not trusted.
    Certificate,
    /// HTTP 401/403 and no credentials for the host.
    NoCredentials,
    /// HTTP 401/403 with credentials that were refused.
    CredentialsRefused,
    /// HTTP 404: the object is not there.
    NotFound,
    /// HTTP 400 or another 4xx the registry will answer again.
    BadRequest,
}

impl Permanent {
    /// A short stable name (logs, records): `plain_http`, `certificate`, ...
    pub fn name(self) -> &'static str {
        match self {
            Permanent::PlainHttp => "plain_http",
            Permanent::Certificate => "certificate",
            Permanent::NoCredentials => "no_credentials",
            Permanent::CredentialsRefused => "credentials_refused",
            Permanent::NotFound => "not_found",
            Permanent::BadRequest => "bad_request",
        }
    }
}

/// `Unauthorized::reason` when the host has no credentials.
pub(crate) const NO_CREDENTIALS: &str = "no credentials configured for this host";
/// `Unauthorized::reason` when credentials or a token were refused.
pub(crate) const CREDENTIALS_REFUSED: &str = "credentials or token refused";

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
    /// malformed or corrupted responses. Never for a [`RegistryError::permanent`] error.
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

    /// Why retrying cannot help, if it cannot: TLS that cannot work, 401/403 without
    /// usable credentials, 404, 400 (and other 4xx but 408 and 429).
    pub fn permanent(&self) -> Option<Permanent> {
        match self {
            RegistryError::Tls { problem, .. } => Some(match problem {
                TlsProblem::PlainHttp | TlsProblem::Protocol => Permanent::PlainHttp,
                TlsProblem::Certificate => Permanent::Certificate,
            }),
            RegistryError::Unauthorized { reason, .. } => Some(if reason == NO_CREDENTIALS {
                Permanent::NoCredentials
            } else {
                Permanent::CredentialsRefused
            }),
            RegistryError::NotFound { .. } => Some(Permanent::NotFound),
            RegistryError::Status { status, .. }
                if (400..500).contains(status) && *status != 408 && *status != 429 =>
            {
                Some(Permanent::BadRequest)
            }
            RegistryError::Timeout { last, .. } => last.permanent(),
            _ => None,
        }
    }

    /// What to change so that a [`RegistryError::permanent`] error goes away, naming the
    /// configuration key (e.g. `set insecure = true in [registry.hosts."10.0.0.5:5000"]`).
    pub fn fix(&self) -> Option<String> {
        let target = self.target()?;
        let host = target.host();
        let endpoint = match self {
            RegistryError::Tls { endpoint, .. } => endpoint.as_str(),
            _ => host,
        };
        // Docker Hub's endpoint is registry-1.docker.io; any other endpoint is a mirror.
        let key = if endpoint == host || endpoint.ends_with(".docker.io") {
            format!("[registry.hosts.\"{host}\"]")
        } else {
            format!("the mirror entry {{ host = \"{endpoint}\" }} of [registry.hosts.\"{host}\"]")
        };
        Some(match self.permanent()? {
            Permanent::PlainHttp => format!(
                "declare it insecure (plain HTTP): set insecure = true in {key} of the starling \
                 configuration"
            ),
            Permanent::Certificate => format!(
                "make this host trust the certificate of {endpoint} (add its CA to the system \
                 trust store, e.g. /usr/local/share/ca-certificates + update-ca-certificates, then \
                 restart the daemon), or, if it serves plain HTTP, set insecure = true in {key}"
            ),
            Permanent::NoCredentials => format!(
                "give credentials for {host}: username and password in [registry.hosts.\"{host}\"], \
                 or an entry for {host} in the docker config.json ([registry] docker_config)"
            ),
            Permanent::CredentialsRefused => format!(
                "the credentials for {host} were refused: check username/password in \
                 [registry.hosts.\"{host}\"] or the docker config.json ([registry] docker_config), \
                 and that they may pull {}",
                target.repo()
            ),
            Permanent::NotFound => format!(
                "{host}/{} has no {}: check the image reference (was the image or tag \
                 deleted or pushed elsewhere?)",
                target.repo(),
                target.object().trim_start_matches(['@', ':'])
            ),
            Permanent::BadRequest => format!(
                "{host} refused the request as malformed; check that it is an OCI distribution \
                 registry (and, for a proxy in front of it, that it passes Range headers)"
            ),
        })
    }

    /// True if the host gave no answer (connection refused or reset, request timed out),
    /// as opposed to answering with an error status.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RegistryError::Network { .. } => true,
            RegistryError::Timeout { last, .. } => last.is_unreachable(),
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
            | RegistryError::Tls { target, .. }
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

/// What makes TLS to a server impossible, from a failed request's error chain (rustls'
/// errors, also when wrapped in `io::Error`s): an answer that is not a TLS record (a
/// plain-HTTP server answers the ClientHello with `HTTP/1.1 400`) or a certificate that
/// does not verify. `None` for anything else (timeouts, resets, ...: transient).
pub(crate) fn tls_problem(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return match t {
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                    Some(TlsProblem::PlainHttp)
                }
                rustls::Error::InvalidMessage(_) => Some(TlsProblem::Protocol),
                rustls::Error::InvalidCertificate(_) => Some(TlsProblem::Certificate),
                _ => None,
            };
        }
        // An `io::Error`'s `source()` skips the error it wraps (which may be another one).
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
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
