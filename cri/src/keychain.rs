//! Where the lazy layers' registry client finds credentials that come from Kubernetes: the
//! pods' pull credentials of the image's repository first, then credential provider
//! plugins.

use std::sync::Arc;

use crate::auth::PodAuth;
use crate::credentials::PodCredentials;
use crate::provider::CredentialProviders;
use crate::repo::RepoKey;

/// Where credentials came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A pod's PullImage through the image service.
    Pod,
    /// The named credential provider plugin.
    Provider(String),
}

/// Pods' credentials and credential provider plugins, asked in that order.
#[derive(Debug, Default)]
pub struct Keychain {
    pods: Option<Arc<PodCredentials>>,
    providers: Option<CredentialProviders>,
}

impl Keychain {
    /// A keychain over what is configured (either may be absent).
    pub fn new(pods: Option<Arc<PodCredentials>>, providers: Option<CredentialProviders>) -> Self {
        Keychain {
            pods,
            providers: providers.filter(|p| !p.is_empty()),
        }
    }

    /// True if it can never answer.
    pub fn is_empty(&self) -> bool {
        self.pods.is_none() && self.providers.is_none()
    }

    /// The pods' credentials, if kept.
    pub fn pods(&self) -> Option<&Arc<PodCredentials>> {
        self.pods.as_ref()
    }

    /// Credentials for `repository` on registry `host`.
    pub async fn lookup(&self, host: &str, repository: &str) -> Option<(PodAuth, Origin)> {
        let key = RepoKey::new(host, repository);
        if let Some(a) = self.pods.as_ref().and_then(|p| p.lookup(&key)) {
            return Some((a, Origin::Pod));
        }
        let providers = self.providers.as_ref()?;
        providers
            .lookup(&key)
            .await
            .map(|(a, name)| (a, Origin::Provider(name.to_string())))
    }
}
