//! Launching `starling daemon --root R --address S [--config C]` (or any command standing in
//! for it) as a [`Daemon`], waiting until its socket accepts connections; writing starling
//! config files; finding the built binary.
//!
//! The daemon is started with `--unmount-on-stop` unless a test asks for the default stop
//! that leaves the lazy mounts to the fd store holder
//! ([`StarlingOptions::keep_mounts_on_stop`]); either way dropping a [`Starling`] stops
//! the daemon, kills its fd store holder (by PID) and detaches every mount under its root,
//! so nothing is left behind.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::process::{Daemon, ProcessSpec};
use crate::workdir::Workdir;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `starling` binary: `$STARLING_BIN`, else the newer of `<target>/release/starling` and
/// `<target>/debug/starling` (`<target>` = `$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn starling_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STARLING_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Missing(format!(
                "STARLING_BIN={} does not exist",
                p.display()
            )))
        };
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        target.join("release/starling"),
        target.join("debug/starling"),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().and_then(|m| m.modified().ok()).map(|t| (t, p.clone())))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            Error::Missing(format!(
                "starling binary not built (looked for {} and {}; run `cargo build -p starling` or set STARLING_BIN)",
                candidates[0].display(),
                candidates[1].display()
            ))
        })
}

/// A starling TOML config, built key by key or from raw text.
#[derive(Debug, Clone, Default)]
pub struct StarlingConfig {
    table: toml::Table,
}

impl StarlingConfig {
    /// An empty config (all defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses raw TOML.
    pub fn raw(text: &str) -> Result<Self> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| Error::invalid("starling config TOML", e.to_string()))?;
        Ok(StarlingConfig { table })
    }

    /// Sets a dotted key (`"fuse.passthrough"`, `"cache.max_bytes"`), creating sections.
    pub fn set(mut self, dotted: &str, value: impl Into<toml::Value>) -> Self {
        let parts: Vec<&str> = dotted.split('.').collect();
        let mut t = &mut self.table;
        for p in &parts[..parts.len() - 1] {
            let entry = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            t = entry.as_table_mut().expect("table just ensured");
        }
        t.insert(parts[parts.len() - 1].to_string(), value.into());
        self
    }

    /// Marks registry `host` (`HOST:PORT`, dots kept in the key) as plain HTTP.
    pub fn insecure_host(mut self, host: &str) -> Self {
        let hosts = self
            .table
            .entry("registry".to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !hosts.is_table() {
            *hosts = toml::Value::Table(toml::Table::new());
        }
        let hosts = hosts
            .as_table_mut()
            .expect("table just ensured")
            .entry("hosts".to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !hosts.is_table() {
            *hosts = toml::Value::Table(toml::Table::new());
        }
        let mut entry = toml::Table::new();
        entry.insert("insecure".to_string(), toml::Value::Boolean(true));
        hosts
            .as_table_mut()
            .expect("table just ensured")
            .entry(host.to_string())
            .or_insert(toml::Value::Table(entry));
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).unwrap_or_default()
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml()).ctx(|| format!("write {}", path.display()))
    }
}

/// How to start the daemon.
#[derive(Debug, Clone, Default)]
pub struct StarlingOptions {
    /// Program and arguments replacing `starling daemon ...`; `{root}`, `{address}` and
    /// `{config}` in arguments are substituted (for stand-ins and wrappers).
    pub command: Option<Vec<OsString>>,
    /// Config written to `<dir>/config.toml` and passed with `--config`.
    pub config: Option<StarlingConfig>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// How long to wait for the socket.
    pub ready_timeout: Option<Duration>,
    /// Start the daemon without `--unmount-on-stop`: a SIGTERM leaves its lazy mounts to the
    /// fd store holder for the next start (the daemon's default). Off: a stop unmounts
    /// everything (the holder exits), as tests not about restarts expect.
    pub keep_mounts_on_stop: bool,
}

