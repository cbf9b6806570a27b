//! Processes the tests start: long-running daemons ([`Daemon`]: logs to a file, PID kept,
//! stopped by PID with SIGTERM then SIGKILL on drop, killable and restartable for fault
//! tests) and one-shot commands with a timeout ([`run_cmd`]).

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

/// How to start a long-running process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Short name used in errors and log separators (`registry`, `containerd`...).
    pub name: String,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Run inside this network namespace (through `ip netns exec`, which execs the program,
    /// so the PID is the program's own).
    pub netns: Option<String>,
    /// File receiving stdout and stderr (appended to, also across restarts).
    pub log: PathBuf,
    /// Grace period between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: Duration,
    /// Start in its own session (survives the terminal and the starting process; used by
    /// `stl-env`). Off by default so that ^C on a test run reaches the daemons too.
    pub new_session: bool,
}

impl ProcessSpec {
    /// A spec for `program`, logging to `log`.
    pub fn new(name: &str, program: impl AsRef<OsStr>, log: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            name: name.to_string(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            netns: None,
            log: log.into(),
            stop_timeout: Duration::from_secs(10),
            new_session: false,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Runs the process in network namespace `ns`.
    pub fn netns(mut self, ns: impl Into<String>) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// Sets the SIGTERM grace period.
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    /// The command line as text (for messages).
    pub fn command_line(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if self.new_session {
            c.process_group(0);
        }
        c
    }
}

/// A running long-lived process. Dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Daemon {
    spec: ProcessSpec,
    child: Option<Child>,
    pid: u32,
    last_status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the process described by `spec`.
    pub fn start(spec: ProcessSpec) -> Result<Daemon> {
        let mut d = Daemon {
            spec,
            child: None,
            pid: 0,
            last_status: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        if let Some(dir) = self.spec.log.parent() {
            std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .ctx(|| format!("open log {}", self.spec.log.display()))?;
        let log2 = log.try_clone().ctx(|| "dup log fd".into())?;
        {
            use std::io::Write;
            let mut l = &log;
            let _ = writeln!(
                l,
                "=== harness: starting {}: {}",
                self.spec.name,
                self.spec.command_line()
            );
        }
        let mut cmd = self.spec.command();
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            program: self.spec.program.to_string_lossy().into_owned(),
            source: e,
        })?;
        self.pid = child.id();
        self.child = Some(child);
        self.last_status = None;
        Ok(())
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// PID of the (last started) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The whole log (lossy UTF-8).
    pub fn log(&self) -> String {
        std::fs::read(&self.spec.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(&self.log(), n)
    }

    /// True while the process has not exited (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    self.last_status = Some(st);
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// `Ok` while running, else [`Error::Exited`] with the log tail.
    pub fn check_running(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        Err(Error::Exited {
            name: self.spec.name.clone(),
            status: self
                .last_status
                .map(status_text)
                .unwrap_or_else(|| "not started".into()),
            log: self.spec.log.clone(),
            tail: self.log_tail(30),
        })
    }

    /// Polls `ready` until it holds; fails early if the process exits and with the log tail
    /// on timeout.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let r = crate::poll::poll_until(what, timeout, || {
            if ready() {
                return Ok(Some(()));
            }
            self.check_running()?;
            Ok(None)
        });
        match r {
            Err(Error::Timeout { what, after, .. }) => Err(Error::Timeout {
                what,
                after,
                detail: format!(
                    "\n{} log {}:\n{}",
                    self.spec.name,
                    self.spec.log.display(),
                    self.log_tail(30)
                ),
            }),
            other => other,
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid as i32), sig)
            .map_err(|e| Error::sys(format!("kill -{sig} {} ({})", self.pid, self.spec.name), e))
    }

    /// Stops the process: SIGTERM, then SIGKILL after the spec's grace period. Returns its
    /// exit status (None if it was not running).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(self.last_status);
        };
        if let Ok(Some(st)) = child.try_wait() {
            return Ok(self.reaped(st));
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + self.spec.stop_timeout;
        let mut delay = Duration::from_millis(2);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Ok(self.reaped(st));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        eprintln!(
            "harness: {} (pid {}) ignored SIGTERM for {:?}; sending SIGKILL",
            self.spec.name, self.pid, self.spec.stop_timeout
        );
        self.kill()?;
        Ok(self.last_status)
    }

    /// Kills the process with SIGKILL and reaps it (fault tests).
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = child.kill();
        let st = child
            .wait()
            .ctx(|| format!("wait for {}", self.spec.name))?;
        self.last_status = Some(st);
        self.kill_session();
        Ok(())
    }

    fn reaped(&mut self, st: ExitStatus) -> Option<ExitStatus> {
        self.last_status = Some(st);
        self.child = None;
        self.kill_session();
        Some(st)
    }

    /// With `new_session`, the process group is ours alone: make sure nothing is left in it.
    fn kill_session(&self) {
        if self.spec.new_session && self.pid != 0 {
            let _ = kill(Pid::from_raw(-(self.pid as i32)), Signal::SIGKILL);
        }
    }

    /// Stops (if running) and starts the process again with the same spec; the log is
    /// appended to.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The program the next start runs (a running process is not touched).
    pub fn set_program(&mut self, program: impl Into<OsString>) {
        self.spec.program = program.into();
    }

    /// Starts the process again after it was stopped or killed.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()
    }

    /// Exit status of the last run, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.last_status
    }

    /// Leaves the process running and forgets it; returns its PID (for `stl-env`).
    pub fn detach(mut self) -> u32 {
        self.forget()
    }

    /// Forgets the process without stopping it (drop then does nothing); returns its PID.
    pub fn forget(&mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e}", self.spec.name);
        }
    }
}

