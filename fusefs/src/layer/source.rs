//! Where a layer comes from: the repository, the blob digest (and size, if known) and the
//! TOC digest it must have; and its head ([`LayerHead`]): the footer and TOC bytes as
//! fetched, before verification.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use estargz::{Footer, Sha256Digest, MAX_FOOTER_SIZE};
use oci_spec::image::Digest;

use registry::{Priority, Reference, RegistryClient, RegistryError, Repository};

use super::context::LayerContext;
use super::error::LayerError;
use crate::fetch::BlobSource;

/// Bytes asked for at the end of a blob when a layer is opened: the footer and, for most
/// layers, the whole TOC in one request (the start of a larger TOC is a second one).
const TAIL_FETCH: u64 = 64 << 10;

/// A layer blob's footer and TOC bytes, fetched but not verified (the TOC digest is checked
/// by `RemoteLayer::open_head`).
pub struct LayerHead {
    pub(crate) blob: Arc<dyn BlobSource>,
    /// The repository and digest of the blob.
    pub(crate) repository: Repository,
    pub(crate) digest: Digest,
    /// The blob's last bytes holding the footer (at most `MAX_FOOTER_SIZE`).
    pub(crate) tail: Bytes,
    pub(crate) footer: Footer,
    /// The compressed TOC.
    pub(crate) toc: Bytes,
}

impl std::fmt::Debug for LayerHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerHead")
            .field("digest", &self.digest.to_string())
            .field("size", &self.blob.size())
            .field("toc_bytes", &self.toc.len())
            .finish()
    }
}

impl LayerHead {
    /// Fetches footer and TOC of `source`'s blob: one suffix-range request for the blob's
    /// last bytes (which also gives its size when `source.size` is unknown), a second for
    /// the start of a TOC longer than that.
    pub async fn fetch(ctx: &Arc<LayerContext>, source: &LayerSource) -> Result<Self, LayerError> {
        let digest = source.digest.to_string();
        let reg = |e| LayerError::Registry {
            digest: digest.clone(),
            source: e,
        };
        // Prioritized traffic: background fetch of every layer waits while this runs.
        let _busy = ctx.activity.begin();
        let (blob, fetched) = ctx
            .client
            .blob_tail(
                &source.repository,
                &source.digest,
                source.size,
                TAIL_FETCH,
                Priority::OnDemand,
            )
            .await
            .map_err(reg)?;
        Self::from_tail(source, Arc::new(blob), fetched).await
    }

    /// Reads footer and TOC of `source`'s blob through any [`BlobSource`]: its last bytes,
    /// then the start of a TOC longer than that.
    pub async fn read(source: &LayerSource, blob: Arc<dyn BlobSource>) -> Result<Self, LayerError> {
        let size = blob.size();
        let from = size - TAIL_FETCH.min(size);
        let fetched = if from == size {
            Bytes::new()
        } else {
            blob.read_range(from..size, Priority::OnDemand)
                .await
                .map_err(|e| LayerError::Registry {
                    digest: source.digest.to_string(),
                    source: e,
                })?
        };
        Self::from_tail(source, blob, fetched).await
    }

    /// The head from the blob's last bytes `fetched` (fetching the start of a longer TOC).
    async fn from_tail(
        source: &LayerSource,
        blob: Arc<dyn BlobSource>,
        fetched: Bytes,
    ) -> Result<Self, LayerError> {
        let digest = source.digest.to_string();
        let reg = |e| LayerError::Registry {
            digest: digest.clone(),
            source: e,
        };
        let format = |e: estargz::Error| LayerError::Format {
            digest: digest.clone(),
            source: e,
        };
        let size = blob.size();
        let tail_start = size - fetched.len() as u64;
        let tail = fetched.slice(fetched.len() - MAX_FOOTER_SIZE.min(fetched.len())..);
        let footer = estargz::parse_footer(&tail, size).map_err(|e| format(e.into()))?;
        let limits = estargz::IndexOptions::default().limits;
        if footer.toc_compressed_size > limits.max_compressed_size {
            return Err(format(
                estargz::TocError::CompressedTooLarge {
                    size: footer.toc_compressed_size,
                    limit: limits.max_compressed_size,
                }
                .into(),
            ));
        }
        let toc = toc_bytes(&*blob, footer.toc_range(), tail_start, &fetched)
            .await
            .map_err(reg)?;
        Ok(LayerHead {
            blob,
            repository: source.repository.clone(),
            digest: source.digest.clone(),
            tail,
            footer,
            toc,
        })
    }

    /// True if this is the head of `source`'s blob (same repository and digest).
    pub fn is_of(&self, source: &LayerSource) -> bool {
        self.digest == source.digest && self.repository == source.repository
    }
}

/// The bytes `toc` of `blob`: taken from `tail` (the blob's bytes from `tail_start` to its
/// end) where it covers them, the part before it fetched.
async fn toc_bytes(
    blob: &dyn BlobSource,
    toc: Range<u64>,
    tail_start: u64,
    tail: &Bytes,
) -> Result<Bytes, RegistryError> {
    let tail_end = tail_start + tail.len() as u64;
    let in_tail =
        |r: Range<u64>| tail.slice((r.start - tail_start) as usize..(r.end - tail_start) as usize);
    if toc.end > tail_end || toc.start >= toc.end {
        return blob.read_range(toc, Priority::OnDemand).await;
    }
    if toc.start >= tail_start {
        return Ok(in_tail(toc));
    }
    let head = blob
        .read_range(toc.start..tail_start, Priority::OnDemand)
        .await?;
    let mut all = BytesMut::with_capacity((toc.end - toc.start) as usize);
    all.extend_from_slice(&head);
    all.extend_from_slice(&in_tail(tail_start..toc.end));
    Ok(all.freeze())
}

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
