//! Pushing for the image converter: blobs (skipped if present, optionally mounted from another
//! repository, else uploaded in one PUT or, when large, in chunked PATCHes), and manifests.
//! Pushes go to the origin only, never to mirrors.

use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::time::Instant;

use bytes::Bytes;
use oci_spec::image::Digest;
use reqwest::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Url};
use sha2::{Digest as _, Sha256};

use super::auth::Scope;
use super::hosts::RegistryHost;
use super::transport::{Answer, Location, Request};
use super::{RegistryClient, RegistryError, Repository, Target};
use crate::Metrics;

/// Random-access source of the bytes to push (so a failed upload can be restarted).
pub trait BlobSource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// True if empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;
}

impl BlobSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        self.get(start..start + len)
            .map(|_| self.slice(start..start + len))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end"))
    }
}

impl BlobSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

/// What a blob push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry already had the blob.
    AlreadyExists,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Options of [`RegistryClient::push_blob`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Try a cross-repository mount from this repository (same registry) first.
    pub mount_from: Option<String>,
    /// Blobs larger than this are uploaded in chunks of this size (PATCH), else in one PUT.
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            mount_from: None,
            chunk_size: 16 << 20,
        }
    }
}

impl RegistryClient {
    /// Pushes a blob unless the registry has it. Interrupted uploads restart from the
    /// beginning (up to `fetch.max_retries` times); the registry checks the digest.
    pub async fn push_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        source: &dyn BlobSource,
        options: &PushOptions,
    ) -> Result<PushOutcome, RegistryError> {
        let inner = &self.inner;
        let host = inner.host(&repo.host)?;
        let target = Target::digest(&repo.host, &repo.name, digest.as_ref());
        if inner.blob_size(&host, repo, digest, true).await?.is_some() {
            return Ok(PushOutcome::AlreadyExists);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .upload(&host, repo, digest, &target, source, options)
                .await
            {
                Err(e) if e.is_retryable() && attempt <= inner.fetch.max_retries => {
                    Metrics::inc(&inner.metrics.retries);
                    tracing::debug!(target = %target, error = %e, "restarting blob upload");
                    tokio::time::sleep(inner.fetch.min_backoff * attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn upload(
        &self,
        host: &RegistryHost,
        repo: &Repository,
        digest: &Digest,
        target: &Target,
        source: &dyn BlobSource,
        options: &PushOptions,
    ) -> Result<PushOutcome, RegistryError> {
        let inner = &self.inner;
        let mut path = format!("/v2/{}/blobs/uploads/", repo.name);
        let mut scope = Scope::push(&repo.name);
        if let Some(from) = &options.mount_from {
            path.push_str(&format!("?mount={digest}&from={from}"));
            scope.also_pull = Some(from.clone());
        }
        let mut req = push_request(Method::POST, Location::Path(path), scope.clone(), target);
        req.body = Some(Bytes::new());
        let started = inner
            .execute(host, &req, inner.deadline(), |a: Answer| async move {
                match a.status().as_u16() {
                    201 => Ok(None),
                    202 => Ok(Some(location(&a)?)),
                    _ => Err(a.status_error().await),
                }
            })
            .await?;
        let Some(mut loc) = started else {
            return Ok(PushOutcome::Mounted);
        };
        let size = source.len();
        let read = |offset: u64, len: u64| {
            source
                .read_at(offset, len as usize)
                .map_err(|e| RegistryError::Source {
                    target: target.clone(),
                    cause: e.to_string(),
                })
        };
        let mut hasher = Sha256::new();
        let mut offset = 0;
        let chunk = options.chunk_size.max(1);
        let final_body = if size <= chunk {
            let all = read(0, size)?;
            hasher.update(&all);
            all
        } else {
            while offset < size {
                let n = chunk.min(size - offset);
                let data = read(offset, n)?;
                hasher.update(&data);
                let mut req = push_request(
                    Method::PATCH,
                    Location::Url(loc.clone()),
                    scope.clone(),
                    target,
                );
                req.headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", offset, offset + n - 1)) {
                    req.headers.insert(CONTENT_RANGE, v);
                }
                req.body = Some(data);
                loc = inner
                    .execute(
                        host,
                        &req,
                        Instant::now() + inner.fetch.read_timeout,
                        |a: Answer| async move {
                            match a.status().as_u16() {
                                202 => location(&a),
                                _ => Err(a.status_error().await),
                            }
                        },
                    )
                    .await?;
                offset += n;
            }
            Bytes::new()
        };
        let actual = hex::encode(hasher.finalize());
        if digest.algorithm().as_ref() == "sha256" && actual != digest.digest() {
            return Err(RegistryError::DigestMismatch {
                target: target.clone(),
                expected: digest.to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        loc.query_pairs_mut().append_pair("digest", digest.as_ref());
        let mut req = push_request(Method::PUT, Location::Url(loc), scope, target);
        req.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        req.body = Some(final_body);
        inner
            .execute(host, &req, inner.deadline(), |a: Answer| async move {
                match a.status().as_u16() {
                    201 | 204 => Ok(PushOutcome::Uploaded),
                    _ => Err(a.status_error().await),
                }
            })
            .await
    }

    /// Pushes a manifest under `reference` (a tag, or its digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<Digest, RegistryError> {
        let inner = &self.inner;
        let host = inner.host(&repo.host)?;
        let target = match Digest::from_str(reference) {
            Ok(d) => Target::digest(&repo.host, &repo.name, d.as_ref()),
            Err(_) => Target::tag(&repo.host, &repo.name, reference),
        };
        let mut req = push_request(
            Method::PUT,
            Location::Path(format!("/v2/{}/manifests/{reference}", repo.name)),
            Scope::push(&repo.name),
            &target,
        );
        let ctype = HeaderValue::from_str(media_type).map_err(|_| RegistryError::Manifest {
            target: target.clone(),
            reason: format!("invalid media type {media_type:?}"),
        })?;
        req.headers.insert(CONTENT_TYPE, ctype);
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        req.body = Some(body);
        inner
            .execute(&host, &req, inner.deadline(), |a: Answer| async move {
                match a.status().as_u16() {
                    200..=202 => Ok(()),
                    _ => Err(a.status_error().await),
                }
            })
            .await?;
        Digest::from_str(&digest).map_err(|e| RegistryError::Manifest {
            target,
            reason: e.to_string(),
        })
    }
}

fn push_request(method: Method, location: Location, scope: Scope, target: &Target) -> Request {
    let mut req = Request::new(method, String::new(), scope, target.clone());
    req.location = location;
    req.origin_only = true;
    req.retryable = false;
    req
}

/// The upload session URL from a `Location` header (relative ones resolved on the request URL).
fn location(a: &Answer) -> Result<Url, RegistryError> {
    let loc = a
        .response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| a.protocol("upload answer without a Location".into()))?;
    a.response
        .url()
        .join(loc)
        .map_err(|_| a.protocol("upload Location is not a URL".into()))
}
