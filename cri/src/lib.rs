//! Kubernetes node integration: what lets the lazy layers of a pod's image fetch with the
//! pod's credentials.
//!
//! A pod's imagePullSecrets travel in the CRI `PullImage` call to containerd and never
//! reach a snapshotter. [`proxy`] serves the CRI image service on its own socket (the
//! kubelet's `--image-service-endpoint`), forwards every call to containerd and keeps the
//! credentials of each `PullImage` for the image's registry host and repository
//! ([`credentials`], on disk, so a restarted daemon still has them) before containerd
//! pulls; [`provider`] runs kubelet credential provider plugins (the exec protocol);
//! [`keychain`] answers the registry client's question "credentials for this repository?"
//! from both. [`api`] is the CRI API (k8s.io/cri-api `runtime.v1`) and a unix-socket
//! connector, also used by the tests that drive containerd as the kubelet does.

pub mod api;
pub mod auth;
pub mod credentials;
pub mod keychain;
pub mod provider;
pub mod proxy;
pub mod repo;

pub use auth::PodAuth;
pub use credentials::PodCredentials;
pub use keychain::{Keychain, Origin};
pub use provider::CredentialProviders;
pub use repo::RepoKey;
