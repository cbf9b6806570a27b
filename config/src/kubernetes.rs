//! `[kubernetes]`: the CRI image-service proxy that keeps pods' pull credentials for the
//! lazy layers of their images, and kubelet credential provider plugins
//! (`[[kubernetes.credential_providers]]`, the kubelet's exec protocol).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// The credential provider API versions the kubelet speaks (and starling with it).
pub const CREDENTIAL_PROVIDER_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// `[kubernetes]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Unix socket on which the daemon serves the CRI image service (give it to the
    /// kubelet as `--image-service-endpoint unix://PATH`). Every call is forwarded to
    /// `runtime_address`; the credentials of each PullImage are kept for the image's
    /// repository (`<root>/cri/credentials.json`, 0600) so its lazy layers fetch with
    /// them. "" = off.
    pub image_service_address: PathBuf,
    /// containerd's socket (its CRI plugin) the image service forwards to.
    pub runtime_address: PathBuf,
    /// Directory of the credential provider plugins (the kubelet's
    /// `--image-credential-provider-bin-dir`).
    pub credential_provider_bin_dir: PathBuf,
    /// How long one run of a credential provider plugin may take before it is killed
    /// (the lookup then goes on without its credentials).
    #[serde(with = "crate::units::duration")]
    pub credential_provider_timeout: Duration,
    /// Credential provider plugins, asked in order for the credentials of the images they
    /// match, after the pods' credentials and before `[registry]`'s: the same entries as
    /// in the kubelet's CredentialProviderConfig.
    pub credential_providers: Vec<CredentialProviderConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            image_service_address: PathBuf::new(),
            runtime_address: PathBuf::from("/run/containerd/containerd.sock"),
            credential_provider_bin_dir: PathBuf::from(
                "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec",
            ),
            credential_provider_timeout: Duration::from_secs(30),
            credential_providers: Vec::new(),
        }
    }
}

/// `[[kubernetes.credential_providers]]`: one plugin, as in the kubelet's
/// CredentialProviderConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialProviderConfig {
    /// The plugin's executable in `credential_provider_bin_dir`.
    pub name: String,
    /// Images the plugin is asked about: "HOST[:PORT][/PATH]" patterns where each part of
    /// the host name may be a glob ("*.azurecr.io", "*.dkr.ecr.*.amazonaws.com"); the
    /// port must be the image's, the path a prefix of its repository.
    pub match_images: Vec<String>,
    /// How long the plugin's answer is kept when it names no cacheDuration.
    #[serde(with = "crate::units::duration")]
    pub default_cache_duration: Duration,
    /// The CredentialProviderRequest version the plugin reads, e.g.
    /// "credentialprovider.kubelet.k8s.io/v1".
    pub api_version: String,
    /// Arguments of the plugin.
    pub args: Vec<String>,
    /// Environment variables added to the daemon's for the plugin.
    pub env: BTreeMap<String, String>,
}

impl KubernetesConfig {
    /// True when the image service proxy is on.
    pub fn image_service_enabled(&self) -> bool {
        !self.image_service_address.as_os_str().is_empty()
    }

    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if self.image_service_enabled() {
            let a = &self.image_service_address;
            if !a.is_absolute() {
                return Err(Invalid::new(
                    at.key("image_service_address"),
                    "must be an absolute path (or \"\" for off)",
                ));
            }
            if a.as_os_str().len() > 100 {
                return Err(Invalid::new(
                    at.key("image_service_address"),
                    "is too long for a unix socket path (at most 100 bytes)",
                ));
            }
            if self.runtime_address.as_os_str().is_empty() {
                return Err(Invalid::new(
                    at.key("runtime_address"),
                    "must name containerd's socket when image_service_address is set",
                ));
            }
            if *a == self.runtime_address {
                return Err(Invalid::new(
                    at.key("image_service_address"),
                    "must differ from runtime_address (the proxy would forward to itself)",
                ));
            }
        }
        if self.credential_provider_timeout.is_zero() {
            return Err(Invalid::new(
                at.key("credential_provider_timeout"),
                "must be greater than 0s",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.credential_providers.iter().enumerate() {
            let here = at.key("credential_providers").index(i);
            p.validate(&here)?;
            if !names.insert(p.name.as_str()) {
                return Err(Invalid::new(
                    here.key("name"),
                    format!("{:?} is listed twice; names must be unique", p.name),
                ));
            }
        }
        if !self.credential_providers.is_empty() && !self.credential_provider_bin_dir.is_absolute()
        {
            return Err(Invalid::new(
                at.key("credential_provider_bin_dir"),
                "must be an absolute path when credential_providers are listed",
            ));
        }
        Ok(())
    }
}

impl CredentialProviderConfig {
    fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if self.name.is_empty() || self.name.contains('/') || self.name == "." || self.name == ".."
        {
            return Err(Invalid::new(
                at.key("name"),
                "must be the plugin's file name in credential_provider_bin_dir (no '/')",
            ));
        }
        if self.match_images.is_empty() {
            return Err(Invalid::new(
                at.key("match_images"),
                "must list at least one image pattern",
            ));
        }
        for (j, m) in self.match_images.iter().enumerate() {
            if m.is_empty() || m.contains("://") || m.chars().any(char::is_whitespace) {
                return Err(Invalid::new(
                    at.key("match_images").index(j),
                    format!("{m:?} must be HOST[:PORT][/PATH] (globs allowed in the host)"),
                ));
            }
        }
        if !CREDENTIAL_PROVIDER_API_VERSIONS.contains(&self.api_version.as_str()) {
            return Err(Invalid::new(
                at.key("api_version"),
                format!(
                    "{:?} is not one of {}",
                    self.api_version,
                    CREDENTIAL_PROVIDER_API_VERSIONS.join(", ")
                ),
            ));
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(Invalid::new(
                    at.key("env").key(name),
                    "invalid variable name",
                ));
            }
        }
        Ok(())
    }
}
