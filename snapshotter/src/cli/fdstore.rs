//! `starling fdstore` (hidden): the holder of the daemon's FUSE connections. The daemon
//! starts it (in its own session, one per daemon root) and hands it a dup of every lazy
//! layer mount's `/dev/fuse` fd, so the mounts outlive a daemon crash and the next daemon
//! serves them again. Protocol and life cycle: [`fusefs::mount::fdstore`].

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `starling fdstore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unix socket to serve on (`<root>/fdstore.sock`).
    #[arg(long, value_name = "SOCKET")]
    pub socket: PathBuf,
}

/// Runs the holder until it is told to stop or has nothing left to hold.
pub fn run(args: Args) -> anyhow::Result<()> {
    fusefs::mount::fdstore::serve_holder(&args.socket)
        .with_context(|| format!("fd store holder on {}", args.socket.display()))
}
