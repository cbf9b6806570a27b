//! What `starling doctor` checks outside containerd's configuration: starling's own
//! configuration, the daemon (its socket, its control socket's state), the layers that
//! fell back recently (grouped by host and cause; a plain-HTTP host not declared insecure
//! fails), and the machine: FUSE, overlayfs, the kernel.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use snapshotter::control::{self, DaemonState};
use snapshotter::lazy::fallbacks::{self, Fallback};

use super::check::Check;

/// Kernel release from which the FUSE features starling uses are all there
/// (`FUSE_NOTIFY_RESEND` for crash recovery, passthrough).
const FULL_FUSE_KERNEL: (u32, u32) = (6, 9);

/// starling's configuration.
pub fn config_checks(cfg: &config::Config, source: &str) -> Vec<Check> {
    let mut out = vec![Check::ok(
        "starling config",
        format!(
            "{source} (root {}, socket {})",
            cfg.root.display(),
            cfg.address.display()
        ),
    )];
    if !cfg.snapshotter.lazy {
        out.push(Check::fail(
            "lazy layers",
            "[snapshotter] lazy = false: every layer is pulled in full",
            "set lazy = true in [snapshotter] and restart the daemon",
        ));
    }
    out
}

/// The daemon: its snapshots socket and its control socket. Returns its state when it
/// answered.
pub fn daemon_checks(address: &Path, root: &Path, out: &mut Vec<Check>) -> Option<DaemonState> {
    match std::os::unix::net::UnixStream::connect(address) {
        Ok(_) => out.push(Check::ok(
            "daemon socket",
            format!("{} accepts connections", address.display()),
        )),
        Err(e) => {
            out.push(Check::fail(
                "daemon socket",
                format!(
                    "{}: {e}: containerd cannot reach starling",
                    address.display()
                ),
                "start the daemon (systemctl start starling, or starling daemon --address \
                 ...) with this socket",
            ));
        }
    }
    match control::ask(root, Duration::from_secs(10)) {
        Ok(state) => {
            out.push(Check::ok(
                "daemon",
                format!(
                    "pid {}, version {}, {} lazy layer(s) served, lazy layers {}",
                    state.pid,
                    state.version,
                    state.layers.len(),
                    if state.lazy { "on" } else { "off" }
                ),
            ));
            if state.address != address {
                out.push(Check::warn(
                    "daemon address",
                    format!(
                        "the daemon of {} serves {}, not {}",
                        root.display(),
                        state.address.display(),
                        address.display()
                    ),
                    "point containerd's proxy plugin and doctor's --address at the same socket",
                ));
            }
            Some(state)
        }
        Err(e) => {
            out.push(Check::warn(
                "daemon state",
                format!("{e} (root {})", root.display()),
                "run doctor with the daemon's --root (or --config), or start the daemon",
            ));
            None
        }
    }
}

