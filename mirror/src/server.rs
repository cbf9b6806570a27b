//! The HTTP server (HTTP/1.1, hyper): answers each request of [`crate::api`] from the
//! upstream side and the block reader, and stops gracefully (no new connections, requests
//! under way finish, bounded) when its shutdown future resolves.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oci_spec::image::Digest;
use registry::{RegistryClient, Repository};
use tokio::net::TcpListener;

use crate::api::{self, Route};
use crate::blocks::check_block_size;
use crate::error::MirrorError;
use crate::fetch::{BlobId, BlockReader};
use crate::metrics::{add, MirrorMetrics};
use crate::range::{self, RangeError};
use crate::reply::{self, Body};
use crate::store::BlockStore;
use crate::upstream::{Upstream, UpstreamHosts};

/// How long requests under way may take to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// What the mirror is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Block cache directory.
    pub cache_dir: PathBuf,
    /// Most bytes the block cache keeps.
    pub max_size: u64,
    /// Bytes per block (power of two, 64 KiB..16 MiB).
    pub block_size: u64,
    /// The upstream hosts served.
    pub hosts: UpstreamHosts,
}

/// A mirror: the upstream side, the block cache and the counters.
pub struct Mirror {
    reader: Arc<BlockReader>,
    metrics: Arc<MirrorMetrics>,
}

impl Mirror {
    /// Opens the block cache and sets the mirror up over `client`.
    pub fn open(client: RegistryClient, settings: Settings) -> Result<Arc<Self>, MirrorError> {
        check_block_size(settings.block_size).map_err(|reason| MirrorError::Setting {
            key: "--block-size",
            reason,
        })?;
        if settings.max_size < 16 * settings.block_size {
            return Err(MirrorError::Setting {
                key: "--max-size",
                reason: format!(
                    "{} bytes holds fewer than 16 blocks of {} bytes; give at least {}",
                    settings.max_size,
                    settings.block_size,
                    16 * settings.block_size
                ),
            });
        }
        let metrics = Arc::new(MirrorMetrics::default());
        let store = Arc::new(BlockStore::open(
            &settings.cache_dir,
            settings.block_size,
            settings.max_size,
        )?);
        let upstream = Arc::new(Upstream::new(client, settings.hosts, metrics.clone()));
        let reader = BlockReader::new(store, upstream, metrics.clone(), settings.block_size);
        Ok(Arc::new(Mirror { reader, metrics }))
    }

    /// Prometheus text of the counters.
    pub fn metrics_text(&self) -> String {
        let store = self.reader.store();
        self.metrics.encode(store.bytes(), store.evicted())
    }

    /// One line of counters for the log.
    pub fn summary(&self) -> String {
        format!(
            "{} cache_bytes={}",
            self.metrics.summary(),
            self.reader.store().bytes()
        )
    }

    /// Binds `addr` (`IP:PORT`, port 0 picks one).
    pub async fn bind(addr: &str) -> Result<TcpListener, MirrorError> {
        let err = |source| MirrorError::Listen {
            addr: addr.to_string(),
            source,
        };
        let parsed = SocketAddr::from_str(addr)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        TcpListener::bind(parsed).await.map_err(err)
    }

