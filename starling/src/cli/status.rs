//! `starling status`: per-layer fetch status of the lazy layers served from a root (by the
//! daemon or by `starling mount`): bytes fetched of the total (compressed), percent, and
//! what fetching is doing, then the last layers that fell back to a normal pull. The
//! daemon's layers come from its control socket ([`snapshotter::control`]: true at that
//! moment); the status files in `<root>/status` give the layers of `starling mount`
//! processes, and every layer when no daemon answers (they lag up to a second).

use std::path::{Path, PathBuf};

use anyhow::Context;
use fusefs::status::{read_status_dir, StatusRecord};
use rpull::progress::human_bytes as human;
use snapshotter::control;
use snapshotter::lazy::fallbacks::{self, Fallback};

/// How long `status` waits for the daemon's answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Fallbacks shown under the table.
const SHOW_FALLBACKS: usize = 5;

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
    let (cfg, _) = super::settings::read(args.config.as_deref())?;
    Ok(cfg.root)
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

/// The records of `root` (the daemon's live ones first when it answers, then the files of
/// other processes), its recent fallbacks, and whether the daemon answered.
fn gather(root: &Path, all: bool) -> anyhow::Result<(Vec<StatusRecord>, Vec<Fallback>, bool)> {
    let dir = fusefs::layer::status_dir(root);
    let mut files =
        read_status_dir(&dir).with_context(|| format!("read status files in {}", dir.display()))?;
    if !all {
        files.retain(StatusRecord::is_live);
    }
    match control::ask(root, ASK_TIMEOUT) {
        Ok(state) => {
            let mut records = state.layers;
            files.retain(|r| r.pid != state.pid);
            records.extend(files);
            records.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
            Ok((records, state.fallbacks, true))
        }
        Err(e) => {
            tracing::debug!(error = %e, "no daemon answers; reading the status files");
            let past = fallbacks::read(root).unwrap_or_default();
            Ok((files, past, false))
        }
    }
}

/// The fallbacks part of the output (most recent last).
pub fn fallback_lines(fallbacks: &[Fallback]) -> String {
    if fallbacks.is_empty() {
        return String::new();
    }
    let shown = &fallbacks[fallbacks.len().saturating_sub(SHOW_FALLBACKS)..];
    let mut out = format!(
        "\nlast {} of {} layer fallback(s) to a full pull (`starling doctor` explains):\n",
        shown.len(),
        fallbacks.len()
    );
    for f in shown {
        let digest = f.layer.trim_start_matches("sha256:");
        out.push_str(&format!(
            "  {} {} {} ({}): {}\n",
            format_time(f.time),
            &digest[..digest.len().min(12)],
            f.reference,
            f.cause,
            f.fix.as_deref().unwrap_or(&f.reason)
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC of a Unix time.
fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = root(&args)?;
    let (records, fallbacks, live) = gather(&root, args.all)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "daemon": live,
                "layers": records,
                "fallbacks": fallbacks,
            }))?
        );
        return Ok(());
    }
    if records.is_empty() {
        println!("no lazy layers are served from {}", root.display());
    } else {
        print!("{}", table(&records));
    }
    if !live && !records.is_empty() {
        println!(
            "(no daemon answers on {}: figures from the status files, up to a second old)",
            control::socket_path(&root).display()
        );
    }
    print!("{}", fallback_lines(&fallbacks));
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

    #[test]
    fn fallbacks_show_the_last_ones_with_their_fix() {
        assert_eq!(fallback_lines(&[]), "");
        let f = |i: u64| Fallback {
            time: 1_765_123_456 + i,
            reference: "10.0.0.5:5000/app:1".into(),
            layer: format!("sha256:{i:064}"),
            host: "10.0.0.5:5000".into(),
            kind: "registry".into(),
            cause: "plain_http".into(),
            reason: "https failed".into(),
            fix: Some("set insecure = true in [registry.hosts.\"10.0.0.5:5000\"]".into()),
        };
        let all: Vec<_> = (0..7).map(f).collect();
        let text = fallback_lines(&all);
        assert!(text.contains("last 5 of 7"), "{text}");
        assert!(text.contains("2025-12-07 16:04:22"), "{text}");
        assert!(text.contains("(plain_http): set insecure = true"), "{text}");
        assert_eq!(text.lines().count(), 7, "{text}");
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }
}
