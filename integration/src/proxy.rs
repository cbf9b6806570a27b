//! A TCP proxy for the network tests: adds a fixed one-way delay in both directions without
//! limiting throughput (a delay line: data is forwarded as it arrives, each chunk released
//! `delay` after it was read), and counts connections, bytes and HTTP requests (it follows
//! HTTP/1.1 request framing on the client side: Content-Length and chunked bodies). Runs in
//! threads of the calling process, optionally inside a network namespace.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where to listen (port 0 = any free port).
    pub listen: SocketAddr,
    /// Where to forward.
    pub upstream: SocketAddr,
    /// Delay added to every byte in each direction (RTT/2).
    pub one_way_delay: Duration,
    /// How many request lines to keep in [`ProxyStats::requests_log`].
    pub keep_requests: usize,
}

impl ProxyOptions {
    /// Listen on 127.0.0.1:0, forward to `upstream`, no delay.
    pub fn to(upstream: SocketAddr) -> Self {
        ProxyOptions {
            listen: "127.0.0.1:0".parse().expect("static addr"),
            upstream,
            one_way_delay: Duration::ZERO,
            keep_requests: 10_000,
        }
    }
}

/// One HTTP request seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyRequest {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// `Range` header, if any.
    pub range: Option<String>,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyStats {
    /// Accepted connections.
    pub connections: u64,
    /// HTTP requests parsed from clients.
    pub requests: u64,
    /// Bytes client -> upstream.
    pub bytes_up: u64,
    /// Bytes upstream -> client.
    pub bytes_down: u64,
    /// The first `keep_requests` requests.
    pub requests_log: Vec<ProxyRequest>,
}

#[derive(Default)]
struct Shared {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    log: Mutex<Vec<ProxyRequest>>,
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// One-way delay of connections accepted from now on (nanoseconds).
    delay_ns: AtomicU64,
}

