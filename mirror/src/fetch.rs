//! Reading a blob's bytes through the block cache: the blocks that cover a range are read
//! from the cache, joined if another request is fetching them, or claimed and fetched from
//! the upstream by range (neighbouring missing blocks in one request, each fetch its own
//! task so it finishes for the others even when the request that started it goes away).
//! A response streams block by block, planning a window of blocks ahead, so a large blob is
//! never held in memory whole. A read of a whole blob checks its digest at the end; on a
//! mismatch the blob's cached blocks are dropped and the stream ends with an error.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::Stream;
use oci_spec::image::Digest;
use registry::{RegistryError, Repository};
use sha2::{Digest as _, Sha256};

use crate::blocks::{runs, Blocks};
use crate::flight::{Claim, Flights, Plan};
use crate::metrics::{add, MirrorMetrics};
use crate::store::{BlockKey, BlockStore};
use crate::upstream::Upstream;

/// Most bytes fetched upstream in one range request, and planned ahead by one response.
const WINDOW_BYTES: u64 = 8 << 20;

/// Why a block (or a whole-blob read) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlockError {
    /// The upstream failed (after the registry client's retries).
    #[error(transparent)]
    Upstream(RegistryError),
    /// The upstream (or the cache) gave the wrong number of bytes.
    #[error("blob {digest}: got {got} bytes for bytes {start}..{end}; nothing was cached")]
    Short {
        /// The blob.
        digest: String,
        /// Start of the range asked for.
        start: u64,
        /// End of the range asked for.
        end: u64,
        /// Bytes received.
        got: usize,
    },
    /// The request fetching the block went away without an answer.
    #[error("the upstream fetch of this block was abandoned")]
    Abandoned,
    /// A whole-blob read did not hash to the blob's digest.
    #[error("blob {digest}: the upstream's bytes hash to sha256:{actual}; its cached blocks were dropped")]
    DigestMismatch {
        /// The blob.
        digest: String,
        /// The hash of what was read.
        actual: String,
    },
}

/// One blob as requests name it.
#[derive(Debug, Clone)]
pub struct BlobId {
    /// Upstream repository.
    pub repo: Repository,
    /// Digest (sha256).
    pub digest: Digest,
    /// Size (from the upstream's HEAD).
    pub size: u64,
}

type BlockFuture = BoxFuture<'static, Result<Bytes, BlockError>>;

/// Reads blobs through the block cache.
pub struct BlockReader {
    store: Arc<BlockStore>,
    flights: Arc<Flights<BlockKey, BlockError>>,
    upstream: Arc<Upstream>,
    metrics: Arc<MirrorMetrics>,
    block_size: u64,
}

impl BlockReader {
    /// A reader of `block_size` blocks over `store` and `upstream`.
    pub fn new(
        store: Arc<BlockStore>,
        upstream: Arc<Upstream>,
        metrics: Arc<MirrorMetrics>,
        block_size: u64,
    ) -> Arc<Self> {
        Arc::new(BlockReader {
            store,
            flights: Flights::new(|| BlockError::Abandoned),
            upstream,
            metrics,
            block_size,
        })
    }

    /// The upstream side.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The block cache.
    pub fn store(&self) -> &Arc<BlockStore> {
        &self.store
    }

    fn window_blocks(&self) -> u64 {
        (WINDOW_BYTES / self.block_size).max(2)
    }

