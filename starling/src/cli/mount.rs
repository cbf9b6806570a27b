//! `starling mount`: mount one eStargz layer of an image lazily over FUSE, without
//! containerd — for tests, benchmarks and debugging. Runs in the foreground until SIGINT,
//! SIGTERM or an external `umount`; `--background` detaches once the mount is ready
//! (prefetch done or timed out) and keeps serving it.
//!
//! State (saved footer and TOC) goes to `<root>/mounts/<layer>-<mountpoint hash>`, the
//! layer's status file to `<root>/status` (read by `starling status`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use config::Config;
use fusefs::layer::LayerSource;
use fusefs::layer::{LayerContext, LayerSettings};
use fusefs::metrics::Metrics;
use fusefs::mount::{MountManager, MountedLayer};
use tokio::signal::unix::{signal, SignalKind};

/// Arguments of `starling mount`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Reach the image's registry over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
    /// Configuration file (TOML) [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: chunk cache (unless `cache.dir` is set), layer state, status files
    /// [default: the configuration's `root`].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Detach once the mount is ready; logs go to `--log-file`.
    #[arg(long)]
    pub background: bool,
    /// Log file of a `--background` mount [default: <state dir>/mount.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Expected TOC digest; by default taken from the layer's
    /// `containerd.io/snapshot/stargz/toc.digest` annotation in the image manifest.
    #[arg(long, value_name = "DIGEST")]
    pub toc_digest: Option<String>,
    /// Accept a layer whose manifest has no TOC digest annotation (its TOC is then trusted
    /// as found in the blob; chunks are still verified against it).
    #[arg(long)]
    pub no_toc_verify: bool,
    /// Image reference (`host/repo:tag`).
    pub reference: String,
    /// Digest of the layer blob to mount.
    pub layer_digest: String,
    /// Existing directory to mount it on.
    pub mountpoint: PathBuf,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    super::settings::for_node(
        args.config.as_deref(),
        args.root.as_deref(),
        args.plain_http,
        std::slice::from_ref(&args.reference),
    )
}

/// The state directory of a layer mounted at `mountpoint`.
fn state_dir(cfg: &Config, digest: &str, mountpoint: &Path) -> PathBuf {
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    let name = fusefs::status::status_file_name(hex, mountpoint);
    cfg.root.join("mounts").join(name.trim_end_matches(".json"))
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    let state = state_dir(&cfg, &args.layer_digest, &mountpoint);
    if args.background {
        let log = args
            .log_file
            .clone()
            .unwrap_or_else(|| state.join("mount.log"));
        return background(&args, cfg, &mountpoint, &state, &log);
    }
    serve(&args, cfg, &mountpoint, &state, None)
}

/// Forks; the child serves the mount and reports readiness through a pipe, the parent
/// waits for that report and exits.
fn background(
    args: &Args,
    cfg: Config,
    mountpoint: &Path,
    state: &Path,
    log: &Path,
) -> anyhow::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log file {}", log.display()))?;
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: called from `main` before any other thread exists (no runtime, no FUSE
    // session yet), so the child may run arbitrary code after the fork.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(wr);
            let mut report = String::new();
            File::from(rd)
                .read_to_string(&mut report)
                .context("read the mount's readiness report")?;
            match report.strip_prefix("ok ") {
                Some(pid) => {
                    println!(
                        "mounted {} at {} (pid {}, log {})",
                        args.layer_digest,
                        mountpoint.display(),
                        pid.trim(),
                        log.display()
                    );
                    Ok(())
                }
                None if report.is_empty() => bail!(
                    "the mount process exited before it was ready; see {}",
                    log.display()
                ),
                None => bail!("{}", report.trim()),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            redirect_stdio(&log_file);
            let result = serve(args, cfg, mountpoint, state, Some(wr));
            if let Err(e) = &result {
                tracing::error!(error = %format!("{e:#}"), "mount failed");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}

fn redirect_stdio(log: &File) {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    let _ = nix::unistd::dup2_stdout(log);
    let _ = nix::unistd::dup2_stderr(log);
}

fn serve(
    args: &Args,
    cfg: Config,
    mountpoint: &Path,
    state: &Path,
    ready: Option<OwnedFd>,
) -> anyhow::Result<()> {
    let mut ready = ready.map(File::from);
    let result = mount_and_wait(args, cfg, mountpoint, state, &mut ready);
    if let (Err(e), Some(r)) = (&result, ready.as_mut()) {
        let _ = write!(r, "error: {e:#}");
    }
    result
}

fn mount_and_wait(
    args: &Args,
    cfg: Config,
    mountpoint: &Path,
    state: &Path,
    ready: &mut Option<File>,
) -> anyhow::Result<()> {
    fusefs::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .thread_name("starling-mount")
        .build()
        .context("start tokio runtime")?;
    let ctx = LayerContext::new(
        &cfg,
        LayerSettings::from_config(&cfg),
        runtime.handle().clone(),
        Arc::new(Metrics::default()),
    )
    .context("set up the layer context")?;
    let source = runtime.block_on(source(args, &ctx))?;
    let manager = MountManager::new(ctx);
    let mounted = manager
        .mount(source, state, mountpoint)
        .with_context(|| format!("mount {} at {}", args.layer_digest, mountpoint.display()))?;
    match ready.take() {
        Some(mut r) => {
            let _ = write!(r, "ok {}", std::process::id());
        }
        None => println!(
            "mounted {} at {} (state {})",
            args.layer_digest,
            mountpoint.display(),
            state.display()
        ),
    }
    runtime.block_on(wait_for_end(&mounted))?;
    drop(mounted);
    manager.unmount_all();
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

async fn source(args: &Args, ctx: &LayerContext) -> anyhow::Result<LayerSource> {
    if let Some(toc) = &args.toc_digest {
        return Ok(LayerSource::new(
            &args.reference,
            &args.layer_digest,
            None,
            Some(toc),
        )?);
    }
    let source = LayerSource::resolve(ctx.client(), &args.reference, &args.layer_digest)
        .await
        .with_context(|| format!("resolve {}", args.reference))?;
    if source.toc_digest.is_none() && !args.no_toc_verify {
        bail!(
            "layer {} has no {} annotation: not an eStargz layer, or pass --toc-digest \
             (or --no-toc-verify)",
            args.layer_digest,
            estargz::toc::TOC_DIGEST_ANNOTATION
        );
    }
    Ok(source)
}

/// Waits for SIGINT, SIGTERM, or the end of the session (an external `umount`).
async fn wait_for_end(mounted: &MountedLayer) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: unmounting"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: unmounting"); return Ok(()); }
            _ = tick.tick() => {
                if !mounted.is_served() {
                    tracing::info!(mountpoint = %mounted.mountpoint().display(), "unmounted from outside");
                    return Ok(());
                }
            }
        }
    }
}
