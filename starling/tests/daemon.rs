//! `starling daemon` as a process: socket permissions, stale and live sockets, clean
//! shutdown on SIGTERM/SIGINT, configuration errors. Needs root (the daemon probes
//! overlayfs); skipped otherwise unless STARLING_REQUIRE_INTEGRATION=1.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_starling");

fn can_run() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
        "starling daemon tests need root (STARLING_REQUIRE_INTEGRATION=1)"
    );
    eprintln!("skipped: starling daemon needs root");
    false
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stl-core-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A daemon we started: killed on drop if the test fails before stopping it.
struct Daemon(Option<Child>);

impl Daemon {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(args: &[&str]) -> Daemon {
    Daemon(Some(
        Command::new(BIN)
            .arg("daemon")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// Waits (bounded) until `sock` is a socket or the daemon exited.
fn wait_socket(d: &mut Daemon, sock: &Path) {
    let child = d.child();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if fs::symlink_metadata(sock).is_ok_and(|m| m.file_type().is_socket()) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("daemon exited early with {status}");
        }
        sleep(Duration::from_millis(20));
    }
    panic!("daemon did not create {}", sock.display());
}

fn stop(mut d: Daemon, sig: Signal) -> Output {
    let child = d.0.take().expect("running");
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    child.wait_with_output().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn socket_is_root_only_and_removed_on_sigterm() {
    if !can_run() {
        return;
    }
    let t = tmpdir();
    let sock: PathBuf = t.path().join("run/starling/s.sock");
    let root = t.path().join("state");
    let mut d = start(&[
        "--root",
        root.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
    ]);
    wait_socket(&mut d, &sock);
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(
        mode(sock.parent().unwrap()),
        0o700,
        "socket directory created root-only"
    );
    assert_eq!(mode(&root), 0o700);
    assert!(root.join("metadata.db").is_file());
    let out = stop(d, Signal::SIGTERM);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists(), "socket removed on shutdown");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn stale_socket_is_replaced_and_live_one_refused() {
    if !can_run() {
        return;
    }
    let t = tmpdir();
    let sock = t.path().join("s.sock");
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let root1 = t.path().join("r1");
    let mut d = start(&[
        "--root",
        root1.to_str().unwrap(),
        "--address",
        sock.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(d.child().try_wait().unwrap().is_none(), "daemon exited");
        assert!(Instant::now() < deadline, "daemon never listened");
        sleep(Duration::from_millis(20));
    }
    // A second daemon on the same socket (other root) must not steal it.
    let root2 = t.path().join("r2");
    let second = Command::new(BIN)
        .args([
            "daemon",
            "--root",
            root2.to_str().unwrap(),
            "--address",
            sock.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "first daemon still serves"
    );
    // And a second daemon on the same root is refused by the store lock.
    let third = Command::new(BIN)
        .args([
            "daemon",
            "--root",
            root1.to_str().unwrap(),
            "--address",
            t.path().join("o.sock").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!third.status.success());
    let out = stop(d, Signal::SIGINT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists());
}

#[test]
fn configuration_errors_are_reported() {
    // No root needed: these fail before anything is probed or bound.
    let out = Command::new(BIN)
        .args(["daemon", "--config", "/nonexistent/starling/config.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/starling/config.toml"), "{err}");

    let t = tmpdir();
    let cfg = t.path().join("c.toml");
    fs::write(&cfg, "root = \"relative/dir\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root"), "{err}");
}

#[test]
fn settings_come_from_the_file_and_flags_override() {
    if !can_run() {
        return;
    }
    let t = tmpdir();
    let cfg = t.path().join("c.toml");
    let root = t.path().join("file-root");
    let sock = t.path().join("file.sock");
    fs::write(
        &cfg,
        format!(
            "root = {:?}\naddress = {:?}\n",
            root.display().to_string(),
            sock.display().to_string()
        ),
    )
    .unwrap();
    let mut d = start(&["--config", cfg.to_str().unwrap()]);
    wait_socket(&mut d, &sock);
    assert!(root.join("metadata.db").is_file());
    assert!(stop(d, Signal::SIGTERM).status.success());

    let flag_sock = t.path().join("flag.sock");
    let mut d = start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--address",
        flag_sock.to_str().unwrap(),
    ]);
    wait_socket(&mut d, &flag_sock);
    assert!(!sock.exists());
    assert!(stop(d, Signal::SIGTERM).status.success());
}
