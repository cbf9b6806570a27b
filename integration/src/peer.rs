//! The reference peer: `stargz-mini` (containerd/stargz-snapshotter's library wired as a
//! proxy snapshotter), built offline by `/work/shared/peers/stargz-mini/build.sh` (or
//! `$STARGZ_MINI_DIR/build.sh`), cached under the test cache, and launched like starling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::process::{run_cmd, Daemon, ProcessSpec};
use crate::workdir::Workdir;

/// Directory holding the peer's sources and build.sh.
pub fn peer_dir() -> PathBuf {
    std::env::var_os("STARGZ_MINI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/peers/stargz-mini"))
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x >= y)
}

fn build() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STARGZ_MINI_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STARGZ_MINI_BIN={} does not exist", p.display()))
        };
    }
    let dir = peer_dir();
    let script = dir.join("build.sh");
    if !script.is_file() {
        return Err(format!(
            "reference peer not available: {} missing (set STARGZ_MINI_DIR or STARGZ_MINI_BIN)",
            script.display()
        ));
    }
    let out = crate::images::cache_root()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join("peer/stargz-mini");
    if newer(&out, &dir.join("main.go")) && newer(&out, &script) {
        return Ok(out);
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    eprintln!(
        "harness: building the reference peer with {}",
        script.display()
    );
    let o = run_cmd(
        Command::new("bash").arg(&script).arg(&out),
        Duration::from_secs(900),
    )
    .map_err(|e| e.to_string())?;
    if !o.success() || !out.is_file() {
        return Err(format!(
            "peer build failed: {}\n{}",
            o.stdout.trim(),
            o.stderr.trim()
        ));
    }
    Ok(out)
}

/// The peer binary, building it (once per process) if needed; `Err(reason)` when it cannot
/// be had here (tests skip with the reason, benchmarks note it).
pub fn peer_binary() -> std::result::Result<PathBuf, String> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

/// Peer flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerOptions {
    /// `--no-prefetch`.
    pub no_prefetch: bool,
    /// `--no-background-fetch`.
    pub no_background_fetch: bool,
    /// `--debug`.
    pub debug: bool,
}

/// A running peer snapshotter; stopped on drop and its FUSE mounts detached.
#[derive(Debug)]
pub struct Peer {
    daemon: Daemon,
    root: PathBuf,
    address: PathBuf,
}

impl Peer {
    /// Starts `bin --address <wd>/peer.sock --root <wd>/peer/root`.
    pub fn start(wd: &Workdir, bin: &Path, opts: PeerOptions) -> Result<Peer> {
        Self::start_in(&wd.join("peer"), &wd.join("peer.sock"), bin, opts, false)
    }

    /// Starts it with files under `dir` on socket `address`.
    pub fn start_in(
        dir: &Path,
        address: &Path,
        bin: &Path,
        opts: PeerOptions,
        new_session: bool,
    ) -> Result<Peer> {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).ctx(|| format!("create {}", root.display()))?;
        let mut spec = ProcessSpec::new("stargz-mini", bin, dir.join("peer.log"))
            .arg("--address")
            .arg(address)
            .arg("--root")
            .arg(&root);
        if opts.no_prefetch {
            spec = spec.arg("--no-prefetch");
        }
        if opts.no_background_fetch {
            spec = spec.arg("--no-background-fetch");
        }
        if opts.debug {
            spec = spec.arg("--debug");
        }
        spec.new_session = new_session;
        let mut daemon = Daemon::start(spec)?;
        let a = address.to_path_buf();
        daemon.wait_ready("peer socket", Duration::from_secs(60), || {
            std::os::unix::net::UnixStream::connect(&a).is_ok()
        })?;
        Ok(Peer {
            daemon,
            root,
            address: address.to_path_buf(),
        })
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.address
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The process handle.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Stops it and detaches its mounts; with `fresh`, also deletes its state and cache, then
    /// starts it again (cold-cache benchmark runs).
    pub fn restart(&mut self, fresh: bool) -> Result<()> {
        self.daemon.stop()?;
        crate::mounts::unmount_under(&self.root)?;
        if fresh {
            std::fs::remove_dir_all(&self.root)
                .ctx(|| format!("remove {}", self.root.display()))?;
            std::fs::create_dir_all(&self.root)
                .ctx(|| format!("create {}", self.root.display()))?;
        }
        self.daemon.start_again()?;
        let a = self.address.clone();
        self.daemon
            .wait_ready("peer socket", Duration::from_secs(60), || {
                std::os::unix::net::UnixStream::connect(&a).is_ok()
            })
    }

    /// Leaves it running (for `stl-env`); returns its PID.
    pub fn detach(mut self) -> u32 {
        self.daemon.forget()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let was = self.daemon.pid() != 0 && self.daemon.is_running();
        let _ = self.daemon.stop();
        if was {
            let _ = crate::mounts::unmount_under(&self.root);
        }
    }
}