/// A running proxy; stopped on drop (open connections are shut down).
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TcpProxy {
    /// Starts the proxy in the calling process's network namespace.
    pub fn start(opts: ProxyOptions) -> Result<TcpProxy> {
        let listener =
            TcpListener::bind(opts.listen).ctx(|| format!("bind proxy on {}", opts.listen))?;
        let addr = listener.local_addr().ctx(|| "proxy local addr".into())?;
        let shared = Arc::new(Shared::default());
        shared
            .delay_ns
            .store(opts.one_way_delay.as_nanos() as u64, Ordering::Relaxed);
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("stl-proxy-accept".into())
            .spawn(move || accept_loop(listener, opts, sh))
            .ctx(|| "spawn proxy thread".into())?;
        Ok(TcpProxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Starts the proxy inside network namespace `netns` (`/run/netns/<name>`): its threads
    /// join the namespace, so it listens and connects there while this process stays put.
    pub fn start_in_netns(netns: &str, opts: ProxyOptions) -> Result<TcpProxy> {
        let path = format!("/run/netns/{netns}");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("stl-proxy-netns".into())
            .spawn(move || {
                let r = (|| -> Result<TcpProxy> {
                    let f = std::fs::File::open(&path).ctx(|| format!("open {path}"))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Error::sys(format!("setns {path}"), e))?;
                    // threads spawned from here on inherit the namespace
                    TcpProxy::start(opts)
                })();
                let _ = tx.send(r);
            })
            .ctx(|| "spawn proxy thread".into())?;
        rx.recv()
            .map_err(|_| Error::invalid("proxy", "netns thread died"))?
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
            requests_log: s.log.lock().map(|l| l.clone()).unwrap_or_default(),
        }
    }

    /// Resets the counters to zero.
    pub fn reset(&self) {
        let s = &self.shared;
        for c in [&s.connections, &s.requests, &s.bytes_up, &s.bytes_down] {
            c.store(0, Ordering::Relaxed);
        }
        if let Ok(mut l) = s.log.lock() {
            l.clear();
        }
    }

    /// Changes the one-way delay: connections accepted from now on get `delay`, open ones
    /// are shut down (clients reconnect; call it while the link is idle).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ns
            .store(delay.as_nanos() as u64, Ordering::SeqCst);
        self.close_connections();
    }

    /// The one-way delay of new connections.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.shared.delay_ns.load(Ordering::SeqCst))
    }

    fn close_connections(&self) {
        if let Ok(mut open) = self.shared.open.lock() {
            for (_, (c, s)) in open.drain() {
                let _ = c.shutdown(Shutdown::Both);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Stops accepting and shuts down open connections.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.close_connections();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, opts: ProxyOptions, sh: Arc<Shared>) {
    // non-blocking accept polled every 10 ms, so stop() never depends on reaching ourselves
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !sh.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(opts.upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        sh.connections.fetch_add(1, Ordering::Relaxed);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        if let (Ok(mut open), Ok(c2), Ok(s2)) =
            (sh.open.lock(), client.try_clone(), server.try_clone())
        {
            open.insert(id, (c2, s2));
        }
        let spawn = |from: &TcpStream, to: &TcpStream, up: bool| -> io::Result<()> {
            let (from, to) = (from.try_clone()?, to.try_clone()?);
            let delay = Duration::from_nanos(sh.delay_ns.load(Ordering::SeqCst));
            let (sh, keep) = (sh.clone(), opts.keep_requests);
            std::thread::Builder::new()
                .name("stl-proxy-pump".into())
                .spawn(move || {
                    pump(from, to, up, delay, keep, sh.clone());
                    // first direction to finish drops the bookkeeping clones (the pumps own their fds)
                    if let Ok(mut open) = sh.open.lock() {
                        open.remove(&id);
                    }
                })?;
            Ok(())
        };
        if spawn(&client, &server, true).is_err() || spawn(&server, &client, false).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` -> `to`, releasing each chunk `delay` after it was read.
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    up: bool,
    delay: Duration,
    keep: usize,
    sh: Arc<Shared>,
) {
    let mut parser = up.then(RequestParser::default);
    let counter = sh.clone();
    let count = move |n: usize| {
        let c = if up {
            &counter.bytes_up
        } else {
            &counter.bytes_down
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    };
    let mut on_data = |data: &[u8]| {
        if let Some(p) = parser.as_mut() {
            for r in p.feed(data) {
                sh.requests.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = sh.log.lock() {
                    if l.len() < keep {
                        l.push(r);
                    }
                }
            }
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    if delay.is_zero() {
        let mut to = to;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    on_data(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    count(n);
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
        return;
    }
    // bounded: backpressure reaches the sender once 256 chunks (<= 16 MiB) are in flight
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(256);
    let writer = std::thread::Builder::new()
        .name("stl-proxy-delay".into())
        .spawn(move || {
            let mut to = to;
            while let Ok((due, data)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&data).is_err() {
                    break;
                }
                count(data.len());
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                on_data(&buf[..n]);
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
    let _ = from.shutdown(Shutdown::Read);
}

/// Follows HTTP/1.1 request framing in a client byte stream.
#[derive(Debug, Default)]
struct RequestParser {
    head: Vec<u8>,
    state: ParseState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ParseState {
    #[default]
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailer,
    Lost,
}

impl RequestParser {
    fn feed(&mut self, mut data: &[u8]) -> Vec<ProxyRequest> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match self.state {
                ParseState::Lost => break,
                ParseState::Head | ParseState::ChunkSize | ParseState::Trailer => {
                    // accumulate one line (or a whole head) until its terminator
                    let term: &[u8] = if self.state == ParseState::Head {
                        b"\r\n\r\n"
                    } else {
                        b"\r\n"
                    };
                    let take = data.len();
                    let start = self.head.len().saturating_sub(term.len() - 1);
                    self.head.extend_from_slice(&data[..take]);
                    let Some(pos) = find(&self.head[start..], term).map(|p| p + start) else {
                        if self.head.len() > 64 * 1024 {
                            self.state = ParseState::Lost;
                        }
                        data = &[];
                        continue;
                    };
                    let end = pos + term.len();
                    let rest_len = self.head.len() - end;
                    let consumed = take - rest_len;
                    let block: Vec<u8> = self.head.drain(..end).collect();
                    self.head.clear();
                    data = &data[consumed..];
                    match self.state {
                        ParseState::Head => {
                            let text = String::from_utf8_lossy(&block);
                            if text.trim().is_empty() {
                                continue; // stray CRLF between requests
                            }
                            let (req, framing) = parse_head(&text);
                            out.push(req);
                            self.state = framing;
                        }
                        ParseState::ChunkSize => {
                            let line = String::from_utf8_lossy(&block);
                            let hexpart = line.trim().split(';').next().unwrap_or("");
                            self.state = match u64::from_str_radix(hexpart, 16) {
                                Ok(0) => ParseState::Trailer,
                                Ok(n) => ParseState::ChunkData(n),
                                Err(_) => ParseState::Lost,
                            };
                        }
                        _ => {
                            if block == b"\r\n" {
                                self.state = ParseState::Head;
                            }
                        }
                    }
                }
                ParseState::Body(n) | ParseState::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    let left = n - k;
                    self.state = match (self.state, left) {
                        (ParseState::Body(_), 0) => ParseState::Head,
                        (ParseState::Body(_), l) => ParseState::Body(l),
                        (_, 0) => ParseState::ChunkCrlf(2),
                        (_, l) => ParseState::ChunkData(l),
                    };
                }
                ParseState::ChunkCrlf(n) => {
                    let k = data.len().min(n as usize);
                    data = &data[k..];
                    self.state = if n as usize == k {
                        ParseState::ChunkSize
                    } else {
                        ParseState::ChunkCrlf(n - k as u8)
                    };
                }
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(text: &str) -> (ProxyRequest, ParseState) {
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    let mut framing = ParseState::Head;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "range" => range = Some(v.to_string()),
            "content-length" => {
                framing = match v.parse::<u64>() {
                    Ok(0) => ParseState::Head,
                    Ok(n) => ParseState::Body(n),
                    Err(_) => ParseState::Lost,
                }
            }
            "transfer-encoding" if v.to_ascii_lowercase().contains("chunked") => {
                framing = ParseState::ChunkSize
            }
            _ => {}
        }
    }
    (
        ProxyRequest {
            method,
            path,
            range,
        },
        framing,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_follows_framing() {
        let mut p = RequestParser::default();
        let stream = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
            PUT /up HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /\
            PATCH /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            GET /v2/r/blobs/sha256:1 HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n";
        // feed in awkward pieces
        let mut got = Vec::new();
        for piece in stream.chunks(7) {
            got.extend(p.feed(piece));
        }
        let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, vec!["/v2/", "/up", "/c", "/v2/r/blobs/sha256:1"]);
        assert_eq!(got[3].range.as_deref(), Some("bytes=0-9"));
        assert_eq!(got[1].method, "PUT");
    }

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let body = vec![7u8; 100_000];
            s.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            )
            .unwrap();
            s.write_all(&body).unwrap();
        });
        (a, h)
    }

    #[test]
    fn proxies_counts_and_delays() {
        let (up, h) = echo_server();
        let mut o = ProxyOptions::to(up);
        o.one_way_delay = Duration::from_millis(30);
        let p = TcpProxy::start(o).unwrap();
        let t = Instant::now();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let rtt = t.elapsed();
        h.join().unwrap();
        assert!(got.ends_with(&[7u8; 10]));
        assert!(
            rtt >= Duration::from_millis(60),
            "delay applied both ways: {rtt:?}"
        );
        let s = p.stats();
        assert_eq!((s.connections, s.requests), (1, 1));
        assert_eq!(s.bytes_down as usize, got.len());
        assert_eq!(s.requests_log[0].path, "/x");
        p.reset();
        assert_eq!(p.stats().bytes_down, 0);
    }

    #[test]
    fn set_delay_applies_to_new_connections_and_closes_open_ones() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = TcpProxy::start(ProxyOptions::to(l.local_addr().unwrap())).unwrap();
        assert_eq!(p.delay(), Duration::ZERO);
        let mut c = TcpStream::connect(p.addr()).unwrap();
        let (_upstream_side, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        p.set_delay(Duration::from_millis(1));
        assert_eq!(p.delay(), Duration::from_millis(1));
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        let _again = TcpStream::connect(p.addr()).unwrap();
        let (_s2, _) = l.accept().unwrap();
    }

    #[test]
    fn stop_ends_open_connections() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = TcpProxy::start(ProxyOptions::to(l.local_addr().unwrap())).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        let (_upstream_side, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        p.stop();
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(TcpStream::connect(p.addr()).is_err(), "listener closed");
    }
}