/// The recent fallbacks (from the daemon, else `<root>/fallbacks.json`), one check per
/// host and cause. A plain-HTTP host that the configuration does not declare insecure
/// fails.
pub fn fallback_checks(
    state: Option<&DaemonState>,
    root: &Path,
    cfg: &config::Config,
    out: &mut Vec<Check>,
) {
    let recorded = match state {
        Some(s) => s.fallbacks.clone(),
        None => match fallbacks::read(root) {
            Ok(v) => v,
            Err(e) => {
                out.push(Check::warn(
                    "fallbacks",
                    format!("cannot read the record: {e}"),
                    format!("remove {}", fallbacks::path(root).display()),
                ));
                return;
            }
        },
    };
    if recorded.is_empty() {
        out.push(Check::ok(
            "fallbacks",
            "no eStargz layer fell back to a full pull recently",
        ));
        return;
    }
    let mut groups: BTreeMap<(String, String), Vec<&Fallback>> = BTreeMap::new();
    for f in &recorded {
        groups
            .entry((f.host.clone(), f.cause.clone()))
            .or_default()
            .push(f);
    }
    let now = fallbacks::now();
    for ((host, cause), list) in groups {
        let last = list.last().expect("groups are not empty");
        let detail = format!(
            "{} layer(s) of {} fell back ({cause}), last {} ago ({}): {}",
            list.len(),
            host,
            ago(now.saturating_sub(last.time)),
            last.reference,
            last.reason
        );
        let declared = cfg.registry.host(&host).is_some_and(|h| h.insecure);
        let fix = last.fix.clone().unwrap_or_else(|| match cause.as_str() {
            "transient" => format!(
                "check that {host} answers from this machine; slow registries: raise \
                 [fetch] read_timeout"
            ),
            "not_estargz" => "convert the image with starling convert".to_string(),
            _ => "see the daemon's log around that time".to_string(),
        });
        let what = format!("fallbacks from {host}");
        if cause == "plain_http" && !declared {
            out.push(Check::fail(what, detail, fix));
        } else if cause == "plain_http" {
            out.push(Check::warn(
                what,
                format!("{detail} (declared insecure in the configuration now)"),
                "restart the daemon if it was started before the change",
            ));
        } else {
            out.push(Check::warn(what, detail, fix));
        }
    }
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// FUSE, overlayfs and the kernel.
pub fn machine_checks() -> Vec<Check> {
    let mut out = Vec::new();
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
            {
                Ok(_) => out.push(Check::ok("FUSE", "/dev/fuse opens")),
                Err(e) => out.push(Check::fail(
                    "FUSE",
                    format!("/dev/fuse: {e}"),
                    "run the daemon as root (in a container: --device /dev/fuse and CAP_SYS_ADMIN)",
                )),
            }
        }
        Ok(_) => out.push(Check::fail(
            "FUSE",
            "/dev/fuse is not a character device",
            "recreate it: mknod /dev/fuse c 10 229",
        )),
        Err(e) => out.push(Check::fail(
            "FUSE",
            format!("/dev/fuse: {e}"),
            "load the fuse module (modprobe fuse); in a container pass --device /dev/fuse",
        )),
    }
    match which("fusermount3") {
        Some(p) => out.push(Check::ok("fusermount3", p)),
        None => out.push(Check::warn(
            "fusermount3",
            "not in PATH",
            "install fuse3 (apt-get install fuse3)",
        )),
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has = |fs: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    if has("overlay") {
        out.push(Check::ok("overlayfs", "in /proc/filesystems"));
    } else {
        out.push(Check::fail(
            "overlayfs",
            "not in /proc/filesystems: no snapshot can be mounted",
            "load it: modprobe overlay",
        ));
    }
    if !has("fuse")
        && out
            .iter()
            .all(|c| c.what != "FUSE" || c.level != super::check::Level::Ok)
    {
        out.push(Check::warn(
            "fuse file system",
            "not in /proc/filesystems",
            "load it: modprobe fuse",
        ));
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match kernel_version(&release) {
        Some(v) if v >= FULL_FUSE_KERNEL => out.push(Check::ok("kernel", release)),
        Some(_) => out.push(Check::warn(
            "kernel",
            format!(
                "{release}: before {}.{}, reads in flight when the daemon crashes fail \
                 (no FUSE_NOTIFY_RESEND) and [fuse] passthrough is unavailable",
                FULL_FUSE_KERNEL.0, FULL_FUSE_KERNEL.1
            ),
            "lazy pulls work; for crash-proof reads use Linux 6.9 or newer",
        )),
        None => out.push(Check::warn(
            "kernel",
            format!("cannot read the release ({release:?})"),
            "-",
        )),
    }
    out
}

/// `(major, minor)` of a kernel release such as `6.18.44-fc-v1300`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The first `name` in `PATH`.
pub fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::check::Level;
    use super::*;

    fn fallback(host: &str, cause: &str, fix: Option<&str>) -> Fallback {
        Fallback {
            time: fallbacks::now() - 30,
            reference: format!("{host}/app:1"),
            layer: format!("sha256:{}", "c".repeat(64)),
            host: host.into(),
            kind: "registry".into(),
            cause: cause.into(),
            reason: "https to it failed: the server speaks plain HTTP".into(),
            fix: fix.map(String::from),
        }
    }

    #[test]
    fn fallbacks_group_by_host_and_cause_and_plain_http_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let fix = "set insecure = true in [registry.hosts.\"10.0.0.5:5000\"]";
        let state = DaemonState {
            pid: 1,
            version: "0".into(),
            root: tmp.path().into(),
            address: "/s".into(),
            lazy: true,
            layers: Vec::new(),
            fallbacks: vec![
                fallback("10.0.0.5:5000", "plain_http", Some(fix)),
                fallback("10.0.0.5:5000", "plain_http", Some(fix)),
                fallback("reg.example:443", "transient", None),
            ],
        };
        let mut cfg = config::Config::default();
        let mut out = Vec::new();
        fallback_checks(Some(&state), tmp.path(), &cfg, &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        let plain = &out[0];
        assert_eq!(plain.level, Level::Fail, "{plain:?}");
        assert!(
            plain
                .detail
                .starts_with("2 layer(s) of 10.0.0.5:5000 fell back (plain_http), last 30s ago"),
            "{plain:?}"
        );
        assert_eq!(plain.fix.as_deref(), Some(fix));
        assert_eq!(out[1].level, Level::Warn);
        assert!(out[1].fix.as_deref().unwrap().contains("read_timeout"));

        // Declared since: a warning to restart.
        cfg.registry.hosts.insert(
            "10.0.0.5:5000".into(),
            config::HostConfig {
                insecure: true,
                ..Default::default()
            },
        );
        let mut out = Vec::new();
        fallback_checks(Some(&state), tmp.path(), &cfg, &mut out);
        assert_eq!(out[0].level, Level::Warn, "{out:#?}");

        // No daemon, no record: fine.
        let mut out = Vec::new();
        fallback_checks(None, tmp.path(), &cfg, &mut out);
        assert_eq!(out[0].level, Level::Ok, "{out:#?}");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("junk"), None);
        assert!(kernel_version("6.9.0").unwrap() >= FULL_FUSE_KERNEL);
        assert!(kernel_version("6.8.12").unwrap() < FULL_FUSE_KERNEL);
    }

    #[test]
    fn lazy_off_fails() {
        let mut cfg = config::Config::default();
        assert!(config_checks(&cfg, "x")
            .iter()
            .all(|c| c.level == Level::Ok));
        cfg.snapshotter.lazy = false;
        assert!(config_checks(&cfg, "x")
            .iter()
            .any(|c| c.level == Level::Fail));
    }
}
