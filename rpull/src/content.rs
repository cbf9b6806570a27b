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
use futures::{Stream, StreamExt};
use registry::{Blob, Priority, RegistryError};
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
    let producer = tokio::spawn(produce(
        source.stream(),
        tx,
        fail_tx,
        Header {
            reference: reference.to_string(),
            digest: digest.to_string(),
            size,
        },
        labels,
    ));
    let _stop = AbortOnDrop(producer);
    let answer = async {
        let mut responses = ContentClient::new(c.channel())
            .write(c.request(ReceiverStream::new(rx)))
            .await?
            .into_inner();
        while let Some(r) = responses.message().await? {
            progress(r.offset.max(0) as u64);
            if r.action == WriteAction::Commit as i32 {
                return Ok(true);
            }
        }
        Ok::<bool, Status>(false)
    }
    .await;
    // A failed source ends the stream early, whatever containerd makes of that.
    if let Ok(e) = fail_rx.try_recv() {
        return Err(WriteFailure::Source(e));
    }
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(WriteFailure::Rpc(Status::unknown(
            "containerd ended the write stream before the commit",
        ))),
        Err(s) => Err(WriteFailure::Rpc(s)),
    }
}

/// What every write message of one blob names.
struct Header {
    reference: String,
    digest: String,
    size: u64,
}

impl Header {
    /// A message writing `data` at `offset`; the first one (and the commit) also carries
    /// the expected size and digest.
    fn message(&self, action: WriteAction, offset: u64, data: Vec<u8>) -> WriteContentRequest {
        let announce = offset == 0 || action == WriteAction::Commit;
        WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: if announce { self.size as i64 } else { 0 },
            expected: if announce {
                self.digest.clone()
            } else {
                String::new()
            },
            offset: offset as i64,
            data,
            labels: HashMap::new(),
        }
    }
}

/// Feeds the write stream: the source's bytes in [`WRITE_PIECE`] messages, the last piece
/// with the commit. A source error goes to `fail` and ends the stream without a commit.
async fn produce(
    mut stream: ByteStream,
    tx: tokio::sync::mpsc::Sender<WriteContentRequest>,
    fail: tokio::sync::oneshot::Sender<RegistryError>,
    header: Header,
    labels: HashMap<String, String>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_PIECE);
    let mut offset = 0u64;
    while let Some(item) = stream.next().await {
        let mut chunk = match item {
            Ok(c) => c,
            Err(e) => {
                let _ = fail.send(e);
                return;
            }
        };
        while !chunk.is_empty() {
            let take = (WRITE_PIECE - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk.split_to(take));
            if buf.len() == WRITE_PIECE {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_PIECE));
                let msg = header.message(WriteAction::Write, offset, data);
                offset += WRITE_PIECE as u64;
                if tx.send(msg).await.is_err() {
                    return; // containerd ended the stream; its answer says why
                }
            }
        }
    }
    let mut commit = header.message(WriteAction::Commit, offset, buf);
    commit.labels = labels;
    let _ = tx.send(commit).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64) -> Header {
        Header {
            reference: "layer-sha256:x".into(),
            digest: "sha256:x".into(),
            size,
        }
    }

    async fn messages(
        chunks: Vec<Result<Bytes, RegistryError>>,
        size: u64,
    ) -> (Vec<WriteContentRequest>, Option<RegistryError>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let (fail_tx, mut fail_rx) = tokio::sync::oneshot::channel();
        let labels = HashMap::from([("k".to_string(), "v".to_string())]);
        let task = tokio::spawn(produce(
            Box::pin(futures::stream::iter(chunks)),
            tx,
            fail_tx,
            header(size),
            labels,
        ));
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        task.await.unwrap();
        (got, fail_rx.try_recv().ok())
    }

    #[tokio::test]
    async fn writes_are_pieced_and_committed_with_labels() {
        let data: Vec<u8> = (0..(2 * WRITE_PIECE + 10)).map(|i| i as u8).collect();
        // Uneven network chunks, one larger than a piece.
        let chunks = [7, WRITE_PIECE + 3, 100, WRITE_PIECE]
            .iter()
            .scan(0usize, |at, n| {
                let end = (*at + n).min(data.len());
                let c = Bytes::copy_from_slice(&data[*at..end]);
                *at = end;
                Some(Ok(c))
            })
            .collect();
        let (msgs, fail) = messages(chunks, data.len() as u64).await;
        assert!(fail.is_none());
        assert_eq!(msgs.len(), 3);
        let mut joined = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                m.offset as usize,
                joined.len(),
                "message {i} continues the blob"
            );
            assert_eq!(m.r#ref, "layer-sha256:x");
            joined.extend_from_slice(&m.data);
        }
        assert_eq!(joined, data);
        assert_eq!(msgs[0].action, WriteAction::Write as i32);
        assert_eq!(
            (msgs[0].total, msgs[0].expected.as_str()),
            (data.len() as i64, "sha256:x")
        );
        assert_eq!((msgs[1].total, msgs[1].expected.as_str()), (0, ""));
        let commit = &msgs[2];
        assert_eq!(commit.action, WriteAction::Commit as i32);
        assert_eq!(commit.data.len(), 10);
        assert_eq!(
            (commit.total, commit.expected.as_str()),
            (data.len() as i64, "sha256:x")
        );
        assert_eq!(commit.labels.get("k").map(String::as_str), Some("v"));
        assert!(msgs[..2].iter().all(|m| m.labels.is_empty()));
    }

    #[tokio::test]
    async fn small_and_empty_blobs_are_one_commit() {
        let (msgs, _) = messages(vec![Ok(Bytes::from_static(b"{}"))], 2).await;
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].action, WriteAction::Commit as i32);
        assert_eq!((msgs[0].offset, msgs[0].data.as_slice()), (0, &b"{}"[..]));
        let (msgs, _) = messages(vec![], 0).await;
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].total, msgs[0].data.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_source_error_ends_the_stream_without_commit() {
        let err = RegistryError::InvalidReference {
            reference: "x".into(),
            reason: "test".into(),
        };
        let chunks = vec![
            Ok(Bytes::from(vec![1u8; WRITE_PIECE])),
            Err(err),
            Ok(Bytes::from_static(b"never")),
        ];
        let (msgs, fail) = messages(chunks, 2 * WRITE_PIECE as u64).await;
        assert!(fail.is_some());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].action, WriteAction::Write as i32);
    }
}
