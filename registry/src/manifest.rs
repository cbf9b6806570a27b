//! Manifests: fetching by tag or digest (digest-checked), resolving image indexes and docker
//! manifest lists to this host's platform, and the image's config blob and layer descriptors.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use sha2::{Digest as _, Sha256};

use super::auth::Scope;
use super::transport::{Answer, Request};
use super::{Reference, RegistryClient, RegistryError, Repository, Target};

/// Largest manifest or index accepted.
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted.
const MAX_CONFIG: u64 = 16 << 20;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest (or index) as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its digest (checked against the body).
    pub digest: Digest,
    /// Its media type (from the body's `mediaType`, else the `Content-Type` header).
    pub media_type: String,
    /// The raw body.
    pub body: Bytes,
}

/// An image resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference, pinned to the platform manifest's digest.
    pub reference: Reference,
    /// Digest of the index, if the reference named one.
    pub index_digest: Option<Digest>,
    /// Digest of the image manifest.
    pub manifest_digest: Digest,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// The raw config blob (digest-checked).
    pub config_bytes: Bytes,
}

impl ResolvedImage {
    /// The layer descriptors, bottom first, with their annotations (e.g. the eStargz
    /// `containerd.io/snapshot/stargz/toc.digest`).
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// The parsed image config.
    pub fn config(&self) -> Result<ImageConfiguration, RegistryError> {
        serde_json::from_slice(&self.config_bytes).map_err(|e| RegistryError::Manifest {
            target: Target::digest(
                &self.reference.repository.host,
                &self.reference.repository.name,
                self.manifest.config().digest().as_ref(),
            ),
            reason: format!("image config is not valid: {e}"),
        })
    }
}

/// This host's platform as OCI names it (`linux/amd64`, `linux/arm64`, ...).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        other => other,
    };
    ("linux", arch)
}

impl RegistryClient {
    /// Fetches the manifest or index `reference` names (tag or digest).
    pub async fn fetch_manifest(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        self.fetch_manifest_accepting(repo, reference, None).await
    }

    /// [`Self::fetch_manifest`] asking for the media types of `accept` (an `Accept` header
    /// value, e.g. a mirror's client's) instead of the four this client reads.
    pub async fn fetch_manifest_accepting(
        &self,
        repo: &Repository,
        reference: &str,
        accept: Option<&str>,
    ) -> Result<FetchedManifest, RegistryError> {
        let inner = &self.inner;
        let host = inner.host(&repo.host)?;
        let pinned = Digest::from_str(reference).ok();
        let target = match &pinned {
            Some(d) => Target::digest(&repo.host, &repo.name, d.as_ref()),
            None => Target::tag(&repo.host, &repo.name, reference),
        };
        let mut req = Request::new(
            Method::GET,
            format!("/v2/{}/manifests/{reference}", repo.name),
            Scope::pull(&repo.name),
            target.clone(),
        );
        let accept = accept
            .and_then(|a| HeaderValue::from_str(a).ok())
            .unwrap_or(HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
            ));
        req.headers.insert(ACCEPT, accept);
        req.follow_redirects = true;
        req.resolve = pinned.is_none();
        // The digest is checked inside the answer's handler: a mirror serving a manifest that
        // does not match is skipped like a failing one and the next endpoint asked.
        let pinned = &pinned;
        let (header_type, actual, body) = inner
            .execute(&host, &req, inner.deadline(), |mut a: Answer| async move {
                if a.status().as_u16() != 200 {
                    return Err(a.status_error().await);
                }
                let h = a.response.headers();
                let ctype = h
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let dig = h
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = a.body(MAX_MANIFEST).await?;
                let actual =
                    Digest::from_str(&format!("sha256:{}", hex::encode(Sha256::digest(&body))))
                        .map_err(|e| RegistryError::Manifest {
                            target: a.target.clone(),
                            reason: e.to_string(),
                        })?;
                for expected in pinned.iter().map(|d| d.to_string()).chain(dig) {
                    if expected.starts_with("sha256:") && expected != actual.as_ref() {
                        return Err(RegistryError::DigestMismatch {
                            target: a.target.clone(),
                            expected,
                            actual: actual.to_string(),
                        });
                    }
                }
                Ok((ctype, actual, body))
            })
            .await?;
        let body_type = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let media_type = body_type.unwrap_or_else(|| {
            header_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        });
        Ok(FetchedManifest {
            digest: actual,
            media_type,
            body,
        })
    }

    /// Resolves `reference` to this host's platform manifest and fetches its config.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        let repo = &reference.repository;
        let first = self.fetch_manifest(repo, &reference.object()).await?;
        let target = Target::digest(&repo.host, &repo.name, first.digest.as_ref());
        let bad = |reason: String| RegistryError::Manifest {
            target: target.clone(),
            reason,
        };
        let (index_digest, fetched) = if is_index(&first) {
            let index: ImageIndex = serde_json::from_slice(&first.body)
                .map_err(|e| bad(format!("image index is not valid: {e}")))?;
            let chosen = select_manifest(&index, &Platform::host()).ok_or_else(|| {
                let (os, arch) = host_platform();
                RegistryError::NoPlatform {
                    target: target.clone(),
                    platform: format!("{os}/{arch}"),
                    available: platforms(&index),
                }
            })?;
            let m = self.fetch_manifest(repo, chosen.digest().as_ref()).await?;
            (Some(first.digest.clone()), m)
        } else {
            (None, first)
        };
        if ![OCI_MANIFEST, DOCKER_MANIFEST].contains(&fetched.media_type.as_str())
            && !fetched.media_type.is_empty()
        {
            return Err(RegistryError::Manifest {
                target: Target::digest(&repo.host, &repo.name, fetched.digest.as_ref()),
                reason: format!("unsupported manifest media type {:?}", fetched.media_type),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&fetched.body).map_err(|e| RegistryError::Manifest {
                target: Target::digest(&repo.host, &repo.name, fetched.digest.as_ref()),
                reason: format!("image manifest is not valid: {e}"),
            })?;
        let config = manifest.config();
        let config_blob = self
            .blob(repo, config.digest(), Some(config.size()))
            .await?;
        let config_bytes = config_blob.read_all(MAX_CONFIG).await?;
        Ok(ResolvedImage {
            reference: reference.with_digest(fetched.digest.clone()),
            index_digest,
            manifest_digest: fetched.digest,
            manifest,
            config_bytes,
        })
    }
}

