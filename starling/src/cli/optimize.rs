//! `starling optimize SRC DST`: runs the image's workload once in a container (runc on
//! an overlay of lazily mounted layers), takes the files each layer served, in first-read
//! order, and converts the image with them prioritized — `ctr-remote image optimize`'s
//! job. Progress and the workload's output go to stderr, the summary (or `--json`) to
//! stdout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::convert::{load_registry_config, output_format, progress_for, LayerFormatArgs};
use imagetools::convert::{self, ConvertOptions, ImageLocation};
use imagetools::optimize::{self, OptimizeOptions, OptimizeReport, Overrides};

/// Arguments of `starling optimize`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source image: HOST[:PORT]/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub src: String,
    /// Destination: HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG].
    pub dst: String,
    /// The command to run instead of the image's entrypoint and command.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Entrypoint instead of the image's, as a JSON array (drops the image's command
    /// unless --args is given).
    #[arg(long, value_name = "JSON")]
    pub entrypoint: Option<String>,
    /// Arguments instead of the image's command, as a JSON array.
    #[arg(long, value_name = "JSON")]
    pub args: Option<String>,
    /// Environment variable to add or replace (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File of KEY=VALUE lines to add to the environment.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Working directory instead of the image's.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// User instead of the image's: USER[:GROUP], names or ids.
    #[arg(long)]
    pub user: Option<String>,
    /// Seconds the workload may run before it is killed (its accesses so far count).
    #[arg(long, value_name = "SECS", default_value_t = optimize::DEFAULT_PERIOD.as_secs_f64())]
    pub period: f64,
    /// OCI runtime binary [default: runc along PATH].
    #[arg(long, value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerFormatArgs,
    /// Use plain HTTP for the SRC and DST registries.
    #[arg(long)]
    pub plain_http: bool,
    /// Configuration file for registry hosts, credentials and timeouts
    /// [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Layers converted (and extracted) at the same time.
    #[arg(long, default_value_t = convert::DEFAULT_JOBS)]
    pub jobs: usize,
    /// Compression threads per layer (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Directory for the temporary work dir (chunks read, container upper dir)
    /// [default: $TMPDIR].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Also write the prioritized files, one `LAYER PATH` line each, to FILE.
    #[arg(long, value_name = "FILE")]
    pub record_out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn json_list(flag: &str, s: &str) -> anyhow::Result<Vec<String>> {
    serde_json::from_str(s)
        .with_context(|| format!("{flag} must be a JSON array of strings, like '[\"sh\", \"-c\"]'"))
}

fn overrides(args: &Args) -> anyhow::Result<Overrides> {
    let mut env = Vec::new();
    if let Some(f) = &args.env_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --env-file {}", f.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    env.extend(args.env.iter().cloned());
    Ok(Overrides {
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(|s| json_list("--entrypoint", s))
            .transpose()?,
        args: args
            .args
            .as_deref()
            .map(|s| json_list("--args", s))
            .transpose()?,
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
    })
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let src: ImageLocation = args.src.parse()?;
    let dst: ImageLocation = args.dst.parse()?;
    if !(args.period.is_finite() && args.period > 0.0 && args.period <= 86_400.0) {
        anyhow::bail!(
            "--period {} must be more than 0 and at most 86400 seconds",
            args.period
        );
    }
    let cfg = load_registry_config(args.config.as_deref(), args.plain_http, &src, &dst)?;
    let stop = Arc::new(AtomicBool::new(false));
    let opts = OptimizeOptions {
        convert: ConvertOptions {
            format: output_format(args.layer.zstdchunked),
            chunk_size: args.layer.chunk_size,
            level: args.layer.level,
            jobs: args.jobs,
            threads: args.threads,
            ..ConvertOptions::default()
        },
        overrides: overrides(&args)?,
        period: Duration::from_secs_f64(args.period),
        runtime: args.runtime.clone(),
        work_dir: args.work_dir.clone(),
        stop: stop.clone(),
    };
    let progress = progress_for(args.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        // Ctrl-C and SIGTERM stop the workload and clean up instead of killing us.
        let s = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("starling optimize: stopping (cleaning up)");
            s.store(true, Ordering::Relaxed);
        });
        optimize::optimize(&cfg, &src, &dst, &opts, progress)
            .await
            .with_context(|| format!("optimizing {src} into {dst}"))
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = result?;
    if let Some(f) = &args.record_out {
        let mut text = String::new();
        for (i, l) in report.layers.iter().enumerate() {
            for p in &l.files {
                text.push_str(&format!("{} {p}\n", i + 1));
            }
        }
        std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &OptimizeReport) {
    let c = &r.convert;
    println!("{} -> {}", c.source, c.destination);
    println!("{} {}", c.media_type, c.digest);
    if r.converted_first {
        println!(
            "(converted to {} first, profiled lazily from there)",
            r.profiled
        );
    }
    let ending = match r.exit_code {
        Some(code) => format!("exited with status {code}"),
        None => r.ending.clone(),
    };
    println!(
        "workload {:?}: {ending} after {:.1} s",
        r.args, r.run_seconds
    );
    let (mut files, mut bytes, mut fetched) = (0, 0, 0);
    for (i, l) in r.layers.iter().enumerate() {
        let size = c
            .images
            .first()
            .and_then(|img| img.layers.get(i))
            .map_or(0, |x| x.size);
        println!(
            "  layer {}: {} files prioritized, {:.1} MB ({:.1} MB fetched to profile; layer {:.1} MB)",
            i + 1,
            l.files.len(),
            l.bytes as f64 / 1e6,
            l.fetched_bytes as f64 / 1e6,
            size as f64 / 1e6
        );
        files += l.files.len();
        bytes += l.bytes;
        fetched += l.fetched_bytes;
    }
    println!(
        "prioritized {files} files, {:.1} MB ({:.1} MB fetched); prepare {:.1} s, run {:.1} s, convert {:.1} s, total {:.1} s",
        bytes as f64 / 1e6,
        fetched as f64 / 1e6,
        r.prepare_seconds,
        r.run_seconds,
        r.convert_seconds,
        r.seconds
    );
}
