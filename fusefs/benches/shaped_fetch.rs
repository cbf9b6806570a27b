//! Scattered chunk reads over a shaped link (100 Mbit/s, 20 ms RTT): the chunks a real
//! workload reads (the files `python3 -c 'print(1)'` opens, cut into 4 MiB chunks) from a
//! layer-like blob, fetched with `Blob::read_ranges` / `ChunkFetcher`, against the same bytes
//! in one stream. Target: at most the stream's time + 3 RTTs, far fewer requests than chunks.
//!
//! Needs root and `ip`/`tc`: creates netns `regbench` with veth `reg-h0`/`reg-n0`
//! (10.213.77.0/24, tbf 100mbit on both ends), runs docker-registry on the host side and the
//! client inside the netns behind an in-process 10 ms one-way delay proxy. Everything is
//! removed at the end. Run: `cargo bench -p fusefs --bench shaped_fetch`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fusefs::cache::{CacheOptions, ChunkCache, ChunkKey};
use fusefs::fetch::{ChunkFetcher, ChunkRequest, RawChunks};
use fusefs::metrics::Metrics;
use registry::{Priority, PushOptions, RegistryClient, Repository};
use sha2::Digest as _;

const NS: &str = "regbench";
const VETH_HOST: &str = "reg-h0";
const VETH_NS: &str = "reg-n0";
const HOST_IP: &str = "10.213.77.1";
const NS_IP: &str = "10.213.77.2";
const RATE: &str = "100mbit";
const ONE_WAY_DELAY: Duration = Duration::from_millis(10);
const CHUNK: u64 = 4 << 20;
const LAYER_LIMIT: u64 = 160 << 20;
const ROUNDS: usize = 3;

#[derive(serde::Serialize, serde::Deserialize)]
struct Plan {
    registry: String,
    repo: String,
    digest: String,
    size: u64,
    /// (workload, chunks as (start, end, sha256 hex)).
    workloads: Vec<(String, Chunks)>,
}

/// Chunks as (start, end, sha256 hex).
type Chunks = Vec<(u64, u64, String)>;

