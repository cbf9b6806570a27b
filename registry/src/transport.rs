//! Sending one logical request: endpoint choice (healthy mirrors in order, then the origin),
//! authentication (a 401 learns the challenge, refreshes credentials once and retries),
//! redirects (followed without the registry's `Authorization`; blob redirect targets are
//! cached and re-resolved once when they answer 401/403/404), per-request timeouts, retries
//! with exponential backoff and jitter under an overall deadline, and the per-host limit on
//! requests in flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rand::Rng as _;
use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};

use super::auth::{Authenticator, Scope};
use super::error::{describe, redact_url, tls_problem, RegistryError, Target};
use super::error::{CREDENTIALS_REFUSED, NO_CREDENTIALS};
use super::hosts::{Endpoint, RegistryHost};
use super::limiter::{Permit, Priority};
use crate::Metrics;

/// Redirect hops followed for one request.
const MAX_REDIRECTS: usize = 5;

/// Where a request goes.
#[derive(Clone)]
pub(crate) enum Location {
    /// A path (and query) on the registry endpoint, e.g. `/v2/repo/blobs/sha256:..`.
    Path(String),
    /// An absolute URL on the origin (upload session `Location`s).
    Url(Url),
}

/// One logical request; may be sent several times (mirrors, auth refresh, retries).
#[derive(Clone)]
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) location: Location,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
    pub(crate) scope: Scope,
    pub(crate) target: Target,
    pub(crate) priority: Priority,
    /// Pushes go to the origin only.
    pub(crate) origin_only: bool,
    /// Resolves a tag: only endpoints with the `resolve` capability (else `pull`).
    pub(crate) resolve: bool,
    pub(crate) follow_redirects: bool,
    /// Cache of the blob's redirect target (blob GETs only).
    pub(crate) redirect_cache: Option<Arc<Mutex<Option<Url>>>>,
    /// Long body read by the caller: the timeout covers the response headers only.
    pub(crate) streaming: bool,
    /// Counted as a range request with this many ranges (0 = not a range request).
    pub(crate) ranges: usize,
    /// Whether `execute` may send it again after a transient failure (not for PATCH/POST of
    /// upload sessions: their callers restart the whole session instead).
    pub(crate) retryable: bool,
}

impl Request {
    pub(crate) fn new(method: Method, path: String, scope: Scope, target: Target) -> Self {
        Request {
            method,
            location: Location::Path(path),
            headers: HeaderMap::new(),
            body: None,
            scope,
            target,
            priority: Priority::OnDemand,
            origin_only: false,
            resolve: false,
            follow_redirects: false,
            redirect_cache: None,
            streaming: false,
            ranges: 0,
            retryable: true,
        }
    }
}

/// A response handed to a request's handler, with the slot it holds.
pub(crate) struct Answer {
    pub(crate) response: reqwest::Response,
    /// The host that answered (endpoint or redirect target), for messages.
    pub(crate) endpoint: String,
    /// Held until the handler is done with the body (streams keep it).
    pub(crate) permit: Permit,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) target: Target,
    /// The endpoint the request went to (a mirror or the origin).
    pub(crate) via: Arc<Endpoint>,
}

impl Answer {
    pub(crate) fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The next piece of the body (`None` at its end), counted as fetched.
    async fn next_piece(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let piece = self
            .response
            .chunk()
            .await
            .map_err(|e| RegistryError::Network {
                target: self.target.clone(),
                endpoint: self.endpoint.clone(),
                cause: describe(e),
            })?;
        if let Some(p) = &piece {
            Metrics::add(&self.metrics.bytes_fetched, p.len() as u64);
        }
        Ok(piece)
    }

