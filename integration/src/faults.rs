//! An HTTP fault proxy in front of a registry, for the chaos suite: one request per
//! connection (it answers `Connection: close`), with a fault mode switchable while it
//! runs: pass, flip one byte in the body of a share of range (206) responses, answer a
//! share of requests with an error status (429 / 5xx storms) without asking the registry,
//! or hold every connection open without an answer (a blackholed registry as a client
//! sees it: connected, nothing comes back). Runs in threads of the calling process; only
//! loopback addresses.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::error::{IoContext, Result};

/// What the proxy does to the requests it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything unchanged.
    Pass,
    /// Flip one byte in the body of `percent` % of 206 responses.
    Flip {
        /// Share of range responses corrupted.
        percent: u32,
    },
    /// Answer `percent` % of requests with `status` (and `Retry-After: 0`).
    Status {
        /// The HTTP status.
        status: u16,
        /// Share of requests answered so.
        percent: u32,
    },
    /// Accept and read requests, never answer.
    Blackhole,
}

/// Counters.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Responses whose body had a byte flipped.
    pub flipped: AtomicU64,
    /// Requests answered with an injected status.
    pub injected: AtomicU64,
    /// Requests held without an answer.
    pub held: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    stats: FaultStats,
    rng: Mutex<rand::rngs::StdRng>,
    held: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running fault proxy; stopped on drop (held connections are closed).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, seed: u64) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").ctx(|| "bind the fault proxy".into())?;
        let addr = listener.local_addr().ctx(|| "fault proxy address".into())?;
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            stats: FaultStats::default(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            held: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, client);
                });
            }
        });
        Ok(FaultProxy { addr, shared })
    }

    /// `host:port` for references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Switches the fault; leaving [`Fault::Blackhole`] closes the held connections.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().expect("fault lock") = fault;
        if fault != Fault::Blackhole {
            for c in self.shared.held.lock().expect("held lock").drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &FaultStats {
        &self.shared.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.set(Fault::Pass);
        let _ = TcpStream::connect(self.addr);
    }
}

fn chance(s: &Shared, percent: u32) -> bool {
    s.rng.lock().expect("rng lock").random_range(0..100) < percent
}

/// Reads a message head (request or response) up to the empty line.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Ok(None);
        }
        let l = l.trim_end_matches(['\r', '\n']).to_string();
        if l.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(l);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `lines` with `Connection: close` instead of any connection header, as one head.
fn closing_head(lines: &[String]) -> String {
    let mut head: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| {
            !l.to_ascii_lowercase().starts_with("connection:")
                && !l.to_ascii_lowercase().starts_with("keep-alive:")
        })
        .collect();
    head.push("Connection: close");
    let mut s = head.join("\r\n");
    s.push_str("\r\n\r\n");
    s
}

fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(request) = read_head(&mut reader)? else {
        return Ok(());
    };
    let len: usize = header(&request, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let fault = *s.fault.lock().expect("fault lock");
    let mut client = client;
    match fault {
        Fault::Blackhole => {
            s.stats.held.fetch_add(1, Ordering::Relaxed);
            s.held.lock().expect("held lock").push(client);
            return Ok(());
        }
        Fault::Status { status, percent } if chance(s, percent) => {
            s.stats.injected.fetch_add(1, Ordering::Relaxed);
            let answer = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(answer.as_bytes())?;
            return client.shutdown(Shutdown::Both);
        }
        _ => {}
    }
    let mut up = TcpStream::connect(s.upstream)?;
    up.write_all(closing_head(&request).as_bytes())?;
    up.write_all(&body)?;
    let mut up_reader = BufReader::new(up);
    let Some(response) = read_head(&mut up_reader)? else {
        return client.shutdown(Shutdown::Both);
    };
    client.write_all(closing_head(&response).as_bytes())?;
    let partial = response[0].split_whitespace().nth(1) == Some("206");
    let mut flip = matches!(fault, Fault::Flip { percent } if partial && chance(s, percent));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = up_reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if flip {
            let at = s.rng.lock().expect("rng lock").random_range(0..n);
            buf[at] ^= 0x5a;
            flip = false;
            s.stats.flipped.fetch_add(1, Ordering::Relaxed);
        }
        client.write_all(&buf[..n])?;
    }
    client.shutdown(Shutdown::Both)
}
