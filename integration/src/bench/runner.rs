//! Runs the samples: for each round, image and workload, every cell in rotated order — clear
//! images and restart the lazy daemon with a fresh root, pull over the shaped link, create
//! the container, start it with its stdout streamed (first byte = time to first output),
//! then read the link counters, the proxy's request count and the daemon's peak RSS. Warm
//! workloads follow their cold parent in the same state, without a pull.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::process::run_cmd;
use crate::workdir::unique_token;

use super::plan::{self, BenchOptions, Cell, Snapshotter, Workload};
use super::setup::{BenchEnv, StarlingPull};
use super::BenchError;

/// Longest a single pull, create or container run may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(1800);

/// One measured run of a workload on a cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Round number (0-based); ratios pair samples of the same round.
    pub round: usize,
    /// Image name.
    pub image: String,
    /// Workload name.
    pub workload: String,
    /// Snapshotter and variant.
    pub cell: Cell,
    /// False when a step failed or the output was wrong (then `error` says why).
    pub ok: bool,
    /// What failed.
    pub error: Option<String>,
    /// Pull seconds (0 for warm runs).
    pub pull_s: f64,
    /// `ctr containers create` seconds.
    pub create_s: f64,
    /// `ctr tasks start` seconds (task create, start, workload, exit).
    pub run_s: f64,
    /// Seconds from the start of the pull to the container's first stdout byte.
    pub first_output_s: Option<f64>,
    /// pull + create + run.
    pub total_s: f64,
    /// Bytes over the shaped link (host veth rx + tx, with headers) until the task exited.
    pub link_bytes: u64,
    /// HTTP requests through the shaped link's proxy until the task exited.
    pub requests: u64,
    /// Daemon peak RSS (VmHWM, KiB) at the end of the run; the daemon is restarted before
    /// each cold run, so this is the peak of this run (and of its cold parent for warm runs).
    pub rss_peak_kib: Option<u64>,
    /// FUSE mounts under the daemon's root after the pull (lazy layers).
    pub lazy_mounts: Option<usize>,
    /// How the image was pulled.
    pub pull_method: String,
    /// 1-minute load average when the run ended (the machine may be shared).
    #[serde(default)]
    pub load1: Option<f64>,
    /// A warm-overlayfs baseline: the cold workload again right after its cold overlayfs
    /// run (image pulled and unpacked, page cache warm, a fresh container).
    #[serde(default)]
    pub baseline: bool,
    /// HTTP requests through the shaped link (method, path, Range) until the task exited;
    /// kept for lazy cold runs when the run asks for it (`keep_fetches`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetches: Vec<crate::proxy::ProxyRequest>,
}

