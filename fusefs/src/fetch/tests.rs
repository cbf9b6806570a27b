//! The fetch layer's policy against an in-memory blob: one fetch per chunk however it is
//! asked for (concurrent reads, a read during a region stream, large chunks), wrong bytes
//! never served or cached, failures reaching every joiner, streams handing over what they
//! claimed when they fail, failed chunks answered at once while the source does not answer
//! (`fetch.failure_hold`; off in the other tests).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use registry::Priority;

use super::*;
use crate::cache::{CacheOptions, ChunkCache, ChunkKey, ReadMode};
use crate::metrics::Metrics;

const CHUNK: usize = 48 << 10;

struct Fixture {
    blob: Arc<MemoryBlob>,
    fetcher: ChunkFetcher,
    cache: ChunkCache,
    metrics: Arc<Metrics>,
    chunks: Vec<ChunkRequest>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A blob of `n` chunks of [`CHUNK`] bytes (distinct contents), decoded by `decoder`;
    /// failures are not held.
    fn new(n: usize, decoder: Arc<dyn ChunkDecoder>) -> Self {
        Self::holding(n, decoder, Duration::ZERO)
    }

    /// [`Fixture::new`] with failed chunks held for `failure_hold`.
    fn holding(n: usize, decoder: Arc<dyn ChunkDecoder>, failure_hold: Duration) -> Self {
        let data: Vec<u8> = (0..n * CHUNK)
            .map(|i| ((i * 7 + i / CHUNK * 13) % 251) as u8)
            .collect();
        let blob = MemoryBlob::new(data);
        let chunks = (0..n)
            .map(|i| {
                let range = (i * CHUNK) as u64..((i + 1) * CHUNK) as u64;
                ChunkRequest {
                    key: ChunkKey::of(&blob.data()[range.start as usize..range.end as usize]),
                    range,
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let cache = ChunkCache::open(
            CacheOptions {
                dir: dir.path().to_path_buf(),
                max_size: 0,
                memory_size: 64 << 20,
                read_mode: ReadMode::Auto,
            },
            metrics.clone(),
        )
        .unwrap();
        let fetch = config::FetchConfig {
            max_retries: 2,
            min_backoff: Duration::from_millis(1),
            failure_hold,
            ..Default::default()
        };
        let fetcher = ChunkFetcher::new(blob.clone(), cache.clone(), decoder, &fetch);
        // Every held read is an immediate retry (fails at once) unless a test says otherwise.
        fetcher.set_retry_window(Duration::from_secs(600));
        Fixture {
            blob,
            fetcher,
            cache,
            metrics,
            chunks,
            _dir: dir,
        }
    }

    fn raw(n: usize) -> Self {
        Self::new(n, Arc::new(RawChunks))
    }

    /// Reads chunk `i` on demand.
    async fn get(&self, i: usize) -> Result<Bytes, FetchError> {
        self.fetcher.get(&self.chunks[i], Priority::OnDemand).await
    }

    fn data(&self, i: usize) -> Bytes {
        let r = &self.chunks[i].range;
        self.blob.data().slice(r.start as usize..r.end as usize)
    }
}

/// Raw chunks that say they are larger than [`LARGE_CHUNK`], so the fetcher streams them
/// into the cache (without test data of that size).
struct LargeRaw;

impl ChunkDecoder for LargeRaw {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError> {
        Ok(raw)
    }

    fn decoded_len(&self, _request: &ChunkRequest) -> Option<u64> {
        Some(LARGE_CHUNK + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_one_chunk_make_one_request() {
    let f = Fixture::raw(4);
    f.blob.hold();
    let reads = (0..8).map(|_| f.fetcher.get(&f.chunks[2], Priority::OnDemand));
    let all = futures::future::join_all(reads);
    let release = async {
        tokio::task::yield_now().await;
        f.blob.release();
    };
    let (answers, ()) = tokio::join!(all, release);
    for a in answers {
        assert_eq!(a.unwrap(), f.data(2));
    }
    assert_eq!(f.blob.counts().range_requests, 1, "{:?}", f.blob.counts());
    assert!(f.metrics.snapshot().fetch_joins >= 1);
    f.fetcher.wait_idle().await;
    assert!(f.cache.contains(&f.chunks[2].key));
    // Cached now: no further request.
    assert_eq!(f.get(2).await.unwrap(), f.data(2));
    assert_eq!(f.blob.counts().range_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_missing_together_are_fetched_in_one_call() {
    let f = Fixture::raw(6);
    let answers = f
        .fetcher
        .get_many(&f.chunks[1..5], Priority::OnDemand)
        .await;
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.unwrap(), f.data(i + 1));
    }
    let c = f.blob.counts();
    assert_eq!((c.range_requests, c.ranges), (1, 4), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_a_region_stream_joins_it() {
    let f = Fixture::raw(8);
    f.blob.hold();
    let span = f.chunks[0].range.start..f.chunks[7].range.end;
    let mut seen = Vec::new();
    let mut report = |p: StreamProgress| seen.extend(p.local);
    let (stats, data) = {
        let stream = f
            .fetcher
            .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut report);
        tokio::pin!(stream);
        // First poll: the stream claims what is ahead of it and waits for the held blob.
        assert!(futures::poll!(stream.as_mut()).is_pending());
        assert!(f.fetcher.is_in_flight(&f.chunks[5].key));
        let read = f.fetcher.get(&f.chunks[5], Priority::OnDemand);
        tokio::pin!(read);
        assert!(futures::poll!(read.as_mut()).is_pending());
        f.blob.release();
        tokio::join!(stream, read)
    };
    let stats = stats.unwrap();
    assert_eq!(data.unwrap(), f.data(5));
    assert_eq!(stats.stored, 8, "{stats:?}");
    let c = f.blob.counts();
    assert_eq!((c.streams, c.range_requests), (1, 0), "one fetch: {c:?}");
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    assert!(f.chunks.iter().all(|r| f.cache.contains(&r.key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_passes_over_local_and_in_flight_chunks() {
    let f = Fixture::raw(6);
    f.get(1).await.unwrap();
    f.fetcher.wait_idle().await;
    // Chunk 3 is being fetched by a read when the stream reaches it.
    f.blob.hold();
    let span = f.chunks[0].range.start..f.chunks[5].range.end;
    let mut seen = Vec::new();
    let mut report = |p: StreamProgress| seen.extend(p.local);
    let (stats, data) = {
        let read = f.fetcher.get(&f.chunks[3], Priority::OnDemand);
        tokio::pin!(read);
        assert!(futures::poll!(read.as_mut()).is_pending());
        let stream = f
            .fetcher
            .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut report);
        tokio::pin!(stream);
        assert!(futures::poll!(stream.as_mut()).is_pending());
        f.blob.release();
        tokio::join!(stream, read)
    };
    let stats = stats.unwrap();
    assert_eq!(data.unwrap(), f.data(3));
    assert_eq!(
        stats,
        StreamStats {
            stored: 4,
            skipped: 2
        }
    );
    assert!(seen.contains(&1) && !seen.contains(&3), "{seen:?}");
    f.fetcher.wait_idle().await;
    assert!(f.chunks.iter().all(|r| f.cache.contains(&r.key)));
}

/// Raw chunks of which the odd ones say they decode to [`STREAM_DECODE_MIN`] bytes.
struct OddBig;

impl ChunkDecoder for OddBig {
    fn decode(&self, _request: &ChunkRequest, raw: Bytes) -> Result<Bytes, DecodeError> {
        Ok(raw)
    }

    fn decoded_len(&self, request: &ChunkRequest) -> Option<u64> {
        let odd = (request.range.start / CHUNK as u64) % 2 == 1;
        Some(if odd { STREAM_DECODE_MIN } else { CHUNK as u64 })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_a_mebibyte_or_more_are_streamed_one_request_each() {
    let f = Fixture::new(4, Arc::new(OddBig));
    let answers = f.fetcher.get_many(&f.chunks, Priority::OnDemand).await;
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.unwrap(), f.data(i), "chunk {i}");
    }
    let c = f.blob.counts();
    // Chunks 1 and 3 streamed (decoded as they arrive), 0 and 2 in one range request.
    assert_eq!((c.streams, c.range_requests, c.ranges), (2, 1, 2), "{c:?}");
    f.fetcher.wait_idle().await;
    assert!(f.chunks.iter().all(|r| f.cache.contains(&r.key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunks_are_streamed_into_the_cache_once() {
    let f = Fixture::new(3, Arc::new(LargeRaw));
    f.blob.hold();
    let reads = (0..4).map(|_| f.fetcher.get(&f.chunks[1], Priority::OnDemand));
    let all = futures::future::join_all(reads);
    let release = async {
        tokio::task::yield_now().await;
        f.blob.release();
    };
    let (answers, ()) = tokio::join!(all, release);
    for a in answers {
        assert_eq!(a.unwrap(), f.data(1));
    }
    let c = f.blob.counts();
    assert_eq!((c.streams, c.range_requests), (1, 0), "{c:?}");
    assert!(f.cache.contains(&f.chunks[1].key));
    // A stream over the region leaves large chunks to reads.
    let span = f.chunks[0].range.start..f.chunks[2].range.end;
    let stats = f
        .fetcher
        .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        stats,
        StreamStats {
            stored: 0,
            skipped: 3
        }
    );
    assert_eq!(f.blob.counts().streams, 1, "nothing to stream: no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_refetched_and_never_served_or_cached() {
    let f = Fixture::raw(4);
    let bad = f.chunks[2].range.clone();
    f.blob.corrupt(bad.start + 10..bad.start + 11);
    let err = f.get(2).await.unwrap_err();
    match &err {
        FetchError::Corrupt(c) => {
            assert_eq!(c.attempts, 3);
            assert!(matches!(c.reason, Corruption::Digest), "{c}");
        }
        other => panic!("expected a corrupt chunk, got {other}"),
    }
    assert_eq!(f.blob.counts().range_requests, 3);
    assert_eq!(f.metrics.snapshot().digest_mismatches, 3);
    assert!(!f.cache.contains(&f.chunks[2].key));
    // The neighbours are fine, and the chunk once the bytes are right.
    f.blob.heal();
    assert_eq!(f.get(2).await.unwrap(), f.data(2));
    assert_eq!(f.get(3).await.unwrap(), f.data(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_in_a_stream_are_fetched_again_by_range() {
    let f = Fixture::raw(5);
    let bad = f.chunks[3].range.clone();
    f.blob.corrupt(bad.start..bad.start + 1);
    let span = f.chunks[0].range.start..f.chunks[4].range.end;
    let stats = f
        .fetcher
        .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(stats.stored, 4);
    f.fetcher.wait_idle().await;
    assert!(!f.cache.contains(&f.chunks[3].key));
    assert!(f.blob.counts().range_requests >= 1, "{:?}", f.blob.counts());
    assert!(f.metrics.snapshot().digest_mismatches >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reaches_every_joiner_and_nothing_is_cached() {
    let f = Fixture::raw(3);
    f.blob.fail_next(1);
    f.blob.hold();
    let release = async {
        tokio::task::yield_now().await;
        f.blob.release();
    };
    let (a, b, ()) = tokio::join!(
        f.fetcher.get(&f.chunks[0], Priority::OnDemand),
        f.fetcher.get(&f.chunks[0], Priority::OnDemand),
        release
    );
    for r in [a, b] {
        assert!(matches!(r, Err(FetchError::Registry(_))), "{:?}", r.err());
    }
    assert!(!f.fetcher.is_in_flight(&f.chunks[0].key));
    assert!(!f.cache.contains(&f.chunks[0].key));
    assert_eq!(f.get(0).await.unwrap(), f.data(0));
    assert_eq!(f.blob.counts().range_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_hands_its_claims_to_range_fetches() {
    let f = Fixture::raw(4);
    f.blob.hold();
    f.blob.fail_next(1);
    let span = f.chunks[0].range.start..f.chunks[3].range.end;
    let mut report = |_: StreamProgress| {};
    let stream = f
        .fetcher
        .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut report);
    tokio::pin!(stream);
    assert!(futures::poll!(stream.as_mut()).is_pending());
    let read = f.fetcher.get(&f.chunks[2], Priority::OnDemand);
    tokio::pin!(read);
    assert!(futures::poll!(read.as_mut()).is_pending());
    f.blob.release();
    assert!(matches!(stream.await, Err(FetchError::Registry(_))));
    assert_eq!(read.await.unwrap(), f.data(2));
    f.fetcher.wait_idle().await;
    assert!(f.chunks.iter().all(|r| f.cache.contains(&r.key)));
    let c = f.blob.counts();
    assert_eq!((c.streams, c.range_requests), (1, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_leaves_nothing_claimed_for_ever() {
    let f = Fixture::raw(4);
    f.blob.hold();
    let span = f.chunks[0].range.start..f.chunks[3].range.end;
    {
        let mut report = |_: StreamProgress| {};
        let stream = f
            .fetcher
            .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut report);
        tokio::pin!(stream);
        assert!(futures::poll!(stream.as_mut()).is_pending());
        assert!(f.fetcher.is_in_flight(&f.chunks[1].key));
    }
    f.blob.release();
    f.fetcher.wait_idle().await;
    assert!(f.chunks.iter().all(|r| f.cache.contains(&r.key)));
}

/// A hold long enough never to run out during a test.
const HOLD: Duration = Duration::from_secs(600);

/// Reads chunk `i` until it is served (a held failure lasts until the probe a held read
/// started has been answered); bounded by a number of tries, not by time.
async fn read_until_served(f: &Fixture, i: usize) -> Bytes {
    for _ in 0..10_000 {
        if let Ok(data) = f.get(i).await {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("chunk {i} never served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_fails_at_once_until_the_source_answers() {
    let f = Fixture::holding(3, Arc::new(RawChunks), HOLD);
    f.blob.fail_next(1);
    assert!(matches!(f.get(0).await, Err(FetchError::Registry(_))));
    assert_eq!(f.blob.counts().range_requests, 1);
    // The source stops answering. A read of the failed chunk (the kernel's retry) gets the
    // held failure without waiting for the source, and starts one probe of it.
    f.blob.hold();
    for _ in 0..3 {
        let read = f.get(0);
        tokio::pin!(read);
        match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(Err(FetchError::Registry(_))) => {}
            other => panic!("expected the held failure at once, got {other:?}"),
        }
    }
    assert_eq!(f.metrics.snapshot().fetch_fail_fast, 3);
    // The probe runs in its own task: wait until it has asked (bounded by tries).
    for _ in 0..10_000 {
        if f.blob.counts().range_requests > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let c = f.blob.counts();
    assert_eq!(c.range_requests, 2, "the first read and one probe: {c:?}");
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_some());
    // The source answers again: the probe's answer drops the held failure.
    f.blob.release();
    assert_eq!(read_until_served(&f, 0).await, f.data(0));
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_read_asks_the_source_first_and_is_served_when_it_is_back() {
    let f = Fixture::holding(3, Arc::new(RawChunks), HOLD);
    f.fetcher.set_retry_window(Duration::ZERO);
    f.blob.fail_next(1);
    assert!(matches!(f.get(0).await, Err(FetchError::Registry(_))));
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_some());
    // The registry is back: the next read (not an immediate retry) waits for the probe's
    // answer and is served on its first try.
    assert_eq!(f.get(0).await.unwrap(), f.data(0));
    assert_eq!(f.metrics.snapshot().fetch_fail_fast, 0);
    let c = f.blob.counts();
    assert_eq!(
        c.range_requests, 3,
        "the failed read, the probe, the read: {c:?}"
    );

    // A source that does not answer: the wait for the probe is bounded, then the held
    // failure.
    f.blob.fail_next(1);
    assert!(f.get(1).await.is_err());
    f.blob.hold();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(30), f.get(1)).await,
        Ok(Err(FetchError::Registry(_)))
    ));
    assert_eq!(f.metrics.snapshot().fetch_fail_fast, 1);
    f.blob.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_another_read_ends_a_held_failure() {
    let f = Fixture::holding(3, Arc::new(RawChunks), HOLD);
    f.blob.fail_next(1);
    assert!(f.get(0).await.is_err());
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_some());
    // Other chunks are not held; the source answering them shows it is back.
    assert_eq!(f.get(1).await.unwrap(), f.data(1));
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_none());
    assert_eq!(f.get(0).await.unwrap(), f.data(0));
    assert_eq!(f.metrics.snapshot().fetch_fail_fast, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_large_chunks_and_streams_are_held_too() {
    // A large chunk (streamed into the cache) whose stream failed.
    let f = Fixture::holding(3, Arc::new(LargeRaw), HOLD);
    f.blob.fail_next(1);
    assert!(matches!(f.get(1).await, Err(FetchError::Registry(_))));
    assert_eq!(f.blob.counts().streams, 1);
    f.blob.hold();
    let read = f.get(1);
    tokio::pin!(read);
    assert!(matches!(
        futures::poll!(read.as_mut()),
        std::task::Poll::Ready(Err(FetchError::Registry(_)))
    ));
    assert_eq!(f.blob.counts().streams, 1, "no new stream while held");
    f.blob.release();
    assert_eq!(read_until_served(&f, 1).await, f.data(1));

    // A region stream that failed, and the range fetch of what it had claimed too.
    let f = Fixture::holding(4, Arc::new(RawChunks), HOLD);
    f.blob.fail_next(2);
    let span = f.chunks[0].range.start..f.chunks[3].range.end;
    let streamed = f
        .fetcher
        .stream_chunks(span, &f.chunks, Priority::Prefetch, &mut |_| {})
        .await;
    assert!(matches!(streamed, Err(FetchError::Registry(_))));
    f.fetcher.wait_idle().await;
    f.blob.hold();
    for i in 0..4 {
        assert!(
            f.fetcher.held_failure(&f.chunks[i].key).is_some(),
            "chunk {i}"
        );
    }
    let read = f.get(2);
    tokio::pin!(read);
    assert!(matches!(
        futures::poll!(read.as_mut()),
        std::task::Poll::Ready(Err(FetchError::Registry(_)))
    ));
    f.blob.release();
    assert_eq!(read_until_served(&f, 2).await, f.data(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hold_off_a_failed_chunk_is_fetched_again() {
    let f = Fixture::raw(2);
    f.blob.fail_next(1);
    assert!(f.get(0).await.is_err());
    assert!(f.fetcher.held_failure(&f.chunks[0].key).is_none());
    assert_eq!(f.get(0).await.unwrap(), f.data(0));
    assert_eq!(f.blob.counts().range_requests, 2);
}