/// The workloads whose opened files are read: python's start, and a heavier import set.
const WORKLOADS: [&str; 2] = [
    "print(1)",
    "import asyncio, json, http.client, email.message, decimal, sqlite3, logging, argparse",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let plan: Plan = serde_json::from_slice(&std::fs::read(&args[i + 1]).unwrap()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(client(plan));
        return;
    }
    if !nix_is_root()
        || which("ip").is_none()
        || which("tc").is_none()
        || which("docker-registry").is_none()
    {
        println!("SKIP: shaped_fetch needs root, ip, tc and docker-registry");
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("stl-regbench-")
        .tempdir()
        .unwrap();
    let _net = Netns::create();
    let registry = start_registry(work.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plan = rt.block_on(prepare(work.path(), &registry.addr));
    let plan_path = work.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let status = Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(std::env::current_exe().unwrap())
        .arg("--client")
        .arg(&plan_path)
        .status()
        .unwrap();
    drop(registry);
    assert!(status.success(), "client run failed");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn run(cmd: &[&str]) {
    let st = Command::new(cmd[0]).args(&cmd[1..]).status().unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

/// The namespace, veth pair and shaping; removed on drop.
struct Netns;

impl Netns {
    fn create() -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", VETH_HOST])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", NS]);
        let n = Netns;
        run(&[
            "ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS,
        ]);
        run(&["ip", "link", "set", VETH_NS, "netns", NS]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            VETH_HOST,
        ]);
        run(&["ip", "link", "set", VETH_HOST, "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            NS,
            "ip",
            "addr",
            "add",
            &format!("{NS_IP}/24"),
            "dev",
            VETH_NS,
        ]);
        run(&[
            "ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "up",
        ]);
        run(&["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"]);
        let tbf = [
            "root", "tbf", "rate", RATE, "burst", "128kb", "latency", "50ms",
        ];
        let mut host = vec!["tc", "qdisc", "replace", "dev", VETH_HOST];
        host.extend(tbf);
        run(&host);
        let mut ns = vec![
            "ip", "netns", "exec", NS, "tc", "qdisc", "replace", "dev", VETH_NS,
        ];
        ns.extend(tbf);
        run(&ns);
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", VETH_HOST]).status();
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

/// The registry process; killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind(format!("{HOST_IP}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("{HOST_IP}:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  redirect:\n    disable: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Registry { child, addr };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("registry did not start");
}

/// Files `python3 -c 'print(1)'` opens (strace), and a layer-like blob: files laid out in
/// sorted order with a 512-byte header before each, opened files always included.
async fn prepare(dir: &Path, registry: &str) -> Plan {
    let mut per_workload: Vec<Vec<PathBuf>> = Vec::new();
    for code in WORKLOADS {
        let trace = dir.join("trace");
        let st = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=openat,execve", "-o"])
            .arg(&trace)
            .args(["/usr/bin/python3", "-c", code])
            .stdout(Stdio::null())
            .status();
        let mut opened: Vec<PathBuf> = Vec::new();
        if st.is_ok_and(|s| s.success()) {
            for line in std::fs::read_to_string(&trace).unwrap_or_default().lines() {
                if line.contains("= -1") {
                    continue;
                }
                if let Some(p) = line.split('"').nth(1) {
                    let p = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
                    if p.is_file() && !opened.contains(&p) {
                        opened.push(p);
                    }
                }
            }
        }
        assert!(!opened.is_empty(), "strace of python3 gave no files");
        per_workload.push(opened);
    }
    let opened: Vec<PathBuf> = per_workload.iter().flatten().cloned().collect();
    let mut files: Vec<PathBuf> = Vec::new();
    for root in [
        "/etc",
        "/usr/bin",
        "/usr/lib/python3.11",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        walk(Path::new(root), &mut files);
    }
    files.extend(opened.iter().cloned());
    files.sort();
    files.dedup();
    let mut blob = Vec::new();
    let mut placed: std::collections::HashMap<PathBuf, Range<u64>> = Default::default();
    for f in &files {
        // The python stdlib is always complete (so opened modules lie among unopened ones);
        // other directories fill the layer up to its size limit.
        let keep = opened.contains(f) || f.starts_with("/usr/lib/python3.11");
        if blob.len() as u64 > LAYER_LIMIT && !keep {
            continue;
        }
        let Ok(content) = std::fs::read(f) else {
            continue;
        };
        blob.extend_from_slice(&[0u8; 512]);
        let start = blob.len() as u64;
        blob.extend_from_slice(&content);
        placed.insert(f.clone(), start..blob.len() as u64);
    }
    let blob = Bytes::from(blob);
    let digest: oci_spec::image::Digest =
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)))
            .parse()
            .unwrap();
    let repo = Repository::new(registry, "bench/layer");
    let mut regcfg = config::RegistryConfig::default();
    regcfg.hosts.insert(
        registry.to_string(),
        config::HostConfig {
            insecure: true,
            ..Default::default()
        },
    );
    let c = RegistryClient::with_settings(
        &Default::default(),
        &regcfg,
        Arc::new(registry::Metrics::default()),
    )
    .unwrap();
    c.push_blob(&repo, &digest, &blob, &PushOptions::default())
        .await
        .unwrap();
    let mut workloads = Vec::new();
    for (code, opened) in WORKLOADS.iter().zip(&per_workload) {
        let mut chunks = Vec::new();
        for f in opened {
            let Some(r) = placed.get(f) else { continue };
            let mut off = r.start;
            while off < r.end {
                let end = (off + CHUNK).min(r.end);
                let h = hex::encode(sha2::Sha256::digest(&blob[off as usize..end as usize]));
                chunks.push((off, end, h));
                off = end;
            }
        }
        println!(
            "workload `python3 -c '{code}'`: {} files opened -> {} chunks",
            opened.len(),
            chunks.len()
        );
        workloads.push((code.to_string(), chunks));
    }
    println!(
        "layer-like blob: {} files, {:.1} MB",
        placed.len(),
        blob.len() as f64 / 1e6
    );
    Plan {
        registry: registry.to_string(),
        repo: "bench/layer".into(),
        digest: digest.to_string(),
        size: blob.len() as u64,
        workloads,
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

/// Runs inside the netns: a delay proxy in front of the shaped link, then the measurements.
async fn client(plan: Plan) {
    let proxy = delay_proxy(plan.registry.clone()).await;
    let repo = Repository::new(proxy.clone(), plan.repo.clone());
    let digest: oci_spec::image::Digest = plan.digest.parse().unwrap();
    let mut regcfg = config::RegistryConfig {
        docker_config: "/nonexistent".into(),
        ..Default::default()
    };
    regcfg.hosts.insert(
        proxy.clone(),
        config::HostConfig {
            insecure: true,
            ..Default::default()
        },
    );
    let fresh = |fetch: config::FetchConfig| {
        let m = Arc::new(Metrics::default());
        (
            RegistryClient::with_settings(&fetch, &regcfg, m.registry.clone()).unwrap(),
            m,
        )
    };

    // RTT: small reads on a warm connection.
    let (c, _) = fresh(Default::default());
    let b = c.blob(&repo, &digest, Some(plan.size)).await.unwrap();
    b.read_range(0..16, Priority::OnDemand).await.unwrap();
    let mut rtts: Vec<Duration> = Vec::new();
    for i in 0..7 {
        let t = Instant::now();
        b.read_range(i * 1000..i * 1000 + 16, Priority::OnDemand)
            .await
            .unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let rtt = rtts[rtts.len() / 2];

    println!(
        "link {RATE}, RTT {:.1} ms (measured: small range reads on a warm connection)",
        rtt.as_secs_f64() * 1e3
    );
    for (code, chunks) in &plan.workloads {
        let ranges: Vec<Range<u64>> = chunks.iter().map(|(s, e, _)| *s..*e).collect();
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        println!(
            "\n`python3 -c '{code}'`: {} chunks, {:.2} MB",
            ranges.len(),
            total as f64 / 1e6
        );
        measure(&fresh, &repo, &digest, plan.size, chunks, rtt).await;
    }
}

async fn measure(
    fresh: &impl Fn(config::FetchConfig) -> (RegistryClient, Arc<Metrics>),
    repo: &Repository,
    digest: &oci_spec::image::Digest,
    size: u64,
    chunks: &[(u64, u64, String)],
    rtt: Duration,
) {
    let ranges: Vec<Range<u64>> = chunks.iter().map(|(s, e, _)| *s..*e).collect();
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    println!(
        "{:<46} {:>9} {:>9} {:>10} {:>14}",
        "method (fresh client, median of 3)", "time ms", "requests", "MB", "vs stream+3RTT"
    );
    let mut stream_time = Duration::ZERO;
    let naive = config::FetchConfig {
        multi_range: false,
        coalesce_gap: 0,
        ..Default::default()
    };
    let cases: Vec<(&str, config::FetchConfig, u8)> = vec![
        (
            "same bytes in one stream (one range)",
            Default::default(),
            0,
        ),
        (
            "read_ranges (defaults: gap 4KiB, multi-range)",
            Default::default(),
            1,
        ),
        (
            "ChunkFetcher + cache (verify, then store)",
            Default::default(),
            2,
        ),
        (
            "read_ranges, gap 64KiB",
            config::FetchConfig {
                coalesce_gap: 64 << 10,
                ..Default::default()
            },
            1,
        ),
        ("one request per chunk, 16 in parallel", naive.clone(), 1),
    ];
    for (name, fetch, kind) in cases {
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            let (c, m) = fresh(fetch.clone());
            let b = c.blob(repo, digest, Some(size)).await.unwrap();
            let cache_dir = tempfile::Builder::new()
                .prefix("stl-regbench-cache-")
                .tempdir()
                .unwrap();
            let t = Instant::now();
            match kind {
                0 => {
                    b.read_range(0..total, Priority::OnDemand).await.unwrap();
                }
                1 => {
                    let got = b.read_ranges(&ranges, Priority::OnDemand).await.unwrap();
                    assert_eq!(got.iter().map(|g| g.len() as u64).sum::<u64>(), total);
                }
                _ => {
                    let cache = ChunkCache::open(
                        CacheOptions {
                            dir: cache_dir.path().into(),
                            max_size: 0,
                            memory_size: 0,
                            read_mode: fusefs::cache::DEFAULT_READ_MODE,
                        },
                        m.clone(),
                    )
                    .unwrap();
                    let f =
                        ChunkFetcher::new(Arc::new(b.clone()), cache, Arc::new(RawChunks), &fetch);
                    let reqs: Vec<ChunkRequest> = chunks
                        .iter()
                        .map(|(s, e, h)| ChunkRequest {
                            key: ChunkKey::parse(&format!("sha256:{h}")).unwrap(),
                            range: *s..*e,
                        })
                        .collect();
                    for r in f.get_many(&reqs, Priority::OnDemand).await {
                        r.unwrap();
                    }
                    let answered = t.elapsed();
                    f.wait_idle().await; // cache writes finish before the dir goes
                    runs.push((answered, m.snapshot()));
                    continue;
                }
            }
            runs.push((t.elapsed(), m.snapshot()));
        }
        runs.sort_by_key(|r| r.0);
        let (time, snap) = runs[runs.len() / 2];
        if kind == 0 {
            stream_time = time;
        }
        let bound = stream_time + rtt * 3;
        println!(
            "{:<46} {:>9.0} {:>9} {:>10.2} {:>13.2}x",
            name,
            time.as_secs_f64() * 1e3,
            snap.registry.range_requests,
            snap.registry.bytes_fetched as f64 / 1e6,
            time.as_secs_f64() / bound.as_secs_f64()
        );
    }
}

/// A TCP delay line: every byte is forwarded `ONE_WAY_DELAY` after it arrives, both ways.
async fn delay_proxy(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                return;
            };
            let up = upstream.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(&up).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw));
                tokio::spawn(pump(ur, dw));
            });
        }
    });
    addr
}

async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((
                        tokio::time::Instant::now() + ONE_WAY_DELAY,
                        buf[..n].to_vec(),
                    ))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
