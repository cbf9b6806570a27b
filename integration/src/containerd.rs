//! A private containerd for one test — bookworm's 1.6 or the extracted 1.7 / 2.1
//! ([`ContainerdVersion`]): own config, root, state, gRPC/ttrpc/debug sockets and runc root
//! under the test's workdir, CRI disabled unless asked for, `[proxy_plugins]` given by the
//! test. The config is rendered from `contrib/containerd/config.toml` (1.x, version 2) or
//! `config-v3.toml` (2.x, version 3) with the paths replaced, so the documented snippets
//! are what the tests run. [`Ctr`] runs the version's `ctr` (and `ctr-remote`) against it
//! (pull, rpull, run, images rm --sync, snapshot views); teardown kills tasks, removes
//! containers, stops containerd by PID and unmounts leftovers. Shim sockets of 1.6 always
//! go to `/run/containerd/s` (hard-coded there).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

pub use crate::engines::ContainerdVersion;
use crate::error::{Error, IoContext, Result};
use crate::mounts::{MountGuard, MountSpec};
use crate::process::{run_cmd, CmdOutput, Daemon, ProcessSpec};
use crate::workdir::{unique_token, Workdir};

/// Options of a containerd instance.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Which containerd (default: bookworm's 1.6).
    pub version: ContainerdVersion,
    /// Keep the CRI plugin(s) enabled (default: disabled; `ctr`-driven tests need none).
    pub cri: bool,
    /// `(name, socket)` of each snapshotter proxy plugin. A name that the contrib config
    /// defines (`starling`, `stargz`) keeps its settings there (2.x: `exports`), others get
    /// a plain entry (2.x: with `enable_remote_snapshot_annotations`); each is also an
    /// unpack target of 2.x's transfer service.
    pub proxy_plugins: Vec<(String, PathBuf)>,
    /// containerd namespace the `ctr` helpers use.
    pub namespace: String,
    /// containerd log level.
    pub log_level: String,
    /// Extra TOML merged into the config (tables merged key by key, values replaced).
    pub extra_toml: String,
    /// Timeout of each `ctr` command.
    pub command_timeout: Duration,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            version: ContainerdVersion::default(),
            cri: false,
            proxy_plugins: Vec::new(),
            namespace: "default".into(),
            log_level: "info".into(),
            extra_toml: String::new(),
            command_timeout: Duration::from_secs(300),
        }
    }
}

impl ContainerdOptions {
    /// Adds a proxy snapshotter plugin `name` served on `socket`.
    pub fn proxy(mut self, name: &str, socket: impl Into<PathBuf>) -> Self {
        self.proxy_plugins.push((name.into(), socket.into()));
        self
    }

    /// Runs containerd `version`.
    pub fn version(mut self, version: ContainerdVersion) -> Self {
        self.version = version;
        self
    }
}

/// Runs `ctr` and `ctr-remote` against one containerd (cheap to clone).
#[derive(Debug, Clone)]
pub struct Ctr {
    /// The `ctr` program (of the containerd version it talks to).
    pub program: PathBuf,
    /// gRPC socket.
    pub address: PathBuf,
    /// Namespace.
    pub namespace: String,
    /// Per-command timeout.
    pub timeout: Duration,
    /// `--runc-root` for `ctr run`.
    pub runc_root: PathBuf,
    /// `--fifo-dir` for `ctr run`.
    pub fifo_dir: PathBuf,
}

/// Where a foreground [`Ctr::run_with`] container writes its stdout and stderr.
pub const RUN_IO_DIR: &str = "/dev/.stl-io";

