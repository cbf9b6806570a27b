//! Regions read: which bytes of which files a workload really reads, measured once per
//! image and workload on a fully local copy and cached next to the images.
//!
//! How: a private containerd whose root is on a [`LoopFs`] with readahead off pulls the
//! original image (overlayfs snapshotter, full unpack); every file of the image's layers
//! is written back and dropped from the page cache; the workload runs in a container
//! exactly as in the benchmark; then `mincore` tells, file by file, which 4 KiB pages are
//! cached. With readahead off a `read` brings in only the pages it covers and an mmap
//! fault only its page, so this counts what the program (and the runtime, e.g. containerd
//! reading `/etc/passwd`, and overlayfs copy-ups) touched, including pages of mapped
//! libraries and executables, at page granularity. Each read region is then mapped onto
//! the chunks of the image's ctr-remote eStargz variant: the compressed bytes of the
//! chunks it touches are what a chunk-granular fetcher must move at least.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::containerd::{Containerd, ContainerdOptions};
use crate::loopfs::{self, LoopFs};
use crate::mounts::MountSpec;
use crate::oci::OciImage;
use crate::workdir::unique_token;

use super::plan::{BenchOptions, Variant, Workload};
use super::runner::create_and_start;
use super::setup::{note, BenchEnv};
use super::BenchError;

/// Bump when the method or the report changes (part of the cache key).
pub const ACCESS_VERSION: u32 = 1;

const PAGE: u64 = 4096;

/// One file the workload read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileAccess {
    /// Layer index, bottom first.
    pub layer: usize,
    /// Path in the layer (`usr/bin/node`).
    pub path: String,
    /// File size.
    pub size: u64,
    /// Bytes of the pages read (the last page counts up to the end of the file).
    pub read_bytes: u64,
    /// Runs of pages read, `(first page, pages)`.
    pub runs: Vec<(u64, u64)>,
    /// Chunks of the eStargz variant these pages fall in.
    pub chunks: u64,
    /// Compressed bytes of those chunks (what a chunk-granular fetch moves).
    pub chunk_bytes: u64,
    /// Uncompressed bytes of those chunks.
    pub chunk_raw_bytes: u64,
    /// The bytes read, each scaled by its chunk's compression ratio (what a byte-exact
    /// fetch of compressed data would move).
    pub est_compressed: u64,
}

/// Regions read by one workload on one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessReport {
    /// Image name.
    pub image: String,
    /// Workload name.
    pub workload: String,
    /// How it was measured.
    pub method: String,
    /// Sum of [`FileAccess::read_bytes`].
    pub read_bytes: u64,
    /// Files read.
    pub files_read: usize,
    /// Regular files in the image's layers (each inode once).
    pub files_total: usize,
    /// Their bytes.
    pub image_bytes: u64,
    /// Sum of [`FileAccess::chunk_bytes`].
    pub chunk_bytes: u64,
    /// Sum of [`FileAccess::chunk_raw_bytes`].
    pub chunk_raw_bytes: u64,
    /// Sum of [`FileAccess::est_compressed`].
    pub est_compressed: u64,
    /// Chunks touched.
    pub chunks: u64,
    /// Pages still cached after eviction, before the run (should be 0).
    pub resident_before_pages: u64,
    /// The workload's run time on the local copy (readahead off: slower than usual).
    pub run_s: f64,
    /// Layer digests of the original image and of the eStargz variant used for chunks.
    pub layers: Vec<(String, Option<String>)>,
    /// Every file read, most chunk bytes first.
    pub files: Vec<FileAccess>,
}

impl AccessReport {
    /// The report without its per-file list beyond the `n` costliest files.
    pub fn top(&self, n: usize) -> AccessReport {
        let mut r = self.clone();
        r.files.truncate(n);
        r
    }
}

/// Cache file of a workload's report on an image (version, workload, layers in the key).
fn cache_path(image_key: &str, w: &Workload, layers: &[(String, Option<String>)]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(format!(
        "v{ACCESS_VERSION}\n{}\n{}\n{}\n",
        w.name, w.interpreter, w.script
    ));
    for (a, b) in layers {
        h.update(format!("{a} {}\n", b.as_deref().unwrap_or("-")));
    }
    let hex = hex::encode(h.finalize());
    crate::images::cache_root()
        .join("bench-access")
        .join(format!("{image_key}-{}-{}.json", w.name, &hex[..16]))
}