/// A running starling daemon (or stand-in); stopped on drop, mounts under its root detached.
#[derive(Debug)]
pub struct Starling {
    daemon: Daemon,
    dir: PathBuf,
    root: PathBuf,
    address: PathBuf,
    config: Option<PathBuf>,
    ready_timeout: Duration,
    /// Left running on purpose ([`Starling::detach`]): drop touches nothing.
    detached: bool,
}

impl Starling {
    /// Starts it with root `<wd>/starling/root` and socket `<wd>/st.sock`.
    pub fn start(wd: &Workdir, opts: StarlingOptions) -> Result<Starling> {
        Self::start_in(&wd.join("starling"), &wd.join("st.sock"), opts, false)
    }

    /// Starts it with files under `dir` listening on `address`.
    pub fn start_in(
        dir: &Path,
        address: &Path,
        opts: StarlingOptions,
        new_session: bool,
    ) -> Result<Starling> {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).ctx(|| format!("create {}", root.display()))?;
        let config = match &opts.config {
            Some(c) => {
                let p = dir.join("config.toml");
                c.write(&p)?;
                Some(p)
            }
            None => None,
        };
        let mut spec = match &opts.command {
            Some(cmd) if !cmd.is_empty() => {
                let subst = |a: &OsString| -> OsString {
                    let s = a.to_string_lossy();
                    if !(s.contains("{root}") || s.contains("{address}") || s.contains("{config}"))
                    {
                        return a.clone();
                    }
                    let cfg = config
                        .as_ref()
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    s.replace("{root}", &root.to_string_lossy())
                        .replace("{address}", &address.to_string_lossy())
                        .replace("{config}", &cfg)
                        .into()
                };
                ProcessSpec::new("starling", subst(&cmd[0]), dir.join("starling.log"))
                    .args(cmd[1..].iter().map(subst))
            }
            _ => {
                let mut s = ProcessSpec::new("starling", starling_bin()?, dir.join("starling.log"))
                    .arg("daemon")
                    .arg("--root")
                    .arg(&root)
                    .arg("--address")
                    .arg(address);
                if let Some(c) = &config {
                    s = s.arg("--config").arg(c);
                }
                if let Some(l) = &opts.log_level {
                    s = s.arg("--log-level").arg(l);
                }
                if !opts.keep_mounts_on_stop {
                    s = s.arg("--unmount-on-stop");
                }
                s
            }
        };
        spec = spec.args(&opts.extra_args);
        for (k, v) in &opts.env {
            spec = spec.env(k, v);
        }
        spec.new_session = new_session;
        let mut st = Starling {
            daemon: Daemon::start(spec)?,
            dir: dir.to_path_buf(),
            root,
            address: address.to_path_buf(),
            config,
            ready_timeout: opts.ready_timeout.unwrap_or(Duration::from_secs(60)),
            detached: false,
        };
        st.wait_ready()?;
        Ok(st)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let a = self.address.clone();
        self.daemon.wait_ready(
            &format!("socket {}", a.display()),
            self.ready_timeout,
            || std::os::unix::net::UnixStream::connect(&a).is_ok(),
        )
    }

    /// The unix socket (register it as a containerd proxy plugin).
    pub fn socket(&self) -> &Path {
        &self.address
    }

    /// `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its directory (log, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file, if one was written.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Its whole log (lossy UTF-8; empty when there is none yet).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Its metrics text ([`crate::metrics::scrape`]; it must run with `metrics_address`).
    pub fn metrics(&self) -> Result<String> {
        crate::metrics::scrape(&self.root)
    }

    /// Bytes fetched from registries so far, summed over layers
    /// ([`crate::metrics::FETCH_BYTES_TOTAL`]).
    pub fn fetched_bytes(&self) -> Result<f64> {
        let text = self.metrics()?;
        Ok(crate::metrics::metric(
            &text,
            crate::metrics::FETCH_BYTES_TOTAL,
            &[],
        ))
    }

    /// The process handle (PID, log, signals).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// SIGKILL (fault tests); mounts stay as the dead process left them.
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) -> Result<()> {
        self.daemon.stop().map(drop)
    }

    /// Starts it again after stop/kill and waits for the socket.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.start_again()?;
        self.wait_ready()
    }

    /// The binary the next start runs (benchmarks compare two builds on one stack);
    /// takes effect at the next [`Starling::start_again`].
    pub fn set_binary(&mut self, bin: &Path) {
        self.daemon.set_program(bin);
    }

    /// Stop + start.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// PIDs of the fd store holders of its root (`starling fdstore --socket <root>/fdstore.sock`).
    pub fn holders(&self) -> Vec<u32> {
        let sock = self.root.join("fdstore.sock");
        crate::process::pids_with_cmdline(&format!("fdstore --socket {}", sock.display()))
    }

    /// Kills the fd store holders of its root (SIGKILL, by PID) and waits until they are
    /// gone; with the daemon stopped too, the connections they held end.
    pub fn kill_holders(&self) {
        for pid in self.holders() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = crate::poll::wait_for("fd store holder gone", Duration::from_secs(10), || {
            self.holders().is_empty()
        });
    }

    /// Leaves it running (for `stl-env`); returns its PID.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.daemon.forget()
    }
}

