//! `starling estargz build|verify|extract`: work on single layer blobs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use estargz::{BuildOptions, BuildOutput, Format, Layer, OpenOptions, Sha256Digest};

use imagetools::extract::{extract_layer, ExtractOptions, OpaqueXattr};

/// Subcommands of `starling estargz`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Convert a layer tar (plain, gzip or zstd) into an eStargz or zstd:chunked blob.
    Build(BuildArgs),
    /// Check a blob's footer, TOC (and its digest) and every chunk.
    Verify(VerifyArgs),
    /// Write a blob's files into a directory as an overlay-style diff.
    Extract(ExtractArgs),
}

/// `starling estargz build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Write zstd:chunked instead of gzip eStargz.
    #[arg(long)]
    pub zstdchunked: bool,
    /// Write the legacy 47-byte stargz footer (gzip only; for compatibility tests).
    #[arg(long, conflicts_with = "zstdchunked")]
    pub legacy_footer: bool,
    /// Largest uncompressed chunk of a file, in bytes.
    #[arg(long, default_value_t = estargz::writer::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u64,
    /// Compression level (gzip 1-9, default 9; zstd 1-22, default 3).
    #[arg(long)]
    pub level: Option<u32>,
    /// File listing paths to place first (one per line), followed by `.prefetch.landmark`.
    #[arg(long, value_name = "FILE")]
    pub prioritize: Option<PathBuf>,
    /// Compression threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Input tar (`-` for standard input).
    pub input: PathBuf,
    /// Output blob.
    pub output: PathBuf,
}

/// `starling estargz verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Expected TOC digest (the `containerd.io/snapshot/stargz/toc.digest` annotation).
    #[arg(long, value_name = "DIGEST")]
    pub toc_digest: Option<Sha256Digest>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The blob.
    pub input: PathBuf,
}

/// `starling estargz extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// Expected TOC digest.
    #[arg(long, value_name = "DIGEST")]
    pub toc_digest: Option<Sha256Digest>,
    /// Mark opaque directories with `user.overlay.opaque` instead of `trusted.overlay.opaque`.
    #[arg(long)]
    pub user_xattr: bool,
    /// Do not set owners (for non-root use).
    #[arg(long)]
    pub no_chown: bool,
    /// The blob.
    pub input: PathBuf,
    /// Destination directory (created; must be empty if it exists).
    pub dir: PathBuf,
}

/// Runs the subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build(a) => build(a),
        Command::Verify(a) => verify(a),
        Command::Extract(a) => extract(a),
    }
}

fn read_prioritized(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading prioritized files from {}", path.display()))?;
    Ok(text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect())
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let opts = BuildOptions {
        format: if a.zstdchunked {
            Format::ZstdChunked
        } else if a.legacy_footer {
            Format::LegacyStargz
        } else {
            Format::Estargz
        },
        chunk_size: a.chunk_size,
        level: a.level,
        prioritized_files: match &a.prioritize {
            Some(p) => read_prioritized(p)?,
            None => Vec::new(),
        },
        threads: a.threads,
        temp_dir: a
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf),
    };
    let tmp = a.output.with_extension("partial");
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let result = if a.input.as_os_str() == "-" {
        estargz::build(std::io::stdin().lock(), &mut writer, &opts)
    } else {
        estargz::build_file(&a.input, &mut writer, &opts)
    };
    let result = result
        .map_err(anyhow::Error::from)
        .and_then(|r| {
            let f = writer.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok(r)
        })
        .and_then(|r| {
            std::fs::rename(&tmp, &a.output)?;
            Ok(r)
        });
    let out = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!(
                "building {} from {}",
                a.output.display(),
                a.input.display()
            )));
        }
    };
    for p in &out.missing_prioritized {
        tracing::warn!(path = %String::from_utf8_lossy(p), "prioritized file not in the layer");
    }
    print_build(&out, a.json)
}

fn print_build(o: &BuildOutput, json: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({
            "format": o.format.name(),
            "tocDigest": o.toc_digest.to_string(),
            "diffID": o.diff_id.to_string(),
            "uncompressedSize": o.uncompressed_size,
            "blobDigest": o.blob_digest.to_string(),
            "blobSize": o.blob_size,
            "tocOffset": o.toc_offset,
            "tocEntries": o.toc_entries,
            "missingPrioritized": o.missing_prioritized.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
        });
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout, "format:            {}", o.format.name())?;
        writeln!(stdout, "toc digest:        {}", o.toc_digest)?;
        writeln!(stdout, "diffID:            {}", o.diff_id)?;
        writeln!(stdout, "uncompressed size: {}", o.uncompressed_size)?;
        writeln!(stdout, "blob digest:       {}", o.blob_digest)?;
        writeln!(stdout, "blob size:         {}", o.blob_size)?;
    }
    Ok(())
}

fn open_layer(path: &Path, toc_digest: Option<Sha256Digest>) -> anyhow::Result<(File, Layer)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let opts = OpenOptions {
        expected_toc_digest: toc_digest,
        ..Default::default()
    };
    let layer = estargz::open(&file, &opts)
        .with_context(|| format!("reading the TOC of {}", path.display()))?;
    Ok((file, layer))
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let (file, layer) = open_layer(&a.input, a.toc_digest)?;
    let report = layer
        .verify_all(&file)
        .with_context(|| format!("verifying {}", a.input.display()))?;
    let mut stdout = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "format": layer.footer.format.name(),
            "tocDigest": layer.toc_digest.to_string(),
            "tocDigestChecked": a.toc_digest.is_some(),
            "entries": layer.index.len(),
            "indexHeapBytes": layer.index.heap_bytes(),
            "files": report.files,
            "chunks": report.chunks,
            "bytes": report.bytes,
        });
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(
            stdout,
            "{}: OK ({}; TOC {}{}; {} entries, {} files, {} chunks, {} bytes verified)",
            a.input.display(),
            layer.footer.format.name(),
            layer.toc_digest,
            if a.toc_digest.is_some() {
                " matches"
            } else {
                " not checked against an annotation"
            },
            layer.index.len(),
            report.files,
            report.chunks,
            report.bytes
        )?;
    }
    Ok(())
}

fn extract(a: ExtractArgs) -> anyhow::Result<()> {
    let (file, layer) = open_layer(&a.input, a.toc_digest)?;
    match std::fs::read_dir(&a.dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                bail!("{} exists and is not empty", a.dir.display());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("creating {}", a.dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", a.dir.display())),
    }
    let opts = ExtractOptions {
        opaque_xattr: if a.user_xattr {
            OpaqueXattr::User
        } else {
            OpaqueXattr::Trusted
        },
        preserve_ownership: !a.no_chown,
    };
    let stats = extract_layer(&layer, &file, &a.dir, &opts)
        .with_context(|| format!("extracting {} into {}", a.input.display(), a.dir.display()))?;
    tracing::info!(entries = stats.entries, bytes = stats.bytes, "extracted");
    Ok(())
}
