//! starling's client subcommands as the benchmark uses them — `convert`, `optimize`,
//! `rpull`, `mount` — detected at run time from `starling SUB --help` (the flags they are
//! specified with), so starling's columns switch on when a subcommand lands, with no code
//! change here. Callers try the real command once and fall back (with a printed note) when
//! it fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::containerd::Ctr;
use crate::process::{run_cmd, CmdOutput, ProcessSpec};

/// One `starling SUB --help` text, or why there is none.
#[derive(Debug, Clone)]
pub struct Subcommand {
    /// `convert`, `optimize`, `rpull`, `mount`.
    pub name: &'static str,
    /// The help text when the subcommand looks implemented.
    pub help: Option<String>,
    /// Why it is not available (when `help` is `None`).
    pub reason: String,
}

impl Subcommand {
    /// True when its help lists the flags the benchmark needs.
    pub fn available(&self) -> bool {
        self.help.is_some()
    }

    /// True when the help mentions `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.help.as_deref().is_some_and(|h| {
            h.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
                .any(|w| w == flag)
        })
    }
}

/// The flags each subcommand must show in `--help` to count as implemented.
pub fn required_flags(sub: &str) -> &'static [&'static str] {
    match sub {
        "convert" | "optimize" | "mount" => &["--plain-http"],
        "rpull" => &["--snapshotter", "--plain-http"],
        _ => &[],
    }
}

/// Decides from `starling SUB --help`'s result whether SUB is implemented.
pub fn judge_help(name: &'static str, out: Result<CmdOutput, String>) -> Subcommand {
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return Subcommand {
                name,
                help: None,
                reason: e,
            }
        }
    };
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.success() {
        return Subcommand {
            name,
            help: None,
            reason: format!("`starling {name} --help` failed: {}", text.trim()),
        };
    }
    let probe = Subcommand {
        name,
        help: Some(text),
        reason: String::new(),
    };
    let missing: Vec<&str> = required_flags(name)
        .iter()
        .copied()
        .filter(|f| !probe.has_flag(f))
        .collect();
    if missing.is_empty() {
        probe
    } else {
        Subcommand {
            name,
            help: None,
            reason: format!("`starling {name} --help` lists no {}", missing.join(", ")),
        }
    }
}

/// The starling binary and what its subcommands offer.
#[derive(Debug, Clone)]
pub struct StarlingCli {
    /// The binary.
    pub bin: PathBuf,
    /// `starling convert`.
    pub convert: Subcommand,
    /// `starling optimize`.
    pub optimize: Subcommand,
    /// `starling rpull`.
    pub rpull: Subcommand,
    /// `starling mount`.
    pub mount: Subcommand,
}

