//! `starling cache export|import`: move verified chunks from one node's cache to another's
//! as a plain tar archive (`fusefs::transfer`: chunks named by their digests, a manifest
//! with the layer digests they belong to), optionally zstd-compressed (`.zst`).
//!
//! A file rather than an OCI artifact in a registry: it needs no registry, credentials or
//! push rights on the exporting node, streams through a pipe (`-o -`, `import -`: `ssh a
//! starling cache export --all -o - | starling cache import -`), can be copied by any means
//! to an air-gapped node, and an OCI artifact can still be made of it with existing tools
//! (`oras push REF cache.tar.zst`). Import checks every chunk against its digest anyway,
//! so the transport need not be trusted.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use fusefs::cache::{CacheOptions, ChunkCache, ChunkKey};
use fusefs::metrics::Metrics;
use fusefs::transfer::{self, ArchivedLayer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::image::{self, human, NodeArgs};

/// zstd frame magic (little-endian 0xFD2FB528).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// `starling cache` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write verified chunks of the cache to an archive: those of the images named, or all.
    Export(ExportArgs),
    /// Load an archive's chunks into the cache, checking each against its digest.
    Import(ImportArgs),
}

/// Arguments of `starling cache export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Every verifiable chunk in the cache (no layer list in the manifest).
    #[arg(long, conflicts_with = "references")]
    pub all: bool,
    /// The archive to write (`-`: standard output). Compressed with zstd when the name
    /// ends with `.zst` or with `--zstd`.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Compress with zstd.
    #[arg(long)]
    pub zstd: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Images whose cached chunks are exported (their TOCs are read from the registry).
    #[arg(required_unless_present = "all")]
    pub references: Vec<String>,
}

/// Arguments of `starling cache import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// The archive (`-`: standard input); tar or zstd-compressed tar.
    pub archive: PathBuf,
}

/// Runs a subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Export(a) => export(a),
        Command::Import(a) => import(a),
    }
}

