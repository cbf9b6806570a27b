//! `starling rpull`: lazily pull an image into containerd through a snapshotter (starling by
//! default). The work is [`rpull::pull`]; this module reads the flags and the
//! registry settings (`--config`, `--plain-http`), and shows progress: bars on a terminal,
//! plain lines otherwise, and one summary line on stdout.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use config::Config;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use registry::Metrics;
use registry::{Reference, RegistryClient};

use rpull::progress::{human_bytes, short};
use rpull::{self, Event, LayerSummary, Platform, Progress, PullOptions};

/// Arguments of `starling rpull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// containerd's gRPC socket.
    #[arg(
        long,
        short = 'a',
        value_name = "SOCKET",
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(
        long,
        short = 'n',
        value_name = "NS",
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Snapshotter to unpack into, as named in containerd's configuration.
    #[arg(long, value_name = "NAME", default_value = "starling")]
    pub snapshotter: String,
    /// Talk plain HTTP to the image's registry host.
    #[arg(long)]
    pub plain_http: bool,
    /// Configuration file for registry settings (hosts, mirrors, credentials, timeouts)
    /// [default: /etc/starling/config.toml, may be missing]. A file named here must exist.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Platform to pull from a multi-platform image: OS/ARCH[/VARIANT] [default: this host's].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Image reference, `HOST[:PORT]/REPO[:TAG][@DIGEST]`. The image record gets this name.
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let platform = args
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let reference: Reference = args
        .reference
        .parse()
        .with_context(|| format!("image reference {:?}", args.reference))?;
    let mut cfg = load_config(args.config.as_deref())?;
    if args.plain_http {
        cfg.registry
            .hosts
            .entry(reference.repository.host.clone())
            .or_default()
            .insecure = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("rpull")
        .build()
        .context("start tokio runtime")?;
    let options = PullOptions {
        address: args.address,
        namespace: args.namespace,
        snapshotter: args.snapshotter,
        platform,
    };
    let progress: Arc<Display> = Arc::new(Display::new());
    let report = runtime.block_on(async {
        let registry =
            RegistryClient::new(&cfg, Arc::new(Metrics::default())).context("registry client")?;
        rpull::pull(&registry, &args.reference, &options, progress.clone())
            .await
            .with_context(|| format!("rpull into snapshotter {:?}", options.snapshotter))
    });
    progress.finish();
    let report = report?;
    println!("pulled {report}");
    Ok(())
}

/// Registry settings: the named file, else the default file if it exists, else defaults.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    super::settings::read_valid(path)
}

/// Progress on stderr: bars when it is a terminal, one line per step otherwise.
struct Display {
    state: Mutex<DisplayState>,
}

enum DisplayState {
    Bars {
        multi: MultiProgress,
        bars: Vec<ProgressBar>,
    },
    Lines {
        layers: Vec<LayerSummary>,
        fetching: HashSet<usize>,
    },
}

impl Display {
    fn new() -> Self {
        let state = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            DisplayState::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Vec::new(),
            }
        } else {
            DisplayState::Lines {
                layers: Vec::new(),
                fetching: HashSet::new(),
            }
        };
        Display {
            state: Mutex::new(state),
        }
    }

    /// Stops bars still drawing (a failed pull).
    fn finish(&self) {
        if let DisplayState::Bars { bars, .. } =
            &*self.state.lock().unwrap_or_else(|e| e.into_inner())
        {
            for b in bars.iter().filter(|b| !b.is_finished()) {
                b.abandon();
            }
        }
    }
}

fn label(i: usize, n: usize, l: &LayerSummary) -> String {
    format!(
        "layer {}/{} {} ({}{})",
        i + 1,
        n,
        short(&l.digest),
        human_bytes(l.size),
        if l.estargz { ", eStargz" } else { "" }
    )
}

fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Progress for Display {
    fn event(&self, event: Event<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (&mut *state, event) {
            (DisplayState::Bars { multi, bars }, Event::Resolved { layers, .. }) => {
                for (i, l) in layers.iter().enumerate() {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(text_style());
                    b.set_prefix(label(i, layers.len(), l));
                    b.set_message("waiting");
                    b.enable_steady_tick(Duration::from_millis(120));
                    bars.push(b);
                }
            }
            (DisplayState::Bars { bars, .. }, Event::Download { index, done, total }) => {
                if let Some(b) = bars.get(index) {
                    if b.length() != Some(total) {
                        b.set_style(bytes_style());
                        b.set_length(total);
                        b.set_message("fetching");
                    }
                    b.set_position(done);
                }
            }
            (DisplayState::Bars { bars, .. }, Event::Applying { index }) => {
                if let Some(b) = bars.get(index) {
                    b.set_style(text_style());
                    b.set_message("applying");
                }
            }
            (DisplayState::Bars { bars, .. }, Event::LayerDone { index, outcome }) => {
                if let Some(b) = bars.get(index) {
                    b.set_style(done_style());
                    b.finish_with_message(outcome.to_string());
                }
            }
            (
                DisplayState::Lines { layers, .. },
                Event::Resolved {
                    image,
                    manifest,
                    layers: ls,
                },
            ) => {
                eprintln!(
                    "resolved {image}: manifest {}, {} layer(s)",
                    short(manifest),
                    ls.len()
                );
                *layers = ls.to_vec();
            }
            (DisplayState::Lines { layers, fetching }, Event::Download { index, .. }) => {
                if fetching.insert(index) {
                    if let Some(l) = layers.get(index) {
                        eprintln!("{}: fetching", label(index, layers.len(), l));
                    }
                }
            }
            (DisplayState::Lines { layers, .. }, Event::Applying { index }) => {
                if let Some(l) = layers.get(index) {
                    eprintln!("{}: applying", label(index, layers.len(), l));
                }
            }
            (DisplayState::Lines { layers, .. }, Event::LayerDone { index, outcome }) => {
                if let Some(l) = layers.get(index) {
                    eprintln!("{}: {outcome}", label(index, layers.len(), l));
                }
            }
        }
    }
}
