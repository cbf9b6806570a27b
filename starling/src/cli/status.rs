//! `starling status`: per-layer fetch status of the lazy layers served from a root (by the
//! daemon or by `starling mount`), read from the status files in `<root>/status`: bytes
//! fetched of the total (compressed), percent, and what fetching is doing.

use std::path::{Path, PathBuf};

use anyhow::Context;
use config::Config;
use fusefs::status::{read_status_dir, StatusRecord};

/// Arguments of `starling status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Root of the daemon or mounts [default: the configuration's `root`].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (for its `root`) [default: /etc/starling/config.toml, may be
    /// missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the records as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list records of processes that are gone.
    #[arg(long)]
    pub all: bool,
}

fn root(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(r) = &args.root {
        return Ok(r.clone());
    }
    let cfg = match &args.config {
        Some(p) => {
            Config::load(p).with_context(|| format!("configuration file {}", p.display()))?
        }
        None if Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(Path::new(config::DEFAULT_PATH)).context("default configuration file")?
        }
        None => Config::default(),
    };
    Ok(cfg.root)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The table `starling status` prints.
pub fn table(records: &[StatusRecord]) -> String {
    let mut out = format!(
        "{:<14} {:<12} {:>11} {:>11} {:>7}  {}\n",
        "LAYER", "STATE", "FETCHED", "TOTAL", "PCT", "MOUNTPOINT"
    );
    for r in records {
        let digest = r.layer.digest.trim_start_matches("sha256:");
        let stale = if r.is_live() { "" } else { " (process gone)" };
        out.push_str(&format!(
            "{:<14} {:<12} {:>11} {:>11} {:>6.1}%  {}{stale}\n",
            &digest[..digest.len().min(12)],
            r.layer.state.name(),
            human(r.layer.fetched_bytes),
            human(r.layer.total_bytes),
            r.layer.percent,
            r.mountpoint.display(),
        ));
    }
    out
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = root(&args)?;
    let dir = fusefs::layer::status_dir(&root);
    let mut records =
        read_status_dir(&dir).with_context(|| format!("read status files in {}", dir.display()))?;
    if !args.all {
        records.retain(StatusRecord::is_live);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else if records.is_empty() {
        println!("no lazy layers are served from {}", root.display());
    } else {
        print!("{}", table(&records));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusefs::layer::{FetchState, LayerStatus};

    #[test]
    fn table_shows_progress_per_layer() {
        let r = StatusRecord {
            mountpoint: "/mnt/l1".into(),
            pid: std::process::id(),
            updated: 0,
            layer: LayerStatus {
                digest: format!("sha256:{}", "ab".repeat(32)),
                repository: "r/x".into(),
                state: FetchState::Background,
                fetched_bytes: 3 << 20,
                total_bytes: 12 << 20,
                percent: 25.0,
                fetched_chunks: 1,
                chunks: 4,
            },
        };
        let t = table(&[r]);
        assert!(t.contains("abababababab"), "{t}");
        assert!(t.contains("background"), "{t}");
        assert!(
            t.contains("3.0 MiB") && t.contains("12.0 MiB") && t.contains("25.0%"),
            "{t}"
        );
        assert!(!t.contains("process gone"), "{t}");
        assert_eq!(human(512), "512 B");
    }
}
