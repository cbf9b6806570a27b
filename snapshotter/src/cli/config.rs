//! `starling config ...` (not implemented yet).

/// Subcommands of `starling config`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {}

/// Runs the subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {}
}
