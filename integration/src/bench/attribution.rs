//! Where the bytes over the link went: the HTTP requests of a lazy run (blob, Range) mapped
//! onto the chunks of the variant's eStargz layers, each chunk marked as needed or not by
//! the regions the workload reads ([`super::access`]). Gives, per image × workload × cell,
//! how many fetched bytes were chunks the workload touched, chunks it did not touch, and
//! the rest (TOCs, footers, tar headers), and the files that cost the most.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::proxy::ProxyRequest;

use super::access::{open_index, AccessReport};
use super::plan::Variant;
use super::results::Results;
pub use super::results::{FetchBreakdown, FileFetch};
use super::setup::{note, BenchEnv};
use super::BenchError;

/// A variant's layers as the attribution needs them.
pub struct VariantIndex {
    /// Blob digest → (layer index, its TOC index, blob size).
    pub layers: HashMap<String, (usize, estargz::LayerIndex, u64)>,
}

impl VariantIndex {
    /// Opens the TOC of each `(digest, blob file)`, bottom layer first.
    pub fn open(blobs: &[(String, PathBuf)]) -> Result<VariantIndex, BenchError> {
        let mut layers = HashMap::new();
        for (i, (digest, path)) in blobs.iter().enumerate() {
            let size = std::fs::metadata(path)
                .map_err(|e| BenchError::Setup(format!("stat {}: {e}", path.display())))?
                .len();
            layers.insert(digest.clone(), (i, open_index(path)?, size));
        }
        Ok(VariantIndex { layers })
    }
}

/// The file of blob `digest` in a docker-registry storage directory.
pub fn registry_blob(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(hex.get(..2).unwrap_or(""))
        .join(hex)
        .join("data")
}

/// Byte ranges `[start, end)` a `Range` header asks for in a blob of `size` bytes (`None`:
/// the whole blob).
pub fn parse_range(header: Option<&str>, size: u64) -> Vec<(u64, u64)> {
    let Some(h) = header else {
        return vec![(0, size)];
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return vec![(0, size)];
    };
    spec.split(',')
        .filter_map(|part| {
            let (a, b) = part.trim().split_once('-')?;
            let r = match (a.trim(), b.trim()) {
                ("", n) => {
                    let n: u64 = n.parse().ok()?;
                    (size.saturating_sub(n), size)
                }
                (a, "") => (a.parse().ok()?, size),
                (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.saturating_add(1)),
            };
            Some((r.0.min(size), r.1.min(size)))
        })
        .filter(|(a, b)| a < b)
        .collect()
}

/// The blob digest a request path names (`/v2/<repo>/blobs/sha256:...`).
fn blob_digest(path: &str) -> Option<&str> {
    let (_, d) = path.split_once("/blobs/")?;
    let d = d.split(['?', '#']).next()?;
    d.starts_with("sha256:").then_some(d)
}

/// The chunks of `index` (layer `layer`) that the workload's read pages fall in.
fn touched_chunks(
    index: &estargz::LayerIndex,
    layer: usize,
    access: &AccessReport,
) -> HashSet<estargz::ChunkId> {
    let mut set = HashSet::new();
    for f in access.files.iter().filter(|f| f.layer == layer) {
        let Some(id) = index.resolve(f.path.as_bytes()) else {
            continue;
        };
        for (page, n) in &f.runs {
            let (mut at, end) = (page * 4096, ((page + n) * 4096).min(f.size));
            while at < end {
                let Some(c) = index.chunk_at(id, at) else {
                    break;
                };
                set.insert(c.id);
                at = c.file_offset + c.size;
            }
        }
    }
    set
}

