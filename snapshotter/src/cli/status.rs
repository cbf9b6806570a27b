//! `starling status`: per-layer fetch status (not implemented yet).

/// Arguments of `starling status`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling status` is not implemented yet")
}
