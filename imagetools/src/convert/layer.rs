//! One layer's conversion: keep it when it already is eStargz of the target kind (footer
//! and TOC parse and check out), else stream the source blob through decompression into
//! the eStargz writer (a temporary file, never the layer in memory), check the source's
//! diffID on the way, and store the result. With prioritized files the decompressed tar
//! is spooled first so every layer's names are known before any layer is written.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use estargz::{parse_footer, BuildOptions, BuildOutput, Footer, Format, Sha256Digest};
use oci_spec::image::Digest;
use serde_json::Value;
use tempfile::NamedTempFile;

use super::image::{self, Desc, LayerCompression};
use super::prioritize::Assigner;
use super::progress::{LayerId, Stage};
use super::stream::{decompress, DiffReader, FailureSlot, SourceReader};
use super::{Ctx, LayerError, LayerReport, OutputFormat};

/// A converted (or kept) layer.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    /// Its descriptor in the new manifest.
    pub descriptor: Value,
    /// Its diffID for the new config.
    pub diff_id: String,
    /// What happened.
    pub report: LayerReport,
}

/// A layer to work on.
pub struct LayerJob<'a> {
    /// Which layer.
    pub id: LayerId,
    /// Its source descriptor.
    pub desc: &'a Desc,
    /// Its diffID in the source config.
    pub expected_diff: &'a str,
    /// Paths to put first in it.
    pub prioritized: Vec<Vec<u8>>,
    /// Its decompressed tar, already spooled (and diffID-checked).
    pub spool: Option<NamedTempFile>,
    /// Rebuild it even if it already is eStargz.
    pub reconvert: bool,
}

/// An existing eStargz blob that may be kept.
struct Existing {
    footer: Footer,
    toc_digest: Sha256Digest,
    compressed_toc: Digest,
}

fn worker(e: tokio::task::JoinError) -> LayerError {
    LayerError::Worker(e)
}

