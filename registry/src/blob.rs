//! A blob on a registry: its size, byte ranges (nearby ranges merged, several ranges per
//! request when the server supports `multipart/byteranges`, one range per request when it
//! does not), its tail with its size in one suffix-range request
//! ([`RegistryClient::blob_tail`]), a resumable sequential stream, and a blocking
//! [`estargz::ReadAt`] adapter.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use oci_spec::image::Digest;
use parking_lot::Mutex;
use reqwest::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, Url};
use sha2::{Digest as _, Sha256};

use super::auth::Scope;
use super::hosts::{Endpoint, MultiRange, RegistryHost};
use super::limiter::{Permit, Priority};
use super::ranges::{self, Span};
use super::transport::ClientInner;
use super::transport::{Answer, Request};
use super::{RegistryClient, RegistryError, Repository, Target};
use crate::Metrics;

/// Largest merged range (bytes) fetched as one piece.
const MAX_SPAN: u64 = 16 << 20;
/// Most ranges in one multi-range request (keeps the `Range` header small).
const MAX_RANGES_PER_REQUEST: usize = 64;
/// Most bytes asked for in one multi-range request.
const MAX_BYTES_PER_REQUEST: u64 = 16 << 20;
/// How many recent mirror answers a blob remembers, to blame the mirror whose bytes fail
/// verification later ([`Blob::report_corrupt`]).
const SERVED_MEMORY: usize = 256;

/// A blob of a repository. Cheap to clone.
#[derive(Clone)]
pub struct Blob {
    inner: Arc<BlobInner>,
}

struct BlobInner {
    client: Arc<ClientInner>,
    host: Arc<RegistryHost>,
    repo: Repository,
    digest: Digest,
    size: u64,
    redirect: Arc<Mutex<Option<Url>>>,
    /// Recent byte ranges served by mirrors, newest last.
    served: Mutex<VecDeque<(Range<u64>, Arc<Endpoint>)>>,
}

enum MultiOutcome {
    Parts(Vec<(Range<u64>, Bytes)>),
    Single(Range<u64>, Bytes),
    Ignored,
    /// A mirror without the blob yet sent all of it; this is its start, up to the last range.
    Prefix(Range<u64>, Bytes),
}

/// Remembers that `via` served `range` of the blob (mirrors only).
fn note_served(
    served: &Mutex<VecDeque<(Range<u64>, Arc<Endpoint>)>>,
    range: Range<u64>,
    via: &Arc<Endpoint>,
) {
    if !via.is_mirror {
        return;
    }
    let mut s = served.lock();
    if s.len() >= SERVED_MEMORY {
        s.pop_front();
    }
    s.push_back((range, via.clone()));
}

