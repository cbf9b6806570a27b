//! The OCI runtime bundle the workload runs in, and running it with `runc`: a
//! `config.json` like containerd's default spec (new pid, mount, ipc, uts and network
//! namespaces — so only an unconfigured loopback, no network —, Docker's default
//! capabilities, masked `/proc` paths), `runc run` in the foreground for at most the
//! profiling period, then `runc kill` / `runc delete --force`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Docker's default capability set.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What the container runs.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The runtime spec for `p` with the root file system at `rootfs`.
pub fn runtime_spec(p: &ProcessSpec, rootfs: &Path, hostname: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": p.uid, "gid": p.gid},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself (status as `runc run` reports it: the workload's).
    Exited(i32),
    /// The period ended first; it was killed.
    TimedOut,
    /// The caller asked to stop (Ctrl-C); it was killed.
    Interrupted,
}

/// A container being run by `runc run`; deleted (forcibly) when dropped.
pub struct Container {
    runc: PathBuf,
    state: PathBuf,
    id: String,
    child: Option<Child>,
}

/// Time allowed for the container to die after `runc kill` before `runc` itself is killed.
const KILL_GRACE: Duration = Duration::from_secs(10);

impl Container {
    /// Starts `runc run` for the bundle at `bundle` (which holds `config.json`); the
    /// workload's output goes to this process's stderr.
    pub fn start(runc: &Path, state: &Path, bundle: &Path, id: &str) -> std::io::Result<Self> {
        let stderr = || -> std::io::Result<Stdio> {
            use std::os::fd::AsFd;
            Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
        };
        let child = Command::new(runc)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stderr()?)
            .stderr(stderr()?)
            .spawn()?;
        Ok(Container {
            runc: runc.to_path_buf(),
            state: state.to_path_buf(),
            id: id.to_string(),
            child: Some(child),
        })
    }

    fn runc(&self, args: &[&str]) -> std::io::Result<ExitStatus> {
        Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    /// Waits until the workload exits, `period` passes or `stop` is set; kills it in the
    /// latter two cases.
    pub fn wait(&mut self, period: Duration, stop: &AtomicBool) -> std::io::Result<Ending> {
        let deadline = Instant::now() + period;
        let child = self
            .child
            .as_mut()
            .expect("a started container has a child");
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(Ending::Exited(exit_code(st)));
            }
            let ending = if stop.load(Ordering::Relaxed) {
                Ending::Interrupted
            } else if Instant::now() >= deadline {
                Ending::TimedOut
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            self.kill();
            return Ok(ending);
        }
    }

    /// Kills the workload and reaps `runc run` (killing it too after a grace period).
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.runc(&["kill", "--all", &self.id, "KILL"]);
        let until = Instant::now() + KILL_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
        let _ = self.runc(&["delete", "--force", &self.id]);
    }
}

/// The exit code `runc run` reports (128 + signal when it died by one).
fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Finds `runc` (an explicit path, or along `PATH`).
pub fn find_runtime(explicit: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(p) = explicit {
        return ok(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| ok(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_carries_the_workload() {
        let p = ProcessSpec {
            args: vec!["python3".into(), "-c".into(), "1".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/app".into(),
            uid: 33,
            gid: 34,
        };
        let s = runtime_spec(&p, Path::new("/tmp/x/rootfs"), "optimize");
        assert_eq!(s["process"]["args"], json!(["python3", "-c", "1"]));
        assert_eq!(s["process"]["user"], json!({"uid": 33, "gid": 34}));
        assert_eq!(s["process"]["cwd"], "/app");
        assert_eq!(s["root"]["path"], "/tmp/x/rootfs");
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"mount"), "{ns:?}");
    }

    #[test]
    fn runtime_lookup() {
        assert!(find_runtime(Some(Path::new("/nonexistent/runc"))).is_none());
        assert_eq!(
            find_runtime(Some(Path::new("/bin/sh"))).as_deref(),
            Some(Path::new("/bin/sh"))
        );
    }
}
