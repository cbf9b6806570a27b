//! `starling optimize`: profile a workload and convert with its files prioritized (not implemented yet).

/// Arguments of `starling optimize`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling optimize` is not implemented yet")
}
