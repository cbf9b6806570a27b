//! `starling fdstore` (hidden): the holder of the daemon's FUSE connections. The daemon
//! starts it (in its own session, one per daemon root) and hands it a dup of every lazy
//! layer mount's `/dev/fuse` fd, so the mounts outlive a daemon crash or a stop that left
//! them mounted, and the next daemon serves them again; with no daemon for
//! `--restart-grace` it gives them up (aborts the connections, detaches the mounts) and
//! exits. `--release` makes a running holder give them up now (a full stop after a stop
//! that handed the mounts over). Protocol and life cycle: [`fusefs::mount::fdstore`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `starling fdstore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unix socket to serve on (`<root>/fdstore.sock`).
    #[arg(long, value_name = "SOCKET")]
    pub socket: PathBuf,
    /// How long to keep held connections while no daemon is connected ("10m"; "0s": forever,
    /// the default). A daemon that stops and leaves its mounts here sets its own
    /// (`[daemon] restart_grace`).
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    pub restart_grace: Option<Duration>,
    /// Do not serve: tell the holder on `--socket` to give up every connection it holds
    /// (abort, detach the mounts) and exit. Refused while a daemon is connected.
    #[arg(long)]
    pub release: bool,
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    config::units::parse_duration(text)
}

/// Runs the holder until it is told to stop, has nothing left to hold, or its restart grace
/// ran out; or, with `--release`, releases a running holder.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.release {
        let n = fusefs::mount::fdstore::release(&args.socket)
            .with_context(|| format!("release the fd store holder on {}", args.socket.display()))?;
        println!("released {n} held FUSE connection(s); the holder exits");
        return Ok(());
    }
    let grace = args.restart_grace.filter(|d| !d.is_zero());
    fusefs::mount::fdstore::serve_holder(&args.socket, grace)
        .with_context(|| format!("fd store holder on {}", args.socket.display()))
}
