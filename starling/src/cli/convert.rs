//! `starling convert SRC DST`: converts an image (registry reference or `oci:DIR[:TAG]`)
//! to eStargz or zstd:chunked and stores it at DST. Progress bars on a terminal, plain
//! lines otherwise (stderr); the result on stdout (`--json` for machine output).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use config::Config;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use registry::Metrics;
use registry::RegistryClient;

use imagetools::convert::{
    self, prioritize, ConvertOptions, ConvertReport, ImageLocation, LayerId, LayerReport,
    OutputFormat, PlatformChoice, Prioritize, Progress, Stage,
};

/// The layer format flags `starling convert` and `starling optimize` share.
#[derive(clap::Args, Debug)]
pub struct LayerFormatArgs {
    /// Write zstd:chunked layers instead of gzip eStargz.
    #[arg(long)]
    pub zstdchunked: bool,
    /// Largest uncompressed chunk of a file, in bytes.
    #[arg(long, default_value_t = estargz::writer::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u64,
    /// Chunk size of files larger than --chunk-size, in bytes (0: --chunk-size). Large files
    /// (shared libraries, data files) are mostly paged in here and there: smaller chunks
    /// make a lazy start fetch less of them.
    #[arg(long, default_value_t = imagetools::convert::DEFAULT_LARGE_FILE_CHUNK_SIZE)]
    pub large_file_chunk_size: u64,
    /// Compression level (gzip 1-9, default 9; zstd 1-22, default 3).
    #[arg(long)]
    pub level: Option<u32>,
}

/// Arguments of `starling convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source image: HOST[:PORT]/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub src: String,
    /// Destination: HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG] (default tag `latest`).
    pub dst: String,
    #[command(flatten)]
    pub layer: LayerFormatArgs,
    /// File listing paths to place first (one per line); each path goes to the topmost
    /// layer that has it. Implies rebuilding layers that already are eStargz.
    #[arg(long, value_name = "FILE")]
    pub prioritize: Option<PathBuf>,
    /// Platform to convert from an image index (OS/ARCH[/VARIANT]) [default: this host's].
    #[arg(long, value_name = "PLATFORM", conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Convert every platform of an image index; DST gets an index.
    #[arg(long)]
    pub all_platforms: bool,
    /// Use plain HTTP for the SRC and DST registries (else: the configuration's
    /// `insecure`, and plain HTTP for loopback hosts).
    #[arg(long)]
    pub plain_http: bool,
    /// Configuration file for registry hosts, credentials and timeouts
    /// [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Layers converted at the same time.
    #[arg(long, default_value_t = convert::DEFAULT_JOBS)]
    pub jobs: usize,
    /// Compression threads per layer (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Rebuild layers that already are eStargz of the target format.
    #[arg(long)]
    pub reconvert: bool,
    /// Directory for temporary blobs [default: $TMPDIR; an OCI layout DST uses its own].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// Print the result as JSON (manifest digest, per-layer TOC digests and sizes).
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let src: ImageLocation = args.src.parse()?;
    let dst: ImageLocation = args.dst.parse()?;
    let cfg = load_registry_config(args.config.as_deref(), args.plain_http, &src, &dst)?;
    let opts = ConvertOptions {
        format: output_format(args.layer.zstdchunked),
        chunk_size: args.layer.chunk_size,
        large_file_chunk_size: args.layer.large_file_chunk_size,
        level: args.layer.level,
        prioritize: match &args.prioritize {
            None => Prioritize::None,
            Some(p) => {
                let text = std::fs::read(p)
                    .with_context(|| format!("reading prioritized files from {}", p.display()))?;
                let list = prioritize::parse_list(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                Prioritize::Paths(list)
            }
        },
        platform: match (&args.platform, args.all_platforms) {
            (_, true) => PlatformChoice::All,
            (Some(p), false) => PlatformChoice::Exact(
                p.parse()
                    .map_err(|e: String| anyhow::anyhow!("--platform: {e}"))?,
            ),
            (None, false) => PlatformChoice::Host,
        },
        jobs: args.jobs,
        threads: args.threads,
        reconvert: args.reconvert,
        temp_dir: args.temp_dir.clone(),
    };
    let progress = progress_for(args.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let client = RegistryClient::new(&cfg, Arc::new(Metrics::default()))
            .context("setting up the registry client")?;
        convert::convert(&client, &src, &dst, &opts, progress)
            .await
            .with_context(|| format!("converting {src} to {dst}"))
    });
    // After a failure other layers' conversion threads may still be running: do not
    // wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

/// The configuration for a command that reads SRC and writes DST: with `--plain-http`,
/// both registries are marked insecure (plain HTTP).
pub(crate) fn load_registry_config(
    path: Option<&Path>,
    plain_http: bool,
    src: &ImageLocation,
    dst: &ImageLocation,
) -> anyhow::Result<Config> {
    let mut cfg = load_config(path)?;
    if plain_http {
        for host in [src.host(), dst.host()].into_iter().flatten() {
            cfg.registry
                .hosts
                .entry(host.to_string())
                .or_default()
                .insecure = true;
        }
    }
    Ok(cfg)
}

