//! containerd's content store as a pull uses it: look a blob up, add labels to it, and write
//! one (from memory or streamed from the registry) with the content service's `Write`
//! stream — a ref per blob like containerd's (`layer-sha256:…`), the expected digest and
//! size up front (containerd verifies both on commit) and the labels on the commit message.
//! Writes of the same blob by another client (`ref … locked`) are waited for.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use containerd_client::services::v1::{
    content_client::ContentClient, AbortRequest, Info, InfoRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::{Code, Status};
use fusefs::registry::{Blob, Priority, RegistryError};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::client::Containerd;
use super::labels::{distribution_source_key, distribution_source_value, fits};
use super::RpullError;

/// Bytes per write message (containerd accepts messages up to 16 MiB).
const WRITE_PIECE: usize = 1 << 20;
/// How long to wait for another client's write of the same blob.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Where a blob's bytes come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Already in memory (manifests, configs).
    Bytes(Bytes),
    /// Streamed from the registry (layers); digest-checked at its end.
    Registry(Blob),
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

impl Source {
    fn stream(&self) -> ByteStream {
        match self {
            Source::Bytes(b) => Box::pin(futures::stream::iter([Ok(b.clone())])),
            Source::Registry(blob) => Box::pin(blob.stream(0, Priority::OnDemand).into_stream()),
        }
    }
}

/// A blob to put into the content store.
pub(crate) struct BlobSpec<'a> {
    /// What it is, for the ingest ref: `index`, `manifest`, `config`, `layer`.
    pub kind: &'static str,
    /// `sha256:…`.
    pub digest: &'a str,
    /// Its size.
    pub size: u64,
    /// Labels it must carry (GC references).
    pub labels: HashMap<String, String>,
    /// `(registry host, repository)` to add to its distribution-source label.
    pub source_repo: Option<(&'a str, &'a str)>,
    /// What to say in errors (names the image or layer).
    pub what: String,
}

/// What [`ensure_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The blob was there already (its labels were updated).
    Present,
    /// It was written now (this many bytes).
    Written(u64),
}

enum WriteFailure {
    Rpc(Status),
    Source(RegistryError),
}

/// The blob's info, or `None` if containerd does not have it (in this namespace).
pub(crate) async fn info(
    c: &Containerd,
    digest: &str,
    what: &str,
) -> Result<Option<Info>, RpullError> {
    let req = InfoRequest {
        digest: digest.to_string(),
    };
    match ContentClient::new(c.channel()).info(c.request(req)).await {
        Ok(r) => Ok(r.into_inner().info),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(RpullError::containerd(format!("look up {what}"), &s)),
    }
}