/// Attributes `requests` (one run of `cell` on image × workload) to the chunks of
/// `variant`, with the workload's regions read from `access`.
pub fn breakdown(
    requests: &[ProxyRequest],
    variant: &VariantIndex,
    access: Option<&AccessReport>,
    top: usize,
) -> FetchBreakdown {
    let mut b = FetchBreakdown {
        requests: requests.len(),
        ..Default::default()
    };
    let mut touched: HashMap<usize, HashSet<estargz::ChunkId>> = HashMap::new();
    if let Some(a) = access {
        for (layer, index, _) in variant.layers.values() {
            let t = touched_chunks(index, *layer, a);
            b.needed_total += t
                .iter()
                .filter_map(|id| index.chunk(*id))
                .map(|c| c.compressed_len)
                .sum::<u64>();
            touched.insert(*layer, t);
        }
    }
    let read_of: HashMap<(usize, &str), (u64, u64)> = access
        .map(|a| {
            a.files
                .iter()
                .map(|f| ((f.layer, f.path.as_str()), (f.read_bytes, f.size)))
                .collect()
        })
        .unwrap_or_default();
    let mut per_file: BTreeMap<(usize, String), u64> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.method == "GET") {
        let Some(digest) = blob_digest(&r.path) else {
            continue;
        };
        if r.range.is_some() {
            b.range_requests += 1;
        } else {
            b.whole_blob_requests += 1;
        }
        let Some((layer, index, size)) = variant.layers.get(digest) else {
            // size unknown without an index: count what a range names, if bounded
            let bytes: u64 = parse_range(r.range.as_deref(), u64::MAX)
                .iter()
                .filter(|(_, e)| *e != u64::MAX)
                .map(|(a, e)| e - a)
                .sum();
            b.unknown += bytes;
            b.blob_bytes += bytes;
            continue;
        };
        let chunks: Vec<estargz::Chunk> = index.chunks_in_blob_order().collect();
        for (start, end) in parse_range(r.range.as_deref(), *size) {
            b.blob_bytes += end - start;
            let mut inside = 0;
            let first = chunks.partition_point(|c| c.compressed_offset + c.compressed_len <= start);
            for c in chunks[first..]
                .iter()
                .take_while(|c| c.compressed_offset < end)
            {
                let lo = c.compressed_offset.max(start);
                let hi = (c.compressed_offset + c.compressed_len).min(end);
                if hi <= lo {
                    continue;
                }
                let n = hi - lo;
                inside += n;
                if touched.get(layer).is_some_and(|t| t.contains(&c.id)) {
                    b.needed += n;
                } else {
                    b.unneeded += n;
                }
                let path = String::from_utf8_lossy(&index.path_of(c.entry)).into_owned();
                *per_file.entry((*layer, path)).or_default() += n;
            }
            b.other += (end - start).saturating_sub(inside);
        }
    }
    let mut files: Vec<FileFetch> = per_file
        .into_iter()
        .map(|((layer, path), fetched)| {
            let (read, size) = read_of
                .get(&(layer, path.as_str()))
                .copied()
                .unwrap_or_default();
            FileFetch {
                layer,
                path,
                fetched,
                read,
                size,
            }
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.fetched));
    files.truncate(top);
    b.top_files = files;
    b
}

impl BenchEnv {
    /// The layer blobs (digest, file) of `image`'s `variant`, bottom first: from its cached
    /// layout, or from the registry's storage for variants made this run.
    fn variant_blobs(&self, image: &str, variant: Variant) -> Option<Vec<(String, PathBuf)>> {
        let info = self.images.get(image)?.get(&variant)?;
        Some(
            info.layers
                .iter()
                .map(|(digest, _)| {
                    let file = match &info.layout {
                        Some((layout, _)) => layout
                            .join("blobs/sha256")
                            .join(digest.strip_prefix("sha256:").unwrap_or(digest)),
                        None => registry_blob(self.stack.registry.storage(), digest),
                    };
                    (digest.clone(), file)
                })
                .collect(),
        )
    }