impl Ctr {
    fn command(&self, program: &OsStr) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERD_ADDRESS", &self.address)
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }

    /// Runs `ctr ARGS...`; returns its output whatever the exit status.
    pub fn ctr<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<CmdOutput> {
        run_cmd(
            self.command(self.program.as_os_str()).args(args),
            self.timeout,
        )
    }

    /// Runs `ctr ARGS...`; error unless it succeeds; returns stdout.
    pub fn ctr_ok<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&self, args: I) -> Result<String> {
        Ok(self.ctr(args)?.check()?.stdout)
    }

    /// Runs `ctr-remote ARGS...`.
    pub fn ctr_remote<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> Result<CmdOutput> {
        run_cmd(self.command("ctr-remote".as_ref()).args(args), self.timeout)
    }

    /// Runs `ctr-remote ARGS...`; error unless it succeeds; returns stdout.
    pub fn ctr_remote_ok<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &self,
        args: I,
    ) -> Result<String> {
        Ok(self.ctr_remote(args)?.check()?.stdout)
    }

    /// Polls `ctr snapshots --snapshotter NAME ls` until it succeeds: a proxy plugin is
    /// listed as ok even with nothing listening, and containerd's first RPCs after the
    /// socket appears fail for a few seconds (reconnect backoff).
    pub fn wait_snapshotter(&self, name: &str, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let mut ctr = self.clone();
        ctr.timeout = Duration::from_secs(10);
        crate::poll::poll_until(
            &format!("snapshotter {name} to answer through containerd"),
            timeout,
            || match ctr.ctr(["snapshots", "--snapshotter", name, "ls"]) {
                Ok(o) if o.success() => Ok(Some(())),
                Ok(o) => {
                    last = o.stderr;
                    Ok(None)
                }
                Err(e) => {
                    last = e.to_string();
                    Ok(None)
                }
            },
        )
        .map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                detail: format!("\nlast error: {}", last.trim()),
            },
            other => other,
        })
    }

    /// `ctr images pull --plain-http --snapshotter S REF`: with 1.x a client-side full
    /// pull + unpack (no layer labels: nothing can be lazy); with 2.x a pull through the
    /// transfer service, which passes the layer annotations to snapshotters that export
    /// `enable_remote_snapshot_annotations` (lazy with starling).
    pub fn pull(&self, reference: &str, snapshotter: &str) -> Result<()> {
        self.ctr_ok([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            reference,
        ])
        .map(drop)
    }

    /// `ctr images pull` with extra arguments (e.g. `--user u:p`) before the reference.
    pub fn pull_with(&self, reference: &str, snapshotter: &str, extra: &[&str]) -> Result<()> {
        let mut a = vec![
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
        ];
        a.extend_from_slice(extra);
        a.push(reference);
        self.ctr_ok(a).map(drop)
    }

    /// `ctr-remote image rpull --plain-http --snapshotter S REF` (lazy pull with stargz labels).
    pub fn rpull(&self, reference: &str, snapshotter: &str) -> Result<()> {
        self.ctr_remote_ok([
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            reference,
        ])
        .map(drop)
    }

    /// `ctr images push --plain-http REF` (an image present in containerd's content store).
    pub fn push(&self, reference: &str) -> Result<()> {
        self.ctr_ok(["images", "push", "--plain-http", reference])
            .map(drop)
    }

    /// Reference conversion with `ctr-remote image convert --estargz --oci [EXTRA...] SRC DST`
    /// (SRC must be pulled); the result is local until [`push`](Self::push)ed.
    pub fn convert_estargz(&self, src: &str, dst: &str, extra: &[&str]) -> Result<()> {
        let mut a = vec!["image", "convert", "--estargz", "--oci"];
        a.extend_from_slice(extra);
        a.extend([src, dst]);
        self.ctr_remote_ok(a).map(drop)
    }

    /// Reference optimization with `ctr-remote image optimize --oci [EXTRA...] SRC DST`
    /// (runs the image's command once and prioritizes the files it reads).
    pub fn optimize_estargz(&self, src: &str, dst: &str, extra: &[&str]) -> Result<()> {
        let mut a = vec!["image", "optimize", "--oci"];
        a.extend_from_slice(extra);
        a.extend([src, dst]);
        self.ctr_remote_ok(a).map(drop)
    }

    /// `ctr run --rm --snapshotter S --fifo-dir D --runc-root D IMAGE <unique id> CMD...`.
    /// Returns the output (check `.success()` or call `.check()`).
    pub fn run(&self, image: &str, snapshotter: &str, cmd: &[&str]) -> Result<CmdOutput> {
        self.run_with(image, snapshotter, &[], cmd)
    }

    /// Starts a container in the background (`ctr run -d`); returns its id. Teardown kills it.
    pub fn run_detached(&self, image: &str, snapshotter: &str, cmd: &[&str]) -> Result<String> {
        let out = self.run_with(image, snapshotter, &["-d"], cmd)?.check()?;
        let id = out
            .command
            .split_whitespace()
            .rev()
            .nth(cmd.len())
            .unwrap_or_default()
            .to_string();
        Ok(id)
    }

    /// [`run`](Self::run) with extra `ctr run` flags (e.g. `--env`, `--mount`, `-d`: no `--rm`
    /// then).
    ///
    /// A foreground run does not take the container's output from `ctr`'s stdio: ctr 1.6's
    /// `task.Delete` closes its end of the stdio fifos as soon as the exit status arrives,
    /// before it has drained them, so the tail of a short-lived container's output is lost
    /// now and then under load (containerd issue #5741). Instead the command runs as
    /// `/bin/sh -c 'exec "$@" >OUT 2>ERR'` with OUT and ERR in a host directory bind-mounted
    /// at [`RUN_IO_DIR`] (inside the container's `/dev` tmpfs, so the rootfs is untouched),
    /// and the files are read once `ctr` has returned: the image needs a `/bin/sh`.
    /// `ctr`'s own output is appended after the container's.
    pub fn run_with(
        &self,
        image: &str,
        snapshotter: &str,
        flags: &[&str],
        cmd: &[&str],
    ) -> Result<CmdOutput> {
        std::fs::create_dir_all(&self.fifo_dir)
            .ctx(|| format!("create {}", self.fifo_dir.display()))?;
        let id = format!("stl-{}", unique_token(10));
        let detach = flags.iter().any(|f| *f == "-d" || *f == "--detach");
        let io_dir = self.fifo_dir.join(format!("{id}.io"));
        let mut a: Vec<&OsStr> = vec!["run".as_ref()];
        if !detach {
            a.push("--rm".as_ref());
        }
        a.extend([OsStr::new("--snapshotter"), snapshotter.as_ref()]);
        a.extend([
            OsStr::new("--fifo-dir"),
            self.fifo_dir.as_os_str(),
            OsStr::new("--runc-root"),
            self.runc_root.as_os_str(),
        ]);
        let io_mount = format!(
            "type=bind,src={},dst={RUN_IO_DIR},options=rbind:rw",
            io_dir.display()
        );
        let redirect = format!("exec \"$@\" >{RUN_IO_DIR}/out 2>{RUN_IO_DIR}/err");
        if !detach {
            std::fs::create_dir_all(&io_dir).ctx(|| format!("create {}", io_dir.display()))?;
            a.extend([OsStr::new("--mount"), io_mount.as_ref()]);
        }
        a.extend(flags.iter().map(OsStr::new));
        a.push(image.as_ref());
        a.push(id.as_ref());
        if !detach {
            a.extend(["/bin/sh", "-c", &redirect, "sh"].map(OsStr::new));
        }
        a.extend(cmd.iter().map(OsStr::new));
        let out = self.ctr(a);
        if detach {
            return out;
        }
        let read = |name: &str| std::fs::read(io_dir.join(name)).unwrap_or_default();
        let (stdout, stderr) = (read("out"), read("err"));
        let _ = std::fs::remove_dir_all(&io_dir);
        let mut out = out?;
        out.stdout = String::from_utf8_lossy(&stdout).into_owned() + &out.stdout;
        out.stderr = String::from_utf8_lossy(&stderr).into_owned() + &out.stderr;
        Ok(out)
    }

    /// Runs containerd's garbage collection now and waits for it: creates a lease and
    /// deletes it with `--sync`. containerd 1.6's GC scheduler drops a deletion that lands
    /// while a collection is running (the event predates the collection's end), so a
    /// snapshot removed right after another one may wait for the next unrelated GC; this
    /// forces one that starts after the call.
    pub fn collect_garbage(&self) -> Result<()> {
        let id = format!("stl-gc-{}", unique_token(10));
        self.ctr_ok(["leases", "create", "--id", &id])?;
        self.ctr_ok(["leases", "rm", "--sync", &id]).map(drop)
    }

    /// [`run`](Self::run) that must succeed; returns stdout.
    pub fn run_ok(&self, image: &str, snapshotter: &str, cmd: &[&str]) -> Result<String> {
        Ok(self.run(image, snapshotter, cmd)?.check()?.stdout)
    }

    /// Image names known to containerd.
    pub fn images(&self) -> Result<Vec<String>> {
        Ok(self
            .ctr_ok(["images", "ls", "-q"])?
            .lines()
            .map(String::from)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// `ctr images rm --sync REFS...` (waits for garbage collection).
    pub fn remove_images(&self, refs: &[&str]) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let mut a = vec!["images", "rm", "--sync"];
        a.extend_from_slice(refs);
        self.ctr_ok(a).map(drop)
    }

    /// Removes every image (blobs and snapshots are shared by digest across names).
    pub fn remove_all_images(&self) -> Result<()> {
        let imgs = self.images()?;
        let r: Vec<&str> = imgs.iter().map(String::as_str).collect();
        self.remove_images(&r)
    }

    /// Snapshot keys of `snapshotter`.
    pub fn snapshots(&self, snapshotter: &str) -> Result<Vec<String>> {
        let out = self.ctr_ok(["snapshots", "--snapshotter", snapshotter, "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect())
    }

    /// Reads a content blob from containerd's content store.
    pub fn content(&self, digest: &str) -> Result<Vec<u8>> {
        Ok(self.ctr_ok(["content", "get", digest])?.into_bytes())
    }

    /// The config of image `reference` (resolving an index to this platform's manifest).
    pub fn image_config(&self, reference: &str) -> Result<Value> {
        let ls = self.ctr_ok(["images", "ls"])?;
        let line = ls
            .lines()
            .skip(1)
            .find(|l| l.split_whitespace().next() == Some(reference))
            .ok_or_else(|| {
                Error::invalid("image", format!("{reference} not in `ctr images ls`"))
            })?;
        let digest = line
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .ok_or_else(|| Error::invalid("ctr images ls", line.to_string()))?;
        let parse = |b: Vec<u8>, what: &str| -> Result<Value> {
            serde_json::from_slice(&b).map_err(|e| Error::invalid(what.to_string(), e.to_string()))
        };
        let mut m = parse(self.content(digest)?, "manifest")?;
        if m["manifests"].is_array() {
            let arch = crate::oci::image::host_arch();
            let d = m["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| {
                    d["platform"]["architecture"]
                        .as_str()
                        .is_none_or(|a| a == arch)
                })
                .and_then(|d| d["digest"].as_str())
                .ok_or_else(|| Error::invalid("index", format!("no {arch} manifest")))?
                .to_string();
            m = parse(self.content(&d)?, "manifest")?;
        }
        let cd = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| Error::invalid("manifest", "no config"))?
            .to_string();
        parse(self.content(&cd)?, "config")
    }

    /// Chain ID of the top layer of image `reference` (its committed snapshot's name).
    pub fn image_chain_id(&self, reference: &str) -> Result<String> {
        let cfg = self.image_config(reference)?;
        let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        crate::oci::chain_ids(&diff_ids)
            .pop()
            .ok_or_else(|| Error::invalid("config", "no diff_ids"))
    }

    /// Mounts the unpacked root filesystem of `reference` (pulled for `snapshotter`)
    /// read-only at `target` through a view snapshot; unmounted and removed on drop.
    pub fn mount_image(
        &self,
        reference: &str,
        snapshotter: &str,
        target: &Path,
    ) -> Result<SnapshotMount> {
        let chain = self.image_chain_id(reference)?;
        let key = format!("stl-view-{}", unique_token(8));
        self.ctr_ok([
            "snapshots",
            "--snapshotter",
            snapshotter,
            "view",
            &key,
            &chain,
        ])?;
        let mut sm = SnapshotMount {
            ctr: self.clone(),
            snapshotter: snapshotter.into(),
            key: key.clone(),
            guards: Vec::new(),
        };
        std::fs::create_dir_all(target).ctx(|| format!("create {}", target.display()))?;
        let text = self.ctr_ok([
            OsStr::new("snapshots"),
            "--snapshotter".as_ref(),
            snapshotter.as_ref(),
            "mounts".as_ref(),
            target.as_os_str(),
            key.as_ref(),
        ])?;
        for spec in MountSpec::parse_ctr(&text)? {
            sm.guards.push(spec.mount(target)?);
        }
        Ok(sm)
    }

    /// Kills every task, removes every container (best effort; used by teardown).
    pub fn remove_all_containers(&self) -> Result<()> {
        let tasks = self.ctr_ok(["tasks", "ls", "-q"])?;
        for t in tasks.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(["tasks", "kill", "-s", "SIGKILL", t]);
            let _ = crate::poll::wait_for("task to stop", Duration::from_secs(5), || {
                self.ctr(["tasks", "ls"])
                    .map(|o| {
                        !o.stdout
                            .lines()
                            .any(|l| l.starts_with(t) && l.contains("RUNNING"))
                    })
                    .unwrap_or(true)
            });
            let _ = self.ctr(["tasks", "rm", "-f", t]);
        }
        let cs = self.ctr_ok(["containers", "ls", "-q"])?;
        for c in cs.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(["containers", "rm", c]);
        }
        Ok(())
    }
}

