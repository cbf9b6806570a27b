//! A private `docker-registry` (distribution v2.8): own YAML config and storage dir, bound to
//! a free 127.0.0.1 port (it binds port 0 and we read the port from its log, so there is no
//! race with other tests), plain / htpasswd / token auth, stop and restart on the same port
//! with the same storage (fault tests), pushing OCI layouts with `skopeo`, and the access
//! log for counting requests and bytes.

pub mod accesslog;
pub mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;

pub use accesslog::{AccessEntry, AccessSummary};
pub use config::{RegistryAuth, RegistryOptions};

use crate::error::{Error, IoContext, Result};
use crate::process::{run_cmd, Daemon, ProcessSpec};
use crate::workdir::{unique_token, Workdir};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry. Stopped by PID on drop; its directory stays until the workdir goes.
#[derive(Debug)]
pub struct Registry {
    daemon: Daemon,
    dir: PathBuf,
    storage: PathBuf,
    config: PathBuf,
    opts: RegistryOptions,
    addr: SocketAddr,
    secret: String,
    netns: Option<String>,
}

/// Where a registry listens and under which directory its files go.
pub(crate) struct Placement<'a> {
    pub dir: PathBuf,
    pub storage: Option<PathBuf>,
    pub secret: Option<String>,
    pub netns: Option<&'a str>,
    pub listen: &'a str,
    pub new_session: bool,
}

impl Registry {
    /// Anonymous registry with storage under `wd`.
    pub fn start(wd: &Workdir) -> Result<Registry> {
        Self::start_with(wd, RegistryOptions::default())
    }

    /// Registry with options; files under `<wd>/registry` (or `registry-2`, ... when several).
    pub fn start_with(wd: &Workdir, opts: RegistryOptions) -> Result<Registry> {
        let mut dir = wd.join("registry");
        let mut i = 2;
        while dir.exists() {
            dir = wd.join(format!("registry-{i}"));
            i += 1;
        }
        Self::start_placed(
            opts,
            Placement {
                dir,
                storage: None,
                secret: None,
                netns: None,
                listen: "127.0.0.1:0",
                new_session: false,
            },
        )
    }

    /// Registry with its files under `dir`; `new_session` to let it outlive this process
    /// (`stl-env`).
    pub fn start_in(dir: &Path, opts: RegistryOptions, new_session: bool) -> Result<Registry> {
        Self::start_placed(
            opts,
            Placement {
                dir: dir.to_path_buf(),
                storage: None,
                secret: None,
                netns: None,
                listen: "127.0.0.1:0",
                new_session,
            },
        )
    }

    pub(crate) fn start_placed(opts: RegistryOptions, p: Placement<'_>) -> Result<Registry> {
        std::fs::create_dir_all(&p.dir).ctx(|| format!("create {}", p.dir.display()))?;
        let storage = match p.storage.clone().or_else(|| opts.storage.clone()) {
            Some(s) => s,
            None => p.dir.join("data"),
        };
        std::fs::create_dir_all(&storage).ctx(|| format!("create {}", storage.display()))?;
        let secret = p.secret.clone().unwrap_or_else(|| unique_token(24));
        let config = p.dir.join("config.yml");
        let htpasswd = p.dir.join("htpasswd");
        if let RegistryAuth::Htpasswd { user, password } = &opts.auth {
            let line = config::htpasswd_line(user, password)
                .map_err(|e| Error::invalid("htpasswd password", e.to_string()))?;
            std::fs::write(&htpasswd, line).ctx(|| format!("write {}", htpasswd.display()))?;
        }
        let yaml = config::render(&opts, &storage, p.listen, &secret, &htpasswd);
        std::fs::write(&config, &yaml).ctx(|| format!("write {}", config.display()))?;
        let mut spec = ProcessSpec::new("registry", "docker-registry", p.dir.join("registry.log"))
            .args([std::ffi::OsStr::new("serve"), config.as_os_str()])
            .stop_timeout(Duration::from_secs(5));
        if let Some(ns) = p.netns {
            spec = spec.netns(ns);
        }
        spec.new_session = p.new_session;
        let daemon = Daemon::start(spec)?;
        let mut r = Registry {
            daemon,
            dir: p.dir,
            storage,
            config,
            opts,
            addr: "127.0.0.1:0".parse().expect("static addr"),
            secret,
            netns: p.netns.map(String::from),
        };
        r.addr = r.wait_listening()?;
        if p.listen.ends_with(":0") {
            // pin the port so that a restart comes back on the same address
            let yaml = config::render(
                &r.opts,
                &r.storage,
                &r.addr.to_string(),
                &r.secret,
                &htpasswd,
            );
            std::fs::write(&r.config, yaml).ctx(|| format!("write {}", r.config.display()))?;
        }
        Ok(r)
    }

