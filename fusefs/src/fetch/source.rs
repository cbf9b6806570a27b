//! Where chunk bytes come from: a [`BlobSource`] is one blob (a layer) that can say its size,
//! read byte ranges and stream a range sequentially. The registry client's [`Blob`] is the
//! real one; [`super::MemoryBlob`] serves bytes from memory for tests (with request counts,
//! delays, failures and wrong bytes on demand).

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use registry::{Blob, Priority, RegistryError, Target};

/// A sequential read of part of a blob: pieces in order, `None` at the end.
pub type SourceStream = BoxStream<'static, Result<Bytes, RegistryError>>;

/// One blob the fetch layer reads chunks from.
pub trait BlobSource: Send + Sync + 'static {
    /// The blob's size in bytes.
    fn size(&self) -> u64;

    /// What errors about this blob name (`host/repository@digest`).
    fn target(&self) -> Target;

    /// Reads several byte ranges (any order, may overlap, each inside the blob); answers come
    /// in the order given. A source may merge nearby ranges into fewer requests.
    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [Range<u64>],
        priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, RegistryError>>;

    /// Reads `range` sequentially, in pieces of any size, as one request where the source
    /// can (a resumable HTTP range request for the registry).
    fn stream_range(&self, range: Range<u64>, priority: Priority) -> SourceStream;

    /// The bytes of `range` this source returned failed verification. A source with several
    /// places to read from (registry mirrors) stops using the one that served them for a
    /// while, so that the next read of them goes elsewhere.
    fn report_corrupt(&self, range: Range<u64>) {
        let _ = range;
    }

    /// True if the source is known to have answered a request after `t` by a way the
    /// fetch layer does not see (the registry: any request to the blob's host). The fetch
    /// layer tracks its own requests; the default knows of no others.
    fn answered_since(&self, t: Instant) -> bool {
        let _ = t;
        false
    }

    /// Reads one byte range.
    fn read_range(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'_, Result<Bytes, RegistryError>> {
        async move {
            let mut v = self
                .read_ranges(std::slice::from_ref(&range), priority)
                .await?;
            Ok(v.pop().unwrap_or_default())
        }
        .boxed()
    }
}

impl BlobSource for Blob {
    fn size(&self) -> u64 {
        Blob::size(self)
    }

    fn target(&self) -> Target {
        Blob::target(self)
    }

    fn answered_since(&self, t: Instant) -> bool {
        Blob::host_answered_since(self, t)
    }

    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [Range<u64>],
        priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, RegistryError>> {
        Blob::read_ranges(self, ranges, priority).boxed()
    }

    fn stream_range(&self, range: Range<u64>, priority: Priority) -> SourceStream {
        futures::StreamExt::boxed(Blob::stream_range(self, range, priority).into_stream())
    }

    fn report_corrupt(&self, range: Range<u64>) {
        Blob::report_corrupt(self, range);
    }
}
