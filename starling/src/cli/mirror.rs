//! `starling mirror`: the cluster blob mirror (the `mirror` crate) as a process — flags and
//! the `[registry]`/`[fetch]` settings of a starling configuration file for the upstreams,
//! SIGTERM/SIGINT for a graceful stop, the counters logged at exit.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use config::Config;
use mirror::{Mirror, Settings, UpstreamHosts};
use tokio::signal::unix::{signal, SignalKind};

use super::settings;

/// Arguments of `starling mirror`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Nodes name it in containerd's hosts.toml (read by containerd and by \
starling's registry.hosts_dir), e.g. in /etc/containerd/certs.d/registry.example:5000/hosts.toml:\n\n  \
[host.\"http://mirror.cluster.local:5000\"]\n    capabilities = [\"pull\", \"resolve\"]\n\n\
Requests carry the upstream as ?ns=HOST; it must be --upstream, an --allow-upstream or a \
[registry.hosts] key of --config."
)]
pub struct Args {
    /// Address to serve HTTP on (IP:PORT).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:5000")]
    pub listen: String,
    /// Upstream registry host (HOST[:PORT]) for requests without ?ns= (and allowed in ns).
    #[arg(long, value_name = "HOST")]
    pub upstream: Option<String>,
    /// Another upstream host requests may name with ?ns= (repeatable).
    #[arg(long, value_name = "HOST")]
    pub allow_upstream: Vec<String>,
    /// Serve any upstream host a request names (an open proxy: trusted networks only).
    #[arg(long)]
    pub allow_any_upstream: bool,
    /// Reach --upstream and the --allow-upstream hosts over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
    /// starling configuration file (TOML) whose [registry] (hosts, credentials, CA, mirrors,
    /// hosts_dir) and [fetch] (timeouts, retries) settings are used for upstreams
    /// [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Block cache directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/starling/mirror")]
    pub cache_dir: PathBuf,
    /// Most bytes the block cache keeps (least recently used blocks go first), e.g. `50GiB`.
    #[arg(long, value_name = "SIZE", default_value = "20GiB", value_parser = config::units::parse_size)]
    pub max_size: u64,
    /// Bytes per cached block: a power of two from 64KiB to 16MiB. Missing blocks are fetched
    /// from the upstream by range, neighbours in one request.
    #[arg(long, value_name = "SIZE", default_value = "128KiB", value_parser = config::units::parse_size)]
    pub block_size: u64,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let (mut cfg, _) = settings::read(args.config.as_deref())?;
    if args.plain_http {
        for h in args.upstream.iter().chain(&args.allow_upstream) {
            cfg.registry.hosts.entry(h.clone()).or_default().insecure = true;
        }
    }
    cfg.validate().context("invalid settings")?;
    Ok(cfg)
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let mut allowed = args.allow_upstream.clone();
    allowed.extend(cfg.registry.hosts.keys().cloned());
    let hosts = UpstreamHosts {
        default: args.upstream.clone(),
        allowed,
        any: args.allow_any_upstream,
    };
    if hosts.default.is_none() && hosts.allowed.is_empty() && !hosts.any {
        anyhow::bail!(
            "no upstream registry: give --upstream HOST (and --allow-upstream HOST for more), \
             list hosts in the configuration's [registry.hosts], or --allow-any-upstream"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("starling-mirror")
        .build()
        .context("start tokio runtime")?;
    rt.block_on(async {
        let client = registry::RegistryClient::new(&cfg, Arc::new(registry::Metrics::default()))
            .context("registry client for the upstreams")?;
        let m = Mirror::open(
            client,
            Settings {
                cache_dir: args.cache_dir.clone(),
                max_size: args.max_size,
                block_size: args.block_size,
                hosts: hosts.clone(),
            },
        )
        .context("start the mirror")?;
        let listener = Mirror::bind(&args.listen).await?;
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            upstream = hosts.default.as_deref().unwrap_or("-"),
            allowed = ?hosts.allowed,
            cache_dir = %args.cache_dir.display(),
            max_size = args.max_size,
            block_size = args.block_size,
            "mirror serving"
        );
        m.clone()
            .serve(listener, async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "shutting down");
            })
            .await;
        tracing::info!("mirror stopped: {}", m.summary());
        anyhow::Ok(())
    })
}