impl StarlingCli {
    /// Probes `bin`'s subcommands.
    pub fn probe(bin: &Path) -> StarlingCli {
        let help = |name: &'static str| {
            let r = run_cmd(
                Command::new(bin).args([name, "--help"]),
                Duration::from_secs(30),
            )
            .map_err(|e| e.to_string());
            judge_help(name, r)
        };
        StarlingCli {
            bin: bin.to_path_buf(),
            convert: help("convert"),
            optimize: help("optimize"),
            rpull: help("rpull"),
            mount: help("mount"),
        }
    }

    fn containerd_flags(&self, sub: &Subcommand, ctr: &Ctr, snapshotter: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if sub.has_flag("--address") {
            a.extend(["--address".into(), ctr.address.clone().into_os_string()]);
        }
        if sub.has_flag("--namespace") {
            a.extend(["--namespace".into(), ctr.namespace.clone().into()]);
        }
        if sub.has_flag("--snapshotter") {
            a.extend(["--snapshotter".into(), snapshotter.into()]);
        }
        a
    }

    fn command(&self, ctr: Option<&Ctr>) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(ctr) = ctr {
            c.env("CONTAINERD_ADDRESS", &ctr.address)
                .env("CONTAINERD_NAMESPACE", &ctr.namespace);
        }
        c
    }

    /// `starling convert --plain-http SRC DST`.
    pub fn convert_cmd(&self, src: &str, dst: &str) -> Command {
        let mut c = self.command(None);
        c.args(["convert", "--plain-http", src, dst]);
        c
    }

    /// `starling optimize [--address A] [--namespace N] [--snapshotter S] [--period P]
    /// --plain-http SRC DST` (the period as ctr-remote's, when the command takes one).
    pub fn optimize_cmd(
        &self,
        ctr: &Ctr,
        snapshotter: &str,
        src: &str,
        dst: &str,
        period_secs: u32,
    ) -> Command {
        let mut c = self.command(Some(ctr));
        c.arg("optimize")
            .args(self.containerd_flags(&self.optimize, ctr, snapshotter));
        if self.optimize.has_flag("--period") {
            c.args(["--period", &period_secs.to_string()]);
        }
        c.args(["--plain-http", src, dst]);
        c
    }

    /// `starling rpull [--address A] [--namespace N] --snapshotter S --plain-http REF`.
    pub fn rpull_cmd(&self, ctr: &Ctr, snapshotter: &str, reference: &str) -> Command {
        let mut c = self.command(Some(ctr));
        c.arg("rpull")
            .args(self.containerd_flags(&self.rpull, ctr, snapshotter))
            .args(["--plain-http", reference]);
        c
    }

    /// `starling mount --plain-http REF LAYER_DIGEST MOUNTPOINT` in the foreground, as a
    /// process spec (stopped with SIGTERM).
    pub fn mount_spec(
        &self,
        reference: &str,
        digest: &str,
        mountpoint: &Path,
        log: &Path,
    ) -> ProcessSpec {
        ProcessSpec::new("starling-mount", &self.bin, log)
            .args(["mount", "--plain-http", reference, digest])
            .arg(mountpoint)
    }

    /// One line per subcommand for the report.
    pub fn describe(&self) -> Vec<String> {
        [&self.convert, &self.optimize, &self.rpull, &self.mount]
            .iter()
            .map(|s| {
                if s.available() {
                    format!("starling {}: available", s.name)
                } else {
                    format!("starling {}: not available ({})", s.name, s.reason)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn out(code: i32, stdout: &str) -> Result<CmdOutput, String> {
        Ok(CmdOutput {
            command: "starling x --help".into(),
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    #[test]
    fn stub_help_is_not_available() {
        // what the placeholder subcommands print today: no flags
        let s = judge_help(
            "convert",
            out(
                0,
                "Convert an image\n\nUsage: starling convert\n\nOptions:\n  -h, --help  Print help\n",
            ),
        );
        assert!(!s.available());
        assert!(s.reason.contains("--plain-http"), "{}", s.reason);
        let s = judge_help("rpull", out(2, "error"));
        assert!(!s.available());
        let s = judge_help("mount", Err("no binary".into()));
        assert_eq!(s.reason, "no binary");
    }

    #[test]
    fn implemented_help_is_available_and_flags_are_found() {
        let help = "Usage: starling rpull [OPTIONS] <REF>\n\nOptions:\n      --address <ADDRESS>  containerd socket\n      --snapshotter <NAME>  [default: starling]\n      --plain-http\n  -h, --help\n";
        let s = judge_help("rpull", out(0, help));
        assert!(s.available(), "{}", s.reason);
        assert!(s.has_flag("--address"));
        assert!(!s.has_flag("--namespace"));
        assert!(!s.has_flag("--plain"));
    }

    #[test]
    fn commands_carry_the_expected_arguments() {
        let help =
            "Options:\n  --address <A>\n  --namespace <N>\n  --snapshotter <S>\n  --plain-http\n";
        let cli = StarlingCli {
            bin: "/bin/starling".into(),
            convert: judge_help("convert", out(0, help)),
            optimize: judge_help("optimize", out(0, help)),
            rpull: judge_help("rpull", out(0, help)),
            mount: judge_help("mount", out(0, help)),
        };
        let ctr = Ctr {
            program: "ctr".into(),
            address: "/tmp/c.sock".into(),
            namespace: "ns1".into(),
            timeout: Duration::from_secs(1),
            runc_root: "/tmp/r".into(),
            fifo_dir: "/tmp/f".into(),
        };
        let args = |c: &Command| {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            args(&cli.rpull_cmd(&ctr, "starling", "h:1/p:esgz")),
            "rpull --address /tmp/c.sock --namespace ns1 --snapshotter starling --plain-http h:1/p:esgz"
        );
        assert_eq!(args(&cli.convert_cmd("a", "b")), "convert --plain-http a b");
        let spec = cli.mount_spec("r", "sha256:x", Path::new("/m"), Path::new("/l"));
        assert_eq!(
            spec.command_line(),
            "/bin/starling mount --plain-http r sha256:x /m"
        );
    }
}
