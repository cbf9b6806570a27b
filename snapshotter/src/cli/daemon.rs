//! `starling daemon`: serve containerd's snapshots API (a proxy plugin) on a unix socket
//! until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::overlay::OverlayFeatures;
use crate::server::{self, Socket};
use crate::{Options, Snapshots};
use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

/// Default configuration file (a missing default file is fine).
pub const DEFAULT_CONFIG: &str = "/etc/starling/config.toml";
/// Default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/starling";
/// Default socket.
pub const DEFAULT_ADDRESS: &str = "/run/starling/starling.sock";

/// Arguments of `starling daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (TOML). The default path may be missing; a path given here must exist.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: metadata store and snapshot directories [default: /var/lib/starling].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve the snapshots API on [default: /run/starling/starling.sock].
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
}

/// Where the daemon keeps state and listens, after config file and flags.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    root: PathBuf,
    address: PathBuf,
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    match &args.config {
        Some(path) => {
            // Until the configuration crate lands, the file is only checked for existence.
            std::fs::metadata(path)
                .with_context(|| format!("configuration file {}", path.display()))?;
        }
        None => {
            if Path::new(DEFAULT_CONFIG).exists() {
                tracing::debug!(path = DEFAULT_CONFIG, "configuration file present");
            }
        }
    }
    Ok(Settings {
        root: args.root.clone().unwrap_or_else(|| DEFAULT_ROOT.into()),
        address: args
            .address
            .clone()
            .unwrap_or_else(|| DEFAULT_ADDRESS.into()),
    })
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

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let s = settings(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("starling")
        .build()
        .context("start tokio runtime")?;
    let result = runtime.block_on(serve(s));
    // Blocking snapshot operations still running get a moment to finish their transaction.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn serve(s: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    std::fs::create_dir_all(&s.root)
        .with_context(|| format!("create root {}", s.root.display()))?;
    let features = OverlayFeatures::probe(&s.root)?;
    tracing::debug!(?features, "overlay features");
    let core = Snapshots::open(
        &s.root,
        Options {
            features,
            remote: None,
        },
    )
    .with_context(|| format!("open snapshotter state in {}", s.root.display()))?;
    let report = core.restore_remote()?;
    if report.restored > 0 || !report.failed.is_empty() {
        tracing::info!(
            restored = report.restored,
            failed = report.failed.len(),
            "remote snapshots restored"
        );
    }
    let core = Arc::new(core);
    let socket = Socket::bind(&s.address)?;
    tracing::info!(address = %s.address.display(), root = %s.root.display(), "serving containerd snapshots API");
    server::serve(core, socket, shutdown).await?;
    tracing::info!("stopped; metadata store closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let a = Args {
            config: None,
            root: None,
            address: None,
        };
        let s = settings(&a).unwrap();
        assert_eq!(s.root, Path::new(DEFAULT_ROOT));
        assert_eq!(s.address, Path::new(DEFAULT_ADDRESS));
        let a = Args {
            config: None,
            root: Some("/tmp/r".into()),
            address: Some("/tmp/s.sock".into()),
        };
        assert_eq!(
            settings(&a).unwrap(),
            Settings {
                root: "/tmp/r".into(),
                address: "/tmp/s.sock".into()
            }
        );
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let a = Args {
            config: Some("/nonexistent/starling.toml".into()),
            root: None,
            address: None,
        };
        let err = settings(&a).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/starling.toml"),
            "{err:#}"
        );
    }
}
