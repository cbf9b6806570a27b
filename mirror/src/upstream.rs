//! The upstream registries, through starling's registry client (its `[registry]` settings:
//! scheme, credentials, CA, the upstream's own mirrors, retries, timeouts, hold after
//! failures): which hosts may be asked (`ns` of the request, else the default upstream),
//! blob sizes (HEAD, remembered), blob byte ranges, manifests (by digest remembered).

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use oci_spec::image::Digest;
use parking_lot::Mutex;
use registry::{FetchedManifest, Priority, RegistryClient, RegistryError, Repository};

use crate::metrics::{add, MirrorMetrics};

/// How many blob sizes and manifests are remembered.
const REMEMBERED: usize = 4096;

/// Why an upstream host cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The request named no upstream and there is no default.
    #[error("no upstream registry: the request has no ns=HOST query parameter and the mirror was started without --upstream")]
    NoUpstream,
    /// The request named a host the mirror does not serve.
    #[error("upstream registry {0:?} is not served by this mirror; start it with --upstream {0} or --allow-upstream {0}, or add [registry.hosts.\"{0}\"] to its configuration")]
    NotAllowed(String),
}

/// The upstream side of the mirror.
pub struct Upstream {
    client: RegistryClient,
    default: Option<String>,
    allowed: BTreeSet<String>,
    any: bool,
    sizes: Mutex<LruCache<(Repository, String), u64>>,
    manifests: Mutex<LruCache<(Repository, String), FetchedManifest>>,
    metrics: Arc<MirrorMetrics>,
}

/// Which upstream hosts the mirror serves.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHosts {
    /// The host for requests without `ns`.
    pub default: Option<String>,
    /// More hosts a request's `ns` may name (the default is always allowed).
    pub allowed: Vec<String>,
    /// Any host a request names (an open proxy: only on a trusted network).
    pub any: bool,
}

impl Upstream {
    /// The upstream side over `client`.
    pub fn new(client: RegistryClient, hosts: UpstreamHosts, metrics: Arc<MirrorMetrics>) -> Self {
        let n = NonZeroUsize::new(REMEMBERED).expect("non-zero");
        let mut allowed: BTreeSet<String> = hosts.allowed.into_iter().collect();
        allowed.extend(hosts.default.clone());
        Upstream {
            client,
            default: hosts.default,
            allowed,
            any: hosts.any,
            sizes: Mutex::new(LruCache::new(n)),
            manifests: Mutex::new(LruCache::new(n)),
            metrics,
        }
    }

    /// The upstream host for a request with query parameter `ns` (if any).
    pub fn host_for(&self, ns: Option<&str>) -> Result<String, UpstreamError> {
        match ns {
            None => self.default.clone().ok_or(UpstreamError::NoUpstream),
            Some(h) if self.any || self.allowed.contains(h) => Ok(h.to_string()),
            Some(h) => Err(UpstreamError::NotAllowed(h.to_string())),
        }
    }

    /// The blob's size (HEAD upstream the first time; a 404 is an error).
    pub async fn blob_size(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<u64, RegistryError> {
        let key = (repo.clone(), digest.to_string());
        if let Some(s) = self.sizes.lock().get(&key) {
            return Ok(*s);
        }
        add(&self.metrics.upstream_requests, 1);
        let blob = self.client.blob(repo, digest, None).await?;
        self.sizes.lock().put(key, blob.size());
        Ok(blob.size())
    }

    /// Bytes `range` of the blob (one range request; its length is checked).
    pub async fn read(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        add(&self.metrics.upstream_requests, 1);
        let blob = self.client.blob(repo, digest, Some(size)).await?;
        let data = blob.read_range(range, Priority::OnDemand).await?;
        add(&self.metrics.upstream_bytes, data.len() as u64);
        Ok(data)
    }

    /// The manifest `reference` (tag or digest) names, asking for the media types of
    /// `accept` (the client's `Accept` header; all four OCI and Docker types without it);
    /// by digest it is asked for once (a digest names one body whatever was accepted).
    pub async fn manifest(
        &self,
        repo: &Repository,
        reference: &str,
        accept: Option<&str>,
    ) -> Result<FetchedManifest, RegistryError> {
        let pinned = Digest::from_str(reference).is_ok();
        let key = (repo.clone(), reference.to_string());
        if pinned {
            if let Some(m) = self.manifests.lock().get(&key) {
                return Ok(m.clone());
            }
        }
        add(&self.metrics.upstream_requests, 1);
        let m = self
            .client
            .fetch_manifest_accepting(repo, reference, accept)
            .await?;
        self.manifests
            .lock()
            .put((repo.clone(), m.digest.to_string()), m.clone());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(hosts: UpstreamHosts) -> Upstream {
        let client = RegistryClient::with_settings(
            &config::FetchConfig::default(),
            &config::RegistryConfig::default(),
            Default::default(),
        )
        .unwrap();
        Upstream::new(client, hosts, Default::default())
    }

    #[test]
    fn only_named_hosts_are_served() {
        let u = upstream(UpstreamHosts {
            default: Some("origin:5000".into()),
            allowed: vec!["other.example".into()],
            any: false,
        });
        assert_eq!(u.host_for(None).unwrap(), "origin:5000");
        assert_eq!(u.host_for(Some("origin:5000")).unwrap(), "origin:5000");
        assert_eq!(u.host_for(Some("other.example")).unwrap(), "other.example");
        let e = u.host_for(Some("evil.example")).unwrap_err();
        assert!(
            e.to_string().contains("--allow-upstream evil.example"),
            "{e}"
        );
        let none = upstream(UpstreamHosts::default());
        assert!(matches!(
            none.host_for(None),
            Err(UpstreamError::NoUpstream)
        ));
        let any = upstream(UpstreamHosts {
            any: true,
            ..Default::default()
        });
        assert_eq!(any.host_for(Some("x.example")).unwrap(), "x.example");
    }
}
