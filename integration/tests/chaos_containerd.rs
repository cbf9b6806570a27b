//! The chaos suite's containerd case: containerd (bookworm's 1.6, and 2.1) restarted
//! (SIGTERM or SIGKILL, gone for a while, then started again with the same config, root and
//! state) while a container runs on a lazily pulled eStargz image and keeps reading files
//! of it that are still remote.
//!
//! starling is containerd's proxy snapshotter with prefetch, background fetch and every
//! read-ahead off, so each file the container reads for the first time is fetched from the
//! registry through the FUSE mount. The container (runc, `ctr run -d`) runs
//! `sha256sum /data/fN` for N = 0, 1, 2, ... (a fresh 8 KiB file each time, ~30 a second)
//! and logs each result with its start and end time (`/proc/uptime`, 10 ms steps) to a
//! host directory; the test checks every digest against its own. Around each restart:
//! the task must still be running (`ctr tasks ls`), the container listed (`ctr c ls`),
//! and the snapshots of the image and the container all there, unchanged, in containerd's
//! view (`ctr snapshots ls` and `info`) and in starling's (the same `ls` against
//! starling's socket): "snapshots lost". After the restarts the reader must go on reading
//! fresh files (fetched from the registry: the metrics count their bytes), a new container
//! on the same image must read right, and removing container and image must leave no
//! snapshot, snapshot directory or FUSE mount of starling behind.
//!
//! A containerd restart does not touch starling's FUSE mounts (the kernel serves the
//! container's reads from starling directly), so no read may fail or return a wrong byte;
//! the latency of the reads that overlap a restart is reported.
//!
//! `STL_CHAOS=full` (`scripts/chaos`): 3 SIGTERM and 3 SIGKILL restarts, containerd gone
//! for 3 s each time, 40 fresh reads between restarts; the short form (CI): one of each,
//! gone for 1 s, 15 reads between. The table (a row per containerd version) goes to stderr
//! and is appended to `STL_CHAOS_OUT`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::containerd::{ContainerdOptions, ContainerdVersion, Ctr};
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, images, prereq, require};
use sha2::{Digest as _, Sha256};

const SNAPSHOTTER: &str = "starling";
/// Size of each data file (one chunk, one range request).
const FILE: u64 = 8 << 10;
/// Data files in the image (`/data/f0` ...): more than the reader gets through.
const FILES: u64 = 1536;
/// A reader that logs nothing for this long is stalled: a hang.
const STALL: Duration = Duration::from_secs(60);
/// `fetch.read_timeout`: a read that takes longer is counted as a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn content(i: u64) -> Content {
    Content::Pattern {
        len: FILE,
        seed: 7000 + i,
    }
}

fn digest(i: u64) -> String {
    hex::encode(Sha256::digest(content(i).to_vec().unwrap()))
}

/// busybox + a layer with [`FILES`] files of [`FILE`] bytes.
fn data_image() -> ImageBuilder {
    let mut l = LayerBuilder::new().dir("data");
    for i in 0..FILES {
        l = l.file(format!("data/f{i}"), content(i));
    }
    images::busybox().unwrap().layer(l)
}

/// Nothing is fetched but what is read: every first read of a file goes to the registry.
fn config() -> StarlingConfig {
    StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.prefetch", false)
        .set("fetch.background_fetch", false)
        .set("fetch.elf_read_ahead", false)
        .set("fetch.program_read_ahead", false)
        .set("fetch.neighbour_read_ahead", 0i64)
        .set("fetch.directory_read_ahead", 0i64)
        .set("fetch.next_chunk_read_ahead", "off")
        .set("fetch.start_files", toml::Value::Array(Vec::new()))
        .set("fetch.stream_threshold", 1.0)
        .set("fetch.read_timeout", format!("{}s", READ_TIMEOUT.as_secs()))
}

/// The reader's script: `sha256sum /data/f<i mod FILES>` for i = 0, 1, ... until
/// `/t/stop` exists, each logged to `/t/log` as `i file t0 t1 status output`.
fn reader_script() -> String {
    format!(
        "i=0; while [ ! -e /t/stop ]; do f=$((i % {FILES})); \
         read t0 x < /proc/uptime; s=$(sha256sum /data/f$f 2>&1); rc=$?; \
         read t1 x < /proc/uptime; echo \"$i $f $t0 $t1 $rc $s\" >> /t/log; \
         i=$((i + 1)); sleep 0.02; done; echo stopped > /t/stopped"
    )
}

/// The host's `/proc/uptime` (the clock the reader logs with).
fn uptime() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// One logged read.
#[derive(Debug, Clone)]
struct Read {
    /// Sequence number (a fresh file while `seq < FILES`).
    seq: u64,
    file: u64,
    t0: f64,
    t1: f64,
    status: i32,
    output: String,
}

