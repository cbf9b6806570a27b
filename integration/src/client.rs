//! The `starling` binary's client subcommands as the tests run them: the built binary
//! ([`starling_bin`]) with containerd named by flags only, never by the environment
//! (`CONTAINERD_ADDRESS` and `CONTAINERD_NAMESPACE` are removed from it).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::containerd::Ctr;
use crate::error::{IoContext, Result};
use crate::mounts::{MountGuard, MountSpec};
use crate::process::{run_cmd, CmdOutput};
use crate::starling::starling_bin;

/// How long a client command may take where a test names no other limit.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// `starling ARGS...` without containerd's environment variables.
pub fn command<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Result<Command> {
    let mut cmd = Command::new(starling_bin()?);
    cmd.env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .args(args);
    Ok(cmd)
}

/// Runs `starling ARGS...` ([`command`]), killed after `timeout`; check `.success()`.
pub fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
    args: I,
    timeout: Duration,
) -> Result<CmdOutput> {
    run_cmd(&mut command(args)?, timeout)
}

/// Runs `starling rpull --address A --namespace N --snapshotter S --plain-http [EXTRA...]
/// REF` against `ctr`'s containerd, killed after `timeout`; check `.success()`.
pub fn rpull(
    ctr: &Ctr,
    reference: &str,
    snapshotter: &str,
    extra: &[&str],
    timeout: Duration,
) -> Result<CmdOutput> {
    let mut cmd = command(["rpull"])?;
    cmd.arg("--address")
        .arg(&ctr.address)
        .args(["--namespace", &ctr.namespace])
        .args(["--snapshotter", snapshotter, "--plain-http"])
        .args(extra)
        .arg(reference);
    run_cmd(&mut cmd, timeout)
}

/// [`rpull`] with no extra flags within [`TIMEOUT`], which must succeed
/// ([`crate::Error::Command`] otherwise); its summary (stdout).
pub fn rpull_ok(ctr: &Ctr, reference: &str, snapshotter: &str) -> Result<String> {
    Ok(rpull(ctr, reference, snapshotter, &[], TIMEOUT)?
        .check()?
        .stdout)
}

/// Runs `starling merge --address A --namespace N --snapshotter S ARGS...` against `ctr`'s
/// containerd, killed after `timeout`; check `.success()`.
pub fn merge(ctr: &Ctr, snapshotter: &str, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
    let mut cmd = command(["merge"])?;
    cmd.arg("--address")
        .arg(&ctr.address)
        .args(["--namespace", &ctr.namespace, "--snapshotter", snapshotter])
        .args(args);
    run_cmd(&mut cmd, timeout)
}

/// [`merge`] with `--target TARGET` before `args`, which must succeed; mounts what it
/// prints (`ctr snapshots mounts` form) at `target` (created) and returns the guards.
pub fn merge_and_mount(
    ctr: &Ctr,
    snapshotter: &str,
    target: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<MountGuard>> {
    let t = target.to_string_lossy();
    let mut a = vec!["--target", t.as_ref()];
    a.extend_from_slice(args);
    let out = merge(ctr, snapshotter, &a, timeout)?.check()?;
    std::fs::create_dir_all(target).ctx(|| format!("create {}", target.display()))?;
    MountSpec::parse_ctr(&out.stdout)?
        .iter()
        .map(|m| m.mount(target))
        .collect()
}