/// Text of an exit status (`exit 1`, `signal 9`).
pub fn status_text(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line (for messages).
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// True on exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` on success, else [`Error::Command`].
    pub fn check(self) -> Result<CmdOutput> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Command {
                command: self.command,
                status: status_text(self.status),
                stdout: tail_lines(&self.stdout, 40),
                stderr: tail_lines(&self.stderr, 40),
            })
        }
    }
}

fn command_text(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin closed, capturing its output; kills it with SIGKILL
/// after `timeout` ([`Error::Timeout`] carrying what it printed so far).
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput> {
    let text = command_text(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source: e,
        })?;
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(st) => Some(st.ctx(|| format!("wait for `{text}`"))?),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = rx.recv();
            None
        }
    };
    let _ = waiter.join();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    match status {
        Some(status) => Ok(CmdOutput {
            command: text,
            status,
            stdout,
            stderr,
        }),
        None => Err(Error::Timeout {
            what: format!("`{text}`"),
            after: timeout,
            detail: format!(
                "\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail_lines(&stdout, 20),
                tail_lines(&stderr, 20)
            ),
        }),
    }
}

/// Runs `program args...` and returns its stdout; error when it fails.
pub fn run_ok<I, S>(program: &str, args: I, timeout: Duration) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Ok(run_cmd(Command::new(program).args(args), timeout)?
        .check()?
        .stdout)
}

/// True while process `pid` exists and is not a zombie.
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => s
            .rfind(')')
            .map(|i| !s[i + 2..].starts_with('Z'))
            .unwrap_or(false),
    }
}

/// PIDs of processes whose command line contains `needle` (e.g. a containerd socket path,
/// to find shims a containerd started).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c: Vec<u8> = c
                .into_iter()
                .map(|b| if b == 0 { b' ' } else { b })
                .collect();
            if String::from_utf8_lossy(&c).contains(needle) && pid_running(pid) {
                v.push(pid);
            }
        }
    }
    v
}

/// True if `name` is an executable in `$PATH` (or an executable path).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workdir::Workdir;

    #[test]
    fn run_cmd_captures_and_times_out() {
        let o = run_cmd(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        assert_eq!(o.status.code(), Some(3));
        let e = o.check().unwrap_err();
        assert!(e.to_string().contains("exit 3"), "{e}");
        let t = Instant::now();
        let e = run_cmd(Command::new("sleep").arg("30"), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn daemon_stop_kill_restart() {
        let wd = Workdir::new("proc").unwrap();
        let spec = ProcessSpec::new("sleeper", "sh", wd.join("s.log"))
            .args(["-c", "echo u''p; exec sleep 60"]);
        let mut d = Daemon::start(spec).unwrap();
        let pid1 = d.pid();
        d.wait_ready("echo", Duration::from_secs(10), || {
            std::fs::read_to_string(wd.join("s.log"))
                .unwrap_or_default()
                .contains("\nup\n")
        })
        .unwrap();
        d.kill().unwrap();
        assert!(!d.is_running());
        assert_eq!(d.exit_status().and_then(|s| s.signal()), Some(9));
        d.start_again().unwrap();
        assert_ne!(d.pid(), pid1);
        assert!(d.is_running());
        let st = d.stop().unwrap().unwrap();
        assert_eq!(st.signal(), Some(15));
        assert!(
            kill(Pid::from_raw(d.pid() as i32), None).is_err(),
            "process still exists"
        );
        assert_eq!(d.log().matches("=== harness: starting sleeper").count(), 2);
    }

    #[test]
    fn daemon_exit_is_reported_with_log() {
        let wd = Workdir::new("proc").unwrap();
        let spec = ProcessSpec::new("failer", "sh", wd.join("f.log"))
            .args(["-c", "echo boom-message; exit 7"]);
        let mut d = Daemon::start(spec).unwrap();
        let e = d
            .wait_ready("never", Duration::from_secs(10), || false)
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("exit 7") && s.contains("boom-message"), "{s}");
    }

    #[test]
    fn sigterm_ignored_leads_to_sigkill() {
        let wd = Workdir::new("proc").unwrap();
        let spec = ProcessSpec::new("stubborn", "sh", wd.join("t.log"))
            .args([
                "-c",
                "trap '' TERM; echo rea''dy; while :; do sleep 0.05; done",
            ])
            .stop_timeout(Duration::from_millis(300));
        let mut d = Daemon::start(spec).unwrap();
        d.wait_ready("ready", Duration::from_secs(10), || {
            std::fs::read_to_string(wd.join("t.log"))
                .unwrap_or_default()
                .contains("\nready\n")
        })
        .unwrap();
        let st = d.stop().unwrap().unwrap();
        assert_eq!(st.signal(), Some(9));
    }
}
