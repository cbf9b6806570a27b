//! `starling config default` (print the documented default configuration) and
//! `starling config check FILE` (parse and validate a configuration file).

use std::path::PathBuf;

use anyhow::Context;

/// Subcommands of `starling config`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print the default configuration as TOML, every key documented.
    Default,
    /// Check a configuration file: unknown keys and bad values are reported with key and line.
    Check {
        /// The configuration file.
        #[arg(default_value = config::DEFAULT_PATH)]
        file: PathBuf,
    },
}

/// Runs the subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Default => {
            print!("{}", config::Config::default().to_toml_documented());
            Ok(())
        }
        Command::Check { file } => {
            let cfg = config::Config::load(&file).context("invalid configuration")?;
            println!(
                "{}: ok (root {}, cache {}, {} registry host(s) configured)",
                file.display(),
                cfg.root.display(),
                cfg.cache_dir().display(),
                cfg.registry.hosts.len()
            );
            Ok(())
        }
    }
}
