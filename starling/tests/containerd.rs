//! starling behind a real containerd: a private docker-registry serves a two-layer busybox
//! image (built offline with umoci, pushed with skopeo); containerd (own config, root,
//! state and socket) has `starling daemon` as the proxy snapshotter `starling`;
//! `ctr images pull` + `ctr run` on it print what the layers hold (whiteouts included);
//! Usage, labels (Update) and Mounts answer through containerd; starling killed with
//! SIGKILL and restarted keeps its snapshots; `ctr images rm --sync` leaves no snapshots,
//! no snapshot directories and no mounts.
//!
//! Needs root and the Debian packages containerd, runc, docker-registry, skopeo, umoci and
//! busybox-static; skipped (with the reason) otherwise, failed instead when
//! STARLING_REQUIRE_INTEGRATION=1.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_starling");
const NS: &str = "stl-core";
const MESSAGE: &str = "hello from layer two";

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "docker-registry",
        "skopeo",
        "umoci",
        "timeout",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    None
}

/// A daemon we started; stopped by PID on drop.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn spawn(name: &'static str, dir: &Path, cmd: &mut Command) -> Daemon {
        let log = fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { name, child }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns whether it exited successfully.
    fn stop(&mut self) -> bool {
        if !self.alive() {
            return self.child.wait().map(|s| s.success()).unwrap_or(false);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything the test started, under one temp dir; torn down in reverse on drop.
struct Env {
    dir: PathBuf,
    registry: Option<Daemon>,
    starling: Option<Daemon>,
    containerd: Option<Daemon>,
    reg_port: u16,
}

impl Env {
    fn ctr(&self, args: &[&str]) -> Output {
        let sock = self.dir.join("ctd.sock");
        Command::new("timeout")
            .arg("120")
            .arg("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["--namespace", NS])
            .args(args)
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n{}\n--- starling log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("starling")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self, name: &str) -> String {
        let log = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn image(&self) -> String {
        format!("127.0.0.1:{}/stl/bb:two-layers", self.reg_port)
    }

    fn mounts_under_dir(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.display());
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.containerd.as_mut().is_some_and(Daemon::alive) {
            for task in String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "-q"]).stdout).lines() {
                let _ = self.ctr(&["tasks", "kill", "-s", "KILL", task]);
                let _ = self.ctr(&["tasks", "rm", "-f", task]);
            }
        }
        self.containerd.take();
        self.starling.take();
        self.registry.take();
        // Only mounts under our own dir, deepest first.
        let mut mounts = self.mounts_under_dir();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
        if std::env::var_os("STARLING_KEEP_TEST_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    // "HTTP/1.x 200"
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200"
}

fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100));
    }
}

/// Builds the OCI layout: layer 1 = busybox + /etc/drop-me, layer 2 = /etc/starling-msg
/// and a whiteout of /etc/drop-me. Default command prints the message.
fn build_image(dir: &Path) -> PathBuf {
    let oci = dir.join("oci");
    let image = format!("{}:t", oci.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&oci));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "test", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/drop-me"), b"layer one only\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    fs::remove_dir_all(&bundle).unwrap();
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    fs::write(rootfs.join("etc/starling-msg"), format!("{MESSAGE}\n")).unwrap();
    fs::remove_file(rootfs.join("etc/drop-me")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch,
        "--os",
        "linux",
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "/bin/cat",
        "--config.cmd",
        "/etc/starling-msg",
    ]));
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&oci));
    fs::remove_dir_all(&bundle).unwrap();
    oci
}

/// Starts `starling daemon` with state in `dir/st`, serving on `dir/st.sock`; waits until
/// it accepts connections. The log is appended to `dir/starling.log`.
fn start_starling(dir: &Path) -> Daemon {
    let st_sock = dir.join("st.sock");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("starling.log"))
        .unwrap();
    let child = Command::new(BIN)
        .args(["--log-level", "debug", "daemon", "--root"])
        .arg(dir.join("st"))
        .arg("--address")
        .arg(&st_sock)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut d = Daemon {
        name: "starling",
        child,
    };
    poll("the starling socket", Duration::from_secs(30), || {
        assert!(d.alive(), "starling exited at start");
        std::os::unix::net::UnixStream::connect(&st_sock).is_ok()
    });
    d
}