/// Output of a streamed command.
struct Streamed {
    ok: bool,
    first_byte: Option<Instant>,
    end: Instant,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` capturing stdout as it comes (first byte time) and stderr; kills it after
/// `timeout`.
fn run_streamed(cmd: &mut Command, timeout: Duration) -> Result<Streamed, BenchError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("spawn {:?}: {e}", cmd.get_program())))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<Instant>();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = [0u8; 8192];
        let mut first = true;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if first {
                        let _ = tx.send(Instant::now());
                        first = false;
                    }
                    v.extend_from_slice(&buf[..n]);
                }
            }
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(BenchError::Setup(format!("wait: {e}"))),
        }
    };
    let end = Instant::now();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    let first_byte = rx.try_recv().ok();
    match status {
        Some(st) => Ok(Streamed {
            ok: st.success(),
            first_byte,
            end,
            stdout,
            stderr,
        }),
        None => Err(BenchError::Step(format!(
            "timed out after {timeout:?}; stderr: {}",
            stderr.trim()
        ))),
    }
}

/// Waits until containerd really reaches snapshotter `name`: prepares and removes a probe
/// snapshot. (`ctr snapshots ls` in an empty namespace answers from containerd's metadata
/// alone, so it passes while containerd's connection to a restarted proxy plugin is still
/// in reconnect backoff and the next Prepare fails with "connection refused".)
pub fn wait_backend(
    ctr: &crate::containerd::Ctr,
    name: &str,
    timeout: Duration,
) -> Result<(), BenchError> {
    let mut c = ctr.clone();
    c.timeout = Duration::from_secs(10);
    let key = format!("stl-bench-probe-{}", unique_token(8));
    let mut last = String::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match c.ctr(["snapshots", "--snapshotter", name, "prepare", &key, ""]) {
            Ok(o) if o.success() => {
                let _ = c.ctr(["snapshots", "--snapshotter", name, "rm", &key]);
                return Ok(());
            }
            Ok(o) => last = o.stderr.trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BenchError::Setup(format!(
        "snapshotter {name} not reachable through containerd after {timeout:?}: {last}"
    )))
}

/// VmHWM and VmRSS (KiB) of `pid`.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&s)
}

/// Parses VmHWM and VmRSS from `/proc/PID/status` text.
pub fn parse_rss(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

impl BenchEnv {
    /// PID of the daemon behind a lazy snapshotter.
    pub fn daemon_pid(&mut self, s: Snapshotter) -> Option<u32> {
        match s {
            Snapshotter::Overlayfs => None,
            Snapshotter::Starling => self.stack.starling.as_mut().map(|d| d.daemon().pid()),
            Snapshotter::Stargz => self.stack.peer.as_mut().map(|d| d.daemon().pid()),
        }
    }

    /// Root directory of the daemon behind a lazy snapshotter.
    pub fn daemon_root(&self, s: Snapshotter) -> Option<std::path::PathBuf> {
        match s {
            Snapshotter::Overlayfs => None,
            Snapshotter::Starling => self.stack.starling.as_ref().map(|d| d.root().to_path_buf()),
            Snapshotter::Stargz => self.stack.peer.as_ref().map(|d| d.root().to_path_buf()),
        }
    }

    /// FUSE mounts under the daemon's root.
    pub fn lazy_mounts(&self, s: Snapshotter) -> Option<usize> {
        let root = self.daemon_root(s)?;
        crate::mounts::mounts_under(&root)
            .ok()
            .map(|l| l.iter().filter(|m| m.fs_type.starts_with("fuse")).count())
    }

    /// Removes containers and images; restarts every lazy daemon with an empty root (fresh
    /// cache, RSS peak reset, and no background fetch of an earlier run still using the
    /// link), waits until containerd reaches `s` again and the link is quiet.
    pub fn reset_for(&mut self, s: Snapshotter) -> Result<(), BenchError> {
        let ctr = self.ctr().clone();
        ctr.remove_all_containers()?;
        ctr.remove_all_images()?;
        if let Some(p) = self.stack.peer.as_mut() {
            p.restart(true)?;
        }
        if let Some(st) = self.stack.starling.as_mut() {
            st.stop()?;
            let root = st.root().to_path_buf();
            crate::mounts::unmount_under(&root)?;
            std::fs::remove_dir_all(&root)
                .map_err(|e| BenchError::Setup(format!("remove {}: {e}", root.display())))?;
            std::fs::create_dir_all(&root)
                .map_err(|e| BenchError::Setup(format!("create {}: {e}", root.display())))?;
            st.start_again()?;
        }
        if s.is_lazy() {
            wait_backend(&ctr, s.name(), Duration::from_secs(60))?;
        }
        self.wait_link_quiet();
        Ok(())
    }

    /// [`BenchEnv::reset_for`] `cell`'s snapshotter, the starling daemon restarted with the
    /// cell's binary (`--starling-bins`).
    pub fn reset_for_cell(&mut self, cell: Cell) -> Result<(), BenchError> {
        if let (Some(bin), Some(st)) = (
            self.starling_bins.get(cell.bin as usize),
            self.stack.starling.as_mut(),
        ) {
            st.set_binary(bin);
        }
        self.reset_for(cell.snapshotter)
    }

    /// Waits (at most 10 s) until less than 16 KiB cross the shaped link in 250 ms.
    fn wait_link_quiet(&self) {
        let total = |b: crate::shaped::LinkBytes| b.rx + b.tx;
        let mut last = total(self.shaped().link_bytes());
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            let now = total(self.shaped().link_bytes());
            if now - last < 16 * 1024 {
                return;
            }
            last = now;
        }
    }

    /// Pulls `reference` for `s` as the benchmark does; returns the method used.
    pub fn pull(&self, s: Snapshotter, reference: &str) -> Result<String, BenchError> {
        self.pull_cell(Cell::new(s, plan::Variant::Orig), reference)
    }

    /// Pulls `reference` for `cell`'s snapshotter (`starling rpull` of the cell's starling
    /// binary); returns the method used.
    pub fn pull_cell(&self, cell: Cell, reference: &str) -> Result<String, BenchError> {
        let s = cell.snapshotter;
        let ctr = self.ctr();
        let mut ctr_long = ctr.clone();
        ctr_long.timeout = STEP_TIMEOUT;
        match s {
            Snapshotter::Overlayfs => {
                ctr_long.pull(reference, "overlayfs")?;
                Ok("ctr images pull".into())
            }
            Snapshotter::Stargz => {
                ctr_long.rpull(reference, "stargz")?;
                Ok("ctr-remote image rpull".into())
            }
            Snapshotter::Starling => match (self.starling_pull, &self.starling_cli) {
                (StarlingPull::StarlingRpull, Some(cli)) => {
                    let mut cli = cli.clone();
                    if let Some(bin) = self.starling_bins.get(cell.bin as usize) {
                        cli.bin = bin.clone();
                    }
                    run_cmd(&mut cli.rpull_cmd(ctr, "starling", reference), STEP_TIMEOUT)?
                        .check()?;
                    Ok("starling rpull".into())
                }
                _ => {
                    ctr_long.rpull(reference, "starling")?;
                    Ok("ctr-remote image rpull --snapshotter starling".into())
                }
            },
        }
    }

    /// `ctr containers create`, then `ctr tasks start` streamed; returns
    /// (create, run, first output since run start, stdout).
    fn create_and_start(
        &self,
        s: Snapshotter,
        reference: &str,
        w: &Workload,
    ) -> Result<(Duration, Duration, Option<Duration>, String), BenchError> {
        create_and_start(self.ctr(), s.name(), reference, w, &self.scripts_dir)
    }

    /// One run of `w` on `cell`: cold (reset, pull, run) or warm (run only).
    pub fn sample(
        &mut self,
        round: usize,
        image: &str,
        cell: Cell,
        w: &Workload,
        warm: bool,
    ) -> Sample {
        let mut s = Sample {
            round,
            image: image.into(),
            workload: w.name.into(),
            cell,
            ok: false,
            error: None,
            pull_s: 0.0,
            create_s: 0.0,
            run_s: 0.0,
            first_output_s: None,
            total_s: 0.0,
            link_bytes: 0,
            requests: 0,
            rss_peak_kib: None,
            lazy_mounts: None,
            pull_method: if warm {
                "(warm: image present)".into()
            } else {
                String::new()
            },
            load1: None,
            baseline: false,
            fetches: Vec::new(),
        };
        if let Err(e) = self.sample_inner(&mut s, image, cell, w, warm) {
            s.error = Some(e.to_string());
        }
        s.load1 = super::host::load_average().first().copied();
        s
    }

    fn sample_inner(
        &mut self,
        s: &mut Sample,
        image: &str,
        cell: Cell,
        w: &Workload,
        warm: bool,
    ) -> Result<(), BenchError> {
        let snap = cell.snapshotter;
        let reference = self.shaped_ref(image, cell.variant);
        if !warm {
            self.reset_for_cell(cell)?;
        }
        let before = self.shaped().link_bytes();
        self.shaped().reset_proxy_stats();
        let t0 = Instant::now();
        if !warm {
            s.pull_method = self.pull_cell(cell, &reference)?;
        }
        let pull = t0.elapsed();
        s.lazy_mounts = self.lazy_mounts(snap);
        let (create, run, first, _out) = self.create_and_start(snap, &reference, w)?;
        let after = self.shaped().link_bytes();
        s.link_bytes = (after.rx + after.tx).saturating_sub(before.rx + before.tx);
        let proxy = self.shaped().proxy_stats().unwrap_or_default();
        s.requests = proxy.requests;
        if self.keep_fetches && snap.is_lazy() && !warm {
            s.fetches = proxy.requests_log;
        }
        s.pull_s = pull.as_secs_f64();
        s.create_s = create.as_secs_f64();
        s.run_s = run.as_secs_f64();
        s.first_output_s = first.map(|f| (pull + create + f).as_secs_f64());
        s.total_s = (pull + create + run).as_secs_f64();
        s.rss_peak_kib = self.daemon_pid(snap).and_then(rss_kib).map(|r| r.0);
        s.ok = true;
        Ok(())
    }
}

/// Runs workload `w` in a new container of `reference` (already pulled for `snapshotter`)
/// with the scripts of `scripts_dir` bind-mounted at [`plan::SCRIPT_DIR`]: `ctr containers
/// create`, then `ctr tasks start` streamed; the container is removed afterwards. Returns
/// (create, run, first output since run start, stdout); fails when the output lacks the
/// workload's marker.
pub fn create_and_start(
    ctr: &crate::containerd::Ctr,
    snapshotter: &str,
    reference: &str,
    w: &Workload,
    scripts_dir: &std::path::Path,
) -> Result<(Duration, Duration, Option<Duration>, String), BenchError> {
    let id = format!("b{}", unique_token(10).to_lowercase());
    let t0 = Instant::now();
    let mount = format!(
        "type=bind,src={},dst={},options=rbind:ro",
        scripts_dir.display(),
        plan::SCRIPT_DIR
    );
    let cmd = w.command();
    let mut a = vec![
        "containers",
        "create",
        "--snapshotter",
        snapshotter,
        "--mount",
        &mount,
        reference,
        id.as_str(),
    ];
    a.extend(cmd.iter().map(String::as_str));
    let mut c = ctr.clone();
    c.timeout = STEP_TIMEOUT;
    c.ctr_ok(a)?;
    let t1 = Instant::now();
    std::fs::create_dir_all(&ctr.fifo_dir)
        .map_err(|e| BenchError::Setup(format!("create fifo dir: {e}")))?;
    let mut cmd = Command::new("ctr");
    cmd.env("CONTAINERD_ADDRESS", &ctr.address)
        .env("CONTAINERD_NAMESPACE", &ctr.namespace)
        .arg("--address")
        .arg(&ctr.address)
        .arg("--namespace")
        .arg(&ctr.namespace)
        .args(["tasks", "start", "--fifo-dir"])
        .arg(&ctr.fifo_dir)
        .arg(&id);
    let r = run_streamed(&mut cmd, STEP_TIMEOUT);
    let _ = ctr.ctr(["tasks", "rm", "-f", &id]);
    let _ = ctr.ctr(["containers", "rm", &id]);
    let st = r?;
    if !st.ok {
        return Err(BenchError::Step(format!(
            "`ctr tasks start` failed: {}{}",
            st.stderr.trim(),
            st.stdout.trim()
        )));
    }
    let run = st.end - t1;
    let first = st.first_byte.map(|f| f - t1);
    if !st.stdout.contains(w.expect) {
        return Err(BenchError::Step(format!(
            "output lacks {:?}: stdout {:?}, stderr {:?}",
            w.expect,
            st.stdout.chars().take(300).collect::<String>(),
            st.stderr.chars().take(300).collect::<String>()
        )));
    }
    Ok((t1 - t0, run, first, st.stdout))
}

/// Runs every round; `on_sample` sees each sample as it completes (progress, partial
/// results).
pub fn run_rounds(
    env: &mut BenchEnv,
    opts: &BenchOptions,
    cells: &[Cell],
    mut on_sample: impl FnMut(&Sample),
) -> Vec<Sample> {
    let mut all = Vec::new();
    'rounds: for round in 0..opts.runs {
        for image in &opts.images {
            if opts.stop_requested() {
                eprintln!(
                    "bench: {} exists: stopping in round {} before image {image}",
                    opts.stop_file().display(),
                    round + 1
                );
                break 'rounds;
            }
            let selected = opts.workloads_for(image);
            for (cold, cold_selected) in opts.cold_steps(image) {
                let warm: Vec<&Workload> = selected
                    .iter()
                    .copied()
                    .filter(|w| w.after == Some(cold.name))
                    .collect();
                for cell in plan::round_order(cells, round) {
                    let s = env.sample(round, image, cell, cold, false);
                    let cold_ok = s.ok;
                    if cold_selected {
                        on_sample(&s);
                        all.push(s.clone());
                        if cold_ok
                            && opts.warm_baseline
                            && cell.snapshotter == Snapshotter::Overlayfs
                        {
                            let mut b = env.sample(round, image, cell, cold, true);
                            b.baseline = true;
                            on_sample(&b);
                            all.push(b);
                        }
                    } else if !cold_ok {
                        eprintln!(
                            "bench: {} {} {}: cold parent failed: {}",
                            image,
                            cold.name,
                            cell.label(),
                            s.error.as_deref().unwrap_or("")
                        );
                    }
                    for w in &warm {
                        let ws = if cold_ok {
                            env.sample(round, image, cell, w, true)
                        } else {
                            let mut ws = s.clone();
                            ws.workload = w.name.into();
                            ws.ok = false;
                            ws.error = Some(format!("cold parent {} failed", cold.name));
                            ws
                        };
                        on_sample(&ws);
                        all.push(ws);
                    }
                }
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_fields_are_parsed() {
        let t = "Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   50000 kB\n";
        assert_eq!(parse_rss(t), Some((61234, 50000)));
        assert_eq!(parse_rss("Name: x\n"), None);
        let me = rss_kib(std::process::id()).unwrap();
        assert!(me.0 >= me.1 && me.1 > 0);
    }

    #[test]
    fn streamed_output_has_first_byte_before_end() {
        let s = run_streamed(
            Command::new("sh").args(["-c", "echo a; sleep 0.2; echo b"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(s.ok);
        assert_eq!(s.stdout, "a\nb\n");
        let f = s.first_byte.unwrap();
        assert!(f < s.end);
        let e = run_streamed(Command::new("sleep").arg("5"), Duration::from_millis(100));
        assert!(matches!(e, Err(BenchError::Step(_))));
        let q = run_streamed(Command::new("true").arg("x"), Duration::from_secs(5)).unwrap();
        assert!(q.first_byte.is_none());
    }
}
