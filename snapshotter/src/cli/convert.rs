//! `starling convert`: image-level conversion to eStargz / zstd:chunked (not implemented yet).

/// Arguments of `starling convert`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling convert` is not implemented yet")
}