    /// A breakdown of the fetched bytes of every lazy cell's median run (by link bytes)
    /// of every image × workload in `results`.
    pub fn fetch_breakdowns(
        &mut self,
        results: &Results,
        access: &BTreeMap<String, BTreeMap<String, AccessReport>>,
    ) -> Vec<FetchBreakdown> {
        let mut out = Vec::new();
        let mut indexes: HashMap<(String, Variant), Option<VariantIndex>> = HashMap::new();
        for (image, workload) in results.rows() {
            for cell in results.cells.iter().filter(|c| c.snapshotter.is_lazy()) {
                let mut runs: Vec<_> = results
                    .ok_samples(&image, &workload, *cell)
                    .filter(|s| !s.fetches.is_empty())
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                runs.sort_by_key(|s| s.link_bytes);
                let s = runs[runs.len() / 2];
                let key = (image.clone(), cell.variant);
                if !indexes.contains_key(&key) {
                    let idx = match self.variant_blobs(&image, cell.variant) {
                        Some(blobs) => match VariantIndex::open(&blobs) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                note(
                                    &mut self.notes,
                                    format!(
                                        "no byte breakdown for {image}:{}: {e}",
                                        cell.variant.tag()
                                    ),
                                );
                                None
                            }
                        },
                        None => None,
                    };
                    indexes.insert(key.clone(), idx);
                }
                let Some(Some(v)) = indexes.get(&key) else {
                    continue;
                };
                let a = access.get(&image).and_then(|m| m.get(&workload));
                let mut b = breakdown(&s.fetches, v, a, 12);
                b.image = image.clone();
                b.workload = workload.clone();
                b.cell = Some(*cell);
                b.round = s.round;
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range(None, 100), vec![(0, 100)]);
        assert_eq!(parse_range(Some("bytes=10-19"), 100), vec![(10, 20)]);
        assert_eq!(parse_range(Some("bytes=-30"), 100), vec![(70, 100)]);
        assert_eq!(parse_range(Some("bytes=90-"), 100), vec![(90, 100)]);
        assert_eq!(
            parse_range(Some("bytes=0-9, 50-59"), 100),
            vec![(0, 10), (50, 60)]
        );
        assert_eq!(parse_range(Some("bytes=95-200"), 100), vec![(95, 100)]);
        assert!(parse_range(Some("bytes=x-y"), 100).is_empty());
        assert_eq!(
            blob_digest("/v2/pydeb/blobs/sha256:abc"),
            Some("sha256:abc")
        );
        assert_eq!(blob_digest("/v2/pydeb/manifests/esgz"), None);
        assert!(registry_blob(Path::new("/s"), "sha256:abcdef")
            .ends_with("blobs/sha256/ab/abcdef/data"));
    }

    #[test]
    fn fetched_chunks_split_into_needed_and_not() {
        let mut tar = estargz::testutil::TarBuilder::new();
        let m = Default::default();
        tar.file(b"a.bin", &m, &estargz::testutil::pattern(3 * 4096, 1));
        tar.file(b"b.bin", &m, &estargz::testutil::pattern(4096, 2));
        let mut blob = Vec::new();
        estargz::build(
            &tar.finish()[..],
            &mut blob,
            &estargz::BuildOptions {
                chunk_size: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        let wd = crate::workdir::Workdir::new("battr").unwrap();
        let p = wd.join("blob");
        std::fs::write(&p, &blob).unwrap();
        let v = VariantIndex::open(&[("sha256:l0".into(), p)]).unwrap();
        let access = AccessReport {
            files: vec![super::super::access::FileAccess {
                layer: 0,
                path: "a.bin".into(),
                size: 3 * 4096,
                read_bytes: 4096,
                runs: vec![(1, 1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let whole = ProxyRequest {
            method: "GET".into(),
            path: "/v2/x/blobs/sha256:l0".into(),
            range: None,
        };
        let b = breakdown(&[whole], &v, Some(&access), 10);
        assert_eq!((b.whole_blob_requests, b.range_requests), (1, 0));
        assert_eq!(b.blob_bytes, blob.len() as u64);
        let (_, index, _) = &v.layers["sha256:l0"];
        let chunk1 = index.chunk(1).unwrap();
        assert_eq!(b.needed, chunk1.compressed_len, "{b:?}");
        assert_eq!(b.needed_total, chunk1.compressed_len);
        assert!(b.unneeded > 0 && b.other > 0);
        assert_eq!(b.top_files[0].path, "a.bin");
        assert_eq!(b.top_files[0].read, 4096);
        let one = ProxyRequest {
            method: "GET".into(),
            path: "/v2/x/blobs/sha256:l0".into(),
            range: Some(format!(
                "bytes={}-{}",
                chunk1.compressed_offset,
                chunk1.compressed_offset + chunk1.compressed_len - 1
            )),
        };
        let b = breakdown(&[one], &v, Some(&access), 10);
        assert_eq!(
            (b.needed, b.unneeded, b.other),
            (chunk1.compressed_len, 0, 0)
        );
    }
}
