//! A shaped link to a second registry: a network namespace joined to the host by a veth
//! pair with `tbf` rate limiting on both ends (this kernel has no netem), a userspace delay
//! proxy for latency ([`crate::proxy`]) and a `docker-registry` inside the namespace serving
//! the same storage as the loopback registry. Clients use `HOST:5000` where HOST is the
//! namespace's veth address.
//!
//! Addressing: instance slot N (0..16384) uses the /30 `10.201.(N/64).((N%64)*4)`: host end
//! `.+1`, namespace end `.+2`; names `stl-s<N>` (netns), `stlh<N>`/`stln<N>` (veth). A slot
//! is taken by holding an exclusive `flock` on `/run/stl-netns/slot-<N>.lock` (released if
//! the owner dies) or, for detached environments, by a live PID in `slot-<N>.pid`; leftovers
//! of a dead owner are deleted when the slot is reused.

use std::fs::File;

use nix::fcntl::Flock;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::process::{run_cmd, Daemon, ProcessSpec};
use crate::proxy::{ProxyOptions, ProxyStats, TcpProxy};
use crate::registry::{Placement, Registry};
use crate::workdir::Workdir;

const SLOTS: u32 = 16384;
const LOCK_DIR: &str = "/run/stl-netns";
/// Port of the registry inside the namespace (and of the proxy on the veth address).
pub const SHAPED_PORT: u16 = 5000;

/// Link parameters.
#[derive(Debug, Clone)]
pub struct ShapedOptions {
    /// Round-trip time added by the delay proxy (half each way).
    pub rtt: Duration,
    /// Rate in Mbit/s (tbf on both veth ends).
    pub rate_mbit: u32,
    /// tbf burst (`128kb`).
    pub burst: String,
    /// tbf queue latency (`50ms`).
    pub tbf_latency: String,
}

impl Default for ShapedOptions {
    fn default() -> Self {
        ShapedOptions {
            rtt: Duration::from_millis(20),
            rate_mbit: 100,
            burst: "128kb".into(),
            tbf_latency: "50ms".into(),
        }
    }
}

/// Bytes counted on the host end of the veth pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkBytes {
    /// Received by the host (downloads), incl. IP/TCP headers.
    pub rx: u64,
    /// Sent by the host (requests).
    pub tx: u64,
}

#[derive(Debug)]
enum ProxyHandle {
    InProcess(TcpProxy),
    Process(Daemon),
}

/// The namespace, veth pair, registry and proxy; all removed on drop.
#[derive(Debug)]
pub struct ShapedLink {
    slot: u32,
    netns: String,
    veth_host: String,
    veth_ns: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    registry: Option<Registry>,
    proxy: Option<ProxyHandle>,
    lock: Option<Flock<File>>,
    detached: bool,
}

fn ip(args: &[&str]) -> Result<String> {
    Ok(
        run_cmd(Command::new("ip").args(args), Duration::from_secs(30))?
            .check()?
            .stdout,
    )
}

fn tc(netns: Option<&str>, args: &[&str]) -> Result<()> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    run_cmd(c.args(args), Duration::from_secs(30))?
        .check()
        .map(drop)
}

/// Puts `tbf` with `opts`' rate, burst and latency on both ends of the veth pair.
fn shape_veths(netns: &str, veth_host: &str, veth_ns: &str, opts: &ShapedOptions) -> Result<()> {
    let rate = format!("{}mbit", opts.rate_mbit);
    let mut t = [
        "qdisc",
        "replace",
        "dev",
        "",
        "root",
        "tbf",
        "rate",
        &rate,
        "burst",
        &opts.burst,
        "latency",
        &opts.tbf_latency,
    ];
    t[3] = veth_host;
    tc(None, &t)?;
    t[3] = veth_ns;
    tc(Some(netns), &t)
}

/// Names and addresses of slot `n`.
pub fn slot_names(n: u32) -> (String, String, String, Ipv4Addr, Ipv4Addr) {
    let (x, y) = ((n / 64) as u8, ((n % 64) * 4) as u8);
    (
        format!("stl-s{n}"),
        format!("stlh{n}"),
        format!("stln{n}"),
        Ipv4Addr::new(10, 201, x, y + 1),
        Ipv4Addr::new(10, 201, x, y + 2),
    )
}

