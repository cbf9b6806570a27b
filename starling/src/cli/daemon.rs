//! `starling daemon`: serve containerd's snapshots API (a proxy plugin) on a unix socket
//! until SIGTERM or SIGINT, with lazy eStargz layers ([`snapshotter::lazy`]) and the Prometheus
//! endpoint ([`snapshotter::metrics`]) when `metrics_address` is set. The lazy layers' FUSE
//! connections are handed to an fd store holder (`starling fdstore`, started here, told
//! `[daemon] restart_grace`) so that after a crash the next daemon serves the same
//! connections again. On SIGTERM/SIGINT the gRPC server stops, then by default the lazy
//! layers are left mounted with the holder ([`LazyLayers::hand_over`]) and the process
//! exits at once, so running containers keep their layers across a planned restart; with
//! `[daemon] unmount_on_stop` (`--unmount-on-stop`), or without a holder, every lazy layer
//! is unmounted (busy ones detached) and the holder exits. At start the layers are mounted
//! again from their saved state (or their held connections served again).
//! The control socket `<root>/control.sock` ([`snapshotter::control`]) answers `starling
//! status` and `starling doctor` with the daemon's state at that moment.
//!
//! Settings come from the configuration file (`--config`, default
//! `/etc/starling/config.toml`; the default file may be missing, a named one must exist),
//! and `--root`, `--address`, `--log-level` override it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config::Config;
use tokio::signal::unix::{signal, SignalKind};

use tokio::sync::watch;

use fusefs::mount::fdstore::{self, FdStore, HolderCommand};

use snapshotter::control::ControlServer;
use snapshotter::kubernetes::Kubernetes;
use snapshotter::lazy::LazyLayers;
use snapshotter::metrics::http::MetricsServer;
use snapshotter::metrics::DaemonMetrics;
use snapshotter::overlay::OverlayFeatures;
use snapshotter::remote::RemoteLayers;
use snapshotter::server::{self, Socket};
use snapshotter::service::Service;
use snapshotter::{Options, Snapshots};

/// Arguments of `starling daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (TOML) [default: /etc/starling/config.toml, may be missing].
    /// A file named here must exist.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: metadata store and snapshot directories
    /// [default: the configuration's `root`, /var/lib/starling].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve the snapshots API on
    /// [default: the configuration's `address`, /run/starling/starling.sock].
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// On SIGTERM/SIGINT, unmount every lazy layer and stop the fd store holder, instead of
    /// leaving the mounts to the holder for the next daemon (sets `[daemon] unmount_on_stop`).
    #[arg(long)]
    pub unmount_on_stop: bool,
}

/// The configuration after the file and the flags.
fn load_config(args: &Args, log_level: Option<&str>) -> anyhow::Result<Config> {
    let (mut cfg, _) = super::settings::read(args.config.as_deref())?;
    super::settings::set_root(&mut cfg, args.root.as_deref())?;
    if let Some(address) = &args.address {
        cfg.address = std::path::absolute(address)
            .with_context(|| format!("--address {}", address.display()))?;
    }
    if let Some(level) = log_level {
        cfg.log_level = level.to_string();
    }
    if args.unmount_on_stop {
        cfg.daemon.unmount_on_stop = true;
    }
    cfg.validate().context("invalid settings")?;
    Ok(cfg)
}

/// The remote-layer hook for this configuration: lazy eStargz layers over FUSE (built
/// from `cfg.fetch`, `cfg.cache`, `cfg.fuse`, `cfg.registry`), unless `snapshotter.lazy`
/// is off (then every snapshot is a normal overlay snapshot).
fn remote_layers(
    cfg: &Config,
    features: &OverlayFeatures,
) -> anyhow::Result<Option<Arc<LazyLayers>>> {
    if !cfg.snapshotter.lazy {
        tracing::info!("lazy layers are off (snapshotter.lazy = false)");
        return Ok(None);
    }
    let lazy = LazyLayers::with_fd_store(
        cfg,
        features,
        tokio::runtime::Handle::current(),
        Arc::new(fusefs::metrics::Metrics::default()),
        fd_store(&cfg.root, cfg.daemon.restart_grace),
    )
    .context("set up lazy layers")?;
    Ok(Some(Arc::new(lazy)))
}

/// The fd store of `root`: connects to its holder (taking the FUSE connections a killed or
/// stopped daemon left) or starts one (`starling fdstore`, this binary, with
/// `restart_grace`, zero = forever). Without it the daemon runs as before: its mounts die
/// with it.
fn fd_store(root: &Path, restart_grace: Duration) -> Option<Arc<FdStore>> {
    let socket = fdstore::socket_path(root);
    // The binary itself; after an upgrade replaced it, the running image.
    let program = std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let cmd = HolderCommand {
        program,
        args: vec![
            "fdstore".into(),
            "--socket".into(),
            socket.clone().into(),
            "--restart-grace".into(),
            config::units::format_duration(restart_grace).into(),
        ],
        log: Some(root.join("fdstore.log")),
    };
    match FdStore::open(&socket, Some(cmd)) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "no fd store: lazy layer mounts will not outlive the daemon");
            None
        }
    }
}