impl Blob {
    pub(crate) fn new(
        client: Arc<ClientInner>,
        host: Arc<RegistryHost>,
        repo: Repository,
        digest: Digest,
        size: u64,
    ) -> Self {
        Blob {
            inner: Arc::new(BlobInner {
                client,
                host,
                repo,
                digest,
                size,
                redirect: Arc::new(Mutex::new(None)),
                served: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Bytes of `range` read from this blob failed verification: if a mirror served them,
    /// it is skipped for `registry.mirror_skip` (the next read goes to the next mirror or
    /// the origin). True if a mirror was blamed.
    pub fn report_corrupt(&self, range: Range<u64>) -> bool {
        let blamed = {
            let mut served = self.inner.served.lock();
            let found = served
                .iter()
                .rev()
                .find(|(r, _)| r.start <= range.start && range.end <= r.end)
                .map(|(_, ep)| ep.clone());
            if let Some(ep) = &found {
                served.retain(|(_, e)| !Arc::ptr_eq(e, ep));
            }
            found
        };
        match blamed {
            Some(ep) => {
                ep.mirror_failed(&format_args!(
                    "{}: bytes {}..{} it served failed verification",
                    self.target(),
                    range.start,
                    range.end
                ));
                true
            }
            None => false,
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.inner.digest
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The repository it is read from.
    pub fn repository(&self) -> &Repository {
        &self.inner.repo
    }

    /// True if a request to the blob's registry host succeeded after `t` (the registry is
    /// back after a failure at `t`).
    pub fn host_answered_since(&self, t: Instant) -> bool {
        self.inner.host.health.answered_since(t)
    }

    /// The fetch settings of the client it was made by.
    pub fn fetch_config(&self) -> &config::FetchConfig {
        &self.inner.client.fetch
    }

    /// What errors about this blob name.
    pub fn target(&self) -> Target {
        Target::digest(
            &self.inner.repo.host,
            &self.inner.repo.name,
            self.inner.digest.as_ref(),
        )
    }

    /// Reads one byte range.
    pub async fn read_range(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> Result<Bytes, RegistryError> {
        let mut v = self
            .read_ranges(std::slice::from_ref(&range), priority)
            .await?;
        Ok(v.pop().unwrap_or_default())
    }

    /// Reads several byte ranges (any order, may overlap); returns them in the order given.
    /// Ranges closer than `fetch.coalesce_gap` are fetched as one; the resulting spans are
    /// asked for in multi-range requests when the server supports them. The whole call is
    /// bounded by `fetch.read_timeout`.
    pub async fn read_ranges(
        &self,
        ranges: &[Range<u64>],
        priority: Priority,
    ) -> Result<Vec<Bytes>, RegistryError> {
        for r in ranges {
            if r.start >= r.end || r.end > self.size() {
                return Err(RegistryError::Range {
                    target: self.target(),
                    reason: format!(
                        "range {}..{} is empty or outside the blob (size {})",
                        r.start,
                        r.end,
                        self.size()
                    ),
                });
            }
        }
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let client = &self.inner.client;
        let deadline = Instant::now() + client.fetch.read_timeout;
        let spans = ranges::plan_spans(ranges, client.fetch.coalesce_gap, MAX_SPAN);
        let batches = if self.inner.host.multi_range() == MultiRange::Unsupported {
            spans.into_iter().map(|s| vec![s]).collect()
        } else {
            ranges::batch(spans, MAX_RANGES_PER_REQUEST, MAX_BYTES_PER_REQUEST)
        };
        let fetched = futures::future::try_join_all(
            batches
                .into_iter()
                .map(|b| self.fetch_batch(b, priority, deadline)),
        )
        .await?;
        let mut out = vec![Bytes::new(); ranges.len()];
        for (span, data) in fetched.into_iter().flatten() {
            for &m in &span.members {
                let r = &ranges[m];
                out[m] = data.slice(
                    (r.start - span.range.start) as usize..(r.end - span.range.start) as usize,
                );
            }
        }
        Ok(out)
    }

    async fn fetch_batch(
        &self,
        spans: Vec<Span>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Vec<(Span, Bytes)>, RegistryError> {
        if spans.len() == 1 {
            let s = spans.into_iter().next().expect("one span");
            let data = self
                .fetch_single(s.range.clone(), priority, deadline)
                .await?;
            return Ok(vec![(s, data)]);
        }
        let wanted: Vec<Range<u64>> = spans.iter().map(|s| s.range.clone()).collect();
        let outcome = self.fetch_multi(&wanted, priority, deadline).await?;
        let host = &self.inner.host;
        let parts = match outcome {
            MultiOutcome::Parts(p) => {
                host.set_multi_range(MultiRange::Supported);
                p
            }
            MultiOutcome::Prefix(r, b) => vec![(r, b)],
            MultiOutcome::Single(r, b) => {
                tracing::info!(host = %host.name, "registry answered a multi-range request with one range; using single ranges");
                host.set_multi_range(MultiRange::Unsupported);
                vec![(r, b)]
            }
            MultiOutcome::Ignored => {
                tracing::info!(host = %host.name, "registry ignored a multi-range request; using single ranges");
                host.set_multi_range(MultiRange::Unsupported);
                Vec::new()
            }
        };
        let mut done = Vec::new();
        let mut missing = Vec::new();
        for s in spans {
            let found = parts
                .iter()
                .find(|(r, _)| r.start <= s.range.start && s.range.end <= r.end);
            match found {
                Some((r, b)) => {
                    let data = b.slice(
                        (s.range.start - r.start) as usize..(s.range.end - r.start) as usize,
                    );
                    done.push((s, data));
                }
                None => missing.push(s),
            }
        }
        let rest = futures::future::try_join_all(missing.into_iter().map(|s| async move {
            let data = self
                .fetch_single(s.range.clone(), priority, deadline)
                .await?;
            Ok::<_, RegistryError>((s, data))
        }))
        .await?;
        done.extend(rest);
        Ok(done)
    }

    fn request(&self, range_header: String, ranges: usize, priority: Priority) -> Request {
        let i = &self.inner;
        let mut req = Request::new(
            Method::GET,
            format!("/v2/{}/blobs/{}", i.repo.name, i.digest),
            Scope::pull(&i.repo.name),
            self.target(),
        );
        if let Ok(v) = HeaderValue::from_str(&range_header) {
            req.headers.insert(RANGE, v);
        }
        req.priority = priority;
        req.follow_redirects = true;
        req.redirect_cache = Some(i.redirect.clone());
        req.ranges = ranges;
        req
    }

    async fn fetch_single(
        &self,
        range: Range<u64>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Bytes, RegistryError> {
        let req = self.request(
            ranges::range_header(std::slice::from_ref(&range)),
            1,
            priority,
        );
        let size = self.size();
        let whole = range.start == 0 && range.end == size;
        let i = &self.inner;
        let served = &i.served;
        i.client
            .execute(&i.host, &req, deadline, |mut a: Answer| {
                let range = range.clone();
                async move {
                    match a.status().as_u16() {
                        206 => {
                            let got = content_range(&a)?;
                            if got.start > range.start || got.end < range.end {
                                return Err(a.protocol(format!(
                                    "asked for bytes {}..{}, got {}..{}",
                                    range.start, range.end, got.start, got.end
                                )));
                            }
                            let body = a.body(got.end - got.start).await?;
                            if body.len() as u64 != got.end - got.start {
                                return Err(a.protocol("truncated range response".into()));
                            }
                            note_served(served, range.clone(), &a.via);
                            Ok(body.slice(
                                (range.start - got.start) as usize
                                    ..(range.end - got.start) as usize,
                            ))
                        }
                        200 if whole => {
                            let body = a.body(size).await?;
                            if body.len() as u64 != size {
                                return Err(a.protocol("truncated response".into()));
                            }
                            note_served(served, range.clone(), &a.via);
                            Ok(body)
                        }
                        // A pull-through cache answers the whole blob while it does not have
                        // it yet (docker-registry does): read up to the range's end only.
                        200 if a.via.is_mirror => {
                            let body = a.body_prefix(range.end).await?;
                            note_served(served, range.clone(), &a.via);
                            Ok(body.slice(range.start as usize..range.end as usize))
                        }
                        200 => Err(RegistryError::Range {
                            target: a.target.clone(),
                            reason: format!("{} ignored the Range header (HTTP 200)", a.endpoint),
                        }),
                        _ => Err(a.status_error().await),
                    }
                }
            })
            .await
    }

    async fn fetch_multi(
        &self,
        wanted: &[Range<u64>],
        priority: Priority,
        deadline: Instant,
    ) -> Result<MultiOutcome, RegistryError> {
        let req = self.request(ranges::range_header(wanted), wanted.len(), priority);
        let total: u64 = wanted.iter().map(|r| r.end - r.start).sum();
        let limit = total + 512 * wanted.len() as u64 + 4096;
        let last_end = wanted.iter().map(|r| r.end).max().unwrap_or(0);
        let i = &self.inner;
        let served = &i.served;
        i.client
            .execute(&i.host, &req, deadline, |mut a: Answer| async move {
                match a.status().as_u16() {
                    206 => {
                        let ctype = a
                            .response
                            .headers()
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        if let Some(boundary) = ranges::multipart_boundary(&ctype) {
                            let body = a.body(limit).await?;
                            let parts = ranges::parse_multipart(&body, &boundary)
                                .map_err(|e| a.protocol(format!("multipart/byteranges: {e}")))?;
                            for (r, _) in &parts {
                                note_served(served, r.clone(), &a.via);
                            }
                            Ok(MultiOutcome::Parts(parts))
                        } else {
                            let got = content_range(&a)?;
                            let body = a.body(got.end - got.start).await?;
                            if body.len() as u64 != got.end - got.start {
                                return Err(a.protocol("truncated range response".into()));
                            }
                            note_served(served, got.clone(), &a.via);
                            Ok(MultiOutcome::Single(got, body))
                        }
                    }
                    // A pull-through cache that does not have the blob yet answers all of
                    // it: the prefix up to the last range covers them all (and says nothing
                    // about the origin's multi-range support).
                    200 if a.via.is_mirror => {
                        let body = a.body_prefix(last_end).await?;
                        note_served(served, 0..last_end, &a.via);
                        Ok(MultiOutcome::Prefix(0..last_end, body))
                    }
                    // A server without multi-range support may send the whole blob: don't read it.
                    200 => Ok(MultiOutcome::Ignored),
                    _ => Err(a.status_error().await),
                }
            })
            .await
    }

    /// Reads the blob sequentially from `from` to its end. Interrupted transfers resume where
    /// they stopped (up to `fetch.max_retries` times in a row); each network read is bounded by
    /// the request timeout. A stream that starts at 0 checks the blob digest at its end.
    pub fn stream(&self, from: u64, priority: Priority) -> BlobStream {
        self.stream_range(from..self.size(), priority)
    }

    /// Like [`Blob::stream`], but ends at `range.end` (asked for as a bounded range, so no
    /// bytes past it cross the network). Only a stream of the whole blob checks its digest.
    pub fn stream_range(&self, range: Range<u64>, priority: Priority) -> BlobStream {
        let end = range.end.min(self.size());
        let offset = range.start.min(end);
        BlobStream {
            blob: self.clone(),
            offset,
            end,
            current: None,
            skip: 0,
            failures: 0,
            hasher: (offset == 0 && end == self.size()).then(Sha256::new),
            priority,
            finished: false,
        }
    }

    /// Reads the whole blob into memory and checks its digest (for small blobs: configs).
    pub async fn read_all(&self, limit: u64) -> Result<Bytes, RegistryError> {
        if self.size() > limit {
            return Err(RegistryError::Range {
                target: self.target(),
                reason: format!(
                    "blob of {} bytes exceeds the {limit}-byte limit",
                    self.size()
                ),
            });
        }
        if self.size() == 0 {
            check_digest(&self.target(), self.digest(), b"")?;
            return Ok(Bytes::new());
        }
        let data = self.read_range(0..self.size(), Priority::OnDemand).await?;
        match check_digest(&self.target(), self.digest(), &data) {
            // A mirror served it: it is skipped now; ask the next endpoint once.
            Err(_) if self.report_corrupt(0..self.size()) => {
                let data = self.read_range(0..self.size(), Priority::OnDemand).await?;
                check_digest(&self.target(), self.digest(), &data)?;
                Ok(data)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(data),
        }
    }

    /// A blocking `read_at` for threads outside the async runtime (FUSE workers).
    pub fn blocking(&self, runtime: tokio::runtime::Handle, priority: Priority) -> BlockingBlob {
        BlockingBlob {
            blob: self.clone(),
            runtime,
            priority,
        }
    }
}

fn content_range(a: &Answer) -> Result<Range<u64>, RegistryError> {
    a.response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ranges::parse_content_range)
        .map(|(r, _)| r)
        .ok_or_else(|| a.protocol("206 without a valid Content-Range".into()))
}

/// Checks `data` against a sha256 digest (other algorithms are not checked).
pub(crate) fn check_digest(
    target: &Target,
    digest: &Digest,
    data: &[u8],
) -> Result<(), RegistryError> {
    if digest.algorithm().as_ref() != "sha256" {
        return Ok(());
    }
    let actual = hex::encode(Sha256::digest(data));
    if actual != digest.digest() {
        return Err(RegistryError::DigestMismatch {
            target: target.clone(),
            expected: digest.to_string(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}

/// A sequential read of a blob; see [`Blob::stream`].
pub struct BlobStream {
    blob: Blob,
    offset: u64,
    /// Where the stream ends (exclusive).
    end: u64,
    current: Option<(reqwest::Response, Permit)>,
    /// Bytes of the current response to drop before `offset` (a mirror answered with the
    /// whole blob to a range request).
    skip: u64,
    failures: u32,
    hasher: Option<Sha256>,
    priority: Priority,
    finished: bool,
}

impl BlobStream {
    /// The offset of the next byte to be returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next piece of the blob; `None` at the end (after the digest check, if any).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, RegistryError>> {
        if self.finished {
            return None;
        }
        let result = self.advance().await;
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
            self.current = None;
        }
        result
    }

    /// This stream as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, RegistryError>> + Send {
        futures::stream::unfold(self, |mut s| async move {
            let item = s.next_chunk().await?;
            Some((item, s))
        })
    }

    async fn advance(&mut self) -> Option<Result<Bytes, RegistryError>> {
        let size = self.end;
        let client = self.blob.inner.client.clone();
        loop {
            if self.offset >= size {
                return match self.hasher.take() {
                    Some(h) => {
                        let actual = hex::encode(h.finalize());
                        let d = self.blob.digest();
                        if d.algorithm().as_ref() == "sha256" && actual != d.digest() {
                            Some(Err(RegistryError::DigestMismatch {
                                target: self.blob.target(),
                                expected: d.to_string(),
                                actual: format!("sha256:{actual}"),
                            }))
                        } else {
                            None
                        }
                    }
                    None => None,
                };
            }
            if self.current.is_none() {
                match self.open().await {
                    Ok((resp, permit, skip)) => {
                        self.current = Some((resp, permit));
                        self.skip = skip;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let (resp, _) = self.current.as_mut().expect("opened above");
            let timeout = client.fetch.request_timeout;
            let cause = match tokio::time::timeout(timeout, resp.chunk()).await {
                Ok(Ok(Some(mut chunk))) => {
                    if self.skip > 0 {
                        let drop = chunk.len().min(self.skip as usize);
                        Metrics::add(&client.metrics.bytes_fetched, drop as u64);
                        self.skip -= drop as u64;
                        chunk = chunk.slice(drop..);
                    }
                    let take = chunk.len().min((size - self.offset) as usize);
                    let chunk = chunk.slice(..take);
                    Metrics::add(&client.metrics.bytes_fetched, chunk.len() as u64);
                    self.offset += chunk.len() as u64;
                    if let Some(h) = &mut self.hasher {
                        h.update(&chunk);
                    }
                    self.failures = 0;
                    if chunk.is_empty() {
                        continue;
                    }
                    return Some(Ok(chunk));
                }
                Ok(Ok(None)) => "the connection closed before the end of the blob".to_string(),
                Ok(Err(e)) => super::error::describe(e),
                Err(_) => format!("no data for {:.1}s", timeout.as_secs_f64()),
            };
            self.current = None;
            self.failures += 1;
            let err = RegistryError::Network {
                target: self.blob.target(),
                endpoint: self.blob.inner.host.name.clone(),
                cause: format!("{cause} (at byte {})", self.offset),
            };
            if self.failures > client.fetch.max_retries {
                return Some(Err(err));
            }
            Metrics::inc(&client.metrics.retries);
            tracing::debug!(error = %err, "blob stream interrupted; resuming");
            let backoff = client.fetch.min_backoff * (1 << self.failures.min(10));
            tokio::time::sleep(backoff.min(client.fetch.max_backoff)).await;
        }
    }

    async fn open(&self) -> Result<(reqwest::Response, Permit, u64), RegistryError> {
        let from = self.offset;
        let whole_tail = self.end == self.blob.size();
        let header = if whole_tail {
            format!("bytes={from}-")
        } else {
            format!("bytes={from}-{}", self.end - 1)
        };
        let mut req = self.blob.request(header, 1, self.priority);
        req.streaming = true;
        let i = &self.blob.inner;
        let deadline = Instant::now() + i.client.fetch.read_timeout;
        let (end, served) = (self.end, &i.served);
        i.client
            .execute(&i.host, &req, deadline, |a: Answer| async move {
                match a.status().as_u16() {
                    206 => {
                        let got = content_range(&a)?;
                        if got.start != from {
                            return Err(a.protocol(format!(
                                "asked for bytes from {from}, got from {}",
                                got.start
                            )));
                        }
                        note_served(served, from..end, &a.via);
                        Ok((a.response, a.permit, 0))
                    }
                    // A whole-blob answer is usable from offset 0 (the stream stops at its
                    // end); from a mirror (a pull-through cache that does not have the blob
                    // yet) also from further on, dropping what comes before.
                    200 if from == 0 || a.via.is_mirror => {
                        note_served(served, from..end, &a.via);
                        Ok((a.response, a.permit, from))
                    }
                    200 => Err(RegistryError::Range {
                        target: a.target.clone(),
                        reason: format!("{} ignored the Range header (HTTP 200)", a.endpoint),
                    }),
                    _ => Err(a.status_error().await),
                }
            })
            .await
    }
}

/// What a suffix-range request (`Range: bytes=-N`) brought.
enum Suffix {
    /// The blob's size and its last bytes.
    Tail(u64, Bytes),
    /// The registry ignored the range but said how large the blob is.
    Size(u64),
    /// The registry does not serve suffix ranges (or gave no total size).
    Unsupported,
}

impl RegistryClient {
    /// A handle on a blob and its last `tail` bytes (the whole blob if it is smaller).
    /// With `size: None`, one suffix-range request (`Range: bytes=-N`) brings both the size
    /// (from `Content-Range`) and the bytes, instead of a HEAD and a range request; a
    /// registry that does not honour suffix ranges is asked the usual way (HEAD unless its
    /// answer carried the size, then a plain range).
    pub async fn blob_tail(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: Option<u64>,
        tail: u64,
        priority: Priority,
    ) -> Result<(Blob, Bytes), RegistryError> {
        let host = self.inner.host(&repo.host)?;
        let known = match size {
            Some(s) => Some(s),
            None => {
                let probe = Blob::new(
                    self.inner.clone(),
                    host.clone(),
                    repo.clone(),
                    digest.clone(),
                    0,
                );
                match probe.fetch_suffix(tail.max(1), priority).await? {
                    Suffix::Tail(size, bytes) => {
                        let blob = probe.with_size(size);
                        return Ok((blob, bytes));
                    }
                    Suffix::Size(size) => Some(size),
                    Suffix::Unsupported => {
                        tracing::debug!(host = %host.name, "registry does not serve suffix ranges; asking for the blob size");
                        None
                    }
                }
            }
        };
        let blob = self.blob(repo, digest, known).await?;
        let size = blob.size();
        let from = size - tail.min(size);
        let bytes = if from == size {
            Bytes::new()
        } else {
            blob.read_range(from..size, priority).await?
        };
        Ok((blob, bytes))
    }
}

impl Blob {
    /// The same blob (sharing its redirect cache) with a size learnt later.
    fn with_size(&self, size: u64) -> Blob {
        let i = &self.inner;
        Blob {
            inner: Arc::new(BlobInner {
                client: i.client.clone(),
                host: i.host.clone(),
                repo: i.repo.clone(),
                digest: i.digest.clone(),
                size,
                redirect: i.redirect.clone(),
                served: Mutex::new(i.served.lock().clone()),
            }),
        }
    }

    /// Asks for the last `len` bytes with a suffix range.
    async fn fetch_suffix(&self, len: u64, priority: Priority) -> Result<Suffix, RegistryError> {
        let req = self.request(format!("bytes=-{len}"), 1, priority);
        let i = &self.inner;
        let deadline = Instant::now() + i.client.fetch.read_timeout;
        i.client
            .execute(&i.host, &req, deadline, |mut a: Answer| async move {
                match a.status().as_u16() {
                    206 => {
                        let Some((got, Some(total))) = a
                            .response
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(ranges::parse_content_range)
                        else {
                            return Ok(Suffix::Unsupported);
                        };
                        if got.end != total || got.end - got.start != len.min(total) {
                            return Err(a.protocol(format!(
                                "asked for the last {len} bytes, got {}..{} of {total}",
                                got.start, got.end
                            )));
                        }
                        let body = a.body(got.end - got.start).await?;
                        if body.len() as u64 != got.end - got.start {
                            return Err(a.protocol("truncated range response".into()));
                        }
                        Ok(Suffix::Tail(total, body))
                    }
                    // The whole blob: don't read it; its length is the size.
                    200 => Ok(a
                        .response
                        .content_length()
                        .map_or(Suffix::Unsupported, Suffix::Size)),
                    416 => Ok(Suffix::Unsupported),
                    _ => Err(a.status_error().await),
                }
            })
            .await
    }
}

/// A blob read with blocking calls, for threads outside the tokio runtime (FUSE workers).
/// Must not be used from inside the runtime (it blocks on it).
#[derive(Clone)]
pub struct BlockingBlob {
    blob: Blob,
    runtime: tokio::runtime::Handle,
    priority: Priority,
}

impl estargz::ReadAt for BlockingBlob {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.blob.size())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.blob.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset);
        let data = self
            .runtime
            .block_on(self.blob.read_range(offset..offset + len, self.priority))
            .map_err(std::io::Error::other)?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}
