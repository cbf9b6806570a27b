//! Where a layer comes from: the repository, the blob digest (and size, if known) and the
//! TOC digest it must have.

use std::str::FromStr;

use estargz::Sha256Digest;
use oci_spec::image::Digest;

use crate::registry::{Reference, RegistryClient, Repository};

use super::LayerError;

/// The identity of one lazily mounted layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSource {
    /// The repository the blob is read from.
    pub repository: Repository,
    /// The layer blob's digest.
    pub digest: Digest,
    /// The blob's size from its descriptor; `None`: asked for with a HEAD request.
    pub size: Option<u64>,
    /// The digest the TOC must have (`containerd.io/snapshot/stargz/toc.digest`). `None`
    /// accepts whatever TOC the blob has: only for tools; the daemon should require it.
    pub toc_digest: Option<Sha256Digest>,
}

impl LayerSource {
    /// A source from an image reference (`host/repo[:tag][@digest]`; only the repository
    /// is used) and a layer digest.
    pub fn new(
        reference: &str,
        digest: &str,
        size: Option<u64>,
        toc_digest: Option<&str>,
    ) -> Result<Self, LayerError> {
        let reference =
            Reference::from_str(reference).map_err(|e| LayerError::Source(e.to_string()))?;
        let digest = Digest::from_str(digest)
            .map_err(|e| LayerError::Source(format!("layer digest {digest:?}: {e}")))?;
        let toc_digest = toc_digest
            .map(|t| {
                Sha256Digest::from_str(t)
                    .map_err(|e| LayerError::Source(format!("TOC digest {t:?}: {e}")))
            })
            .transpose()?;
        Ok(LayerSource {
            repository: reference.repository,
            digest,
            size,
            toc_digest,
        })
    }

    /// Resolves `reference` (manifest; an index is resolved to this host's platform) and
    /// takes layer `digest` from it: its size and TOC digest annotation
    /// (`containerd.io/snapshot/stargz/toc.digest`; `None` when absent).
    pub async fn resolve(
        client: &RegistryClient,
        reference: &str,
        digest: &str,
    ) -> Result<Self, LayerError> {
        let parsed =
            Reference::from_str(reference).map_err(|e| LayerError::Source(e.to_string()))?;
        let image = client
            .resolve(&parsed)
            .await
            .map_err(|source| LayerError::Registry {
                digest: digest.to_string(),
                source,
            })?;
        let desc = image
            .layers()
            .iter()
            .find(|d| d.digest().as_ref() == digest)
            .ok_or_else(|| {
                LayerError::Source(format!("image {reference} has no layer {digest}"))
            })?;
        let toc = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(estargz::toc::TOC_DIGEST_ANNOTATION))
            .map(String::as_str);
        Self::new(reference, digest, Some(desc.size()), toc)
    }

    /// The blob digest's hex part (for names of files and logs).
    pub fn digest_hex(&self) -> &str {
        self.digest.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let t = format!("sha256:{}", "b".repeat(64));
        let s = LayerSource::new("127.0.0.1:5000/py/deb:latest", &d, Some(5), Some(&t)).unwrap();
        assert_eq!(s.repository.host, "127.0.0.1:5000");
        assert_eq!(s.repository.name, "py/deb");
        assert_eq!(s.digest_hex(), "a".repeat(64));
        assert_eq!(s.toc_digest.unwrap().to_string(), t);
        assert!(LayerSource::new("x/y", "sha256:zz", None, None).is_err());
        assert!(LayerSource::new("x/y", &d, None, Some("md5:00")).is_err());
    }
}