fn bar(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let cfg = image::load_config(&args.node, &args.references)?;
    let rt = image::runtime()?;
    let ctx = image::context(&cfg, &rt)?;
    let cache = ctx.cache().clone();
    let mut layers = Vec::new();
    let mut keys = Vec::new();
    let mut images = Vec::new();
    if args.all {
        keys = cache.keys();
    }
    for r in &args.references {
        images.push(rt.block_on(image::open_image(&ctx, &cfg, r))?);
    }
    for img in &images {
        for l in &img.layers {
            let chunk_keys: Vec<ChunkKey> = l
                .index()
                .chunks_in_blob_order()
                .filter(|c| !c.zeros)
                .filter_map(|c| c.digest.map(|d| ChunkKey::Digest(d.0)))
                .collect();
            layers.push(ArchivedLayer {
                digest: l.source().digest.to_string(),
                repository: l.source().repository.to_string(),
                chunks: chunk_keys.iter().map(ChunkKey::to_string).collect(),
            });
            keys.extend(chunk_keys);
        }
    }
    let to_stdout = args.output.as_os_str() == "-";
    let zstd = args.zstd || args.output.extension().is_some_and(|e| e == "zst");
    let start = std::time::Instant::now();
    let progress = bar(0, args.quiet || args.json || to_stdout, "export");
    let tmp = (!to_stdout).then(|| temp_path(&args.output));
    let sink: Box<dyn Write> = match &tmp {
        None => Box::new(std::io::stdout().lock()),
        Some(t) => Box::new(File::create(t).with_context(|| format!("create {}", t.display()))?),
    };
    let sink = BufWriter::with_capacity(1 << 20, sink);
    let result = if zstd {
        let enc = zstd::stream::Encoder::new(sink, 3).context("zstd encoder")?;
        transfer::export(&cache, layers, &keys, enc, |n| progress.inc(n))
            .map_err(anyhow::Error::from)
            .and_then(|(s, enc)| {
                let mut w = enc.finish().context("finish zstd stream")?;
                w.flush().context("flush the archive")?;
                Ok(s)
            })
    } else {
        transfer::export(&cache, layers, &keys, sink, |n| progress.inc(n))
            .map_err(anyhow::Error::from)
            .and_then(|(s, mut w)| {
                w.flush().context("flush the archive")?;
                Ok(s)
            })
    };
    progress.finish_and_clear();
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e.context(format!("export to {}", args.output.display())));
        }
    };
    let size = match &tmp {
        Some(t) => {
            std::fs::rename(t, &args.output)
                .with_context(|| format!("rename {} to {}", t.display(), args.output.display()))?;
            std::fs::metadata(&args.output)
                .map(|m| m.len())
                .unwrap_or(0)
        }
        None => 0,
    };
    let report = json!({
        "output": args.output,
        "chunks": stats.chunks,
        "bytes": stats.bytes,
        "archive_bytes": size,
        "not_in_cache": stats.missing,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !to_stdout {
        println!(
            "exported {} chunks ({}) to {} ({}{}) in {:.1} s",
            stats.chunks,
            human(stats.bytes),
            args.output.display(),
            human(size),
            if zstd { ", zstd" } else { "" },
            start.elapsed().as_secs_f64()
        );
        if stats.missing > 0 {
            println!(
                "{} chunks of the named images are not in this cache (not exported)",
                stats.missing
            );
        }
    }
    Ok(())
}

/// `FILE` → `FILE.<pid>.tmp` next to it.
fn temp_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(s)
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let cfg = image::load_config(&args.node, &[])?;
    let from_stdin = args.archive.as_os_str() == "-";
    let (input, len): (Box<dyn Read>, u64) = if from_stdin {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let f = File::open(&args.archive).with_context(|| {
            format!(
                "open {} (cache archives are files made by `starling cache export`; to move \
                 one through a registry, push it as an artifact and pull it to a file first)",
                args.archive.display()
            )
        })?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), len)
    };
    let mut input = BufReader::with_capacity(1 << 20, input);
    let zstd = input
        .fill_buf()
        .context("read the archive")?
        .starts_with(&ZSTD_MAGIC);
    let cache = ChunkCache::open(
        CacheOptions::from_config(&cfg),
        Arc::new(Metrics::default()),
    )
    .with_context(|| format!("open the chunk cache in {}", cfg.cache_dir().display()))?;
    let start = std::time::Instant::now();
    let progress = bar(len, args.quiet || args.json || from_stdin, "import");
    let counted = Counting {
        inner: input,
        bar: progress.clone(),
    };
    let report = if zstd {
        let dec =
            zstd::stream::Decoder::with_buffer(BufReader::new(counted)).context("zstd decoder")?;
        transfer::import(&cache, dec, |_| {})
    } else {
        transfer::import(&cache, counted, |_| {})
    }
    .with_context(|| format!("import {}", args.archive.display()))?;
    image::flush_cache(&cfg.cache_dir())?;
    progress.finish_and_clear();
    let usage = cache.usage();
    let out = json!({
        "archive": args.archive,
        "imported": report.imported,
        "imported_bytes": report.imported_bytes,
        "already_present": report.present,
        "skipped": report.skipped_count,
        "skipped_entries": report.skipped.iter().map(|s| json!({"name": s.name, "reason": s.reason})).collect::<Vec<_>>(),
        "truncated": report.truncated,
        "layers": report.manifest.as_ref().map(|m| m.layers.iter().map(|l| json!({"digest": l.digest, "repository": l.repository, "chunks": l.chunks.len()})).collect::<Vec<_>>()),
        "evicted": report.evicted,
        "cache_bytes": usage.disk_bytes,
        "cache_cap": cfg.cache.max_size,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "imported {} chunks ({}), {} already present, in {:.1} s",
            report.imported,
            human(report.imported_bytes),
            report.present,
            start.elapsed().as_secs_f64()
        );
        if let Some(m) = &report.manifest {
            for l in &m.layers {
                println!(
                    "  layer {} ({}): {} chunks",
                    l.digest,
                    l.repository,
                    l.chunks.len()
                );
            }
        }
        if report.evicted > 0 {
            println!(
                "the cache cap ({}) evicted {} entries during the import",
                human(cfg.cache.max_size),
                report.evicted
            );
        }
        for s in &report.skipped {
            eprintln!("skipped {}: {}", s.name, s.reason);
        }
    }
    if !report.is_clean() {
        let mut why = Vec::new();
        if report.skipped_count > 0 {
            why.push(format!(
                "{} entries skipped (not cached)",
                report.skipped_count
            ));
        }
        if let Some(t) = &report.truncated {
            why.push(t.clone());
        }
        bail!(
            "{}: {}; the {} chunks imported were each checked against their digest",
            args.archive.display(),
            why.join("; "),
            report.imported
        );
    }
    Ok(())
}

/// Counts the archive bytes read into the progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
