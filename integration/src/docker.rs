//! A private Docker Engine for one test: `dockerd` 28 from the engine cache
//! ([`crate::engines::docker_prefix`]) on the test's own containerd (its `--containerd`
//! socket), with its own data-root, exec-root, pidfile, API socket and `daemon.json`
//! (rendered from `contrib/docker/daemon.json`: the containerd-snapshotter feature and
//! starling as `storage-driver`), no bridge, no iptables, no IP forwarding. The docker CLI
//! and its buildx plugin run from the cache with a private `DOCKER_CONFIG` (cli-plugins
//! linked there). Nothing under `/var/lib/docker`, `/etc/docker` or `/run/docker.sock` is
//! used; dockerd itself insists on creating the plugin-discovery directory
//! `/run/docker/plugins`, which teardown removes again when it made it and no other dockerd
//! runs. Stopped by PID on drop (containers removed first).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::containerd::Containerd;
use crate::contrib::{docker_daemon_json, docker_storage_driver, DockerSettings};
use crate::engines::docker_prefix;
use crate::error::{Error, IoContext, Result};
use crate::process::{run_cmd, CmdOutput, Daemon, ProcessSpec};
use crate::workdir::Workdir;

/// containerd namespace dockerd keeps its images, containers and build results in.
pub const NAMESPACE: &str = "moby";

/// The plugin-discovery directory dockerd creates whatever its flags say.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Options of a dockerd instance.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Snapshotter to use instead of the documented `storage-driver` (which is `stargz`:
    /// Docker's BuildKit mounts a build's base image lazily only under that name).
    pub storage_driver: Option<String>,
    /// Registries dockerd and its builder talk plain HTTP to.
    pub insecure_registries: Vec<String>,
    /// dockerd's debug log.
    pub debug: bool,
    /// Timeout of each docker command.
    pub command_timeout: Duration,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            storage_driver: None,
            insecure_registries: Vec::new(),
            debug: false,
            command_timeout: Duration::from_secs(300),
        }
    }
}

/// A running private dockerd; torn down on drop.
#[derive(Debug)]
pub struct Docker {
    daemon: Daemon,
    dir: PathBuf,
    host: PathBuf,
    config_dir: PathBuf,
    storage_driver: String,
    timeout: Duration,
    made_plugin_dir: bool,
}

fn bin(rel: &str) -> PathBuf {
    docker_prefix().join(rel)
}

impl Docker {
    /// Starts dockerd with files under `<wd>/docker` on `containerd` and waits until its
    /// API answers.
    pub fn start(wd: &Workdir, containerd: &Containerd, opts: DockerOptions) -> Result<Docker> {
        Self::start_in(&wd.join("docker"), containerd.address(), opts)
    }