    /// Waits for the "listening on ADDR" line of the current run and returns ADDR.
    fn wait_listening(&mut self) -> Result<SocketAddr> {
        let mut found = None;
        let log = self.daemon.log_path().to_path_buf();
        self.daemon
            .wait_ready("registry to listen", START_TIMEOUT, || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let run = text.rsplit("=== harness: starting").next().unwrap_or("");
                found = run
                    .lines()
                    .rev()
                    .filter_map(|l| l.split("listening on ").nth(1))
                    .filter_map(|rest| rest.split(|c: char| c == '"' || c.is_whitespace()).next())
                    .filter_map(|a| a.parse::<SocketAddr>().ok())
                    .next();
                found.is_some()
            })?;
        found.ok_or_else(|| Error::invalid("registry log", "no listen address"))
    }

    /// `HOST:PORT` as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `HOST:PORT/NAME` (e.g. `reference("busybox:latest")`).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{}", self.addr, name)
    }

    /// Storage directory.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// The registry's own directory (config, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the YAML config.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Options it was started with.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// HTTP secret (shared by registries serving the same storage).
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The process handle (signals, log).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Stops it (SIGTERM); storage is kept.
    pub fn stop(&mut self) -> Result<()> {
        self.daemon.stop().map(drop)
    }

    /// Kills it with SIGKILL (fault tests).
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }

    /// Starts it again on the same address and storage after [`stop`](Self::stop) or
    /// [`kill`](Self::kill); waits until it listens.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.start_again()?;
        let want = self.addr;
        let got = self.wait_listening()?;
        if self.netns.is_none() && got != want {
            return Err(Error::invalid(
                "registry restart",
                format!("listens on {got}, expected {want}"),
            ));
        }
        Ok(())
    }

    /// Stop + start on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// `user:password` for skopeo/ctr when basic auth is on.
    pub fn credentials(&self) -> Option<String> {
        match &self.opts.auth {
            RegistryAuth::Htpasswd { user, password } => Some(format!("{user}:{password}")),
            _ => None,
        }
    }

    /// `Authorization` header value for basic auth, if on.
    pub fn authorization(&self) -> Option<String> {
        self.credentials().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        })
    }

    fn auth_headers(&self) -> Vec<(&'static str, String)> {
        self.authorization()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default()
    }

    /// Every request logged so far (all runs).
    pub fn access_log(&self) -> Vec<AccessEntry> {
        accesslog::parse_log(&self.daemon_log())
    }

    fn daemon_log(&self) -> String {
        std::fs::read(self.daemon.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Number of logged requests: a mark for [`access_since`](Self::access_since).
    pub fn access_mark(&self) -> usize {
        self.access_log().len()
    }

    /// Requests logged after `mark`. The registry writes a line just after it sent the
    /// response, so read this once the client is done (or use
    /// [`access_since_settled`](Self::access_since_settled)).
    pub fn access_since(&self, mark: usize) -> Vec<AccessEntry> {
        self.access_log().into_iter().skip(mark).collect()
    }

    /// [`access_since`](Self::access_since), re-read until two reads 50 ms apart agree.
    pub fn access_since_settled(&self, mark: usize) -> Vec<AccessEntry> {
        let mut last = self.access_since(mark);
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.access_since(mark);
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    /// Pushes tag `tag` of the OCI layout at `layout` as `NAME` (`repo:tag`) with skopeo;
    /// returns the pushed manifest digest. Blobs are copied as they are (no recompression).
    pub fn push_layout(&self, layout: &Path, tag: &str, name: &str) -> Result<String> {
        let digest_file = self.dir.join(format!("digest-{}", unique_token(8)));
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some(c) = self.credentials() {
            cmd.arg("--dest-creds").arg(c);
        }
        cmd.arg("--digestfile").arg(&digest_file);
        cmd.arg(format!("oci:{}:{tag}", layout.display()));
        cmd.arg(format!("docker://{}", self.reference(name)));
        run_cmd(&mut cmd, Duration::from_secs(600))?.check()?;
        let d = std::fs::read_to_string(&digest_file)
            .ctx(|| format!("read {}", digest_file.display()))?;
        let _ = std::fs::remove_file(&digest_file);
        Ok(d.trim().to_string())
    }

    /// GETs a manifest (OCI and Docker media types accepted).
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<crate::http::Response> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let mut h: Vec<(&str, String)> = self.auth_headers();
        h.push((
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json"
                .into(),
        ));
        let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = crate::http::get(&url, &hr)?;
        if r.status != 200 {
            return Err(Error::Http {
                url,
                reason: format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            });
        }
        Ok(r)
    }

    /// True when `repo:tag` exists.
    pub fn has_tag(&self, repo: &str, tag: &str) -> bool {
        self.manifest(repo, tag).is_ok()
    }

    /// URL of a blob.
    pub fn blob_url(&self, repo: &str, digest: &str) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.url())
    }
}