impl Read {
    fn parse(line: &str) -> Option<Read> {
        let mut w = line.splitn(6, ' ');
        Some(Read {
            seq: w.next()?.parse().ok()?,
            file: w.next()?.parse().ok()?,
            t0: w.next()?.parse().ok()?,
            t1: w.next()?.parse().ok()?,
            status: w.next()?.parse().ok()?,
            output: w.next().unwrap_or_default().trim().to_string(),
        })
    }

    fn took(&self) -> f64 {
        self.t1 - self.t0
    }

    /// Read without an error and with the wrong digest.
    fn wrong(&self) -> bool {
        self.status == 0 && !self.right()
    }

    fn right(&self) -> bool {
        self.status == 0 && self.output == format!("{}  /data/f{}", digest(self.file), self.file)
    }
}

/// The complete lines of the reader's log.
fn reads(dir: &Path) -> Vec<Read> {
    let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |e| &text[..e]);
    complete.lines().filter_map(Read::parse).collect()
}

/// Waits until the reader has logged `n` more reads than `have`; false if it stalls.
fn wait_for_reads(dir: &Path, n: usize) -> bool {
    let have = reads(dir).len();
    let mut last = (have, Instant::now());
    loop {
        let now = reads(dir).len();
        if now >= have + n {
            return true;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `KEY PARENT KIND` of every snapshot `ctr snapshots ls` lists through `ctr`'s address
/// (containerd's, or starling's own socket: its view).
fn snapshot_list(ctr: &Ctr) -> BTreeSet<String> {
    ctr.ctr_ok(["snapshots", "--snapshotter", SNAPSHOTTER, "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Both views of the snapshots: (containerd's, starling's).
fn views(ctr: &Ctr, starling: &Ctr) -> (BTreeSet<String>, BTreeSet<String>) {
    (snapshot_list(ctr), snapshot_list(starling))
}

/// Snapshots of `before` missing from `after` or changed, plus containerd's snapshots
/// whose `ctr snapshots info` fails (it asks starling).
fn lost(ctr: &Ctr, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    let mut lost: Vec<String> = before.difference(after).cloned().collect();
    for s in after {
        let key = s.split(' ').next().unwrap_or_default();
        let info = ctr.ctr(["snapshots", "--snapshotter", SNAPSHOTTER, "info", key]);
        if !info.as_ref().is_ok_and(|o| o.success()) {
            lost.push(format!("{key}: info failed: {info:?}"));
        }
    }
    lost
}

/// The task's status in `ctr tasks ls` and whether `ctr c ls` lists the container.
fn task_status(ctr: &Ctr, id: &str) -> (String, bool) {
    let tasks = ctr.ctr_ok(["tasks", "ls"]).unwrap_or_default();
    let status = tasks
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("missing")
        .to_string();
    let listed = ctr
        .ctr_ok(["containers", "ls", "-q"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == id);
    (status, listed)
}

/// FUSE mounts below starling's root.
fn fuse_mounts(root: &Path) -> Vec<PathBuf> {
    integration::mounts::mounts_under(root)
        .unwrap()
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse"))
        .map(|m| m.mount_point)
        .collect()
}

fn snapshot_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Term,
    Kill,
}

/// One restart: its kind and when containerd went away and answered again (uptime).
#[derive(Debug)]
struct Window {
    kind: Restart,
    from: f64,
    to: f64,
}

#[test]
fn containerd_restarts_leave_a_lazy_container_reading_right() {
    let versions = [ContainerdVersion::V1_6, ContainerdVersion::V2_1];
    require!(
        prereq::containerd_stack(),
        prereq::starling_binary(),
        ContainerdVersion::V2_1.check()
    );
    let full = std::env::var("STL_CHAOS").as_deref() == Ok("full");
    let form = if full { "full" } else { "short" };
    let mut text = format!(
        "| containerd restart, lazy container reading ({form} form) | containerd | survived | restarts (SIGTERM + SIGKILL) | reads | during restarts | fresh files read after the first | errors | bad bytes served | hangs | max read latency (during restarts) | containerd down, answering after start (max) | task running after each | snapshots checked | snapshots lost | new container reads right | mounts released | took |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut failures = Vec::new();
    for v in versions {
        let (row, failed) = restarts(v, full);
        text += &row;
        failures.extend(
            failed
                .into_iter()
                .map(|f| format!("containerd {}: {f}", v.name())),
        );
    }
    eprintln!("\n{text}");
    if let Ok(out) = std::env::var("STL_CHAOS_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        writeln!(f, "\n{text}").unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The case on containerd `version`: its table row and what failed.
fn restarts(version: ContainerdVersion, full: bool) -> (String, Vec<String>) {
    let started = Instant::now();
    let (rounds, between, down) = if full {
        (3, 40, Duration::from_secs(3))
    } else {
        (1, 15, Duration::from_secs(1))
    };
    let mut s = Stack::start(
        &format!("chaos-ctrd{}", version.name().replace('.', "")),
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(config()),
                ..Default::default()
            }),
            containerd: ContainerdOptions::default().version(version),
            ..Default::default()
        },
    )
    .unwrap();
    let ctr = s.ctr().clone();
    let root = s.starling().unwrap().root().to_path_buf();
    // starling's own view: `ctr` (1.6's, whichever containerd runs) on its socket.
    let starling_ctr = Ctr {
        program: ContainerdVersion::V1_6.ctr(),
        address: s.starling().unwrap().socket().to_path_buf(),
        ..ctr.clone()
    };

    data_image().push(&s.registry, "data:plain").unwrap();
    let plain = s.registry.reference("data:plain");
    let esgz = s.registry.reference("data:esgz");
    let out = client::run(["convert", "--plain-http", &plain, &esgz], client::TIMEOUT).unwrap();
    assert!(out.success(), "convert: {}", out.stderr);
    client::rpull_ok(&ctr, &esgz, SNAPSHOTTER).unwrap();
    assert_eq!(
        fuse_mounts(&root).len(),
        2,
        "both layers lazy (FUSE mounts under {})",
        root.display()
    );

    // The reader.
    let dir = s.wd.join("reader");
    std::fs::create_dir_all(&dir).unwrap();
    let bind = format!("type=bind,src={},dst=/t,options=rbind:rw", dir.display());
    ctr.run_with(
        &esgz,
        SNAPSHOTTER,
        &["-d", "--mount", &bind],
        &["/bin/sh", "-c", &reader_script()],
    )
    .unwrap()
    .check()
    .unwrap();
    let id = ctr
        .ctr_ok(["containers", "ls", "-q"])
        .unwrap()
        .lines()
        .next()
        .expect("the reader container")
        .trim()
        .to_string();
    let mut stalled = !wait_for_reads(&dir, between);
    let before = views(&ctr, &starling_ctr);
    assert!(
        before.0.len() >= 3 && before.1.len() == before.0.len(),
        "snapshots before the restarts: containerd {:?}, starling {:?}",
        before.0,
        before.1
    );
    eprintln!(
        "containerd {}: snapshots in containerd's view {:?}, in starling's {:?}",
        version.name(),
        before.0,
        before.1
    );
    let fetched_at_first = s.fetched_bytes().unwrap();

    let mut windows = Vec::new();
    let mut lost_all = Vec::new();
    let mut not_running = Vec::new();
    let mut back_max = 0f64;
    let kinds = (0..rounds).flat_map(|_| [Restart::Term, Restart::Kill]);
    for kind in kinds {
        if stalled {
            break;
        }
        let from = uptime();
        match kind {
            Restart::Term => {
                let st = s.containerd.daemon().stop().unwrap();
                assert!(st.is_some(), "containerd was not running");
            }
            Restart::Kill => s.containerd.daemon().kill().unwrap(),
        }
        std::thread::sleep(down);
        let again = uptime();
        s.containerd.start_again().unwrap();
        ctr.wait_snapshotter(SNAPSHOTTER, Duration::from_secs(60))
            .unwrap();
        let to = uptime();
        back_max = back_max.max(to - again);
        eprintln!(
            "containerd {} {kind:?}: gone for {:.2} s, answered {:.2} s after its start",
            version.name(),
            to - from,
            to - again
        );
        windows.push(Window { kind, from, to });
        let (status, listed) = task_status(&ctr, &id);
        if status != "RUNNING" || !listed {
            not_running.push(format!("after {kind:?}: task {status}, listed {listed}"));
        }
        let after = views(&ctr, &starling_ctr);
        for l in lost(&ctr, &before.0, &after.0) {
            lost_all.push(format!("containerd's view after {kind:?}: {l}"));
        }
        for l in before.1.difference(&after.1) {
            lost_all.push(format!("starling's view after {kind:?}: {l}"));
        }
        stalled = !wait_for_reads(&dir, between);
    }
    let fetched_after = s.fetched_bytes().unwrap() - fetched_at_first;

    // A new container on the same image: fresh files (never read yet) and read ones.
    let fresh: Vec<u64> = (FILES - 6..FILES).collect();
    let mut cmd = vec!["sha256sum".to_string()];
    cmd.extend(fresh.iter().chain(&[0, 1]).map(|i| format!("/data/f{i}")));
    let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let got = ctr.run(&esgz, SNAPSHOTTER, &cmd_ref).unwrap();
    let want: String = fresh
        .iter()
        .chain(&[0, 1])
        .map(|i| format!("{}  /data/f{i}\n", digest(*i)))
        .collect();
    let new_right = got.success() && got.stdout == want;

    // Stop the reader; remove container and image; starling must release everything.
    std::fs::write(dir.join("stop"), b"").unwrap();
    let reader_exited =
        integration::poll::wait_for("reader stopped", STALL, || dir.join("stopped").exists())
            .is_ok();
    let log = reads(&dir);
    let _ = integration::poll::wait_for("task stopped", Duration::from_secs(30), || {
        task_status(&ctr, &id).0 == "STOPPED"
    });
    ctr.ctr_ok(["tasks", "rm", &id]).unwrap();
    ctr.ctr_ok(["containers", "rm", &id]).unwrap();
    ctr.remove_all_images().unwrap();
    let mut left = String::new();
    let released = integration::poll::wait_for("GC", Duration::from_secs(60), || {
        let _ = ctr.collect_garbage();
        let snaps = snapshot_list(&ctr);
        let theirs = snapshot_list(&starling_ctr);
        let (dirs, mounts) = (snapshot_dirs(&root), fuse_mounts(&root));
        left = format!(
            "containerd {snaps:?}, starling {theirs:?}, dirs {dirs:?}, FUSE mounts {mounts:?}"
        );
        snaps.is_empty() && theirs.is_empty() && dirs.is_empty() && mounts.is_empty()
    })
    .is_ok();

    // The figures.
    let during = |r: &Read| windows.iter().any(|w| r.t0 <= w.to && r.t1 >= w.from);
    let first = windows.first().map_or(f64::MAX, |w| w.from);
    let errors: Vec<&Read> = log.iter().filter(|r| r.status != 0).collect();
    let wrong: Vec<&Read> = log.iter().filter(|r| r.wrong()).collect();
    let hangs = log
        .iter()
        .filter(|r| r.took() > READ_TIMEOUT.as_secs_f64())
        .count()
        + usize::from(stalled);
    let max = log.iter().map(Read::took).fold(0f64, f64::max);
    let in_windows: Vec<&Read> = log.iter().filter(|r| during(r)).collect();
    let max_during = in_windows.iter().map(|r| r.took()).fold(0f64, f64::max);
    let fresh_after = log
        .iter()
        .filter(|r| r.seq < FILES && r.t0 >= first)
        .count();
    let terms = windows.iter().filter(|w| w.kind == Restart::Term).count();
    eprintln!(
        "containerd {}: fetched from the registry after the first restart: {fetched_after:.0} \
         bytes ({fresh_after} fresh files of {FILE} bytes read)",
        version.name()
    );

    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    check(!stalled, format!("the reader stalled: {:?}", log.last()));
    check(errors.is_empty(), format!("reads failed: {errors:#?}"));
    check(wrong.is_empty(), format!("wrong bytes read: {wrong:#?}"));
    check(hangs == 0, format!("{hangs} reads over {READ_TIMEOUT:?}"));
    check(not_running.is_empty(), format!("{not_running:?}"));
    check(
        lost_all.is_empty(),
        format!("snapshots lost: {lost_all:#?}"),
    );
    check(
        !in_windows.is_empty(),
        format!("no read overlapped a restart: {windows:?}"),
    );
    check(
        fresh_after >= between * windows.len(),
        format!("too few fresh files read after the first restart: {fresh_after}"),
    );
    check(
        fetched_after >= (fresh_after as u64 * FILE / 2) as f64,
        format!(
            "fresh files read after the first restart came from the registry: \
             {fetched_after} bytes fetched for {fresh_after} files"
        ),
    );
    check(
        new_right,
        format!("new container after the restarts: {got:?}\nwant {want}"),
    );
    check(reader_exited, "the reader did not stop".into());
    check(
        released,
        format!("left behind after container + image rm: {left}"),
    );
    let row = format!(
        "| containerd SIGTERM / SIGKILL + start | {} | {} | {terms} + {} | {} | {} | {fresh_after} | {} | {} | {hangs} | {max:.2} s ({max_during:.2} s) | {} s, {back_max:.2} s | {} | {} | {} | {} | {} | {:.0} s |\n",
        version.name(),
        if failed.is_empty() { "yes" } else { "**no**" },
        windows.len() - terms,
        log.len(),
        in_windows.len(),
        errors.len(),
        wrong.len(),
        down.as_secs(),
        if not_running.is_empty() { "yes" } else { "**no**" },
        before.0.len() + before.1.len(),
        lost_all.len(),
        if new_right { "yes" } else { "**no**" },
        if released { "yes" } else { "**no**" },
        started.elapsed().as_secs_f64()
    );
    (row, failed)
}
