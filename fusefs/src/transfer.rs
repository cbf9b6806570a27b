//! Moving verified chunks from one node's cache to another's (`starling cache export` /
//! `import`): a plain tar archive.
//!
//! Layout: one entry per chunk, `chunks/sha256/<2 hex>/<64 hex>` holding the chunk's
//! uncompressed bytes (the cache's own file layout, so names are the content digests), then
//! `starling-cache.json` last ([`ArchiveManifest`]: the layers the chunks belong to, each
//! with its blob digest and its chunk digests, and the archive's chunk count). The manifest
//! comes last so that an archive cut short is recognised as such (a tar cut at an entry
//! boundary reads as a shorter, valid tar).
//!
//! Import trusts nothing in the archive: every chunk is written through a cache writer that
//! checks its content against the digest in its name before the entry becomes visible, so a
//! tampered chunk, a chunk cut short or a name that is not a digest is skipped and reported,
//! never cached. The cache keeps its cap while importing (entries past it are evicted, least
//! recently used first, and counted). Only verifiable (digest-keyed) chunks are exported.
//! One thread reads the archive; a few writer threads create the cache entries (file
//! creation dominates an import on a busy disk).

use std::io::{Read, Write};
use std::sync::mpsc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, ChunkCache, ChunkKey};

/// Name of the manifest entry (the archive's last).
pub const MANIFEST: &str = "starling-cache.json";
/// Directory of the chunk entries.
const CHUNKS: &str = "chunks/";
/// Version of the archive layout.
const VERSION: u32 = 1;
/// Largest manifest read.
const MAX_MANIFEST: u64 = 256 << 20;
/// Most skipped entries listed one by one in a report (the rest are counted).
const MAX_LISTED: usize = 100;

/// Errors of export and import.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Writing the archive failed.
    #[error("writing the archive: {0}")]
    Write(#[source] std::io::Error),
    /// The cache failed (not a bad chunk: those are skipped).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The manifest could not be written.
    #[error("archive manifest: {0}")]
    Manifest(#[source] serde_json::Error),
}

/// The archive's table of contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// Layout version (1).
    pub version: u32,
    /// The layers whose chunks were exported (empty for a whole-cache export).
    pub layers: Vec<ArchivedLayer>,
    /// Chunk entries in the archive.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A layer the archived chunks belong to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchivedLayer {
    /// The layer blob's digest (`sha256:...`): the identity of the layer the chunks are of.
    pub digest: String,
    /// `host/repository` it was read from.
    pub repository: String,
    /// Digests of its chunks that are in the archive.
    pub chunks: Vec<String>,
}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Chunks written.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks asked for that were not in the cache (or failed their check there).
    pub missing: u64,
}

