//! Warming a layer without a container (`starling prefetch`): which chunks a selection
//! needs ([`RemoteLayer::warm_plan`]: the prioritized region before the
//! `.prefetch.landmark`, the chunks of listed files, or everything), and fetching them
//! through the layer's fetch layer ([`RemoteLayer::warm`]), so they are verified and cached
//! exactly as a container's reads would have cached them.

use estargz::{EntryKind, LayerIndex};
use registry::Priority;

use super::chunks::request_of;
use super::remote::RemoteLayer;
use crate::cache::ChunkKey;
use crate::fetch::{ChunkRequest, FetchError};

/// Compressed bytes asked for in one call to the fetch layer (merged into few requests).
const BATCH_BYTES: u64 = 4 << 20;

/// What to warm in a layer.
#[derive(Debug, Clone, Copy)]
pub enum WarmSelection<'a> {
    /// The prioritized files: every chunk before the layer's `.prefetch.landmark`.
    Landmark,
    /// The chunks of these files (absolute paths in the layer), in this order.
    Files(&'a [Vec<u8>]),
    /// Every chunk of the layer.
    All,
}

/// The chunks a selection needs that are not in the cache yet.
#[derive(Debug, Default, Clone)]
pub struct WarmPlan {
    /// Chunks to fetch, each once, in the order they should come.
    pub requests: Vec<ChunkRequest>,
    /// Chunks of the selection already in the cache.
    pub local_chunks: u64,
    /// Their compressed bytes.
    pub local_bytes: u64,
    /// Listed files the layer does not have as regular files (other layers may).
    pub missing_files: Vec<Vec<u8>>,
    /// [`WarmSelection::Landmark`] on a layer without a landmark (nothing selected).
    pub no_landmark: bool,
}

impl WarmPlan {
    /// Compressed bytes the requests will fetch.
    pub fn bytes(&self) -> u64 {
        self.requests.iter().map(cost).sum()
    }

    /// Keeps the leading requests that fit in `budget` compressed bytes; returns the bytes
    /// kept.
    pub fn truncate_to(&mut self, budget: u64) -> u64 {
        let mut used = 0u64;
        let mut keep = 0;
        for r in &self.requests {
            if used + cost(r) > budget {
                break;
            }
            used += cost(r);
            keep += 1;
        }
        self.requests.truncate(keep);
        used
    }
}

/// What one warm run fetched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WarmStats {
    /// Chunks now in the cache.
    pub chunks: u64,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Chunks that could not be fetched (the first error is returned too).
    pub failed: u64,
}

/// Compressed bytes of the blob one request reads.
fn cost(r: &ChunkRequest) -> u64 {
    r.range.end - r.range.start
}

/// Ids of the regular files named by `paths` (hardlinks resolved by the index), with the
/// paths the layer does not have.
fn files_of(index: &LayerIndex, paths: &[Vec<u8>]) -> (Vec<u32>, Vec<Vec<u8>>) {
    let mut ids = Vec::new();
    let mut missing = Vec::new();
    for p in paths {
        let rel = p.strip_prefix(b"/").unwrap_or(p);
        match index.resolve(rel).and_then(|id| index.entry(id)) {
            Some(e) if e.kind() == EntryKind::Reg => ids.push(e.id()),
            _ => missing.push(p.clone()),
        }
    }
    (ids, missing)
}

impl RemoteLayer {
    /// The chunks `selection` needs that are not in the cache, each once, in the order
    /// they should be fetched (blob order for the landmark region and for everything, file
    /// order for a list).
    pub fn warm_plan(&self, selection: WarmSelection<'_>) -> WarmPlan {
        let index = self.index();
        let cache = &self.context().cache;
        let mut plan = WarmPlan::default();
        let chunks: Vec<estargz::Chunk> = match selection {
            WarmSelection::All => index.chunks_in_blob_order().collect(),
            WarmSelection::Landmark => {
                match index
                    .prefetch_landmark()
                    .filter(|_| !index.has_no_prefetch_landmark())
                {
                    Some(end) => index
                        .chunks_in_blob_order()
                        .take_while(|c| c.compressed_offset < end)
                        .collect(),
                    None => {
                        plan.no_landmark = true;
                        Vec::new()
                    }
                }
            }
            WarmSelection::Files(paths) => {
                let (ids, missing) = files_of(index, paths);
                plan.missing_files = missing;
                ids.into_iter().flat_map(|id| index.chunks_of(id)).collect()
            }
        };
        let mut seen = std::collections::HashSet::<ChunkKey>::new();
        for c in chunks {
            let Some(req) = request_of(&c) else { continue };
            if !seen.insert(req.key) {
                continue;
            }
            if cache.contains(&req.key) {
                plan.local_chunks += 1;
                plan.local_bytes += cost(&req);
            } else {
                plan.requests.push(req);
            }
        }
        plan
    }

    /// Fetches `requests` (from [`RemoteLayer::warm_plan`]) through the layer's fetch layer
    /// at prefetch priority, a few MiB per call; `progress` gets the compressed bytes of
    /// each chunk as it lands. Chunks that fail are counted and the first error returned
    /// with the stats; the rest are still fetched.
    pub async fn warm(
        &self,
        requests: &[ChunkRequest],
        mut progress: impl FnMut(u64),
    ) -> (WarmStats, Option<FetchError>) {
        let fetcher = self.fetcher();
        let mut stats = WarmStats::default();
        let mut first_error = None;
        let mut start = 0;
        while start < requests.len() {
            if self.is_closed() {
                break;
            }
            let mut end = start;
            let mut bytes = 0;
            while end < requests.len()
                && (end == start || bytes + cost(&requests[end]) <= BATCH_BYTES)
            {
                bytes += cost(&requests[end]);
                end += 1;
            }
            let batch = &requests[start..end];
            let answers = fetcher.get_many(batch, Priority::Prefetch).await;
            for (req, answer) in batch.iter().zip(answers) {
                match answer {
                    Ok(_) => {
                        stats.chunks += 1;
                        stats.bytes += cost(req);
                        progress(cost(req));
                    }
                    Err(e) => {
                        stats.failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            start = end;
        }
        // Chunks are answered before they are written: wait until they are in the cache.
        fetcher.wait_idle().await;
        (stats, first_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(i: u8, len: u64) -> ChunkRequest {
        ChunkRequest {
            key: ChunkKey::of(&[i]),
            range: 0..len,
        }
    }

    #[test]
    fn a_budget_keeps_the_leading_requests_that_fit() {
        let mut plan = WarmPlan {
            requests: vec![req(1, 100), req(2, 300), req(3, 50)],
            ..Default::default()
        };
        assert_eq!(plan.bytes(), 450);
        assert_eq!(plan.truncate_to(399), 100);
        assert_eq!(plan.requests.len(), 1);
        let mut none = plan.clone();
        assert_eq!(none.truncate_to(10), 0);
        assert!(none.requests.is_empty());
    }
}
