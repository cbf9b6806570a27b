//! Test fixtures (feature `testutil`, for this crate's and other crates' tests): a real
//! `docker-registry` process per test (own config, free loopback port, storage in a temp
//! dir), a fault-injecting [`proxy`], and helpers to build clients and push test data. Tests
//! skip with a printed reason when `docker-registry` is missing ([`require_registry!`]), and
//! fail instead when `STARLING_REQUIRE_INTEGRATION=1`.

#![allow(missing_docs)]

pub mod proxy;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Metrics, PushOptions, RegistryClient, Repository};
use bytes::Bytes;
use oci_spec::image::Digest;
use rand::{RngCore, SeedableRng};
use sha2::Digest as _;

/// Returns early from a test (printing why) if docker-registry is unavailable.
#[macro_export]
macro_rules! require_registry {
    () => {
        if !$crate::testutil::registry_available() {
            return;
        }
    };
}

pub fn registry_available() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("docker-registry").is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    let msg =
        "docker-registry not found on PATH (Debian package docker-registry; run scripts/setup)";
    if std::env::var("STARLING_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{msg} and STARLING_REQUIRE_INTEGRATION=1");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// The `service` a token-authenticated test registry expects in its tokens.
pub const TOKEN_SERVICE: &str = "starling-test-registry";
/// The `issuer` a token-authenticated test registry expects in its tokens.
pub const TOKEN_ISSUER: &str = "starling-test-issuer";

/// How the registry authenticates, or that it is a pull-through cache.
pub enum RegistryAuth {
    None,
    Htpasswd {
        user: String,
        password: String,
    },
    Token {
        realm: String,
        bundle: PathBuf,
    },
    /// No authentication; a pull-through cache of the registry at this URL
    /// (`proxy.remoteurl`; it must be up when this one starts).
    PullThrough {
        remote_url: String,
    },
}

/// A docker-registry process.
pub struct RegistryProc {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    config: PathBuf,
    paused: bool,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RegistryProc {
    pub fn start(auth: RegistryAuth) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stl-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4).unwrap();
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: starling-test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token { realm, bundle } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                TOKEN_SERVICE,
                TOKEN_ISSUER,
                bundle.display()
            ),
            RegistryAuth::PullThrough { remote_url } => {
                format!("proxy:\n  remoteurl: {remote_url}\n")
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  redirect:\n    disable: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: starling-test-secret\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut r = RegistryProc {
            dir,
            port,
            child: None,
            config,
            paused: false,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(self.addr()) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not come up on {}: {}",
            self.host(),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests the registry answered with `status` (from its access log).
    pub fn count_status(&self, status: u16) -> usize {
        let needle = format!("\" {status} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: sending a signal to our own child process by its pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Freezes the process (connections are accepted by the kernel but never answered).
    /// Returns once every thread of it is stopped (a stop signal takes effect
    /// asynchronously: under load a thread could still answer a request sent right after
    /// the signal), or after 5 s.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.paused {
            self.resume();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// True if every thread of process `pid` is stopped (state `T` in its `stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                // `pid (comm) S ...`: the state follows the last `)`.
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace()
                    .next()
                    .map(|st| st == "T" || st == "t")
            })
            .unwrap_or(true)
    })
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Captures all tracing output of this test binary (TRACE level) into a buffer.
pub fn capture_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static BUF: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = LogWriter(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

#[derive(Clone)]
struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fetch settings for tests: short timeouts and backoffs.
pub fn fetch_config() -> config::FetchConfig {
    config::FetchConfig {
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(30),
        max_retries: 3,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

/// Registry settings with no host config and a docker config path that does not exist.
pub fn registry_config(dir: &Path) -> config::RegistryConfig {
    config::RegistryConfig {
        docker_config: dir.join("no-docker-config.json"),
        ..Default::default()
    }
}

pub fn client(
    fetch: &config::FetchConfig,
    registry: &config::RegistryConfig,
) -> (RegistryClient, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let c = RegistryClient::with_settings(fetch, registry, metrics.clone()).unwrap();
    (c, metrics)
}

/// Deterministic incompressible test data.
pub fn data(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

pub fn digest_of(data: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
        .parse()
        .unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Pushes `data` to `repo` with `client`; returns its digest.
pub async fn push(client: &RegistryClient, repo: &Repository, data: &Bytes) -> Digest {
    let d = digest_of(data);
    client
        .push_blob(repo, &d, data, &PushOptions::default())
        .await
        .unwrap_or_else(|e| panic!("push to {repo}: {e}"));
    d
}

/// Scattered ranges over a blob of `size` bytes: `n` ranges of 1..=max_len bytes.
pub fn scattered(seed: u64, size: u64, n: usize, max_len: u64) -> Vec<std::ops::Range<u64>> {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..=max_len);
            let start = rng.random_range(0..size - len);
            start..start + len
        })
        .collect()
}