impl Drop for Starling {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.daemon.stop() {
            eprintln!("warning: stopping starling: {e}");
        }
        if self.daemon.pid() != 0 && !self.daemon.is_running() {
            // A stop that handed the mounts over (or a kill) leaves a holder keeping them.
            self.kill_holders();
            let _ = crate::mounts::unmount_under(&self.root);
        }
    }
}

/// Joins program and args into the `command` form of [`StarlingOptions`].
pub fn command<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Vec<OsString> {
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets_nested_keys() {
        let c = StarlingConfig::new()
            .set("fuse.passthrough", true)
            .set("cache.max_bytes", 1024i64)
            .set("log_level", "debug");
        let t: toml::Table = c.to_toml().parse().unwrap();
        assert_eq!(t["fuse"]["passthrough"].as_bool(), Some(true));
        assert_eq!(t["cache"]["max_bytes"].as_integer(), Some(1024));
        let r = StarlingConfig::raw("[a]\nb = 1\n")
            .unwrap()
            .set("a.c", 2i64);
        assert!(r.to_toml().contains("c = 2"));
        assert!(StarlingConfig::raw("[a").is_err());
    }

    #[test]
    fn config_marks_dotted_host_insecure() {
        let c = StarlingConfig::new()
            .set("registry.docker_config", "")
            .insecure_host("10.201.0.2:5000");
        let t: toml::Table = c.to_toml().parse().unwrap();
        assert_eq!(
            t["registry"]["hosts"]["10.201.0.2:5000"]["insecure"].as_bool(),
            Some(true)
        );
        assert_eq!(t["registry"]["docker_config"].as_str(), Some(""));
    }

    #[test]
    fn launcher_waits_for_socket_and_restarts() {
        if crate::process::which("python3").is_none() {
            eprintln!("SKIP: python3 missing");
            return;
        }
        let wd = Workdir::new("stlaunch").unwrap();
        // stand-in daemon: listens on {address} after a short delay, like a real server
        let script = "import socket,sys,time,os\ntime.sleep(0.2)\na=sys.argv[1]\n\
                      os.path.exists(a) and os.unlink(a)\ns=socket.socket(socket.AF_UNIX)\ns.bind(a)\ns.listen(8)\n\
                      print('root', sys.argv[2], flush=True)\nwhile True:\n  c,_=s.accept(); c.close()\n";
        let opts = StarlingOptions {
            command: Some(command([
                "/usr/bin/python3",
                "-c",
                script,
                "{address}",
                "{root}",
            ])),
            config: Some(StarlingConfig::new().set("a.b", 1i64)),
            ..Default::default()
        };
        let mut st = Starling::start(&wd, opts).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(st.socket()).is_ok());
        assert!(st.config_path().unwrap().exists());
        let pid = st.daemon().pid();
        st.kill().unwrap();
        assert!(std::os::unix::net::UnixStream::connect(st.socket()).is_err());
        st.start_again().unwrap();
        assert_ne!(st.daemon().pid(), pid);
        assert!(st
            .daemon()
            .log()
            .contains(&format!("root {}", wd.join("starling/root").display())));
    }
}