    /// Reads the body, failing if it exceeds `limit` bytes; counts the bytes fetched.
    pub(crate) async fn body(&mut self, limit: u64) -> Result<Bytes, RegistryError> {
        if let Some(len) = self.response.content_length() {
            if len > limit {
                return Err(self.protocol(format!(
                    "response of {len} bytes is larger than the {limit} expected"
                )));
            }
        }
        let mut buf = BytesMut::with_capacity(self.response.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = self.next_piece().await? {
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(
                    self.protocol(format!("response larger than the {limit} bytes expected"))
                );
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Reads the first `len` bytes of the body and leaves the rest unread (the connection is
    /// dropped with the answer); fails if the body is shorter.
    pub(crate) async fn body_prefix(&mut self, len: u64) -> Result<Bytes, RegistryError> {
        let mut buf = BytesMut::with_capacity(len.min(64 << 20) as usize);
        while (buf.len() as u64) < len {
            let Some(chunk) = self.next_piece().await? else {
                return Err(self.protocol(format!(
                    "the body ended after {} of the {len} bytes needed",
                    buf.len()
                )));
            };
            let take = chunk.len().min((len - buf.len() as u64) as usize);
            buf.extend_from_slice(&chunk[..take]);
        }
        Ok(buf.freeze())
    }

    pub(crate) fn protocol(&self, reason: String) -> RegistryError {
        RegistryError::Protocol {
            target: self.target.clone(),
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// The error for an unexpected status (reads the registry's error code if any).
    pub(crate) async fn status_error(mut self) -> RegistryError {
        let status = self.status().as_u16();
        let target = self.target.clone();
        let endpoint = self.endpoint.clone();
        match status {
            404 => return RegistryError::NotFound { target, endpoint },
            401 | 403 => {
                return RegistryError::Unauthorized {
                    target,
                    endpoint,
                    status,
                    reason: "access denied".into(),
                }
            }
            _ => {}
        }
        let code = match tokio::time::timeout(Duration::from_secs(2), self.body(64 << 10)).await {
            Ok(Ok(b)) => error_code(&b),
            _ => String::new(),
        };
        RegistryError::Status {
            target,
            endpoint,
            status,
            code,
        }
    }
}

/// The first error code of a distribution-spec error body (`{"errors":[{"code":..}]}`).
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errors")?.get(0)?.get("code")?.as_str().map(|s| {
                s.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// What every clone of a [`crate::RegistryClient`] shares: the HTTP client, settings,
/// per-host state, authentication and counters. The transport's methods run requests on it.
pub(crate) struct ClientInner {
    pub(crate) http: reqwest::Client,
    pub(crate) fetch: config::FetchConfig,
    pub(crate) registry: config::RegistryConfig,
    pub(crate) hosts: Mutex<HashMap<String, Arc<RegistryHost>>>,
    pub(crate) auth: Authenticator,
    pub(crate) metrics: Arc<Metrics>,
}

impl ClientInner {
    /// Sends `req` to `host` and runs `handle` on the answer, retrying transient failures
    /// (of the request or of `handle`) with backoff until `max_retries` or `deadline`.
    pub(crate) async fn execute<T, F, Fut>(
        &self,
        host: &RegistryHost,
        req: &Request,
        deadline: Instant,
        handle: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let result = self.execute_inner(host, req, deadline, handle).await;
        match &result {
            Ok(_) => host.health.answered(),
            Err(e) if e.is_unreachable() => host.health.unreachable(e.to_string()),
            Err(_) => {}
        }
        result
    }

    async fn execute_inner<T, F, Fut>(
        &self,
        host: &RegistryHost,
        req: &Request,
        deadline: Instant,
        handle: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let start = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let timed_out = |last: RegistryError| RegistryError::Timeout {
                target: req.target.clone(),
                after: start.elapsed(),
                attempts,
                last: Box::new(last),
            };
            let attempt = self.attempt(host, req, deadline, &handle);
            let err = match tokio::time::timeout_at(deadline.into(), attempt).await {
                Ok(Ok(v)) => {
                    tracing::debug!(target = %req.target,
                        range = req.headers.get(RANGE).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                        priority = ?req.priority, attempts, ms = start.elapsed().as_millis() as u64,
                        "registry request done");
                    return Ok(v);
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(timed_out(RegistryError::Network {
                        target: req.target.clone(),
                        endpoint: host.origin().host.clone(),
                        cause: "the read deadline passed while waiting".into(),
                    }))
                }
            };
            if !err.is_retryable() || !req.retryable {
                return Err(err);
            }
            if attempts > self.fetch.max_retries {
                return Err(timed_out(err));
            }
            let delay = self.backoff(attempts);
            if Instant::now() + delay >= deadline {
                return Err(timed_out(err));
            }
            Metrics::inc(&self.metrics.retries);
            tracing::debug!(target = %req.target, attempt = attempts, delay_ms = delay.as_millis() as u64,
                error = %err, "retrying registry request");
            tokio::time::sleep(delay).await;
        }
    }

    /// Exponential backoff with "equal jitter": a random delay in [d/2, d].
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.fetch.min_backoff.max(Duration::from_millis(1));
        let d = base
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(self.fetch.max_backoff.max(base));
        let half = d / 2;
        half + Duration::from_nanos(rand::rng().random_range(0..=half.as_nanos() as u64))
    }

    async fn attempt<T, F, Fut>(
        &self,
        host: &RegistryHost,
        req: &Request,
        deadline: Instant,
        handle: &F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut last = None;
        for ep in host.candidates(req.origin_only, req.resolve) {
            match self.try_endpoint(host, &ep, req, deadline, handle).await {
                Ok(v) => {
                    if ep.is_mirror {
                        ep.mark_up();
                    }
                    return Ok(v);
                }
                Err(e) if ep.is_mirror => {
                    // A mirror without the content is fine; anything else skips it a while.
                    if !matches!(e, RegistryError::NotFound { .. }) {
                        ep.mirror_failed(&e);
                    }
                    tracing::debug!(mirror = %ep.host, error = %e, "mirror failed; trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Setup("no endpoints".into())))
    }

    async fn try_endpoint<T, F, Fut>(
        &self,
        host: &RegistryHost,
        ep: &Arc<Endpoint>,
        req: &Request,
        deadline: Instant,
        handle: &F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let permit = host.limiter.acquire(req.priority).await;
        let timeout = ep
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));

        // A cached redirect target (object storage URL) skips the registry round trip.
        let cached = req.redirect_cache.as_ref().and_then(|c| c.lock().clone());
        if let Some(url) = cached {
            let resp = match self.send_plain(req, &url, None, ep, timeout).await {
                Ok(r) => r,
                Err(e) => {
                    // The next attempt asks the registry again.
                    if let Some(c) = &req.redirect_cache {
                        *c.lock() = None;
                    }
                    return Err(e);
                }
            };
            if matches!(resp.status().as_u16(), 400 | 401 | 403 | 404 | 410) {
                tracing::debug!(target = %req.target, status = resp.status().as_u16(),
                    "cached redirect target refused; resolving again");
                if let Some(c) = &req.redirect_cache {
                    *c.lock() = None;
                }
            } else {
                return handle(self.answer(resp, &url, permit, req, ep)).await;
            }
        }

        let url = match &req.location {
            Location::Path(p) => ep.url(p).map_err(RegistryError::Setup)?,
            Location::Url(u) => u.clone(),
        };
        let mut refreshed = false;
        loop {
            let auth = self
                .auth
                .header(
                    self.http_for(ep),
                    &ep.host,
                    ep.insecure(),
                    &req.scope,
                    &req.target,
                    timeout,
                )
                .await?;
            let resp = self
                .send_plain(req, &url, auth.clone(), ep, timeout)
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                let had_auth = auth.is_some();
                let has_creds = self.auth.has_credentials(&ep.host, &req.scope.repo).await;
                if refreshed
                    || !self.auth.learn(&ep.host, resp.headers())
                    || (!has_creds && self.auth.is_basic(&ep.host))
                {
                    return Err(RegistryError::Unauthorized {
                        target: req.target.clone(),
                        endpoint: ep.host.clone(),
                        status: 401,
                        reason: match (had_auth, has_creds) {
                            (_, false) => NO_CREDENTIALS.into(),
                            (true, true) => CREDENTIALS_REFUSED.into(),
                            (false, true) => "unsupported authentication challenge".into(),
                        },
                    });
                }
                self.auth.invalidate(&ep.host, &req.scope);
                refreshed = true;
                continue;
            }
            if status.is_redirection() && req.follow_redirects {
                return self
                    .follow(req, ep, url, resp, auth, timeout, permit, handle)
                    .await;
            }
            return handle(self.answer(resp, &url, permit, req, ep)).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn follow<T, F, Fut>(
        &self,
        req: &Request,
        ep: &Arc<Endpoint>,
        mut url: Url,
        mut resp: reqwest::Response,
        auth: Option<reqwest::header::HeaderValue>,
        timeout: Duration,
        permit: Permit,
        handle: &F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                break;
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| RegistryError::Protocol {
                    target: req.target.clone(),
                    endpoint: host_of(&url),
                    reason: format!(
                        "redirect (HTTP {}) without a usable Location",
                        resp.status().as_u16()
                    ),
                })?;
            // The registry's credentials go to the registry only.
            let auth = if is_endpoint(&next, ep) {
                auth.clone()
            } else {
                None
            };
            url = next;
            resp = self.send_plain(req, &url, auth, ep, timeout).await?;
        }
        if resp.status().is_redirection() {
            return Err(RegistryError::Protocol {
                target: req.target.clone(),
                endpoint: host_of(&url),
                reason: format!("more than {MAX_REDIRECTS} redirects"),
            });
        }
        if let Some(cache) = &req.redirect_cache {
            if resp.status().is_success() && !is_endpoint(&url, ep) {
                *cache.lock() = Some(url.clone());
            }
        }
        handle(self.answer(resp, &url, permit, req, ep)).await
    }

    fn answer(
        &self,
        response: reqwest::Response,
        url: &Url,
        permit: Permit,
        req: &Request,
        ep: &Arc<Endpoint>,
    ) -> Answer {
        Answer {
            response,
            endpoint: host_of(url),
            permit,
            metrics: self.metrics.clone(),
            target: req.target.clone(),
            via: ep.clone(),
        }
    }

    /// The HTTP client for `ep`: its own (TLS settings) or the shared one.
    fn http_for<'a>(&'a self, ep: &'a Endpoint) -> &'a reqwest::Client {
        ep.http.as_ref().unwrap_or(&self.http)
    }

    /// One HTTP exchange, no retries. Endpoint headers go to the endpoint's host only.
    async fn send_plain(
        &self,
        req: &Request,
        url: &Url,
        auth: Option<reqwest::header::HeaderValue>,
        ep: &Endpoint,
        timeout: Duration,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut rb = self.http_for(ep).request(req.method.clone(), url.clone());
        if is_endpoint(url, ep) {
            rb = rb.headers(ep.headers.clone());
        }
        rb = rb.headers(req.headers.clone());
        if let Some(a) = auth {
            rb = rb.header(AUTHORIZATION, a);
        }
        if let Some(b) = &req.body {
            rb = rb.body(b.clone());
        }
        if !req.streaming {
            rb = rb.timeout(timeout);
        }
        Metrics::inc(&self.metrics.requests);
        if req.ranges > 0 {
            Metrics::inc(&self.metrics.range_requests);
            if req.ranges > 1 {
                Metrics::inc(&self.metrics.multi_range_requests);
            }
        }
        let network = |cause: String| RegistryError::Network {
            target: req.target.clone(),
            endpoint: host_of(url),
            cause,
        };
        match tokio::time::timeout(timeout, rb.send()).await {
            Err(_) => Err(network(format!(
                "no response within {:.1}s",
                timeout.as_secs_f64()
            ))),
            Ok(Err(e)) => match tls_problem(&e) {
                Some(problem) => Err(RegistryError::Tls {
                    target: req.target.clone(),
                    endpoint: host_of(url),
                    problem,
                    cause: describe(e),
                }),
                None => Err(network(describe(e))),
            },
            Ok(Ok(r)) => Ok(r),
        }
    }
}

/// True if `url` points at the endpoint's own scheme, host and port.
fn is_endpoint(url: &Url, ep: &Endpoint) -> bool {
    match ep.url("/") {
        Ok(base) => {
            base.scheme() == url.scheme()
                && base.host_str() == url.host_str()
                && base.port_or_known_default() == url.port_or_known_default()
        }
        Err(_) => false,
    }
}

/// `host[:port]` of a URL (what error messages show; never the path or query).
pub(crate) fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => redact_url(url),
    }
}