/// The layer format `--zstdchunked` asks for.
pub(crate) fn output_format(zstdchunked: bool) -> OutputFormat {
    if zstdchunked {
        OutputFormat::ZstdChunked
    } else {
        OutputFormat::Estargz
    }
}

pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    super::settings::read_valid(path)
}

/// Progress output: none when quiet, bars on a terminal, else plain lines (stderr).
pub(crate) fn progress_for(quiet: bool) -> Arc<dyn Progress> {
    if quiet {
        Arc::new(convert::NoProgress)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bars::default())
    } else {
        Arc::new(Lines::default())
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn print_summary(r: &ConvertReport) {
    println!("{} -> {}", r.source, r.destination);
    println!("{} {}", r.media_type, r.digest);
    for img in &r.images {
        if let Some(p) = &img.platform {
            println!("{p}: manifest {}", img.manifest_digest);
        }
        for (i, l) in img.layers.iter().enumerate() {
            println!(
                "  layer {}: {} {} -> {} {}{}  toc {}",
                i + 1,
                short(&l.source_digest),
                mb(l.source_size),
                short(&l.digest),
                mb(l.size),
                if l.kept { " (kept)" } else { "" },
                l.toc_digest
            );
        }
        for m in &img.missing_prioritized {
            println!("  prioritized path not in any layer: {m}");
        }
    }
    println!(
        "layers: {} -> {} in {:.1} s",
        mb(r.source_layer_bytes),
        mb(r.layer_bytes),
        r.seconds
    );
}

/// Plain progress lines for logs.
#[derive(Default)]
struct Lines {
    counts: Mutex<HashMap<usize, usize>>,
    started: Mutex<HashMap<LayerId, Instant>>,
}

impl Lines {
    fn label(&self, id: LayerId) -> String {
        let count = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.image)
            .copied()
            .unwrap_or(0);
        format!("layer {}/{count}", id.layer + 1)
    }
}

impl Progress for Lines {
    fn image(&self, image: usize, name: &str, platform: Option<&str>, layers: usize) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image, layers);
        match platform {
            Some(p) => eprintln!("{name} ({p}): {layers} layers"),
            None => eprintln!("{name}: {layers} layers"),
        }
    }

    fn layer_stage(&self, id: LayerId, digest: &str, size: u64, stage: Stage) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert_with(Instant::now);
        if stage != Stage::Probing {
            eprintln!(
                "{} {} ({}): {}",
                self.label(id),
                short(digest),
                mb(size),
                stage.name()
            );
        }
    }

    fn layer_done(&self, id: LayerId, r: &LayerReport) {
        eprintln!(
            "{} {}: done -> {} {} ({}){}",
            self.label(id),
            short(&r.source_digest),
            short(&r.digest),
            mb(r.size),
            r.stored,
            if r.kept { ", kept as is" } else { "" }
        );
    }

    fn stored(&self, what: &str, digest: &str) {
        eprintln!("stored {what} {digest}");
    }
}

/// Progress bars for a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<LayerId, ProgressBar>>,
    counts: Mutex<HashMap<usize, usize>>,
    style: ProgressStyle,
}

impl Default for Bars {
    fn default() -> Self {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::default(),
            counts: Mutex::default(),
            style: ProgressStyle::with_template(
                "{prefix:.bold} {msg:<11} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        }
    }
}

impl Bars {
    fn bar(&self, id: LayerId, digest: &str, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(id)
            .or_insert_with(|| {
                let count = self
                    .counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id.image)
                    .copied()
                    .unwrap_or(0);
                self.multi.add(
                    ProgressBar::new(size)
                        .with_style(self.style.clone())
                        .with_prefix(format!("{}/{count} {}", id.layer + 1, short(digest))),
                )
            })
            .clone()
    }
}

impl Progress for Bars {
    fn image(&self, image: usize, name: &str, platform: Option<&str>, layers: usize) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image, layers);
        let _ = self.multi.println(match platform {
            Some(p) => format!("{name} ({p})"),
            None => name.to_string(),
        });
    }

    fn layer_stage(&self, id: LayerId, digest: &str, size: u64, stage: Stage) {
        let b = self.bar(id, digest, size);
        if matches!(stage, Stage::Converting | Stage::Spooling | Stage::Keeping) {
            b.set_position(0);
        }
        b.set_message(stage.name());
    }

    fn layer_bytes(&self, id: LayerId, read: u64) {
        if let Some(b) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            b.set_position(read);
        }
    }

    fn layer_done(&self, id: LayerId, r: &LayerReport) {
        let b = self.bar(id, &r.source_digest, r.source_size);
        b.set_position(r.source_size);
        b.finish_with_message(if r.kept { "kept" } else { "done" });
    }

    fn stored(&self, what: &str, digest: &str) {
        let _ = self.multi.println(format!("stored {what} {digest}"));
    }
}