/// A view snapshot of an image mounted read-only; unmounted and removed on drop.
#[derive(Debug)]
pub struct SnapshotMount {
    ctr: Ctr,
    snapshotter: String,
    key: String,
    guards: Vec<MountGuard>,
}

impl SnapshotMount {
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.guards
            .last()
            .map(|g| g.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// The view snapshot's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for SnapshotMount {
    fn drop(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
        let _ = self.ctr.ctr([
            "snapshots",
            "--snapshotter",
            &self.snapshotter,
            "rm",
            &self.key,
        ]);
    }
}

/// A running private containerd; torn down on drop.
#[derive(Debug)]
pub struct Containerd {
    daemon: Daemon,
    dir: PathBuf,
    config: PathBuf,
    ctr: Ctr,
    opts: ContainerdOptions,
    detached: bool,
}

/// Renders containerd's TOML config from the contrib snippet of `opts.version`
/// ([`crate::contrib::containerd_config`]).
pub fn render_config(dir: &Path, socket: &Path, opts: &ContainerdOptions) -> Result<String> {
    crate::contrib::containerd_config(
        opts.version,
        &crate::contrib::ContainerdPaths {
            dir,
            socket,
            log_level: &opts.log_level,
        },
        &opts.proxy_plugins,
        opts.cri,
        &opts.extra_toml,
    )
}

impl Containerd {
    /// Starts containerd with files under `<wd>/containerd` and waits until it answers.
    pub fn start(wd: &Workdir, opts: ContainerdOptions) -> Result<Containerd> {
        Self::start_in(&wd.join("containerd"), opts, false)
    }

