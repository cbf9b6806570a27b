//! The `starling` binary: a thin clap front over starling's library crates (`snapshotter`
//! for the daemon, `imagetools`, `rpull`, `mirror`, `fusefs` (also prefetch and cache transfer),
//! `estargz`, `config`); [`cli`] holds one
//! module per subcommand. The only crate that uses `anyhow` and installs a log subscriber.

use clap::{Parser, Subcommand};
mod cli;

/// starling — a lazy-pulling containerd snapshotter for eStargz images.
#[derive(Parser)]
#[command(name = "starling", version, about)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive list)
    /// [default: info, or the daemon configuration's `log_level`].
    #[arg(long, global = true, env = "STARLING_LOG")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve containerd's snapshots API (proxy plugin) on a unix socket.
    Daemon(cli::daemon::Args),
    /// Convert an image (registry or OCI layout) to eStargz or zstd:chunked.
    Convert(cli::convert::Args),
    /// Lazily pull an image into containerd through starling.
    Rpull(cli::rpull::Args),
    /// Create a snapshot that merges other snapshots.
    Merge(cli::merge::Args),
    /// Mount one eStargz layer lazily over FUSE, without containerd.
    Mount(cli::mount::Args),
    /// Serve a cluster blob mirror: ranges of blobs from cached blocks, missing blocks
    /// fetched from the upstream by range, once for all nodes.
    Mirror(cli::mirror::Args),
    /// Warm the chunk cache for an image without a container.
    Prefetch(cli::prefetch::Args),
    /// Move verified chunks between nodes' caches: export, import.
    #[command(subcommand)]
    Cache(cli::cache::Command),
    /// Show per-layer fetch status of a running daemon or mount.
    Status(cli::status::Args),
    /// Check what stops lazy pulls: containerd's and starling's configuration, the daemon,
    /// recent fallbacks, FUSE, overlayfs.
    Doctor(cli::doctor::Args),
    /// Profile an image's workload and convert it with the files it reads prioritized.
    Optimize(cli::optimize::Args),
    /// Work on single eStargz layer blobs: build, verify, extract.
    #[command(subcommand)]
    Estargz(cli::estargz::Command),
    /// Print or check configuration.
    #[command(subcommand)]
    Config(cli::config::Command),
    /// Hold the daemon's FUSE connections across its restarts (started by the daemon).
    #[command(hide = true)]
    Fdstore(cli::fdstore::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log_level = cli.log_level;
    // The daemon installs logging itself, after reading its configuration file.
    if !matches!(cli.command, Command::Daemon(_)) {
        cli::init_logging(log_level.as_deref().unwrap_or("info"));
    }
    let result = match cli.command {
        Command::Daemon(a) => cli::daemon::run(a, log_level.as_deref()),
        Command::Convert(a) => cli::convert::run(a),
        Command::Rpull(a) => cli::rpull::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::Mount(a) => cli::mount::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Doctor(a) => cli::doctor::run(a),
        Command::Mirror(a) => cli::mirror::run(a),
        Command::Prefetch(a) => cli::prefetch::run(a),
        Command::Cache(c) => cli::cache::run(c),
        Command::Optimize(a) => cli::optimize::run(a),
        Command::Estargz(c) => cli::estargz::run(c),
        Command::Config(c) => cli::config::run(c),
        Command::Fdstore(a) => cli::fdstore::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
