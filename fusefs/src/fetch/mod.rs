//! The fetch layer: where chunk bytes come from ([`BlobSource`]: a registry blob, or a
//! [`MemoryBlob`] in tests) and the one component that fetches, decodes, verifies and
//! caches chunks ([`ChunkFetcher`]), de-duplicating every way of asking for a chunk.
//!
//! - [`source`]: the [`BlobSource`] trait and its registry implementation;
//! - [`decode`]: [`ChunkRequest`], the [`ChunkDecoder`] of a layer, size thresholds;
//! - [`fetcher`]: [`ChunkFetcher`] — reads, large chunks and region streams, one in-flight
//!   table;
//! - [`error`]: [`FetchError`] and what corruption was seen;
//! - `hold`: chunks whose fetch failed recently, answered at once for `fetch.failure_hold`;
//! - `memory` (tests, feature `testutil`): [`MemoryBlob`], counting requests and injecting
//!   delays, holds, failures and wrong bytes.

pub mod decode;
pub mod error;
pub mod fetcher;
mod hold;
#[cfg(any(test, feature = "testutil"))]
pub mod memory;
pub mod source;
#[cfg(test)]
mod tests;

pub use decode::{
    ChunkDecoder, ChunkRequest, DecodeError, RawChunks, LARGE_CHUNK, STREAM_DECODE_MIN,
};
pub use error::{CorruptChunk, Corruption, FetchError};
pub use fetcher::{ChunkFetcher, StreamProgress, StreamStats, STREAM_CLAIM_AHEAD};
#[cfg(any(test, feature = "testutil"))]
pub use memory::{MemoryBlob, RequestCounts};
pub use source::{BlobSource, SourceStream};
