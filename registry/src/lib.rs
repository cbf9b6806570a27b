//! The OCI distribution client: image references (`reference`), registry hosts with
//! their mirrors and TLS settings (`hosts`), authentication (`auth`: basic, bearer
//! tokens, docker `config.json`), the transport (`transport`), manifests and indexes
//! (`manifest`: an index resolved to one platform), blobs read by byte ranges or as
//! streams ([`Blob`]), and pushes (`push`). Knows nothing of layers, chunks or caches:
//! `fusefs` reads layer blobs through it (as one of its blob sources), the image tools
//! convert and push with it, `rpull` resolves images with it.
//!
//! Layers: `transport` sends one logical request (mirrors then origin, auth, redirects,
//! timeouts, retries with backoff under a deadline, per-host request limit) → [`Blob`] turns
//! ranges into few requests (merging, multi-range with fallback; `ranges`).
//! [`metrics`] counts requests, bytes and retries.
//!
//! Credentials and tokens never appear in logs or errors; URLs in errors lose their query.

mod auth;
mod blob;
mod error;
mod health;
mod hosts;
mod limiter;
mod manifest;
pub mod metrics;
mod push;
mod ranges;
mod reference;
#[cfg(feature = "testutil")]
pub mod testutil;
mod transport;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::image::Digest;
use parking_lot::Mutex;
use reqwest::header::CONTENT_LENGTH;
use reqwest::Method;

pub use auth::{CredentialSource, Credentials, CredentialsFuture};
pub use blob::{Blob, BlobStream, BlockingBlob};
pub use error::{Permanent, RegistryError, Target, TlsProblem};
pub use health::Unreachable;
pub use limiter::Priority;
pub use manifest::{
    host_platform, is_index, platforms, select_manifest, FetchedManifest, InvalidPlatform,
    Platform, ResolvedImage, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
pub use push::{BlobSource, PushOptions, PushOutcome};
pub use reference::{Reference, Repository, DOCKER_HUB};

use auth::{Authenticator, Scope};
use hosts::RegistryHost;
use transport::{Answer, ClientInner, Request};

pub use metrics::{Metrics, MetricsSnapshot};

/// Client for OCI registries configured by the `[fetch]` and `[registry]` sections. Cheap to
/// clone; clones share connections, tokens and per-host state.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<ClientInner>,
}

impl RegistryClient {
    /// A client for the daemon's configuration.
    pub fn new(config: &config::Config, metrics: Arc<Metrics>) -> Result<Self, RegistryError> {
        Self::with_settings(&config.fetch, &config.registry, metrics)
    }

    /// A client from the two sections it uses.
    pub fn with_settings(
        fetch: &config::FetchConfig,
        registry: &config::RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistryError> {
        let http = hosts::http_builder(fetch)
            .build()
            .map_err(|e| RegistryError::Setup(error::describe(e)))?;
        Ok(RegistryClient {
            inner: Arc::new(ClientInner {
                http,
                fetch: fetch.clone(),
                registry: registry.clone(),
                hosts: Mutex::new(HashMap::new()),
                auth: Authenticator::new(registry, metrics.clone()),
                metrics,
            }),
        })
    }

    /// Asks `source` for credentials (per host and repository) before the configured ones,
    /// from now on, for every clone of this client.
    pub fn set_credential_source(&self, source: Arc<dyn CredentialSource>) {
        self.inner.auth.set_source(source);
    }

    /// The counters this client adds to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The fetch settings in use.
    pub fn fetch_config(&self) -> &config::FetchConfig {
        &self.inner.fetch
    }

    /// The last time a request to registry `host` got no answer (timed out, refused), if
    /// less than `hold` ago and no request to it succeeded since.
    pub fn unreachable_within(&self, host: &str, hold: Duration) -> Option<Unreachable> {
        self.inner.host(host).ok()?.health.unreachable_within(hold)
    }

    /// Records that registry `host` did not answer (e.g. a caller's own bound ran out
    /// while a request was still waiting).
    pub fn mark_unreachable(&self, host: &str, cause: &str) {
        if let Ok(h) = self.inner.host(host) {
            h.health.unreachable(cause);
        }
    }

    /// A handle on a blob. With `size: None` its size is asked for (HEAD).
    pub async fn blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Blob, RegistryError> {
        let host = self.inner.host(&repo.host)?;
        let size = match size {
            Some(s) => s,
            None => self
                .inner
                .blob_size(&host, repo, digest, false)
                .await?
                .ok_or_else(|| RegistryError::NotFound {
                    target: Target::digest(&repo.host, &repo.name, digest.as_ref()),
                    endpoint: host.origin().host.clone(),
                })?,
        };
        Ok(Blob::new(
            self.inner.clone(),
            host,
            repo.clone(),
            digest.clone(),
            size,
        ))
    }

    /// Fetches a small blob whole (e.g. an image config) and checks its digest.
    pub async fn fetch_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: u64,
    ) -> Result<bytes::Bytes, RegistryError> {
        self.blob(repo, digest, None).await?.read_all(limit).await
    }

    /// The size of a blob, or `None` if the registry does not have it (HEAD).
    pub async fn blob_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let host = self.inner.host(&repo.host)?;
        self.inner.blob_size(&host, repo, digest, false).await
    }
}

impl ClientInner {
    pub(crate) fn host(&self, name: &str) -> Result<Arc<RegistryHost>, RegistryError> {
        let mut hosts = self.hosts.lock();
        if let Some(h) = hosts.get(name) {
            return Ok(h.clone());
        }
        let h = Arc::new(RegistryHost::from_config(
            name,
            &self.fetch,
            &self.registry,
        )?);
        hosts.insert(name.to_string(), h.clone());
        Ok(h)
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.fetch.read_timeout
    }

    /// HEAD of a blob: its size, or `None` on 404.
    pub(crate) async fn blob_size(
        &self,
        host: &RegistryHost,
        repo: &Repository,
        digest: &Digest,
        push: bool,
    ) -> Result<Option<u64>, RegistryError> {
        let mut req = Request::new(
            Method::HEAD,
            format!("/v2/{}/blobs/{digest}", repo.name),
            if push {
                Scope::push(&repo.name)
            } else {
                Scope::pull(&repo.name)
            },
            Target::digest(&repo.host, &repo.name, digest.as_ref()),
        );
        req.follow_redirects = true;
        req.origin_only = push;
        // A 404 is an error inside `execute` so that a mirror lacking the blob falls through
        // to the next endpoint; only the origin's 404 means "absent".
        let found = self
            .execute(host, &req, self.deadline(), |a: Answer| async move {
                match a.status().as_u16() {
                    200 => a
                        .response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| u64::from_str(v).ok())
                        .ok_or_else(|| a.protocol("HEAD without Content-Length".into())),
                    _ => Err(a.status_error().await),
                }
            })
            .await;
        match found {
            Ok(len) => Ok(Some(len)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