    /// Serves connections on `listener` until `shutdown` resolves, then lets requests under
    /// way finish (up to 10 s).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while conns.try_join_next().is_some() {}
            let me = self.clone();
            let mut stop = stop_rx.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                connections = conns.len(),
                "requests still under way after {DRAIN:?}; closing them"
            );
            conns.shutdown().await;
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        add(&self.metrics.requests, 1);
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this mirror serves GET and HEAD only (pull, not push)",
            );
        }
        let route = match api::route(req.uri().path(), req.uri().query()) {
            Ok(r) => r,
            Err(e) => {
                let status = if e.is_not_found() {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::BAD_REQUEST
                };
                return reply::error(status, e.code(), &e.to_string());
            }
        };
        let mut resp = match route {
            Route::Base => {
                let mut r = reply::with_body(StatusCode::OK, "application/json", "{}");
                r.headers_mut().insert(
                    "docker-distribution-api-version",
                    hyper::header::HeaderValue::from_static("registry/2.0"),
                );
                r
            }
            Route::Metrics => reply::with_body(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_text(),
            ),
            Route::Manifest {
                name,
                reference,
                ns,
            } => {
                let accept = req
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ");
                // Passed on only when it names manifest types: a generic `*/*` would get
                // an OCI manifest refused by registries that do not convert it.
                let accept = accept.contains("application/vnd.").then_some(accept);
                self.manifest(name, &reference, ns.as_deref(), accept.as_deref())
                    .await
            }
            Route::Blob { name, digest, ns } => {
                let range = req
                    .headers()
                    .get(RANGE)
                    .map(|v| v.to_str().unwrap_or("(not text)").to_string());
                self.blob(name, &digest, ns.as_deref(), range.as_deref(), head)
                    .await
            }
        };
        if head {
            // hyper sends no body for HEAD; the headers (Content-Length) stay.
            *resp.body_mut() = reply::full(Bytes::new());
        }
        resp
    }

    async fn manifest(
        &self,
        name: String,
        reference: &str,
        ns: Option<&str>,
        accept: Option<&str>,
    ) -> Response<Body> {
        let upstream = self.reader.upstream();
        let host = match upstream.host_for(ns) {
            Ok(h) => h,
            Err(e) => return reply::error(StatusCode::FORBIDDEN, "DENIED", &e.to_string()),
        };
        let repo = Repository::new(host, name);
        match upstream.manifest(&repo, reference, accept).await {
            Ok(m) => {
                add(&self.metrics.served_bytes, m.body.len() as u64);
                let mut r = reply::with_body(StatusCode::OK, &m.media_type, m.body);
                reply::set(
                    &mut r,
                    "docker-content-digest".parse().expect("name"),
                    m.digest.as_ref(),
                );
                r
            }
            Err(e) => reply::upstream_error(&e, false),
        }
    }

    async fn blob(
        &self,
        name: String,
        digest: &str,
        ns: Option<&str>,
        range_header: Option<&str>,
        head: bool,
    ) -> Response<Body> {
        let upstream = self.reader.upstream();
        let host = match upstream.host_for(ns) {
            Ok(h) => h,
            Err(e) => return reply::error(StatusCode::FORBIDDEN, "DENIED", &e.to_string()),
        };
        let Ok(parsed) = Digest::from_str(digest) else {
            return reply::error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
        };
        let repo = Repository::new(host, name);
        let size = match upstream.blob_size(&repo, &parsed).await {
            Ok(s) => s,
            Err(e) => return reply::upstream_error(&e, true),
        };
        let headers = |r: &mut Response<Body>| {
            reply::set(r, CONTENT_TYPE, "application/octet-stream");
            reply::set(r, ACCEPT_RANGES, "bytes");
            reply::set(r, "docker-content-digest".parse().expect("name"), digest);
        };
        if head && range_header.is_none() {
            let mut r = Response::new(reply::full(Bytes::new()));
            headers(&mut r);
            reply::set(&mut r, CONTENT_LENGTH, &size.to_string());
            return r;
        }
        let wanted = match range::wanted(range_header, size) {
            Ok(w) => w,
            Err(e @ RangeError::Unsatisfiable { .. }) => {
                let mut r = reply::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_INVALID",
                    &e.to_string(),
                );
                reply::set(&mut r, CONTENT_RANGE, &format!("bytes */{size}"));
                return r;
            }
            Err(e) => {
                return reply::error(StatusCode::BAD_REQUEST, "RANGE_INVALID", &e.to_string())
            }
        };
        let r = wanted.range.clone();
        let len = r.end - r.start;
        let status = if wanted.partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut resp = if head {
            Response::new(reply::full(Bytes::new()))
        } else {
            let blob = BlobId {
                repo,
                digest: parsed,
                size,
            };
            let mut stream = Box::pin(self.reader.stream(blob, r.clone(), !wanted.partial));
            // The first block decides the status: an upstream failure before anything is
            // sent is answered as such (404, 401, 502), not as a cut-off body.
            let first = match stream.next().await {
                Some(Err(e)) => return reply::block_error(&e),
                other => other,
            };
            let metrics = self.metrics.clone();
            let body = futures::stream::iter(first)
                .chain(stream)
                .inspect_ok(move |b| add(&metrics.served_bytes, b.len() as u64))
                .map_ok(Frame::data)
                .inspect_err(|e| tracing::warn!(error = %e, "blob response cut off"));
            Response::new(BodyExt::boxed_unsync(StreamBody::new(body)))
        };
        *resp.status_mut() = status;
        headers(&mut resp);
        reply::set(&mut resp, CONTENT_LENGTH, &len.to_string());
        if wanted.partial {
            reply::set(
                &mut resp,
                CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
        }
        resp
    }
}
