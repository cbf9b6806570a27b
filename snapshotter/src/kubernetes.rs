//! The daemon's Kubernetes side ([`cri`]): the pods' pull credentials kept by the CRI
//! image service (`[kubernetes] image_service_address`) and the kubelet credential
//! provider plugins (`[[kubernetes.credential_providers]]`) become a credential source of
//! the lazy layers' registry client, asked before `[registry]`'s credentials; and the
//! image service itself, served on its own socket until the daemon stops.

use std::future::Future;
use std::sync::Arc;

use cri::proxy::{ImageServiceProxy, ProxyError};
use cri::{CredentialProviders, Keychain, PodAuth, PodCredentials};
use registry::{CredentialSource, Credentials, CredentialsFuture, RegistryClient};

use crate::server::{ServeError, Socket, DRAIN_GRACE};

/// Setting up the Kubernetes side failed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// A credential provider is misconfigured.
    #[error(transparent)]
    Provider(#[from] cri::provider::ProviderError),
    /// The image service socket could not be bound.
    #[error("[kubernetes] image_service_address: {0}")]
    Socket(#[from] ServeError),
}

/// The keychain as the registry client asks it.
struct KeychainSource(Arc<Keychain>);

fn credentials(auth: PodAuth) -> Credentials {
    match auth {
        PodAuth::Basic { username, password } => Credentials::Basic { username, password },
        PodAuth::IdentityToken { token } => Credentials::IdentityToken(token),
        PodAuth::RegistryToken { token } => Credentials::RegistryToken(token),
    }
}

impl CredentialSource for KeychainSource {
    fn credentials<'a>(&'a self, host: &'a str, repository: &'a str) -> CredentialsFuture<'a> {
        Box::pin(async move {
            let (auth, _origin) = self.0.lookup(host, repository).await?;
            Some(credentials(auth))
        })
    }
}

/// What was set up.
pub struct Kubernetes {
    keychain: Arc<Keychain>,
    image_service: Option<(ImageServiceProxy, Socket)>,
    runtime: std::path::PathBuf,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("keychain", &self.keychain)
            .field("image_service", &self.image_service.is_some())
            .finish()
    }
}

impl Kubernetes {
    /// Opens the pods' credentials (when the image service is on; a file that cannot be
    /// read is a WARN and an empty start), loads the credential providers and binds the
    /// image service socket. Must run inside the tokio runtime.
    pub fn set_up(cfg: &config::Config) -> Result<Self, KubernetesError> {
        let k = &cfg.kubernetes;
        let pods = k.image_service_enabled().then(|| {
            let path = PodCredentials::path_in(&cfg.root);
            Arc::new(PodCredentials::open(&path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "starting with no pod credentials");
                PodCredentials::empty(&path)
            }))
        });
        let providers = if k.credential_providers.is_empty() {
            None
        } else {
            Some(CredentialProviders::new(k)?)
        };
        let keychain = Arc::new(Keychain::new(pods.clone(), providers));
        let image_service = match pods {
            Some(pods) => {
                let socket = Socket::bind(&k.image_service_address)?;
                Some((ImageServiceProxy::new(&k.runtime_address, pods), socket))
            }
            None => None,
        };
        Ok(Kubernetes {
            keychain,
            image_service,
            runtime: k.runtime_address.clone(),
        })
    }

    /// Makes `client` ask the pods' credentials and the plugins first.
    pub fn plug_into(&self, client: &RegistryClient) {
        if !self.keychain.is_empty() {
            client.set_credential_source(Arc::new(KeychainSource(self.keychain.clone())));
        }
    }

    /// Serves the image service (if on) until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ProxyError> {
        let Some((proxy, mut socket)) = self.image_service else {
            shutdown.await;
            return Ok(());
        };
        let Some(listener) = socket.take_listener() else {
            return Ok(());
        };
        tracing::info!(
            address = %socket.path().display(),
            forwards_to = %self.runtime.display(),
            credentials = %proxy.pods().path().display(),
            "serving the CRI image service (pods' pull credentials for lazy layers)"
        );
        // Like the snapshots API: calls in flight get DRAIN_GRACE after the shutdown; idle
        // kubelet connections do not hold the daemon.
        let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = asked_tx.send(());
        };
        let deadline = async move {
            match asked_rx.await {
                Ok(()) => tokio::time::sleep(DRAIN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = proxy.serve(listener, signal) => r,
            () = deadline => Ok(()),
        };
        drop(socket);
        result
    }
}
