//! An HTTP-aware TCP proxy in front of a registry, for fault tests: it can flip bytes in
//! response bodies of range requests, or rewrite multi-range `Range` headers the way servers
//! without multi-range support behave. Parses HTTP/1.1 message framing in both directions
//! (GET/HEAD requests without bodies, Content-Length responses).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub enum ProxyMode {
    /// Corrupt the body of a 206 response with this probability (in percent).
    FlipBodies { percent: u32, seed: u64 },
    /// Keep only the first range of a multi-range request (server answers one range).
    FirstRangeOnly,
    /// Drop the `Range` header of multi-range requests (server answers 200, whole blob).
    DropMultiRange,
}

#[derive(Default, Debug)]
pub struct ProxyStats {
    pub responses: AtomicU64,
    pub corrupted: AtomicU64,
    pub rewritten: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, mode: ProxyMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(match mode {
            ProxyMode::FlipBodies { seed, .. } => seed,
            _ => 0,
        })));
        let (stats2, stop2) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let methods = Arc::new(Mutex::new(VecDeque::new()));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let m2 = methods.clone();
                let st = stats2.clone();
                std::thread::spawn(move || requests(c2, s2, m2, mode, st));
                let st = stats2.clone();
                let rng = rng.clone();
                std::thread::spawn(move || responses(server, client, methods, mode, st, rng));
            }
        });
        Proxy { addr, stats, stop }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_head(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end_matches(['\r', '\n']).to_string();
        if l.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Some(lines);
        }
        lines.push(l);
    }
}

fn header_value<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn requests(
    client: TcpStream,
    mut server: TcpStream,
    methods: Arc<Mutex<VecDeque<String>>>,
    mode: ProxyMode,
    stats: Arc<ProxyStats>,
) {
    let mut r = BufReader::new(client);
    while let Some(mut lines) = read_head(&mut r) {
        let method = lines[0].split(' ').next().unwrap_or("").to_string();
        methods.lock().unwrap().push_back(method);
        if let Some(range) = header_value(&lines, "range").map(str::to_string) {
            if range.contains(',') {
                let new = match mode {
                    ProxyMode::FirstRangeOnly => Some(range.split(',').next().unwrap().to_string()),
                    ProxyMode::DropMultiRange => None,
                    ProxyMode::FlipBodies { .. } => Some(range.clone()),
                };
                if !matches!(mode, ProxyMode::FlipBodies { .. }) {
                    stats.rewritten.fetch_add(1, Ordering::SeqCst);
                }
                lines.retain(|l| !l.to_ascii_lowercase().starts_with("range:"));
                if let Some(n) = new {
                    lines.push(format!("Range: {n}"));
                }
            }
        }
        let len: usize = header_value(&lines, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut head = lines.join("\r\n");
        head.push_str("\r\n\r\n");
        if server.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() || server.write_all(&body).is_err() {
            return;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
}

fn responses(
    server: TcpStream,
    mut client: TcpStream,
    methods: Arc<Mutex<VecDeque<String>>>,
    mode: ProxyMode,
    stats: Arc<ProxyStats>,
    rng: Arc<Mutex<rand::rngs::StdRng>>,
) {
    let mut r = BufReader::new(server);
    while let Some(lines) = read_head(&mut r) {
        stats.responses.fetch_add(1, Ordering::SeqCst);
        let method = methods.lock().unwrap().pop_front().unwrap_or_default();
        let status: u16 = lines[0]
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: Option<usize> =
            header_value(&lines, "content-length").and_then(|v| v.parse().ok());
        let mut head = lines.join("\r\n");
        head.push_str("\r\n\r\n");
        if client.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" || status == 204 || status == 304 {
            continue;
        }
        let Some(len) = len else {
            // Unknown length: relay until the server closes.
            let _ = std::io::copy(&mut r, &mut client);
            return;
        };
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let ProxyMode::FlipBodies { percent, .. } = mode {
            let mut rng = rng.lock().unwrap();
            if status == 206 && len > 0 && rng.random_range(0..100) < percent {
                let at = rng.random_range(0..len);
                body[at] ^= 0x20;
                stats.corrupted.fetch_add(1, Ordering::SeqCst);
            }
        }
        if client.write_all(&body).is_err() {
            return;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
}
