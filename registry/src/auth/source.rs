//! Credentials from outside the configuration: a source the daemon plugs in (Kubernetes
//! pods' pull credentials, kubelet credential provider plugins), asked per registry host
//! and repository before the `[registry]` hosts and the docker config file.

use std::future::Future;
use std::pin::Pin;

use super::credentials::Credentials;

/// A future answering a credential lookup.
pub type CredentialsFuture<'a> = Pin<Box<dyn Future<Output = Option<Credentials>> + Send + 'a>>;

/// Credentials per registry host and repository. A source logs its own failures and
/// answers `None` then: the lookup goes on with the configured credentials.
pub trait CredentialSource: Send + Sync + 'static {
    /// Credentials for `repository` on `host` (as written in references, lower case;
    /// Docker Hub is `docker.io`), if the source has some.
    fn credentials<'a>(&'a self, host: &'a str, repository: &'a str) -> CredentialsFuture<'a>;
}
