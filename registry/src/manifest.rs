//! Manifests: fetching by tag or digest (digest-checked), resolving image indexes and docker
//! manifest lists to this host's platform, and the image's config blob and layer descriptors.

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

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

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
        req.headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
            ),
        );
        req.follow_redirects = true;
        let (header_type, header_digest, body) = inner
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
                Ok((ctype, dig, body))
            })
            .await?;
        let actual = Digest::from_str(&format!("sha256:{}", hex::encode(Sha256::digest(&body))))
            .map_err(|e| RegistryError::Manifest {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        for expected in pinned.iter().map(|d| d.to_string()).chain(header_digest) {
            if expected.starts_with("sha256:") && expected != actual.as_ref() {
                return Err(RegistryError::DigestMismatch {
                    target,
                    expected,
                    actual: actual.to_string(),
                });
            }
        }
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
            let chosen = pick_platform(&index).ok_or_else(|| {
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

fn is_index(m: &FetchedManifest) -> bool {
    if m.media_type == OCI_INDEX || m.media_type == DOCKER_LIST {
        return true;
    }
    // OCI indexes may omit mediaType: recognise them by their `manifests` array.
    m.media_type.is_empty()
        && serde_json::from_slice::<serde_json::Value>(&m.body)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some_and(|x| x.is_array()))
}

fn pick_platform(index: &ImageIndex) -> Option<&Descriptor> {
    let (os, arch) = host_platform();
    let matching: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .collect();
    // Prefer the plain entry (arm64: "v8" or no variant) when several variants match.
    matching
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .and_then(|p| p.variant().clone())
                .is_none_or(|v| v == "v8")
        })
        .or(matching.first())
        .copied()
}

fn platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    if v.is_empty() {
        "none".into()
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
        assert_eq!(pick_platform(&index).unwrap().digest().to_string(), d('b'));
        assert!(platforms(&index).contains("linux/s390x"));
    }
}