/// Sets `labels` on blob `digest` (other labels stay).
pub(crate) async fn update_labels(
    c: &Containerd,
    digest: &str,
    labels: HashMap<String, String>,
    what: &str,
) -> Result<(), RpullError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let req = UpdateRequest {
        info: Some(Info {
            digest: digest.to_string(),
            size: 0,
            created_at: None,
            updated_at: None,
            labels,
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    ContentClient::new(c.channel())
        .update(c.request(req))
        .await
        .map(drop)
        .map_err(|s| RpullError::containerd(format!("label {what}"), &s))
}

/// Makes sure the blob is in the content store with its labels: updates the labels of a
/// blob that is there, writes it from `source` otherwise. `progress` gets the number of
/// bytes containerd has acknowledged so far.
pub(crate) async fn ensure_blob(
    c: &Containerd,
    spec: BlobSpec<'_>,
    source: &Source,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Stored, RpullError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let reference = format!("{}-{}", spec.kind, spec.digest);
    loop {
        if let Some(existing) = info(c, spec.digest, &spec.what).await? {
            let mut labels = spec.labels.clone();
            add_source_label(&mut labels, &spec, existing.labels.get(&source_key(&spec)));
            update_labels(c, spec.digest, labels, &spec.what).await?;
            return Ok(Stored::Present);
        }
        let mut labels = spec.labels.clone();
        add_source_label(&mut labels, &spec, None);
        match write(
            c,
            &reference,
            spec.digest,
            spec.size,
            source,
            labels,
            progress,
        )
        .await
        {
            Ok(()) => return Ok(Stored::Written(spec.size)),
            // Someone else committed it meanwhile: label it on the next round.
            Err(WriteFailure::Rpc(s)) if s.code() == Code::AlreadyExists => continue,
            Err(WriteFailure::Rpc(s))
                if s.code() == Code::Unavailable
                    && s.message().contains("locked")
                    && started.elapsed() < LOCK_WAIT =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(WriteFailure::Rpc(s)) => {
                return Err(RpullError::containerd(format!("write {}", spec.what), &s))
            }
            Err(WriteFailure::Source(e)) => {
                abort(c, &reference).await;
                return Err(RpullError::Registry {
                    what: format!("fetch {}", spec.what),
                    source: e,
                });
            }
        }
    }
}

fn source_key(spec: &BlobSpec<'_>) -> String {
    spec.source_repo
        .map(|(host, _)| distribution_source_key(host))
        .unwrap_or_default()
}

fn add_source_label(
    labels: &mut HashMap<String, String>,
    spec: &BlobSpec<'_>,
    existing: Option<&String>,
) {
    if let Some((host, repo)) = spec.source_repo {
        let key = distribution_source_key(host);
        let value = distribution_source_value(existing.map(String::as_str), repo);
        // containerd skips the label rather than fail when it grows too long.
        if fits(&key, &value) && existing != Some(&value) {
            labels.insert(key, value);
        }
    }
}

/// One `Write` stream: the data in pieces, then the commit with the labels.
async fn write(
    c: &Containerd,
    reference: &str,
    digest: &str,
    size: u64,
    source: &Source,
    labels: HashMap<String, String>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), WriteFailure> {
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let (fail_tx, mut fail_rx) = tokio::sync::oneshot::channel::<RegistryError>();
    let mut stream = source.stream();
    let (reference_p, digest_p) = (reference.to_string(), digest.to_string());
    let producer = tokio::spawn(async move {
        let first = |offset: u64| offset == 0;
        let mut offset = 0u64;
        while let Some(item) = stream.next().await {
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    let _ = fail_tx.send(e);
                    return;
                }
            };
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(WRITE_PIECE));
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference_p.clone(),
                    total: if first(offset) { size as i64 } else { 0 },
                    expected: if first(offset) {
                        digest_p.clone()
                    } else {
                        String::new()
                    },
                    offset: offset as i64,
                    data: piece.to_vec(),
                    labels: HashMap::new(),
                };
                offset += piece.len() as u64;
                if tx.send(msg).await.is_err() {
                    return; // containerd ended the stream; its answer says why
                }
            }
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference_p,
            total: size as i64,
            expected: digest_p,
            offset: offset as i64,
            data: Vec::new(),
            labels,
        };
        let _ = tx.send(commit).await;
    });
    let _stop = AbortOnDrop(producer);
    let mut responses = ContentClient::new(c.channel())
        .write(c.request(ReceiverStream::new(rx)))
        .await
        .map_err(WriteFailure::Rpc)?
        .into_inner();
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                progress(r.offset.max(0) as u64);
                if r.action == WriteAction::Commit as i32 {
                    return Ok(());
                }
            }
            Ok(None) => break,
            Err(s) => return Err(WriteFailure::Rpc(s)),
        }
    }
    // containerd closed the stream without a commit: the source failed (or a bug).
    match fail_rx.try_recv() {
        Ok(e) => Err(WriteFailure::Source(e)),
        Err(_) => Err(WriteFailure::Rpc(Status::unknown(
            "the write stream ended before the commit",
        ))),
    }
}

/// Drops a partial ingest (best effort).
async fn abort(c: &Containerd, reference: &str) {
    let req = AbortRequest {
        r#ref: reference.to_string(),
    };
    if let Err(s) = ContentClient::new(c.channel()).abort(c.request(req)).await {
        if s.code() != Code::NotFound {
            tracing::debug!(reference, error = %s.message(), "could not abort a partial write");
        }
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