fn start_env() -> Env {
    let dir = tempfile::Builder::new()
        .prefix("stl-core-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let mut env = Env {
        dir: dir.clone(),
        registry: None,
        starling: None,
        containerd: None,
        reg_port: free_port(),
    };

    // Registry on a free loopback port.
    fs::write(
        dir.join("registry.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  \
             delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{}\n",
            dir.join("registry").display(),
            env.reg_port
        ),
    )
    .unwrap();
    env.registry = Some(Daemon::spawn(
        "registry",
        &dir,
        Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml")),
    ));
    let port = env.reg_port;
    poll("the registry", Duration::from_secs(30), || {
        http_ok(port, "/v2/")
    });

    let oci = build_image(&dir);
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", oci.display()))
        .arg(format!("docker://{}", env.image())));

    env.starling = Some(start_starling(&dir));

    // containerd with starling as a proxy plugin.
    let d = dir.display();
    fs::write(
        dir.join("containerd.toml"),
        format!(
            r#"version = 2
root = "{d}/ctd/root"
state = "{d}/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/ctd.sock"
[ttrpc]
  address = "{d}/ctd.sock.ttrpc"
[debug]
  address = "{d}/ctd-debug.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/ctd/opt"
[proxy_plugins]
  [proxy_plugins.starling]
    type = "snapshot"
    address = "{d}/st.sock"
"#
        ),
    )
    .unwrap();
    env.containerd = Some(Daemon::spawn(
        "containerd",
        &dir,
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("containerd.toml")),
    ));
    poll("containerd", Duration::from_secs(60), || {
        env.ctr(&["version"]).status.success()
    });
    // The proxy plugin's connection sits in gRPC reconnect backoff at first: poll with a
    // cheap call that reaches starling.
    poll(
        "starling through containerd",
        Duration::from_secs(60),
        || {
            env.ctr(&["snapshots", "--snapshotter", "starling", "ls"])
                .status
                .success()
        },
    );
    env
}

fn snapshot_dirs(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(env.dir.join("st/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn pull_run_and_remove_through_containerd() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() != Ok("1"),
            "containerd test cannot run: {why} (STARLING_REQUIRE_INTEGRATION=1)"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let mut env = start_env();
    let image = env.image();
    env.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "starling",
        &image,
    ]);

    let snaps = env.ctr_ok(&["snapshots", "--snapshotter", "starling", "ls"]);
    let committed = snaps.lines().filter(|l| l.contains("Committed")).count();
    assert_eq!(committed, 2, "one committed snapshot per layer:\n{snaps}");
    assert_eq!(snapshot_dirs(&env), ["1", "2"]);

    // Usage, Update and Mounts through containerd's metadata layer.
    let top = snaps
        .lines()
        .filter(|l| l.contains("Committed"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() == 3)
        .map(|cols| cols[0].to_string())
        .expect("a committed snapshot with a parent");
    let usage = env.ctr_ok(&["snapshots", "--snapshotter", "starling", "usage", "-b"]);
    let busybox_layer = usage
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        busybox_layer > 500_000,
        "the busybox layer's usage is counted:\n{usage}"
    );
    env.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "starling",
        "label",
        &top,
        "starling.test=yes",
    ]);
    let info = env.ctr_ok(&["snapshots", "--snapshotter", "starling", "info", &top]);
    assert!(info.contains("\"starling.test\": \"yes\""), "{info}");
    env.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "starling",
        "prepare",
        "stl-probe",
        &top,
    ]);
    let m = env.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "starling",
        "mounts",
        "/mnt/x",
        "stl-probe",
    ]);
    assert!(m.starts_with("mount -t overlay overlay /mnt/x -o "), "{m}");
    assert!(m.contains("lowerdir=") && m.contains("upperdir="), "{m}");
    env.ctr_ok(&["snapshots", "--snapshotter", "starling", "rm", "stl-probe"]);

    // starling killed without warning and restarted: snapshots are intact.
    let st = env.starling.as_mut().unwrap();
    st.child.kill().unwrap();
    st.child.wait().unwrap();
    env.starling = Some(start_starling(&env.dir));
    poll(
        "restarted starling through containerd",
        Duration::from_secs(60),
        || {
            env.ctr(&["snapshots", "--snapshotter", "starling", "ls"])
                .status
                .success()
        },
    );
    let again = env.ctr_ok(&["snapshots", "--snapshotter", "starling", "ls"]);
    assert_eq!(
        again.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "{again}"
    );

    let fifo = env.dir.join("fifo");
    let runc = env.dir.join("runc");
    let (fifo, runc) = (fifo.to_str().unwrap(), runc.to_str().unwrap());
    let base = [
        "run",
        "--rm",
        "--snapshotter",
        "starling",
        "--fifo-dir",
        fifo,
        "--runc-root",
        runc,
    ];
    let mut args = base.to_vec();
    args.extend([image.as_str(), "stl-core-1"]);
    assert_eq!(env.ctr_ok(&args), format!("{MESSAGE}\n"));

    let mut args = base.to_vec();
    args.extend([
        image.as_str(),
        "stl-core-2",
        "sh",
        "-c",
        "test ! -e /etc/drop-me && echo whiteout-ok; echo written > /tmp/w && cat /tmp/w",
    ]);
    assert_eq!(env.ctr_ok(&args), "whiteout-ok\nwritten\n");

    env.ctr_ok(&["images", "rm", "--sync", &image]);
    let snaps = env.ctr_ok(&["snapshots", "--snapshotter", "starling", "ls"]);
    assert_eq!(
        snaps.lines().count(),
        1,
        "only the header is left:\n{snaps}"
    );
    assert!(snapshot_dirs(&env).is_empty(), "{:?}", snapshot_dirs(&env));
    assert!(
        env.mounts_under_dir().is_empty(),
        "{:?}",
        env.mounts_under_dir()
    );

    // containerd and starling stop cleanly; starling removes its socket.
    env.containerd.take();
    let mut st = env.starling.take().unwrap();
    assert!(
        st.stop(),
        "starling exits 0 on SIGTERM:\n{}",
        env.log_tail("starling")
    );
    assert!(!env.dir.join("st.sock").exists());
}
