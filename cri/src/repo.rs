//! Which credentials an image needs: its registry host and repository ([`RepoKey`]), from
//! an image reference normalised as docker and the kubelet do (`busybox` →
//! `docker.io/library/busybox`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The Docker Hub registry name used in normalised references.
pub const DOCKER_HUB: &str = "docker.io";

/// An image reference that names no repository.
#[derive(Debug, thiserror::Error)]
#[error("{image:?} is not an image reference (HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]): {source}")]
pub struct RepoError {
    /// The text given.
    pub image: String,
    /// Why it does not parse.
    #[source]
    pub source: oci_spec::distribution::ParseError,
}

/// A registry host and a repository on it: what pull credentials are kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RepoKey {
    /// Registry host as written in references, lower case (`docker.io`, `10.0.0.5:5000`).
    pub host: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
}

impl RepoKey {
    /// The key of `host` (any of Docker Hub's names, or a URL's host) and `repository`.
    pub fn new(host: &str, repository: &str) -> Self {
        RepoKey {
            host: normalize_host(host),
            repository: repository.to_string(),
        }
    }

    /// The repository an image reference (`HOST/REPO:TAG`, `REPO@DIGEST`, `busybox`) is in.
    pub fn from_image(image: &str) -> Result<Self, RepoError> {
        let r: oci_spec::distribution::Reference =
            image.trim().parse().map_err(|source| RepoError {
                image: image.to_string(),
                source,
            })?;
        Ok(RepoKey::new(r.registry(), r.repository()))
    }

    /// `HOST/REPOSITORY`: what the kubelet passes to credential provider plugins.
    pub fn image(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `HTTP://Reg:5000/v2/` → `reg:5000`.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix("https://")
        .or_else(|| h.strip_prefix("http://"))
        .unwrap_or(h);
    let h = h.split('/').next().unwrap_or(h).to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_repository() {
        let k = RepoKey::from_image("busybox").unwrap();
        assert_eq!(
            (k.host.as_str(), k.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let k = RepoKey::from_image("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(k, RepoKey::new("127.0.0.1:5000", "team/app"));
        let d = format!("reg.example.com/app@sha256:{}", "a".repeat(64));
        assert_eq!(
            RepoKey::from_image(&d).unwrap(),
            RepoKey::new("reg.example.com", "app")
        );
        assert_eq!(k.image(), "127.0.0.1:5000/team/app");
        assert_eq!(
            RepoKey::new("https://index.docker.io/v1/", "x").host,
            "docker.io"
        );
        assert_eq!(RepoKey::new("Reg.Local:5000", "x").host, "reg.local:5000");
    }

    #[test]
    fn non_references_are_errors_naming_the_text() {
        let e = RepoKey::from_image("Not A Reference")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Not A Reference\""), "{e}");
    }
}
