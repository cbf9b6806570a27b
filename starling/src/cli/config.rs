//! `starling config default` (print the documented default configuration) and
//! `starling config check FILE` (parse and validate a configuration file and every
//! `hosts.toml` of its `registry.hosts_dir`).

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
            let dirs = check_hosts_dir(&cfg.registry.hosts_dir)?;
            println!(
                "{}: ok (root {}, cache {}, {} registry host(s) configured{})",
                file.display(),
                cfg.root.display(),
                cfg.cache_dir().display(),
                cfg.registry.hosts.len(),
                match dirs {
                    Some(n) => format!(
                        ", {n} host director{} in {}",
                        if n == 1 { "y" } else { "ies" },
                        cfg.registry.hosts_dir.display()
                    ),
                    None => String::new(),
                }
            );
            Ok(())
        }
    }
}

/// Reads every host directory of containerd's registry host directory `root` (when set):
/// prints the warnings (unknown keys), fails on the first unusable file. Returns how many
/// directories there are.
fn check_hosts_dir(root: &std::path::Path) -> anyhow::Result<Option<usize>> {
    if root.as_os_str().is_empty() {
        return Ok(None);
    }
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "warning: registry.hosts_dir {} does not exist (no mirrors from it)",
                root.display()
            );
            return Ok(Some(0));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read registry.hosts_dir {}", root.display()))
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in &dirs {
        let hosts = config::hosts_dir::load_dir(dir).context("invalid registry host directory")?;
        for w in &hosts.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(Some(dirs.len()))
}