/// Turns per-page residency into runs of pages read.
pub fn page_runs(resident: &[bool]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, r) in resident.iter().enumerate() {
        if !r {
            continue;
        }
        let i = i as u64;
        match runs.last_mut() {
            Some((start, len)) if *start + *len == i => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

/// Bytes of `runs` within `[from, to)` of a file of `size` bytes.
fn bytes_within(runs: &[(u64, u64)], size: u64, from: u64, to: u64) -> u64 {
    runs.iter()
        .map(|(p, n)| {
            let a = (p * PAGE).max(from);
            let b = ((p + n) * PAGE).min(size).min(to);
            b.saturating_sub(a)
        })
        .sum()
}

/// Fills the chunk figures of `f` from the eStargz index of its layer.
fn add_chunks(f: &mut FileAccess, index: &estargz::LayerIndex) {
    let Some(id) = index.resolve(f.path.as_bytes()) else {
        return;
    };
    for c in index.chunks_of(id) {
        let r = c.file_range();
        let inside = bytes_within(&f.runs, f.size, r.start, r.end);
        if inside == 0 {
            continue;
        }
        f.chunks += 1;
        f.chunk_bytes += c.compressed_len;
        f.chunk_raw_bytes += c.size;
        if c.size > 0 {
            f.est_compressed += (inside as u128 * c.compressed_len as u128 / c.size as u128) as u64;
        }
    }
}

/// Opens the TOC index of an eStargz blob file.
pub fn open_index(blob: &Path) -> Result<estargz::LayerIndex, BenchError> {
    let f = std::fs::File::open(blob)
        .map_err(|e| BenchError::Setup(format!("open {}: {e}", blob.display())))?;
    let opts = estargz::OpenOptions {
        index: estargz::IndexOptions {
            allow_missing_digests: true,
            ..Default::default()
        },
        ..Default::default()
    };
    estargz::open(&f, &opts)
        .map(|l| l.index)
        .map_err(|e| BenchError::Setup(format!("TOC of {}: {e}", blob.display())))
}

/// Every regular file under `dir` (each inode once): (path relative to `dir`, file).
fn regular_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, BenchError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| BenchError::Setup(format!("read {}: {e}", d.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && seen.insert(m.ino()) {
                let rel = p
                    .strip_prefix(dir)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The layer directories (bottom first) of the snapshot `ctr snapshots mounts` printed.
fn layer_dirs(mounts: &str) -> Result<Vec<PathBuf>, BenchError> {
    let specs = MountSpec::parse_ctr(mounts)?;
    let Some(m) = specs.first() else {
        return Err(BenchError::Setup(format!("no mount in {mounts:?}")));
    };
    if m.fs_type == "bind" {
        return Ok(vec![PathBuf::from(&m.source)]);
    }
    let lower = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .ok_or_else(|| BenchError::Setup(format!("no lowerdir in {mounts:?}")))?;
    Ok(lower.split(':').rev().map(PathBuf::from).collect())
}

/// A private containerd on a readahead-free loop filesystem holding one unpacked image.
struct TraceSite {
    containerd: Option<Containerd>,
    fs: LoopFs,
    runc_state: PathBuf,
    reference: String,
    layers: Vec<PathBuf>,
}

impl TraceSite {
    fn start(env: &BenchEnv, image: &str, size: u64) -> Result<TraceSite, BenchError> {
        let dir = env.stack.wd.subdir(format!("access-{image}"))?;
        let fs = LoopFs::create(&dir.join("fs.img"), &dir.join("fs"), size, 0)?;
        let namespace = format!("stlaccess{}", unique_token(6).to_lowercase());
        let containerd = Containerd::start_in(
            &fs.path().join("ctd"),
            ContainerdOptions {
                namespace: namespace.clone(),
                ..Default::default()
            },
            false,
        )?;
        let mut site = TraceSite {
            containerd: Some(containerd),
            fs,
            runc_state: PathBuf::from("/run/containerd/runc").join(&namespace),
            reference: env.loopback_ref(image, Variant::Orig),
            layers: Vec::new(),
        };
        let ctr = site.ctr().clone();
        let mut long = ctr.clone();
        long.timeout = std::time::Duration::from_secs(1800);
        long.pull(&site.reference, "overlayfs")?;
        let chain = ctr.image_chain_id(&site.reference)?;
        let key = format!("stl-access-{}", unique_token(8));
        ctr.ctr_ok([
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "view",
            &key,
            &chain,
        ])?;
        let mounts = ctr.ctr_ok([
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "mounts",
            "/x",
            &key,
        ]);
        let _ = ctr.ctr(["snapshots", "--snapshotter", "overlayfs", "rm", &key]);
        site.layers = layer_dirs(&mounts?)?;
        Ok(site)
    }

    fn ctr(&self) -> &crate::containerd::Ctr {
        self.containerd
            .as_ref()
            .expect("containerd runs while the site exists")
            .ctr()
    }

    /// Every file of every layer: (layer, path, full path).
    fn files(&self) -> Result<Vec<(usize, String, PathBuf)>, BenchError> {
        let mut all = Vec::new();
        for (i, d) in self.layers.iter().enumerate() {
            for (rel, p) in regular_files(d)? {
                all.push((i, rel, p));
            }
        }
        Ok(all)
    }

    /// Writes everything back and drops every layer file from the page cache; returns the
    /// pages still cached.
    fn evict(&self, files: &[(usize, String, PathBuf)]) -> Result<u64, BenchError> {
        self.fs.sync()?;
        let mut left = 0;
        for (_, _, p) in files {
            let Ok(f) = std::fs::File::open(p) else {
                continue;
            };
            loopfs::evict(&f)?;
            left += loopfs::resident_pages(&f)?.iter().filter(|r| **r).count() as u64;
        }
        Ok(left)
    }
}

impl Drop for TraceSite {
    fn drop(&mut self) {
        if let Some(c) = self.containerd.as_ref() {
            let _ = c.ctr().remove_all_containers();
        }
        drop(self.containerd.take());
        if self.runc_state.exists() {
            crate::containerd::cleanup_runc(&self.runc_state);
            let _ = std::fs::remove_dir_all(&self.runc_state);
        }
    }
}

impl BenchEnv {
    /// The regions-read report of every selected (image, cold workload), from the cache or
    /// measured now; an image that cannot be traced is left out with a note.
    pub fn access_reports(
        &mut self,
        opts: &BenchOptions,
    ) -> BTreeMap<String, BTreeMap<String, AccessReport>> {
        let mut out = BTreeMap::new();
        for image in &opts.images {
            let workloads: Vec<&'static Workload> =
                opts.cold_steps(image).into_iter().map(|(w, _)| w).collect();
            match self.trace_image(image, &workloads) {
                Ok(m) => {
                    out.insert(image.clone(), m);
                }
                Err(e) => note(
                    &mut self.notes,
                    format!("regions read of {image} not measured: {e}"),
                ),
            }
        }
        out
    }

    fn trace_image(
        &mut self,
        image: &str,
        workloads: &[&'static Workload],
    ) -> Result<BTreeMap<String, AccessReport>, BenchError> {
        let cached = crate::images::by_name(image)?;
        let orig = OciImage::open(&cached.layout, "latest")?;
        let esgz = self
            .images
            .get(image)
            .and_then(|v| v.get(&Variant::Esgz))
            .and_then(|v| v.layout.clone())
            .map(|(layout, tag)| OciImage::open(&layout, &tag))
            .transpose()?;
        let layers: Vec<(String, Option<String>)> = orig
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.digest.clone(),
                    esgz.as_ref()
                        .and_then(|e| e.layers.get(i))
                        .map(|e| e.digest.clone()),
                )
            })
            .collect();
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for w in workloads {
            let path = cache_path(&cached.key, w, &layers);
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<AccessReport>(&b).ok())
            {
                Some(r) => {
                    out.insert(w.name.to_string(), r);
                }
                None => missing.push((*w, path)),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let indexes: Vec<Option<estargz::LayerIndex>> = match &esgz {
            Some(e) if e.layers.len() == orig.layers.len() => e
                .layers
                .iter()
                .map(|l| open_index(&l.path).map(Some))
                .collect::<Result<_, _>>()?,
            _ => (0..orig.layers.len()).map(|_| None).collect(),
        };
        let raw: u64 = orig.layers.iter().map(|l| l.uncompressed_size).sum();
        eprintln!(
            "bench: measuring the regions {image}'s workloads read (local copy, readahead off)"
        );
        let site = TraceSite::start(self, image, 3 * raw + (4 << 30))?;
        let files = site.files()?;
        for (w, path) in missing {
            let t = Instant::now();
            let left = site.evict(&files)?;
            let (_, run, _, _) = create_and_start(
                site.ctr(),
                "overlayfs",
                &site.reference,
                w,
                &self.scripts_dir,
            )?;
            let mut report = AccessReport {
                image: image.into(),
                workload: w.name.into(),
                method: format!(
                    "ext4 on a loop device, readahead {} KiB, page cache of the layers' files \
                     dropped, workload run once with containerd's overlayfs snapshotter, \
                     mincore after the run",
                    site.fs.readahead_kib()?
                ),
                files_total: files.len(),
                resident_before_pages: left,
                run_s: run.as_secs_f64(),
                layers: layers.clone(),
                ..Default::default()
            };
            for (layer, rel, p) in &files {
                let f = std::fs::File::open(p)
                    .map_err(|e| BenchError::Setup(format!("open {}: {e}", p.display())))?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                report.image_bytes += size;
                let runs = page_runs(&loopfs::resident_pages(&f)?);
                if runs.is_empty() {
                    continue;
                }
                let mut fa = FileAccess {
                    layer: *layer,
                    path: rel.clone(),
                    size,
                    read_bytes: bytes_within(&runs, size, 0, size),
                    runs,
                    ..Default::default()
                };
                if let Some(Some(index)) = indexes.get(*layer) {
                    add_chunks(&mut fa, index);
                }
                report.read_bytes += fa.read_bytes;
                report.chunk_bytes += fa.chunk_bytes;
                report.chunk_raw_bytes += fa.chunk_raw_bytes;
                report.est_compressed += fa.est_compressed;
                report.chunks += fa.chunks;
                report.files.push(fa);
            }
            report.files_read = report.files.len();
            report.files.sort_by(|a, b| {
                b.chunk_bytes
                    .cmp(&a.chunk_bytes)
                    .then(b.read_bytes.cmp(&a.read_bytes))
            });
            eprintln!(
                "bench: {image} {}: {} files, {:.1} MB read ({:.1} MB of chunks) in {:.0} s",
                w.name,
                report.files_read,
                report.read_bytes as f64 / 1e6,
                report.chunk_bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
            let json = serde_json::to_vec(&report).map_err(|e| BenchError::Setup(e.to_string()))?;
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            out.insert(w.name.to_string(), report);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_bytes_within() {
        let r = page_runs(&[false, true, true, false, true]);
        assert_eq!(r, vec![(1, 2), (4, 1)]);
        assert!(page_runs(&[]).is_empty());
        // file of 4 pages + 100 bytes: pages 1-2 and the short last page 4
        let size = 4 * PAGE + 100;
        assert_eq!(bytes_within(&r, size, 0, size), 2 * PAGE + 100);
        assert_eq!(bytes_within(&r, size, PAGE + 10, 2 * PAGE), PAGE - 10);
        assert_eq!(bytes_within(&r, size, 3 * PAGE, 4 * PAGE), 0);
    }

    #[test]
    fn lower_dirs_come_bottom_first() {
        let o = "mount -t overlay overlay /x -o index=off,lowerdir=/r/3/fs:/r/2/fs:/r/1/fs\n";
        assert_eq!(
            layer_dirs(o).unwrap(),
            vec![
                PathBuf::from("/r/1/fs"),
                PathBuf::from("/r/2/fs"),
                PathBuf::from("/r/3/fs")
            ]
        );
        let b = "mount -t bind /r/1/fs /x -o ro,rbind\n";
        assert_eq!(layer_dirs(b).unwrap(), vec![PathBuf::from("/r/1/fs")]);
        assert!(layer_dirs("").is_err());
    }

    #[test]
    fn chunks_of_read_pages_are_counted() {
        // one file of 3 chunks (4 KiB each) in a real eStargz blob
        let mut tar = estargz::testutil::TarBuilder::new();
        tar.file(
            b"usr/lib/big.so",
            &Default::default(),
            &estargz::testutil::pattern(3 * 4096, 7),
        );
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
        let index = estargz::open(&blob, &Default::default()).unwrap().index;
        let mut f = FileAccess {
            path: "usr/lib/big.so".into(),
            size: 3 * 4096,
            runs: vec![(1, 1)],
            read_bytes: 4096,
            ..Default::default()
        };
        add_chunks(&mut f, &index);
        assert_eq!((f.chunks, f.chunk_raw_bytes), (1, 4096));
        assert!(f.chunk_bytes > 0 && f.est_compressed <= f.chunk_bytes);
        let mut none = FileAccess {
            path: "not/there".into(),
            runs: vec![(0, 1)],
            ..Default::default()
        };
        add_chunks(&mut none, &index);
        assert_eq!(none.chunks, 0);
    }
}