/// Writes the chunks `keys` (each once; unverifiable keys are left out) from `cache` and
/// the manifest naming `layers` as a tar to `out`; `progress` gets each chunk's size.
/// Chunks are checked against their digest as they are read from the cache (the cache's
/// first-use check), so only verified bytes go out. Each layer's chunk list is cut down to
/// the chunks written.
pub fn export<W: Write>(
    cache: &ChunkCache,
    mut layers: Vec<ArchivedLayer>,
    keys: &[ChunkKey],
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<(ExportStats, W), TransferError> {
    let mut tar = tar::Builder::new(out);
    let mut stats = ExportStats::default();
    let mut written = std::collections::HashSet::new();
    for key in keys {
        if !key.is_verifiable() || written.contains(key) {
            continue;
        }
        let Some(data) = cache.map_entry(key)? else {
            stats.missing += 1;
            continue;
        };
        append(&mut tar, &format!("{CHUNKS}{}", key.relative_path()), &data)?;
        written.insert(*key);
        stats.chunks += 1;
        stats.bytes += data.len() as u64;
        progress(data.len() as u64);
    }
    for layer in &mut layers {
        layer
            .chunks
            .retain(|c| ChunkKey::parse(c).is_some_and(|k| written.contains(&k)));
    }
    let manifest = ArchiveManifest {
        version: VERSION,
        layers,
        chunks: stats.chunks,
        bytes: stats.bytes,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(TransferError::Manifest)?;
    append(&mut tar, MANIFEST, &json)?;
    let out = tar.into_inner().map_err(TransferError::Write)?;
    Ok((stats, out))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> Result<(), TransferError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .map_err(TransferError::Write)
}

/// An archive entry import left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's name in the archive.
    pub name: String,
    /// Why it was not imported.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    /// Chunks checked and added to the cache.
    pub imported: u64,
    /// Their bytes.
    pub imported_bytes: u64,
    /// Chunks the cache already had (not read).
    pub present: u64,
    /// Entries left out (the first [`MAX_LISTED`]).
    pub skipped: Vec<Skipped>,
    /// All entries left out.
    pub skipped_count: u64,
    /// Why reading stopped early, if it did (a cut or damaged archive); what came before
    /// was imported (each chunk checked).
    pub truncated: Option<String>,
    /// The archive's manifest, if it was reached and readable.
    pub manifest: Option<ArchiveManifest>,
    /// Cache entries evicted during the import to keep the cap.
    pub evicted: u64,
}

impl ImportReport {
    /// True when every entry was imported (or present) and the archive was whole.
    pub fn is_clean(&self) -> bool {
        self.skipped_count == 0 && self.truncated.is_none()
    }

    fn skip(&mut self, name: &str, reason: impl Into<String>) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_LISTED {
            self.skipped.push(Skipped {
                name: name.to_string(),
                reason: reason.into(),
            });
        }
    }
}