fn pid_alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Removes whatever a dead owner of slot `n` left (netns, veth).
fn clear_slot(n: u32) {
    let (ns, vh, _, _, _) = slot_names(n);
    if Path::new("/sys/class/net").join(&vh).exists() {
        let _ = ip(&["link", "del", &vh]);
    }
    if Path::new("/run/netns").join(&ns).exists() {
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// Takes a free slot; returns it with its lock.
fn take_slot() -> Result<(u32, Flock<File>)> {
    std::fs::create_dir_all(LOCK_DIR).ctx(|| format!("create {LOCK_DIR}"))?;
    // lowest free slot first: names and lock files get reused, a crashed run's leftovers
    // are cleared by the next run
    let start = 0;
    for i in 0..SLOTS {
        let n = (start + i) % SLOTS;
        let lock_path = PathBuf::from(LOCK_DIR).join(format!("slot-{n}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(|| format!("open {}", lock_path.display()))?;
        let Ok(lock) = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        let pid_file = PathBuf::from(LOCK_DIR).join(format!("slot-{n}.pid"));
        if let Ok(p) = std::fs::read_to_string(&pid_file) {
            if pid_alive(p.trim().parse().unwrap_or(0)) {
                continue;
            }
            let _ = std::fs::remove_file(&pid_file);
        }
        clear_slot(n);
        return Ok((n, lock));
    }
    Err(Error::Missing("no free shaped-link slot".into()))
}

impl ShapedLink {
    /// Creates the link to a registry serving `upstream`'s storage, with the delay proxy
    /// running in this process.
    pub fn start(wd: &Workdir, upstream: &Registry, opts: ShapedOptions) -> Result<ShapedLink> {
        Self::start_in(&wd.join("shaped"), upstream, opts, None)
    }

    /// Like [`start`](Self::start) with files under `dir`; with `proxy_cmd` the delay proxy
    /// runs as that detached process instead (program + args before `--listen ...`; used by
    /// `stl-env`), and the slot is held by its PID.
    pub fn start_in(
        dir: &Path,
        upstream: &Registry,
        opts: ShapedOptions,
        proxy_cmd: Option<Vec<String>>,
    ) -> Result<ShapedLink> {
        crate::prereq::netns().map_err(Error::Missing)?;
        let (slot, lock) = take_slot()?;
        let (netns, veth_host, veth_ns, host_ip, ns_ip) = slot_names(slot);
        let mut link = ShapedLink {
            slot,
            netns: netns.clone(),
            veth_host: veth_host.clone(),
            veth_ns: veth_ns.clone(),
            host_ip,
            ns_ip,
            registry: None,
            proxy: None,
            lock: Some(lock),
            detached: false,
        };
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
        ])?;
        ip(&["link", "set", &veth_ns, "netns", &netns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth_host])?;
        ip(&["link", "set", &veth_host, "up"])?;
        ip(&[
            "netns",
            "exec",
            &netns,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &veth_ns,
        ])?;
        ip(&["netns", "exec", &netns, "ip", "link", "set", &veth_ns, "up"])?;
        ip(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"])?;
        shape_veths(&netns, &veth_host, &veth_ns, &opts)?;
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let reg = Registry::start_placed(
            upstream.options().clone(),
            Placement {
                dir: dir.join("registry"),
                storage: Some(upstream.storage().to_path_buf()),
                secret: Some(upstream.secret().to_string()),
                netns: Some(&netns),
                listen: &format!("127.0.0.1:{SHAPED_PORT}"),
                new_session: proxy_cmd.is_some(),
            },
        )?;
        link.registry = Some(reg);
        let listen = SocketAddr::from((ns_ip, SHAPED_PORT));
        let inner = SocketAddr::from((Ipv4Addr::LOCALHOST, SHAPED_PORT));
        let delay = opts.rtt / 2;
        match proxy_cmd {
            None => {
                let mut po = ProxyOptions::to(inner);
                po.listen = listen;
                po.one_way_delay = delay;
                link.proxy = Some(ProxyHandle::InProcess(TcpProxy::start_in_netns(
                    &netns, po,
                )?));
            }
            Some(cmd) => {
                let mut spec = ProcessSpec::new("delay-proxy", &cmd[0], dir.join("proxy.log"))
                    .args(&cmd[1..])
                    .args([
                        "--listen",
                        &listen.to_string(),
                        "--upstream",
                        &inner.to_string(),
                        "--delay-ms",
                        &delay.as_millis().to_string(),
                    ])
                    .netns(&netns);
                spec.new_session = true;
                let d = Daemon::start(spec)?;
                std::fs::write(
                    PathBuf::from(LOCK_DIR).join(format!("slot-{slot}.pid")),
                    d.pid().to_string(),
                )
                .ctx(|| "write slot pid".into())?;
                link.proxy = Some(ProxyHandle::Process(d));
            }
        }
        let url = format!("{}/v2/", link.url());
        let mut last = String::new();
        crate::poll::poll_until("shaped registry to answer", Duration::from_secs(30), || {
            match crate::http::get(&url, &[]) {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    last = e.to_string();
                    Ok(None)
                }
            }
        })
        .map_err(|e| Error::invalid("shaped link", format!("{e}: {last}")))?;
        Ok(link)
    }

    /// `NS_IP:5000`, the registry host for image references.
    pub fn host(&self) -> String {
        format!("{}:{SHAPED_PORT}", self.ns_ip)
    }

    /// `http://NS_IP:5000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `NS_IP:5000/NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Network namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Host-side veth name.
    pub fn veth_host(&self) -> &str {
        &self.veth_host
    }

    /// Namespace-side veth name.
    pub fn veth_ns(&self) -> &str {
        &self.veth_ns
    }

    /// The slot number.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Host and namespace addresses.
    pub fn addresses(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.host_ip, self.ns_ip)
    }

    /// The registry inside the namespace (stop/restart it for fault tests).
    pub fn registry(&mut self) -> &mut Registry {
        self.registry
            .as_mut()
            .expect("registry runs while the link exists")
    }

    /// Bytes through the host veth (read from sysfs; exact and immediate).
    pub fn link_bytes(&self) -> LinkBytes {
        let read = |f: &str| -> u64 {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{f}", self.veth_host))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        LinkBytes {
            rx: read("rx_bytes"),
            tx: read("tx_bytes"),
        }
    }

    /// Changes the link's shape in place (same namespace, addresses and registry): tbf rate
    /// and burst on both veth ends, and the delay proxy's RTT (in-process proxy only; its
    /// open connections are closed, clients reconnect). Call it while the link is idle.
    pub fn reshape(&self, opts: &ShapedOptions) -> Result<()> {
        let Some(ProxyHandle::InProcess(p)) = &self.proxy else {
            return Err(Error::invalid(
                "shaped link",
                "only a link with an in-process delay proxy can be reshaped",
            ));
        };
        shape_veths(&self.netns, &self.veth_host, &self.veth_ns, opts)?;
        p.set_delay(opts.rtt / 2);
        Ok(())
    }

    /// Payload counters of the in-process delay proxy (connections, requests, bytes).
    pub fn proxy_stats(&self) -> Option<ProxyStats> {
        match &self.proxy {
            Some(ProxyHandle::InProcess(p)) => Some(p.stats()),
            _ => None,
        }
    }

    /// Resets the in-process proxy's counters.
    pub fn reset_proxy_stats(&self) {
        if let Some(ProxyHandle::InProcess(p)) = &self.proxy {
            p.reset();
        }
    }

    /// Leaves everything in place (for `stl-env`); the registry and proxy PIDs are returned.
    pub fn detach(mut self) -> (u32, u32) {
        self.detached = true;
        let r = self
            .registry
            .as_mut()
            .map(|r| r.daemon().forget())
            .unwrap_or(0);
        let p = match self.proxy.as_mut() {
            Some(ProxyHandle::Process(d)) => d.forget(),
            _ => 0,
        };
        (r, p)
    }

    /// Deletes the namespace and veth of `slot` and its pid file (for `stl-env down`).
    pub fn remove_slot(slot: u32) {
        clear_slot(slot);
        let _ = std::fs::remove_file(PathBuf::from(LOCK_DIR).join(format!("slot-{slot}.pid")));
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        drop(self.proxy.take());
        drop(self.registry.take());
        Self::remove_slot(self.slot);
        drop(self.lock.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_distinct_30s() {
        let (ns, vh, vn, h, n) = slot_names(0);
        assert_eq!(
            (ns.as_str(), vh.as_str(), vn.as_str()),
            ("stl-s0", "stlh0", "stln0")
        );
        assert_eq!(
            (h, n),
            (Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2))
        );
        let (_, vh, _, h, n) = slot_names(SLOTS - 1);
        assert!(vh.len() <= 15);
        assert_eq!(
            (h, n),
            (
                Ipv4Addr::new(10, 201, 255, 253),
                Ipv4Addr::new(10, 201, 255, 254)
            )
        );
        let (_, _, _, h65, _) = slot_names(65);
        assert_eq!(h65, Ipv4Addr::new(10, 201, 1, 5));
    }
}
