//! `starling doctor`: what stops lazy pulls on this machine. Reads starling's configuration,
//! containerd's (versions 1-3 with imports, [`containerd`]), asks the daemon for its state
//! and recent fallbacks, and looks at FUSE, overlayfs and the kernel ([`host`]). Prints one
//! line per check, `OK`, `WARN` or `FAIL`, with a `fix:` line under each problem; exits
//! non-zero when a check fails.

mod check;
mod containerd;
mod host;

use std::path::{Path, PathBuf};

use config::Config;

use check::{Check, Level};
use containerd::{ContainerdConfig, Generation};

/// Arguments of `starling doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// starling's configuration file [default: /etc/starling/config.toml, may be missing].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// containerd's configuration file.
    #[arg(long, value_name = "FILE", default_value = containerd::DEFAULT_PATH)]
    pub containerd_config: PathBuf,
    /// containerd's binary, asked for its version when the configuration's `version` is
    /// below 3 (a containerd 2.x also reads version 2 files).
    #[arg(long, value_name = "PATH", default_value = "containerd")]
    pub containerd_bin: PathBuf,
    /// The daemon's socket [default: the configuration's `address`].
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// The daemon's root [default: the configuration's `root`].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

/// starling's configuration and where it came from.
fn load_config(args: &Args) -> anyhow::Result<(Config, String)> {
    let (mut cfg, source) = crate::cli::settings::read(args.config.as_deref())?;
    crate::cli::settings::set_root(&mut cfg, args.root.as_deref())?;
    if let Some(a) = &args.address {
        cfg.address = std::path::absolute(a)?;
    }
    Ok((cfg, source))
}

/// The containerd generation reading `cfg`: 2.x for version 3, else what
/// `containerd --version` says (1.x when it cannot be asked).
fn generation(cfg: &ContainerdConfig, bin: &Path) -> (Generation, Option<String>) {
    if cfg.version >= 3 {
        return (Generation::V2, None);
    }
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return (Generation::V1, None),
    };
    // "containerd containerd.io 1.7.27 ..." / "containerd github.com/containerd/containerd/v2 v2.1.4 ..."
    let major = text.split_whitespace().nth(2).and_then(|v| {
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match major {
        Some(m) if m >= 2 => (Generation::V2, Some(text)),
        _ => (Generation::V1, Some(text)),
    }
}

/// Every check, in the order printed.
fn all_checks(args: &Args) -> anyhow::Result<Vec<Check>> {
    let (cfg, source) = load_config(args)?;
    let mut out = host::config_checks(&cfg, &source);
    let state = host::daemon_checks(&cfg.address, &cfg.root, &mut out);
    match ContainerdConfig::load(&args.containerd_config) {
        Ok(c) => {
            let (generation, version) = generation(&c, &args.containerd_bin);
            if let Some(v) = version {
                out.push(Check::ok("containerd", v));
            }
            out.extend(containerd::checks(&c, &cfg.address, generation));
        }
        Err(e) => out.push(Check::fail(
            "containerd config",
            format!("cannot read it: {e}"),
            "name containerd's configuration with --containerd-config, or create it from \
             contrib/containerd/config.toml (containerd 1.6/1.7) or config-v3.toml (2.x)",
        )),
    }
    host::fallback_checks(state.as_ref(), &cfg.root, &cfg, &mut out);
    out.extend(host::machine_checks());
    Ok(out)
}

/// The text output.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{:<5} {}: {}\n", c.level.name(), c.what, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "{} ok, {} warning(s), {} failure(s)\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    ));
    out
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let checks = all_checks(&args)?;
    if args.json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "level": c.level.name(),
                    "check": c.what,
                    "detail": c.detail,
                    "fix": c.fix,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render(&checks));
    }
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed: lazy pulls do not work as configured");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_puts_the_fix_under_the_problem_and_counts() {
        let text = render(&[Check::ok("a", "fine"), Check::fail("b", "broken", "do x")]);
        assert_eq!(
            text,
            "OK    a: fine\nFAIL  b: broken\n      fix: do x\n1 ok, 0 warning(s), 1 failure(s)\n"
        );
    }
}
