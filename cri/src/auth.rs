//! Registry credentials as the kubelet hands them over: the CRI `AuthConfig` of a
//! `PullImage` (from a pod's imagePullSecrets or the kubelet's own providers) read the
//! way containerd reads it, or a credential provider plugin's username and password.

use base64::Engine as _;
use config::Secret;
use serde::{Deserialize, Serialize};

use crate::api::AuthConfig;
use crate::repo::normalize_host;

/// Credentials for one registry repository.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PodAuth {
    /// User name and password: basic auth, or basic auth to the registry's token endpoint.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// An OAuth2 refresh token for the registry's token endpoint.
    IdentityToken {
        /// The token.
        token: Secret,
    },
    /// A bearer token sent to the registry as it is.
    RegistryToken {
        /// The token.
        token: Secret,
    },
}

impl std::fmt::Debug for PodAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            PodAuth::IdentityToken { .. } => f.write_str("IdentityToken(<redacted>)"),
            PodAuth::RegistryToken { .. } => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// An `AuthConfig` that cannot be used. Never quotes a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `auth` is not base64 of `user:password`.
    #[error("the `auth` field of the pull credentials is not base64 of \"user:password\"")]
    BadAuthField,
}

impl PodAuth {
    /// The credentials of a CRI `AuthConfig` for images on `host`, read like containerd's
    /// CRI plugin reads them: none when it is empty or its `server_address` names another
    /// host; else `username` (+ `password`), else `identity_token`, else `auth` (base64
    /// `user:password`), else `registry_token`.
    pub fn from_cri(auth: &AuthConfig, host: &str) -> Result<Option<PodAuth>, AuthError> {
        if !auth.server_address.is_empty()
            && normalize_host(&auth.server_address) != normalize_host(host)
        {
            return Ok(None);
        }
        if !auth.username.is_empty() {
            return Ok(Some(PodAuth::Basic {
                username: auth.username.clone(),
                password: Secret::new(auth.password.clone()),
            }));
        }
        if !auth.identity_token.is_empty() {
            return Ok(Some(PodAuth::IdentityToken {
                token: Secret::new(auth.identity_token.clone()),
            }));
        }
        if !auth.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.auth.trim())
                .map_err(|_| AuthError::BadAuthField)?;
            let text = String::from_utf8(raw).map_err(|_| AuthError::BadAuthField)?;
            let (u, p) = text.split_once(':').ok_or(AuthError::BadAuthField)?;
            return Ok(Some(PodAuth::Basic {
                username: u.to_string(),
                password: Secret::new(p),
            }));
        }
        if !auth.registry_token.is_empty() {
            return Ok(Some(PodAuth::RegistryToken {
                token: Secret::new(auth.registry_token.clone()),
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
        let mut a = AuthConfig::default();
        f(&mut a);
        a
    }

    #[test]
    fn reads_every_form_like_containerd() {
        let basic = |u: &str, p: &str| PodAuth::Basic {
            username: u.into(),
            password: Secret::new(p),
        };
        let h = "reg:5000";
        assert_eq!(PodAuth::from_cri(&AuthConfig::default(), h), Ok(None));
        let a = cfg(|a| {
            a.username = "u".into();
            a.password = "p".into();
            a.auth = "ignored".into();
        });
        assert_eq!(PodAuth::from_cri(&a, h), Ok(Some(basic("u", "p"))));
        let a = cfg(|a| a.auth = base64::engine::general_purpose::STANDARD.encode("al:pw:x"));
        assert_eq!(PodAuth::from_cri(&a, h), Ok(Some(basic("al", "pw:x"))));
        let a = cfg(|a| a.identity_token = "rt".into());
        assert!(matches!(
            PodAuth::from_cri(&a, h),
            Ok(Some(PodAuth::IdentityToken { .. }))
        ));
        let a = cfg(|a| a.registry_token = "bt".into());
        assert!(matches!(
            PodAuth::from_cri(&a, h),
            Ok(Some(PodAuth::RegistryToken { .. }))
        ));
        let a = cfg(|a| a.auth = "bm90LWEtcGFpcg==".into()); // "not-a-pair"
        assert_eq!(PodAuth::from_cri(&a, h), Err(AuthError::BadAuthField));
    }

    #[test]
    fn server_address_must_name_the_image_host() {
        let a = cfg(|a| {
            a.username = "u".into();
            a.server_address = "https://other.example.com".into();
        });
        assert_eq!(PodAuth::from_cri(&a, "reg:5000"), Ok(None));
        let a = cfg(|a| {
            a.username = "u".into();
            a.server_address = "reg:5000".into();
        });
        assert!(PodAuth::from_cri(&a, "reg:5000").unwrap().is_some());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let a = PodAuth::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        let d = format!("{a:?}");
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
    }
}