    /// One future per block of `indices` (in order); missing blocks are claimed and their
    /// fetches started now.
    fn plan(self: &Arc<Self>, blob: &Arc<BlobId>, indices: Range<u64>) -> Vec<BlockFuture> {
        let digest: Arc<str> = blob.digest.to_string().into();
        let keys: Vec<BlockKey> = indices
            .clone()
            .map(|index| BlockKey {
                digest: digest.clone(),
                index,
            })
            .collect();
        let plans = self.flights.plan(keys.clone(), |k| self.store.contains(k));
        let mut claims = Vec::new();
        let mut out = Vec::with_capacity(plans.len());
        for (key, plan) in keys.into_iter().zip(plans) {
            out.push(match plan {
                Plan::Cached => {
                    let me = self.clone();
                    let blob = blob.clone();
                    async move {
                        match me.store.read(&key).await {
                            Ok(Some(b)) => {
                                add(&me.metrics.block_hits, 1);
                                Ok(b)
                            }
                            Ok(None) => me.refetch(&blob, key.index).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "block cache read failed; fetching the block again");
                                me.refetch(&blob, key.index).await
                            }
                        }
                    }
                    .boxed()
                }
                Plan::Join(p) => {
                    add(&self.metrics.block_joins, 1);
                    p.boxed()
                }
                Plan::Fetch(claim, p) => {
                    claims.push(claim);
                    p.boxed()
                }
            });
        }
        let indices: Vec<u64> = claims.iter().map(|c| c.key().index).collect();
        let max_run = self.window_blocks();
        let mut claims = claims.into_iter();
        for run in runs(&indices, max_run) {
            let run_claims: Vec<_> = claims
                .by_ref()
                .take((run.end - run.start) as usize)
                .collect();
            let me = self.clone();
            let blob = blob.clone();
            tokio::spawn(async move { me.fetch_run(&blob, run, run_claims).await });
        }
        out
    }

    /// A block that was cached when planned but is gone when read (evicted meanwhile).
    fn refetch(self: &Arc<Self>, blob: &Arc<BlobId>, index: u64) -> BlockFuture {
        self.plan(blob, index..index + 1)
            .pop()
            .expect("one block planned")
    }

    /// Fetches blocks `run` with one range request, stores them, then completes the claims.
    async fn fetch_run(
        self: Arc<Self>,
        blob: &BlobId,
        run: Range<u64>,
        claims: Vec<Claim<BlockKey, BlockError>>,
    ) {
        let blocks = Blocks::new(self.block_size, blob.size);
        let bytes = blocks.bytes_of(run.start).start..blocks.bytes_of(run.end - 1).end;
        let epoch = self.store.epoch();
        let result = self
            .upstream
            .read(&blob.repo, &blob.digest, blob.size, bytes.clone())
            .await;
        let data = match result {
            Ok(d) if d.len() as u64 == bytes.end - bytes.start => d,
            Ok(d) => {
                let e = BlockError::Short {
                    digest: blob.digest.to_string(),
                    start: bytes.start,
                    end: bytes.end,
                    got: d.len(),
                };
                claims.into_iter().for_each(|c| c.complete(Err(e.clone())));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream range read failed");
                let e = BlockError::Upstream(e);
                claims.into_iter().for_each(|c| c.complete(Err(e.clone())));
                return;
            }
        };
        // Waiters get the blocks at once; the claims are released once the blocks are
        // stored (requests arriving meanwhile join the published answer).
        let mut stored = Vec::with_capacity(claims.len());
        let mut claims = claims;
        for claim in &mut claims {
            let b = blocks.bytes_of(claim.key().index);
            let block =
                data.slice((b.start - bytes.start) as usize..(b.end - bytes.start) as usize);
            claim.publish(Ok(block.clone()));
            stored.push((claim.key().clone(), block));
        }
        add(&self.metrics.block_fetches, stored.len() as u64);
        if let Err(e) = self.store.put_all(stored, epoch).await {
            tracing::warn!(error = %e, "cannot cache fetched blocks; they were served uncached");
        }
        drop(claims);
    }

    /// The bytes `range` of `blob` as a stream of pieces (one per block). With `verify`
    /// (the range is the whole blob) the stream ends with an error if the bytes do not
    /// hash to the blob's digest, and the blob's cached blocks are dropped.
    pub fn stream(
        self: &Arc<Self>,
        blob: BlobId,
        range: Range<u64>,
        verify: bool,
    ) -> impl Stream<Item = Result<Bytes, BlockError>> + Send + 'static {
        let blocks = Blocks::new(self.block_size, blob.size);
        let covering = blocks.covering(&range);
        let verify = verify && blob.digest.algorithm().as_ref() == "sha256";
        let state = StreamState {
            reader: self.clone(),
            blob: Arc::new(blob),
            blocks,
            range,
            next_plan: covering.start,
            end: covering.end,
            queue: VecDeque::new(),
            hasher: verify.then(Sha256::new),
            done: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            let item = s.step().await?;
            Some((item, s))
        })
    }
}

struct StreamState {
    reader: Arc<BlockReader>,
    blob: Arc<BlobId>,
    blocks: Blocks,
    range: Range<u64>,
    next_plan: u64,
    end: u64,
    queue: VecDeque<(u64, BlockFuture)>,
    hasher: Option<Sha256>,
    done: bool,
}

impl StreamState {
    async fn step(&mut self) -> Option<Result<Bytes, BlockError>> {
        if self.done {
            return None;
        }
        let window = self.reader.window_blocks();
        if self.queue.len() as u64 <= window / 2 && self.next_plan < self.end {
            let upto = (self.next_plan + window - self.queue.len() as u64).min(self.end);
            let planned = self.reader.plan(&self.blob, self.next_plan..upto);
            self.queue.extend((self.next_plan..upto).zip(planned));
            self.next_plan = upto;
        }
        let Some((index, block)) = self.queue.pop_front() else {
            self.done = true;
            return self.finish();
        };
        let data = match block.await {
            Ok(d) => d,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let want = self.blocks.bytes_of(index);
        if data.len() as u64 != want.end - want.start {
            self.done = true;
            return Some(Err(BlockError::Short {
                digest: self.blob.digest.to_string(),
                start: want.start,
                end: want.end,
                got: data.len(),
            }));
        }
        let piece = data.slice(self.blocks.slice_in(index, &self.range));
        if let Some(h) = &mut self.hasher {
            h.update(&piece);
            // The last piece is held back until the digest is checked: once the body's
            // Content-Length bytes are out, the client has a complete (wrong) blob.
            if self.queue.is_empty() && self.next_plan >= self.end {
                self.done = true;
                if let Some(Err(e)) = self.finish() {
                    return Some(Err(e));
                }
            }
        }
        Some(Ok(piece))
    }

    /// Checks the digest of a verified read (once): `Some(Err)` on a mismatch.
    fn finish(&mut self) -> Option<Result<Bytes, BlockError>> {
        let h = self.hasher.take()?;
        let actual = hex::encode(h.finalize());
        if actual == self.blob.digest.digest() {
            return None;
        }
        let digest = self.blob.digest.to_string();
        self.reader.store.drop_blob(&digest);
        add(&self.reader.metrics.digest_mismatches, 1);
        tracing::warn!(%digest, %actual, "a whole-blob read did not match its digest; its cached blocks were dropped");
        Some(Err(BlockError::DigestMismatch { digest, actual }))
    }
}
