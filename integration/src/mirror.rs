//! A `starling mirror` process (the cluster blob mirror) on a loopback port picked by itself,
//! its block cache in a private directory; its counters read from `GET /metrics`. Stopped
//! by PID (SIGTERM, graceful) on drop.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{Daemon, ProcessSpec};
use crate::starling::starling_bin;

/// A running `starling mirror`.
#[derive(Debug)]
pub struct StarlingMirror {
    daemon: Daemon,
    host: String,
}

impl StarlingMirror {
    /// Starts it under `dir` serving upstream `upstream` (plain HTTP) as a host requests
    /// must name with `?ns=` (no default upstream: a request without `ns` fails), with
    /// `extra` arguments (e.g. `--block-size`).
    pub fn start(dir: &Path, upstream: &str, extra: &[&str]) -> Result<StarlingMirror> {
        let cache = dir.join("cache");
        let spec = ProcessSpec::new("starling-mirror", starling_bin()?, dir.join("mirror.log"))
            .args(["mirror", "--listen", "127.0.0.1:0", "--plain-http"])
            .arg("--allow-upstream")
            .arg(upstream)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--config")
            .arg(dir.join("no-config.toml"))
            .args(extra)
            .stop_timeout(Duration::from_secs(15));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        std::fs::write(dir.join("no-config.toml"), "")
            .map_err(|e| Error::io(format!("write {}", dir.display()), e))?;
        let mut daemon = Daemon::start(spec)?;
        let log = daemon.log_path().to_path_buf();
        let mut host = None;
        daemon.wait_ready("mirror to listen", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            host = text
                .lines()
                .filter(|l| l.contains("mirror serving"))
                .filter_map(|l| l.split("listen=").nth(1))
                .filter_map(|r| r.split_whitespace().next())
                .map(str::to_string)
                .next();
            host.is_some()
        })?;
        Ok(StarlingMirror {
            daemon,
            host: host.expect("found above"),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// A counter of `GET /metrics` (`starling_mirror_<name>`).
    pub fn metric(&self, name: &str) -> Result<u64> {
        let url = format!("http://{}/metrics", self.host);
        let r = crate::http::get(&url, &[])?;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("starling_mirror_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::invalid("mirror metrics", format!("no {name} in {text}")))
    }

    /// Stops it (SIGTERM) and returns its log; an exit other than 0 is an error.
    pub fn stop(&mut self) -> Result<String> {
        let status = self.daemon.stop()?;
        let log = self.daemon.log();
        match status {
            Some(s) if !s.success() => Err(Error::invalid(
                "starling mirror exit",
                format!("{s}; log:\n{}", self.daemon.log_tail(30)),
            )),
            _ => Ok(log),
        }
    }
}
