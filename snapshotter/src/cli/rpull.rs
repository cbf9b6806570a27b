//! `starling rpull`: lazy pull through containerd (not implemented yet).

/// Arguments of `starling rpull`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`starling rpull` is not implemented yet")
}
