//! `starling daemon`: serve containerd's snapshots API (not implemented yet).

/// Arguments of `starling daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling daemon` is not implemented yet")
}