/// Reads an archive written by [`export`] from `input` into `cache`, checking every chunk
/// against the digest in its name; `progress` gets the archive bytes consumed by each
/// entry. Bad entries are skipped and an archive cut short stops the import; both are in
/// the report, and nothing unchecked enters the cache. Fails only when the cache itself
/// does (e.g. its directory is not writable).
pub fn import(
    cache: &ChunkCache,
    input: impl Read,
    progress: impl FnMut(u64),
) -> Result<ImportReport, TransferError> {
    let evictions = || cache.metrics().snapshot().evictions;
    let evicted_before = evictions();
    let mut report = ImportReport::default();
    let (jobs, job_rx) = mpsc::sync_channel::<Job>(WRITERS * 2);
    let (done_tx, done) = mpsc::channel::<(String, Result<u64, Copy>)>();
    let job_rx = Mutex::new(job_rx);
    let failed = std::thread::scope(|scope| {
        for _ in 0..WRITERS {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            scope.spawn(move || loop {
                let job = job_rx.lock().recv();
                let Ok(Job { name, key, data }) = job else {
                    break;
                };
                let result = copy_checked(cache, key, &mut &data[..], data.len() as u64);
                if done_tx.send((name, result)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut failed = read_entries(cache, input, progress, &mut report, &jobs, &done);
        drop(jobs);
        for (name, result) in done.iter() {
            if let Some(e) = settle(&mut report, &name, result) {
                failed.get_or_insert(e);
            }
        }
        failed
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    if report.truncated.is_none() && report.manifest.is_none() {
        report.truncated = Some(format!(
            "the archive ends without its manifest ({MANIFEST}): cut short"
        ));
    }
    report.evicted = evictions().saturating_sub(evicted_before);
    Ok(report)
}

/// Threads writing chunks into the cache during an import: creating and renaming many
/// small files is mostly waiting on the file system (3 ms per create on a busy disk, most
/// of an import's time with one thread), so a few of them overlap those waits.
const WRITERS: usize = 4;
/// Chunks up to this size are read whole and handed to a writer thread; larger ones are
/// streamed into the cache by the reading thread.
const MAX_HANDED_OVER: u64 = 16 << 20;

/// A chunk read from the archive, for a writer thread.
struct Job {
    name: String,
    key: ChunkKey,
    data: Vec<u8>,
}

/// Records the outcome of one chunk; returns a cache failure (which ends the import).
fn settle(report: &mut ImportReport, name: &str, result: Result<u64, Copy>) -> Option<CacheError> {
    match result {
        Ok(n) => {
            report.imported += 1;
            report.imported_bytes += n;
        }
        Err(Copy::Mismatch) => report.skip(name, "content does not match its digest"),
        Err(Copy::Read(e)) => {
            report.skip(name, format!("cut short: {e}"));
            report.truncated = Some(format!("archive cut short in {name}: {e}"));
        }
        Err(Copy::Cache(e)) => return Some(e),
    }
    None
}

/// Reads the archive, handing chunks to the writers (`jobs`) and recording what they
/// finished (`done`) as it goes; returns a cache failure, if one ended the reading.
fn read_entries(
    cache: &ChunkCache,
    input: impl Read,
    mut progress: impl FnMut(u64),
    report: &mut ImportReport,
    jobs: &mpsc::SyncSender<Job>,
    done: &mpsc::Receiver<(String, Result<u64, Copy>)>,
) -> Option<CacheError> {
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            report.truncated = Some(format!("not a readable tar archive: {e}"));
            return None;
        }
    };
    for entry in entries {
        while let Ok((name, result)) = done.try_recv() {
            if let Some(e) = settle(report, &name, result) {
                return Some(e);
            }
        }
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report.truncated = Some(format!("archive damaged or cut short: {e}"));
                break;
            }
        };
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "<unreadable name>".into());
        let size = entry.size();
        if name == MANIFEST {
            let mut json = Vec::new();
            match (&mut entry).take(MAX_MANIFEST).read_to_end(&mut json) {
                Ok(_) => match serde_json::from_slice::<ArchiveManifest>(&json) {
                    Ok(m) => report.manifest = Some(m),
                    Err(e) => report.skip(&name, format!("unreadable manifest: {e}")),
                },
                Err(e) => {
                    report.truncated = Some(format!("archive cut short in {name}: {e}"));
                    break;
                }
            }
            progress(size);
            continue;
        }
        let key = name
            .strip_prefix(CHUNKS)
            .and_then(ChunkKey::from_relative_path)
            .filter(ChunkKey::is_verifiable);
        let Some(key) = key else {
            report.skip(&name, "not a chunk entry (chunks/sha256/<xx>/<digest>)");
            continue;
        };
        if entry.header().entry_type() != tar::EntryType::Regular {
            report.skip(&name, "not a regular file");
            continue;
        }
        if cache.contains(&key) {
            report.present += 1;
            progress(size);
            continue;
        }
        if size > MAX_HANDED_OVER {
            let result = copy_checked(cache, key, &mut entry, size);
            let cut = matches!(result, Err(Copy::Read(_)));
            if let Some(e) = settle(report, &name, result) {
                return Some(e);
            }
            progress(size);
            if cut {
                break;
            }
            continue;
        }
        let mut data = Vec::with_capacity(size as usize);
        if let Err(e) = (&mut entry).take(size).read_to_end(&mut data) {
            settle(report, &name, Err(Copy::Read(e)));
            break;
        }
        if (data.len() as u64) < size {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} of {size} bytes", data.len()),
            );
            settle(report, &name, Err(Copy::Read(e)));
            break;
        }
        progress(size);
        if jobs.send(Job { name, key, data }).is_err() {
            break;
        }
    }
    None
}

enum Copy {
    Mismatch,
    Read(std::io::Error),
    Cache(CacheError),
}

/// Streams one entry of `size` bytes into a cache writer; the entry appears only if it is
/// whole and matches `key`.
fn copy_checked(
    cache: &ChunkCache,
    key: ChunkKey,
    input: &mut impl Read,
    size: u64,
) -> Result<u64, Copy> {
    let mut writer = cache.writer(key).map_err(Copy::Cache)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        writer.write(&buf[..n]).map_err(Copy::Cache)?;
        total += n as u64;
    }
    if total != size {
        return Err(Copy::Read(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{total} of {size} bytes"),
        )));
    }
    match writer.commit() {
        Ok(()) => Ok(total),
        Err(CacheError::Mismatch { .. }) => Err(Copy::Mismatch),
        Err(e) => Err(Copy::Cache(e)),
    }
}

#[cfg(test)]
mod tests;
