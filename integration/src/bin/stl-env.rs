//! `stl-env`: the Rust harness driven from bash (scripts/demo, scripts/bench). `up` starts a
//! registry (images pushed), optionally the shaped link, starling, the reference peer and a
//! containerd with them as proxy snapshotters, all detached, and records them in
//! `STATE/state.json`; `env` prints shell exports; `status` checks them; `down` stops them
//! by PID (after killing containers), removes the netns and unmounts what is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use integration::containerd::{cleanup_runc, Containerd, ContainerdOptions, Ctr};
use integration::peer::{peer_binary, Peer, PeerOptions};
use integration::proxy::{ProxyOptions, TcpProxy};
use integration::registry::{Registry, RegistryOptions};
use integration::shaped::{ShapedLink, ShapedOptions};
use integration::starling::{Starling, StarlingConfig, StarlingOptions};

#[derive(Parser)]
#[command(about = "Start/stop a starling test environment from the shell")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the environment (detached) and record it in STATE/state.json.
    Up(UpArgs),
    /// Stop everything recorded in STATE (by PID) and clean up.
    Down {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
        /// Also delete the state directory (registry data, logs).
        #[arg(long)]
        purge: bool,
    },
    /// Show what is running.
    Status {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Print `export VAR=...` lines for the environment.
    Env {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Build (or find in the cache) a realistic image and print its OCI layout path:
    /// pydeb, pylarge, debbase or a broad-set image (node, java, server, gcc, pysci, script).
    Image {
        /// pydeb | pylarge | debbase | node | java | server | gcc | pysci | script
        name: String,
    },
    /// Internal: the delay proxy process of the shaped link.
    Proxy {
        /// Listen address.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Upstream address.
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// One-way delay in ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// State directory (keep it short: sockets live inside).
    #[arg(long)]
    state: PathBuf,
    /// Images to build and push: busybox, edge, pydeb, pylarge (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "busybox")]
    images: Vec<String>,
    /// Start the shaped link (second registry behind tbf + delay).
    #[arg(long)]
    shaped: bool,
    /// Round-trip time of the shaped link, ms.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Rate of the shaped link, Mbit/s.
    #[arg(long, default_value_t = 100)]
    rate_mbit: u32,
    /// Start `starling daemon` (binary from STARLING_BIN or target/).
    #[arg(long)]
    starling: bool,
    /// Names starling is registered under in containerd.
    #[arg(long, value_delimiter = ',', default_value = "starling")]
    starling_name: Vec<String>,
    /// starling config file to pass with --config.
    #[arg(long)]
    starling_config: Option<PathBuf>,
    /// Start the reference peer (stargz-mini), registered as --peer-name.
    #[arg(long)]
    peer: bool,
    /// containerd name of the peer.
    #[arg(long, default_value = "stargz-peer")]
    peer_name: String,
    /// Extra proxy plugin NAME=SOCKET (repeatable).
    #[arg(long)]
    proxy: Vec<String>,
    /// Do not start containerd.
    #[arg(long)]
    no_containerd: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    processes: Vec<Proc>,
    slot: Option<u32>,
    vars: BTreeMap<String, String>,
    runc_root: Option<PathBuf>,
    containerd: Option<PathBuf>,
    namespace: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Proc {
    name: String,
    pid: u32,
    start_time: u64,
}

fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the ")" of comm: state is field 3, starttime field 22
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn alive(p: &Proc) -> bool {
    // a zombie (state Z) has exited; it only waits for init to reap it
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false);
    !zombie && start_time(p.pid) == Some(p.start_time)
}

fn record(state: &mut State, name: &str, pid: u32) {
    state.processes.push(Proc {
        name: name.into(),
        pid,
        start_time: start_time(pid).unwrap_or(0),
    });
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn load(dir: &Path) -> Result<State> {
    let p = state_path(dir);
    let b =
        std::fs::read(&p).with_context(|| format!("no environment recorded in {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("parse {}", p.display()))
}

fn save(dir: &Path, s: &State) -> Result<()> {
    std::fs::write(state_path(dir), serde_json::to_vec_pretty(s)?).context("write state.json")
}

fn push_images(
    reg: &Registry,
    images: &[String],
    vars: &mut BTreeMap<String, String>,
) -> Result<()> {
    for name in images {
        match name.as_str() {
            "busybox" => {
                integration::images::busybox()?.push(reg, "busybox:latest")?;
            }
            "edge" => {
                let e = integration::images::edge_image(&Default::default());
                e.builder().push(reg, "edge:latest")?;
            }
            "pydeb" => {
                let c = integration::images::pydeb()?;
                c.push(reg, "latest", "pydeb:latest")?;
                c.push(reg, "implicit-parents", "pydeb:implicit-parents")?;
            }
            "pylarge" => {
                integration::images::pylarge()?.push(reg, "latest", "pylarge:latest")?;
            }
            "" => {}
            other => bail!("unknown image {other:?} (busybox, edge, pydeb, pylarge)"),
        }
    }
    vars.insert("STL_IMAGES".into(), images.join(","));
    Ok(())
}

fn up(a: UpArgs) -> Result<()> {
    let dir = std::path::absolute(&a.state)?;
    if let Ok(s) = load(&dir) {
        if s.processes.iter().any(alive) {
            bail!(
                "an environment is already up in {} (stl-env down --state {})",
                dir.display(),
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(&dir)?;
    let mut st = State {
        namespace: "default".into(),
        ..Default::default()
    };
    // Handles stay owned here until everything is up: an error tears all of it down.
    let reg = Registry::start_in(&dir.join("registry"), RegistryOptions::default(), true)?;
    st.vars.insert("STL_REGISTRY".into(), reg.host());
    push_images(&reg, &a.images, &mut st.vars)?;
    let shaped = if a.shaped {
        let o = ShapedOptions {
            rtt: Duration::from_millis(a.rtt_ms),
            rate_mbit: a.rate_mbit,
            ..Default::default()
        };
        let exe = std::env::current_exe()?.to_string_lossy().into_owned();
        let l = ShapedLink::start_in(
            &dir.join("shaped"),
            &reg,
            o,
            Some(vec![exe, "proxy".into()]),
        )?;
        st.vars.insert("STL_SHAPED_REGISTRY".into(), l.host());
        st.vars.insert("STL_SHAPED_NETNS".into(), l.netns().into());
        st.vars
            .insert("STL_SHAPED_VETH".into(), l.veth_host().into());
        st.slot = Some(l.slot());
        Some(l)
    } else {
        None
    };
    let starling = if a.starling {
        let mut o = StarlingOptions::default();
        if let Some(c) = &a.starling_config {
            o.config = Some(StarlingConfig::raw(&std::fs::read_to_string(c)?)?);
        }
        let s = Starling::start_in(&dir.join("starling"), &dir.join("st.sock"), o, true)?;
        st.vars.insert(
            "STL_STARLING_SOCK".into(),
            s.socket().to_string_lossy().into(),
        );
        st.vars.insert(
            "STL_STARLING_ROOT".into(),
            s.root().to_string_lossy().into(),
        );
        Some(s)
    } else {
        None
    };
    let peer = if a.peer {
        let bin = peer_binary().map_err(anyhow::Error::msg)?;
        let p = Peer::start_in(
            &dir.join("peer"),
            &dir.join("peer.sock"),
            &bin,
            PeerOptions::default(),
            true,
        )?;
        st.vars
            .insert("STL_PEER_SOCK".into(), p.socket().to_string_lossy().into());
        st.vars
            .insert("STL_PEER_ROOT".into(), p.root().to_string_lossy().into());
        st.vars.insert("STL_PEER_NAME".into(), a.peer_name.clone());
        Some(p)
    } else {
        None
    };
    let mut containerd = None;
    if !a.no_containerd {
        let mut o = ContainerdOptions::default();
        let mut wait = Vec::new();
        if let Some(s) = &starling {
            for n in &a.starling_name {
                o = o.proxy(n, s.socket());
                wait.push(n.clone());
            }
        }
        if let Some(p) = &peer {
            o = o.proxy(&a.peer_name, p.socket());
            wait.push(a.peer_name.clone());
        }
        for p in &a.proxy {
            let (n, s) = p
                .split_once('=')
                .with_context(|| format!("--proxy {p}: expected NAME=SOCKET"))?;
            o = o.proxy(n, s);
        }
        let c = Containerd::start_in(&dir.join("containerd"), o, true)?;
        for n in &wait {
            c.ctr().wait_snapshotter(n, Duration::from_secs(60))?;
        }
        let ctr = c.ctr();
        st.vars.insert(
            "CONTAINERD_ADDRESS".into(),
            ctr.address.to_string_lossy().into(),
        );
        st.vars
            .insert("CONTAINERD_NAMESPACE".into(), ctr.namespace.clone());
        st.vars.insert(
            "STL_CTR_RUN_OPTS".into(),
            format!(
                "--fifo-dir {} --runc-root {}",
                ctr.fifo_dir.display(),
                ctr.runc_root.display()
            ),
        );
        st.runc_root = Some(ctr.runc_root.clone());
        st.containerd = Some(ctr.address.clone());
        containerd = Some(c);
    }
    // everything is up: detach and record PIDs (in stop order)
    if let Some(c) = containerd {
        let pid = c.detach();
        record(&mut st, "containerd", pid);
    }
    if let Some(s) = starling {
        let pid = s.detach();
        record(&mut st, "starling", pid);
    }
    if let Some(p) = peer {
        let pid = p.detach();
        record(&mut st, "peer", pid);
    }
    if let Some(l) = shaped {
        let (r, p) = l.detach();
        record(&mut st, "delay-proxy", p);
        record(&mut st, "registry-shaped", r);
    }
    let mut reg = reg;
    let pid = reg.daemon().forget();
    record(&mut st, "registry", pid);
    save(&dir, &st)?;
    print_env(&st);
    Ok(())
}

fn print_env(st: &State) {
    for (k, v) in &st.vars {
        println!("export {k}='{}'", v.replace('\'', "'\\''"));
    }
}

fn stop_pid(p: &Proc) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !alive(p) {
        return;
    }
    let pid = Pid::from_raw(p.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let gone = integration::poll::wait_for(&p.name, Duration::from_secs(10), || !alive(p)).is_ok();
    if !gone {
        eprintln!("{} (pid {}) ignored SIGTERM; killing", p.name, p.pid);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = integration::poll::wait_for(&p.name, Duration::from_secs(5), || !alive(p));
    }
    // detached processes lead their own process group: take helpers with them
    let _ = kill(Pid::from_raw(-(p.pid as i32)), Signal::SIGKILL);
    println!("stopped {} (pid {})", p.name, p.pid);
}

fn down(dir: &Path, purge: bool) -> Result<()> {
    let dir = std::path::absolute(dir)?;
    let st = load(&dir)?;
    if let (Some(addr), Some(p)) = (
        &st.containerd,
        st.processes.iter().find(|p| p.name == "containerd"),
    ) {
        if alive(p) {
            let ctr = Ctr {
                program: "ctr".into(),
                address: addr.clone(),
                namespace: st.namespace.clone(),
                timeout: Duration::from_secs(60),
                runc_root: st.runc_root.clone().unwrap_or_default(),
                fifo_dir: dir.join("containerd/fifo"),
            };
            if let Err(e) = ctr.remove_all_containers() {
                eprintln!("warning: removing containers: {e}");
            }
        }
    }
    for p in &st.processes {
        stop_pid(p);
    }
    // A starling daemon's fd store holder outlives it by design (it keeps lazy mounts for
    // the next start): take it down too, by PID.
    let holders =
        integration::process::pids_with_cmdline(&format!("fdstore --socket {}", dir.display()));
    for pid in holders {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(r) = &st.runc_root {
        cleanup_runc(r);
    }
    if let Some(slot) = st.slot {
        ShapedLink::remove_slot(slot);
    }
    let n = integration::mounts::unmount_under(&dir)?;
    if n > 0 {
        println!("unmounted {n} leftover mounts under {}", dir.display());
    }
    if purge {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    } else {
        let _ = std::fs::remove_file(state_path(&dir));
    }
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let st = load(dir)?;
    let mut all = true;
    for p in &st.processes {
        let a = alive(p);
        all &= a;
        println!(
            "{:16} pid {:7} {}",
            p.name,
            p.pid,
            if a { "running" } else { "NOT RUNNING" }
        );
    }
    for (k, v) in &st.vars {
        println!("{k}={v}");
    }
    if !all {
        bail!("some processes are not running");
    }
    Ok(())
}

fn proxy(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    delay_ms: u64,
) -> Result<()> {
    let mut o = ProxyOptions::to(upstream);
    o.listen = listen;
    o.one_way_delay = Duration::from_millis(delay_ms);
    let p = TcpProxy::start(o)?;
    println!(
        "delay proxy {} -> {upstream}, one-way delay {delay_ms} ms",
        p.addr()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up(a) => up(a),
        Cmd::Down { state, purge } => down(&state, purge),
        Cmd::Status { state } => status(&state),
        Cmd::Env { state } => {
            print_env(&load(&std::path::absolute(&state)?)?);
            Ok(())
        }
        Cmd::Proxy {
            listen,
            upstream,
            delay_ms,
        } => proxy(listen, upstream, delay_ms),
        Cmd::Image { name } => {
            let c = integration::images::by_name(&name)?;
            eprintln!("{} (built in {:.0} s)", c.key, c.build_secs.unwrap_or(0.0));
            println!("{}", c.layout.display());
            Ok(())
        }
    }
}