    /// Starts dockerd with its files under `dir`, on the containerd at `containerd_socket`.
    pub fn start_in(dir: &Path, containerd_socket: &Path, opts: DockerOptions) -> Result<Docker> {
        let config_dir = dir.join("cli");
        for d in [
            dir.join("data"),
            dir.join("exec"),
            config_dir.join("cli-plugins"),
        ] {
            std::fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        }
        let plugin = config_dir.join("cli-plugins/docker-buildx");
        if !plugin.exists() {
            std::os::unix::fs::symlink(
                bin("usr/libexec/docker/cli-plugins/docker-buildx"),
                &plugin,
            )
            .ctx(|| format!("link {}", plugin.display()))?;
        }
        let storage_driver = match &opts.storage_driver {
            Some(d) => d.clone(),
            None => docker_storage_driver()?,
        };
        let daemon_json = dir.join("daemon.json");
        let text = docker_daemon_json(&DockerSettings {
            storage_driver: Some(storage_driver.clone()),
            insecure_registries: opts.insecure_registries.clone(),
            debug: opts.debug,
        })?;
        std::fs::write(&daemon_json, text).ctx(|| format!("write {}", daemon_json.display()))?;
        let host = dir.join("d.sock");
        if host.as_os_str().len() > 100 {
            return Err(Error::invalid(
                "dockerd socket path",
                format!("{} is too long for a unix socket", host.display()),
            ));
        }
        let made_plugin_dir = !Path::new(PLUGIN_DIR).exists();
        let p = |x: &str| dir.join(x).into_os_string();
        let mut args: Vec<std::ffi::OsString> = vec!["--config-file".into(), daemon_json.into()];
        args.extend([
            "--containerd".into(),
            containerd_socket.as_os_str().to_owned(),
            "--data-root".into(),
            p("data"),
            "--exec-root".into(),
            p("exec"),
            "--pidfile".into(),
            p("docker.pid"),
            "--host".into(),
            format!("unix://{}", host.display()).into(),
            // no network plumbing on the host: containers and builds run with
            // --network none
            "--bridge".into(),
            "none".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-forward=false".into(),
            "--ip-masq=false".into(),
        ]);
        // dockerd looks up docker-init and docker-proxy in $PATH
        let path = std::env::join_paths([bin("usr/sbin"), bin("usr/bin")].into_iter().chain(
            std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ),
        ))
        .map_err(|e| Error::invalid("PATH", e.to_string()))?;
        let spec = ProcessSpec::new("dockerd", bin("usr/sbin/dockerd"), dir.join("dockerd.log"))
            .args(args)
            .env("PATH", path)
            .stop_timeout(Duration::from_secs(20));
        let daemon = Daemon::start(spec)?;
        let mut d = Docker {
            daemon,
            dir: dir.to_path_buf(),
            host,
            config_dir,
            storage_driver,
            timeout: opts.command_timeout,
            made_plugin_dir,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.host.clone();
        self.daemon
            .wait_ready("dockerd socket", Duration::from_secs(60), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            })?;
        let mut probe = self.command();
        probe.args(["version", "--format", "{{.Server.Version}}"]);
        self.daemon.wait_ready(
            "dockerd to answer `docker version`",
            Duration::from_secs(60),
            || {
                run_cmd(&mut probe, Duration::from_secs(10))
                    .map(|o| o.success())
                    .unwrap_or(false)
            },
        )
    }

    /// A `docker` command for this daemon: the cache's CLI with `--config` (cli-plugins:
    /// buildx) and `--host`, `DOCKER_CONFIG` and `DOCKER_HOST` set for the plugin.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("usr/bin/docker"));
        let host = format!("unix://{}", self.host.display());
        c.env("DOCKER_CONFIG", &self.config_dir)
            .env("DOCKER_HOST", &host)
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
            .arg("--config")
            .arg(&self.config_dir)
            .arg("--host")
            .arg(&host);
        c
    }

    /// Runs `docker ARGS...`; returns its output whatever the exit status.
    pub fn docker<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<CmdOutput> {
        run_cmd(self.command().args(args), self.timeout)
    }

    /// Runs `docker ARGS...`; error unless it succeeds; returns stdout.
    pub fn docker_ok<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<String> {
        Ok(self.docker(args)?.check()?.stdout)
    }

    /// `docker pull REF`.
    pub fn pull(&self, reference: &str) -> Result<()> {
        self.docker_ok(["pull", "--quiet", reference]).map(drop)
    }

    /// `docker run --rm --network none IMAGE CMD...`; returns stdout.
    pub fn run(&self, image: &str, cmd: &[&str]) -> Result<String> {
        let mut a = vec!["run", "--rm", "--network", "none", image];
        a.extend_from_slice(cmd);
        self.docker_ok(a)
    }

    /// `docker buildx build` of `context` (its `Dockerfile`) pushed to the registry as
    /// `reference` and not stored locally (`--output type=image,push=true,store=false`):
    /// storing into Docker's image store makes BuildKit fetch every base layer blob into
    /// containerd's content store, pushing keeps an eStargz base lazy (its blob is
    /// cross-mounted in the registry). New layers are gzip (Docker 28 cannot write
    /// eStargz itself). RUN steps get no network.
    pub fn build_push(&self, context: &Path, reference: &str) -> Result<CmdOutput> {
        let output = format!("type=image,name={reference},push=true,store=false");
        self.docker([
            OsStr::new("buildx"),
            "build".as_ref(),
            "--progress".as_ref(),
            "plain".as_ref(),
            "--network".as_ref(),
            "none".as_ref(),
            "--output".as_ref(),
            output.as_ref(),
            context.as_os_str(),
        ])
    }

    /// The snapshotter dockerd runs with (`storage-driver`).
    pub fn storage_driver(&self) -> &str {
        &self.storage_driver
    }

    /// Its directory (daemon.json, data-root, exec-root, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's log.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The process handle.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Removes every container, stops dockerd by PID, removes `/run/docker/plugins` if it
    /// made it (and no other dockerd runs).
    pub fn teardown(&mut self) -> Result<()> {
        if self.daemon.is_running() {
            if let Ok(ids) = self.docker_ok(["ps", "-aq"]) {
                let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
                if !ids.is_empty() {
                    let mut a = vec!["rm", "-f"];
                    a.extend(ids);
                    let _ = self.docker(a);
                }
            }
        }
        self.daemon.stop()?;
        if self.made_plugin_dir && crate::process::pids_with_cmdline("dockerd").is_empty() {
            let _ = std::fs::remove_dir(PLUGIN_DIR);
            let _ = std::fs::remove_dir("/run/docker");
        }
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: dockerd teardown: {e}");
        }
    }
}