/// Where the daemon writes the metrics endpoint's bound address (useful with port 0).
pub fn metrics_address_file(root: &Path) -> PathBuf {
    root.join("metrics.addr")
}

/// Starts the metrics endpoint if configured; it stops when `stop` turns true.
async fn start_metrics(
    cfg: &Config,
    metrics: Arc<DaemonMetrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let file = metrics_address_file(&cfg.root);
    let _ = std::fs::remove_file(&file);
    if cfg.metrics_address.is_empty() {
        return Ok(());
    }
    let server = MetricsServer::bind(&cfg.metrics_address, metrics).await?;
    let addr = server.local_addr().context("metrics endpoint address")?;
    std::fs::write(&file, format!("{addr}\n"))
        .with_context(|| format!("write {}", file.display()))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(server.serve(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(())
}

/// The configuration's default merge mode (`overlay` is the stack mode).
fn merge_mode(mode: config::MergeMode) -> snapshotter::merge::MergeMode {
    match mode {
        config::MergeMode::Auto => snapshotter::merge::MergeMode::Auto,
        config::MergeMode::Overlay => snapshotter::merge::MergeMode::Stack,
        config::MergeMode::Hardlink => snapshotter::merge::MergeMode::Hardlink,
        config::MergeMode::Copy => snapshotter::merge::MergeMode::Copy,
    }
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are installed on call.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Runs the command. `log_level` is the global `--log-level` flag, if given.
pub fn run(args: Args, log_level: Option<&str>) -> anyhow::Result<()> {
    let loaded = load_config(&args, log_level);
    let level = match &loaded {
        Ok(cfg) => cfg.log_level.as_str(),
        Err(_) => log_level.unwrap_or("info"),
    };
    super::init_logging(level);
    let cfg = loaded?;
    fusefs::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("starling")
        .build()
        .context("start tokio runtime")?;
    match runtime.block_on(serve(cfg)) {
        Ok(Stopped::HandedOver(layers)) => {
            // Now, with the runtime alive: shutting it down would drop the FUSE reads still
            // fetching, and a dropped reply answers EIO. Requests read and not answered are
            // resent to the next daemon (FUSE_NOTIFY_RESEND); the metadata store is
            // transactional.
            tracing::info!(
                layers,
                "stopped; lazy layers stay mounted for the next daemon"
            );
            std::process::exit(0)
        }
        result => {
            // Blocking snapshot operations still running get a moment to finish their
            // transaction.
            runtime.shutdown_timeout(Duration::from_secs(5));
            result.map(drop)
        }
    }
}

/// How the daemon stopped.
#[derive(Debug)]
enum Stopped {
    /// Every lazy layer was unmounted (or there were none).
    Unmounted,
    /// This many lazy layers were left mounted with the fd store holder: the process must
    /// exit at once.
    HandedOver(usize),
}

async fn serve(cfg: Config) -> anyhow::Result<Stopped> {
    let shutdown = shutdown_signal()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let signalled = {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    snapshotter::overlay::Layout::new(&cfg.root).create_dirs()?;
    let features = OverlayFeatures::probe(&cfg.root)?;
    tracing::debug!(?features, "overlay features");
    let lazy = remote_layers(&cfg, &features)?;
    let result = serve_with(&cfg, features, lazy.clone(), stop_rx, signalled).await;
    let Some(lazy) = lazy else {
        return result.map(|()| Stopped::Unmounted);
    };
    if result.is_ok() && !cfg.daemon.unmount_on_stop {
        // Leave the layers mounted, their connections with the holder, for the next daemon.
        let grace = cfg.daemon.restart_grace();
        let handed = tokio::task::spawn_blocking(move || lazy.hand_over(grace))
            .await
            .ok()
            .flatten();
        return Ok(handed.map_or(Stopped::Unmounted, Stopped::HandedOver));
    }
    // Unmount every lazy layer (busy ones are detached) before the process goes.
    let _ = tokio::task::spawn_blocking(move || lazy.shutdown()).await;
    result.map(|()| Stopped::Unmounted)
}

async fn serve_with(
    cfg: &Config,
    features: OverlayFeatures,
    lazy: Option<Arc<LazyLayers>>,
    stop: watch::Receiver<bool>,
    signalled: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before anything fetches: restored layers read with the pods' credentials too.
    let kubernetes = Kubernetes::set_up(cfg).context("[kubernetes]")?;
    if let Some(lazy) = &lazy {
        kubernetes.plug_into(lazy.registry_client());
    }
    let image_service = {
        let mut stop = stop.clone();
        tokio::spawn(kubernetes.serve(async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let options = Options {
        features,
        remote: lazy.clone().map(|l| l as Arc<dyn RemoteLayers>),
        allow_fallback: cfg.snapshotter.allow_fallback,
        merge: snapshotter::merge::MergeOptions {
            default_mode: merge_mode(cfg.merge.default_mode),
            ..Default::default()
        },
    };
    let core = Snapshots::open(&cfg.root, options)
        .with_context(|| format!("open snapshotter state in {}", cfg.root.display()))?;
    let core = Arc::new(core);
    if cfg.snapshotter.restore_on_start {
        // Hooks block on the runtime: run them on a blocking thread.
        let c = core.clone();
        let report = tokio::task::spawn_blocking(move || c.restore_remote())
            .await
            .context("restore remote snapshots")??;
        if report.restored > 0 || !report.failed.is_empty() {
            tracing::info!(
                restored = report.restored,
                failed = report.failed.len(),
                "remote snapshots restored"
            );
        }
    }
    if let Some(lazy) = &lazy {
        let l = lazy.clone();
        let _ = tokio::task::spawn_blocking(move || l.restore_finished()).await;
    }
    let control = ControlServer::bind(&cfg.root, &cfg.address, lazy.clone())?;
    let mut control_stop = stop.clone();
    tokio::spawn(control.serve(async move {
        let _ = control_stop.wait_for(|s| *s).await;
    }));
    let metrics = Arc::new(DaemonMetrics::new(lazy));
    start_metrics(cfg, metrics.clone(), stop).await?;
    let socket = Socket::bind(&cfg.address)?;
    tracing::info!(
        address = %cfg.address.display(),
        root = %cfg.root.display(),
        "serving containerd snapshots API"
    );
    let service = Service::with_metrics(core, metrics.ops().clone());
    server::serve_service(service, socket, signalled).await?;
    match image_service.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the CRI image service stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the CRI image service task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped; metadata store closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<&Path>, root: Option<&str>, address: Option<&str>) -> Args {
        Args {
            config: config.map(Path::to_path_buf),
            root: root.map(PathBuf::from),
            address: address.map(PathBuf::from),
            unmount_on_stop: false,
        }
    }

    #[test]
    fn flags_override_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("c.toml");
        std::fs::write(
            &file,
            "root = \"/srv/st\"\naddress = \"/srv/st.sock\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let cfg = load_config(&args(Some(&file), None, None), None).unwrap();
        assert_eq!(cfg.root, Path::new("/srv/st"));
        assert_eq!(cfg.address, Path::new("/srv/st.sock"));
        assert_eq!(cfg.log_level, "debug");
        let cfg = load_config(
            &args(Some(&file), Some("/tmp/r"), Some("/tmp/s.sock")),
            Some("warn"),
        )
        .unwrap();
        assert_eq!(cfg.root, Path::new("/tmp/r"));
        assert_eq!(cfg.address, Path::new("/tmp/s.sock"));
        assert_eq!(cfg.log_level, "warn");
    }

    #[test]
    fn unmount_on_stop_comes_from_the_file_or_the_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("c.toml");
        std::fs::write(&file, "[daemon]\nrestart_grace = \"2s\"\n").unwrap();
        let cfg = load_config(&args(Some(&file), None, None), None).unwrap();
        assert!(!cfg.daemon.unmount_on_stop, "default: hand over");
        assert_eq!(cfg.daemon.restart_grace, Duration::from_secs(2));
        let mut a = args(Some(&file), None, None);
        a.unmount_on_stop = true;
        assert!(load_config(&a, None).unwrap().daemon.unmount_on_stop);
        std::fs::write(&file, "[daemon]\nunmount_on_stop = true\n").unwrap();
        let cfg = load_config(&args(Some(&file), None, None), None).unwrap();
        assert!(cfg.daemon.unmount_on_stop);
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let err = load_config(
            &args(Some(Path::new("/nonexistent/st.toml")), None, None),
            None,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/st.toml"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("c.toml");
        std::fs::write(&file, "rooot = \"/x\"\n").unwrap();
        let err = load_config(&args(Some(&file), None, None), None).unwrap_err();
        assert!(format!("{err:#}").contains("rooot"), "{err:#}");
    }

    #[test]
    fn relative_flags_become_absolute() {
        let cfg = load_config(&args(None, Some("rel/root"), Some("rel/s.sock")), None);
        // The default file may exist on this machine; only check when it parses.
        if let Ok(cfg) = cfg {
            assert!(cfg.root.is_absolute() && cfg.root.ends_with("rel/root"));
            assert!(cfg.address.is_absolute());
        }
    }
}