impl LayerJob<'_> {
    /// Converts (or keeps) and stores the layer.
    pub async fn run(self, ctx: &Ctx) -> Result<LayerOutcome, LayerError> {
        let started = Instant::now();
        let compression =
            image::layer_compression(&self.desc.media_type).map_err(LayerError::MediaType)?;
        let mut note = None;
        if !self.reconvert && self.spool.is_none() && compression == ctx.opts.format.compression() {
            self.stage(ctx, Stage::Probing);
            match self.probe(ctx).await? {
                Ok(existing) => return self.keep(ctx, existing, started).await,
                Err(why) => note = Some(why),
            }
        }
        self.convert(ctx, started, note).await
    }

    fn stage(&self, ctx: &Ctx, stage: Stage) {
        ctx.progress
            .layer_stage(self.id, self.desc.digest.as_ref(), self.desc.size, stage);
    }

    /// Reads the blob's footer and TOC: `Ok(Ok(_))` if it is eStargz of the target
    /// format with a valid TOC (matching the `toc.digest` annotation, if any), else
    /// `Ok(Err(why not))` (only when it looks like eStargz but is not usable).
    async fn probe(&self, ctx: &Ctx) -> Result<Result<Existing, String>, LayerError> {
        let size = self.desc.size;
        let tail_len = (estargz::MAX_FOOTER_SIZE as u64).min(size);
        if tail_len < 16 {
            return Ok(Err(String::new()));
        }
        let tail = ctx
            .source
            .read_range(self.desc, size - tail_len..size)
            .await?;
        let Ok(footer) = parse_footer(&tail, size) else {
            return Ok(Err(String::new()));
        };
        let compatible = match ctx.opts.format {
            OutputFormat::Estargz => {
                matches!(footer.format, Format::Estargz | Format::LegacyStargz)
            }
            OutputFormat::ZstdChunked => footer.format == Format::ZstdChunked,
        };
        if !compatible {
            return Ok(Err(format!(
                "rebuilt: source is {}, not the target format",
                footer.format.name()
            )));
        }
        let limits = estargz::TocLimits::default();
        if footer.toc_compressed_size > limits.max_compressed_size {
            return Ok(Err("rebuilt: source TOC is too large".into()));
        }
        let toc = ctx.source.read_range(self.desc, footer.toc_range()).await?;
        let expected = match self.desc.annotations.get(image::TOC_DIGEST) {
            Some(a) => match a.parse::<Sha256Digest>() {
                Ok(d) => Some(d),
                Err(_) => {
                    return Ok(Err(format!(
                        "rebuilt: bad {} annotation",
                        image::TOC_DIGEST
                    )))
                }
            },
            None => None,
        };
        let opts = estargz::OpenOptions {
            expected_toc_digest: expected,
            ..Default::default()
        };
        match estargz::Layer::from_toc_bytes(footer, &toc, &opts) {
            Ok(layer) => Ok(Ok(Existing {
                footer,
                toc_digest: layer.toc_digest,
                compressed_toc: image::sha256_digest(&toc),
            })),
            Err(e) => Ok(Err(format!("rebuilt: existing eStargz TOC unusable: {e}"))),
        }
    }

    /// Keeps an eStargz blob as it is: fills in its annotations and copies it over.
    async fn keep(
        self,
        ctx: &Ctx,
        existing: Existing,
        started: Instant,
    ) -> Result<LayerOutcome, LayerError> {
        self.stage(ctx, Stage::Keeping);
        let annotated = self
            .desc
            .annotations
            .get(image::UNCOMPRESSED_SIZE)
            .and_then(|s| s.parse::<u64>().ok());
        let uncompressed = match annotated {
            Some(n) => n,
            None => {
                // Not annotated: measure it (and check the diffID on the way).
                let _permit = ctx.permit().await;
                let reader = ctx
                    .source
                    .reader(self.desc, self.id, ctx.progress.clone())
                    .await?;
                let expected = self.expected_diff.to_string();
                tokio::task::spawn_blocking(move || {
                    let failure = reader.failure();
                    let diff = DiffReader::new(decompress(reader)?);
                    let (actual, len) = diff
                        .finish()
                        .map_err(|e| failure.take().unwrap_or(LayerError::Decompress(e)))?;
                    check_diff(&expected, &actual)?;
                    Ok::<_, LayerError>(len)
                })
                .await
                .map_err(worker)??
            }
        };
        let format = ctx.opts.format;
        let mut ann = BTreeMap::new();
        ann.insert(image::TOC_DIGEST.into(), existing.toc_digest.to_string());
        ann.insert(image::UNCOMPRESSED_SIZE.into(), uncompressed.to_string());
        if format == OutputFormat::ZstdChunked {
            zstd_annotations(&mut ann, &existing.footer, &existing.compressed_toc);
        }
        self.stage(ctx, Stage::Uploading);
        let stored = ctx
            .sink
            .copy_blob(&ctx.source, self.desc, &ctx.temp)
            .await?;
        let media_type = format.media_type();
        Ok(LayerOutcome {
            descriptor: image::layer_descriptor(
                self.desc,
                media_type,
                &self.desc.digest,
                self.desc.size,
                &ann,
            ),
            diff_id: self.expected_diff.to_string(),
            report: LayerReport {
                source_digest: self.desc.digest.to_string(),
                source_size: self.desc.size,
                source_media_type: self.desc.media_type.clone(),
                digest: self.desc.digest.to_string(),
                size: self.desc.size,
                media_type: media_type.into(),
                diff_id: self.expected_diff.to_string(),
                toc_digest: existing.toc_digest.to_string(),
                uncompressed_size: uncompressed,
                kept: true,
                prioritized: 0,
                stored: stored.into(),
                note: Some("already eStargz: kept as is".into()),
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    async fn convert(
        mut self,
        ctx: &Ctx,
        started: Instant,
        note: Option<String>,
    ) -> Result<LayerOutcome, LayerError> {
        let permit = ctx.permit().await;
        self.stage(ctx, Stage::Converting);
        let out = NamedTempFile::new_in(&ctx.temp).map_err(|source| LayerError::TempFile {
            dir: ctx.temp.clone(),
            source,
        })?;
        let opts = BuildOptions {
            format: ctx.opts.format.format(),
            chunk_size: ctx.opts.chunk_size,
            level: ctx.opts.level,
            prioritized_files: self.prioritized.clone(),
            threads: ctx.opts.threads,
            temp_dir: Some(ctx.temp.clone()),
        };
        let expected = self.expected_diff.to_string();
        let (output, out) = match self.spool.take() {
            None => {
                let reader = ctx
                    .source
                    .reader(self.desc, self.id, ctx.progress.clone())
                    .await?;
                tokio::task::spawn_blocking(move || build_streamed(reader, out, &opts, &expected))
                    .await
                    .map_err(worker)??
            }
            Some(spool) => tokio::task::spawn_blocking(move || {
                let r = estargz::build_file(
                    spool.path(),
                    BufWriter::with_capacity(1 << 20, out.as_file()),
                    &opts,
                )
                .map_err(write_error)?;
                Ok::<_, LayerError>((r, out))
            })
            .await
            .map_err(worker)??,
        };
        drop(permit);
        let mut ann = BTreeMap::new();
        ann.insert(image::TOC_DIGEST.into(), output.toc_digest.to_string());
        ann.insert(
            image::UNCOMPRESSED_SIZE.into(),
            output.uncompressed_size.to_string(),
        );
        if ctx.opts.format == OutputFormat::ZstdChunked {
            let (footer, compressed_toc) = read_toc(out.as_file(), output.blob_size)?;
            zstd_annotations(&mut ann, &footer, &compressed_toc);
        }
        let digest = image::parse_sha256(&output.blob_digest.to_string())
            .map_err(|_| LayerError::BlobDigest(output.blob_digest.to_string()))?;
        self.stage(ctx, Stage::Uploading);
        let stored = ctx.sink.put_file(out, &digest).await?;
        let media_type = ctx.opts.format.media_type();
        Ok(LayerOutcome {
            descriptor: image::layer_descriptor(
                self.desc,
                media_type,
                &digest,
                output.blob_size,
                &ann,
            ),
            diff_id: output.diff_id.to_string(),
            report: LayerReport {
                source_digest: self.desc.digest.to_string(),
                source_size: self.desc.size,
                source_media_type: self.desc.media_type.clone(),
                digest: digest.to_string(),
                size: output.blob_size,
                media_type: media_type.into(),
                diff_id: output.diff_id.to_string(),
                toc_digest: output.toc_digest.to_string(),
                uncompressed_size: output.uncompressed_size,
                kept: false,
                prioritized: self.prioritized.len(),
                stored: stored.into(),
                note: note.filter(|n| !n.is_empty()),
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }
}

/// Downloads and decompresses a layer into a temporary plain tar (diffID-checked) and
/// finds the names `assigner` cares about.
pub async fn spool(
    ctx: &Ctx,
    id: LayerId,
    desc: &Desc,
    expected_diff: &str,
    assigner: Arc<Assigner>,
) -> Result<(NamedTempFile, HashSet<Vec<u8>>), LayerError> {
    image::layer_compression(&desc.media_type).map_err(LayerError::MediaType)?;
    let _permit = ctx.permit().await;
    ctx.progress
        .layer_stage(id, desc.digest.as_ref(), desc.size, Stage::Spooling);
    let reader = ctx.source.reader(desc, id, ctx.progress.clone()).await?;
    let expected = expected_diff.to_string();
    let temp = ctx.temp.clone();
    tokio::task::spawn_blocking(move || {
        let failure = reader.failure();
        let source_err = |e: LayerError| failure.take().unwrap_or(e);
        let mut diff = DiffReader::new(decompress(reader).map_err(source_err)?);
        let spool = NamedTempFile::new_in(&temp).map_err(|source| LayerError::TempFile {
            dir: temp.clone(),
            source,
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, spool.as_file());
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = diff
                .read(&mut buf)
                .map_err(|e| failure.take().unwrap_or(LayerError::Decompress(e)))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(LayerError::Output)?;
        }
        w.flush().map_err(LayerError::Output)?;
        drop(w);
        let (actual, _) = diff.finish().map_err(LayerError::Decompress)?;
        check_diff(&expected, &actual)?;
        let names = assigner.scan(spool.as_file()).map_err(LayerError::Scan)?;
        Ok((spool, names))
    })
    .await
    .map_err(worker)?
}

/// Streams `reader` through decompression into the writer; checks the source diffID.
fn build_streamed(
    reader: SourceReader,
    out: NamedTempFile,
    opts: &BuildOptions,
    expected_diff: &str,
) -> Result<(BuildOutput, NamedTempFile), LayerError> {
    let failure: FailureSlot = reader.failure();
    let source_err = |e: LayerError| failure.take().unwrap_or(e);
    let mut diff = DiffReader::new(decompress(reader).map_err(source_err)?);
    let mut w = BufWriter::with_capacity(1 << 20, out.as_file());
    let built = estargz::build(&mut diff, &mut w, opts).map_err(|e| source_err(write_error(e)))?;
    w.flush().map_err(LayerError::Output)?;
    drop(w);
    let (actual, _) = diff
        .finish()
        .map_err(|e| source_err(LayerError::Decompress(e)))?;
    check_diff(expected_diff, &actual)?;
    Ok((built, out))
}

fn write_error(e: estargz::WriteError) -> LayerError {
    match e {
        estargz::WriteError::ReadInput(io) => LayerError::Decompress(io),
        estargz::WriteError::WriteOutput(io) => LayerError::Output(io),
        other => LayerError::Build(other),
    }
}

fn check_diff(expected: &str, actual: &str) -> Result<(), LayerError> {
    if expected != actual {
        return Err(LayerError::DiffId {
            expected: expected.into(),
            actual: actual.into(),
        });
    }
    Ok(())
}

/// The footer and compressed TOC of a built blob.
fn read_toc(file: &File, size: u64) -> Result<(Footer, Digest), LayerError> {
    use std::os::unix::fs::FileExt;
    let tail_len = (estargz::MAX_FOOTER_SIZE as u64).min(size);
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, size - tail_len)
        .map_err(LayerError::Output)?;
    let footer = parse_footer(&tail, size)
        .map_err(|e| LayerError::Output(std::io::Error::other(e.to_string())))?;
    let mut toc = vec![0u8; footer.toc_compressed_size as usize];
    file.read_exact_at(&mut toc, footer.toc_offset)
        .map_err(LayerError::Output)?;
    Ok((footer, image::sha256_digest(&toc)))
}

/// The zstd:chunked annotations (as the reference converter writes them).
fn zstd_annotations(ann: &mut BTreeMap<String, String>, footer: &Footer, compressed_toc: &Digest) {
    ann.insert(
        image::ZSTD_MANIFEST_CHECKSUM.into(),
        compressed_toc.to_string(),
    );
    ann.insert(
        image::ZSTD_MANIFEST_POSITION.into(),
        format!(
            "{}:{}:{}:1",
            footer.toc_offset,
            footer.toc_compressed_size,
            footer.toc_uncompressed_size.unwrap_or(0)
        ),
    );
}

impl OutputFormat {
    /// The layer compression of this format.
    pub fn compression(self) -> LayerCompression {
        match self {
            OutputFormat::Estargz => LayerCompression::Gzip,
            OutputFormat::ZstdChunked => LayerCompression::Zstd,
        }
    }

    /// The writer's format.
    pub fn format(self) -> Format {
        match self {
            OutputFormat::Estargz => Format::Estargz,
            OutputFormat::ZstdChunked => Format::ZstdChunked,
        }
    }

    /// The OCI layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            OutputFormat::Estargz => image::OCI_LAYER_GZIP,
            OutputFormat::ZstdChunked => image::OCI_LAYER_ZSTD,
        }
    }
}