/// A platform to pick from an index: `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub arch: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// This host's platform.
    pub fn host() -> Self {
        let (os, arch) = host_platform();
        Platform {
            os: os.into(),
            arch: arch.into(),
            variant: None,
        }
    }

    /// Whether index entry `d` is for this platform (arm64's default `v8` may be left out).
    pub fn matches(&self, d: &Descriptor) -> bool {
        let Some(p) = d.platform() else {
            return false;
        };
        if p.os().to_string() != self.os || p.architecture().to_string() != self.arch {
            return false;
        }
        match &self.variant {
            None => true,
            // arm64's default variant is v8, often left out.
            Some(v) => {
                let theirs = p.variant().clone().unwrap_or_default();
                theirs == *v || (self.arch == "arm64" && v == "v8" && theirs.is_empty())
            }
        }
    }
}

/// A platform string that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("platform {0:?}: expected OS/ARCH[/VARIANT] in lower case, e.g. linux/amd64")]
pub struct InvalidPlatform(pub String);

impl FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(InvalidPlatform(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].into(),
            arch: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Whether a fetched manifest is an index (OCI index or Docker manifest list).
pub fn is_index(m: &FetchedManifest) -> bool {
    if m.media_type == OCI_INDEX || m.media_type == DOCKER_LIST {
        return true;
    }
    // OCI indexes may leave out mediaType: recognise them by their `manifests` array.
    m.media_type.is_empty()
        && serde_json::from_slice::<serde_json::Value>(&m.body)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some_and(|x| x.is_array()))
}

/// The index entry for `platform`; without a wanted variant, an entry without a variant
/// (or arm64's `v8`) is preferred over other variants.
pub fn select_manifest<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            let t = d.media_type().to_string();
            (t == OCI_MANIFEST || t == DOCKER_MANIFEST) && platform.matches(d)
        })
        .collect();
    let plain = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .and_then(|p| p.variant().clone())
            .is_none_or(|v| v == "v8")
    });
    plain.or(candidates.first()).copied()
}

/// The platforms an index has, for error messages (`linux/amd64, linux/arm/v7`).
pub fn platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    if v.is_empty() {
        "no platforms".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_host_platform_from_an_index() {
        let (os, arch) = host_platform();
        let d = |n: char| format!("sha256:{}", n.to_string().repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(
            select_manifest(&index, &Platform::host())
                .unwrap()
                .digest()
                .to_string(),
            d('b')
        );
        assert!(platforms(&index).contains("linux/s390x"));
    }
}