    /// Starts containerd with its files under `dir`; `new_session` for detached use.
    pub fn start_in(dir: &Path, opts: ContainerdOptions, new_session: bool) -> Result<Containerd> {
        for d in ["root", "state", "opt", "runc", "fifo"] {
            std::fs::create_dir_all(dir.join(d)).ctx(|| format!("create {}", dir.display()))?;
        }
        let socket = dir.join("c.sock");
        if socket.as_os_str().len() > 100 {
            return Err(Error::invalid(
                "containerd socket path",
                format!("{} is too long for a unix socket", socket.display()),
            ));
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, render_config(dir, &socket, &opts)?)
            .ctx(|| format!("write {}", config.display()))?;
        let mut spec = ProcessSpec::new(
            "containerd",
            opts.version.containerd(),
            dir.join("containerd.log"),
        )
        .args([OsStr::new("--config"), config.as_os_str()])
        .stop_timeout(Duration::from_secs(15));
        if let Some(path) = opts.version.path_env() {
            spec = spec.env("PATH", path);
        }
        spec.new_session = new_session;
        let daemon = Daemon::start(spec)?;
        let ctr = Ctr {
            program: opts.version.ctr(),
            address: socket.clone(),
            namespace: opts.namespace.clone(),
            timeout: opts.command_timeout,
            runc_root: dir.join("runc"),
            fifo_dir: dir.join("fifo"),
        };
        let mut c = Containerd {
            daemon,
            dir: dir.to_path_buf(),
            config,
            ctr,
            opts,
            detached: false,
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.ctr.address.clone();
        self.daemon
            .wait_ready("containerd socket", Duration::from_secs(60), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            })?;
        let ctr = Ctr {
            timeout: Duration::from_secs(10),
            ..self.ctr.clone()
        };
        self.daemon.wait_ready(
            "containerd to answer `ctr version`",
            Duration::from_secs(60),
            || ctr.ctr(["version"]).map(|o| o.success()).unwrap_or(false),
        )
    }

