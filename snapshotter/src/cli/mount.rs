//! `starling mount`: mount one eStargz layer lazily (not implemented yet).

/// Arguments of `starling mount`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling mount` is not implemented yet")
}
