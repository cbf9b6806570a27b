//! `starling merge`: create a merged snapshot (not implemented yet).

/// Arguments of `starling merge`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling merge` is not implemented yet")
}