    /// The `ctr` runner for this containerd.
    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// gRPC socket (`CONTAINERD_ADDRESS`).
    pub fn address(&self) -> &Path {
        &self.ctr.address
    }

    /// Its directory (config, root, state, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Config file path.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Options it was started with.
    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// The process handle.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Restarts containerd (SIGTERM, then the same config, root and state) and waits until
    /// it answers. Shims and their containers keep running.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.restart()?;
        self.wait_ready()
    }

    /// Starts containerd again after [`daemon`](Self::daemon)`().stop()` or `.kill()` (shims
    /// and their containers keep running meanwhile) with the same config, root and state,
    /// and waits until it answers.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.start_again()?;
        self.wait_ready()
    }

    /// Kills tasks and containers, stops containerd, removes leftover runc containers and
    /// unmounts everything under its directory.
    pub fn teardown(&mut self) -> Result<()> {
        if self.daemon.is_running() {
            if let Err(e) = self.ctr.remove_all_containers() {
                eprintln!("warning: containerd teardown: {e}");
            }
        }
        self.daemon.stop()?;
        cleanup_runc(&self.ctr.runc_root);
        crate::mounts::unmount_under(&self.dir)?;
        Ok(())
    }

    /// Leaves containerd running and forgets it (for `stl-env`); returns its PID.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.daemon.forget()
    }
}

/// Deletes every runc container under `root` (containers left by a crashed containerd).
pub fn cleanup_runc(root: &Path) {
    let Ok(out) = run_cmd(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"]),
        Duration::from_secs(30),
    ) else {
        return;
    };
    for id in out.stdout.lines().filter(|l| !l.is_empty()) {
        let _ = run_cmd(
            Command::new("runc")
                .arg("--root")
                .arg(root)
                .args(["delete", "-f", id]),
            Duration::from_secs(30),
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("warning: containerd teardown: {e}");
        }
    }
}
