//! The chaos suite: faults injected against the starling binary while files of a lazily
//! mounted layer (`starling mount`, the daemon's FUSE code) are read, and the figures a
//! user can quote: faults survived, bad bytes served, hangs, max read latency.
//!
//! Faults: the registry killed, frozen (SIGSTOP), blackholed (connections accepted, no
//! answer), a proxy flipping a byte in 5 % and 50 % of range responses, 429 and 503
//! storms (half of all requests), the cache directory full (ENOSPC: a 1 MiB tmpfs) and
//! read-only (remounted `ro`). Under each fault fresh files are read (4 at a time; an
//! EIO is retried once at once, as the kernel does); then the fault is cleared and every
//! file that failed must read back right (recovery).
//!
//! A fault is survived when no read returned a wrong byte, no read took longer than
//! `fetch.read_timeout` (plus 1.5 s for scheduling on a loaded 2-CPU VM: a "hang"), every
//! failed file read back right after the fault, and nothing wrong was cached.
//!
//! `STL_CHAOS=full` (what `scripts/chaos` runs) uses the default-like `read_timeout` of
//! 20 s and more reads per fault; the short form (CI) 4 s. The table goes to stderr and,
//! with `STL_CHAOS_OUT=FILE`, is appended to FILE (Markdown). Snapshot operations across
//! daemon kills are `chaos_snapshots.rs`. `docs/reliability.md` keeps the latest
//! figures.

mod fuse_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_common::{push, starling_convert, LazyMount};
use integration::faults::{Fault, FaultProxy};
use integration::oci::content::pattern_byte;
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::prereq;
use integration::registry::Registry;
use integration::require;
use integration::workdir::Workdir;
use sha2::{Digest as _, Sha256};

/// Size of each test file: one chunk, one range request.
const FILE: u64 = 96 << 10;

struct Form {
    name: &'static str,
    read_timeout: Duration,
    /// Reads per fault (in rounds of 4 concurrent reads).
    reads: u64,
}

fn form() -> Form {
    if std::env::var("STL_CHAOS").as_deref() == Ok("full") {
        Form {
            name: "full",
            read_timeout: Duration::from_secs(20),
            reads: 16,
        }
    } else {
        Form {
            name: "short",
            read_timeout: Duration::from_secs(4),
            reads: 4,
        }
    }
}

fn expected(i: u64) -> Vec<u8> {
    (0..FILE).map(|o| pattern_byte(i, o)).collect()
}

/// One fault's figures.
#[derive(Debug, Default, Clone)]
struct Row {
    fault: String,
    reads: u64,
    ok: u64,
    eio: u64,
    bad: u64,
    hangs: u64,
    max: Duration,
    recovered: bool,
    cache_ok: bool,
    /// The fault really happened (EIO seen, bytes flipped, statuses injected, requests
    /// held, ENOSPC / EROFS logged by the mount).
    seen: bool,
}

impl Row {
    fn survived(&self) -> bool {
        self.bad == 0 && self.hangs == 0 && self.recovered && self.cache_ok && self.seen
    }
}

/// Reads file `i` of the mount: (content or errno, time taken).
fn read_file(mp: &Path, i: u64) -> (Result<Vec<u8>, i32>, Duration) {
    let t = Instant::now();
    let r = std::fs::read(mp.join(format!("f{i}"))).map_err(|e| e.raw_os_error().unwrap_or(-1));
    (r, t.elapsed())
}

/// A lazy mount of the test layer through the fault proxy, with its own root and cache.
struct Mounted {
    mount: LazyMount,
    cache: PathBuf,
    /// The mount's log.
    log: PathBuf,
}

struct Env {
    wd: Workdir,
    registry: Registry,
    proxy: FaultProxy,
    digest: String,
    name: String,
    form: Form,
    next: u64,
    files: u64,
}

impl Env {
    fn config(&self, cache: &Path, max_size: &str) -> String {
        format!(
            "[fetch]\nprefetch = false\nbackground_fetch = false\nelf_read_ahead = false\n\
             program_read_ahead = false\nneighbour_read_ahead = 0\nstart_files = []\n\
             stream_threshold = 1.0\nread_timeout = \"{}s\"\nrequest_timeout = \"{}s\"\n\
             max_retries = 8\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n\
             [cache]\ndir = \"{}\"\nmax_size = \"{max_size}\"\n[fuse]\npassthrough = false\n",
            self.form.read_timeout.as_secs(),
            (self.form.read_timeout.as_secs() / 2).max(1),
            cache.display()
        )
    }

    fn mount(&self, tag: &str, cache: &Path, max_size: &str) -> Mounted {
        let root = self.wd.join(format!("root-{tag}"));
        std::fs::create_dir_all(&root).unwrap();
        let config = root.join("starling.toml");
        std::fs::write(&config, self.config(cache, max_size)).unwrap();
        let reference = format!("{}/{}", self.proxy.host(), self.name);
        let mount = LazyMount::start(
            &root,
            &config,
            &reference,
            &self.digest,
            &self.wd.join(format!("mnt-{tag}")),
        )
        .unwrap();
        Mounted {
            log: root.join(format!("mount-{}.log", &self.digest[7..19])),
            mount,
            cache: cache.to_path_buf(),
        }
    }

    fn fresh(&mut self, n: u64) -> Vec<u64> {
        let v: Vec<u64> = (self.next..self.next + n).collect();
        self.next += n;
        assert!(self.next <= self.files, "the test image has too few files");
        v
    }

    /// Runs one fault: `inject`, `times` × the form's reads, `clear`, recovery reads;
    /// `seen` tells whether the fault happened.
    fn fault(
        &mut self,
        name: &str,
        m: &Mounted,
        times: u64,
        inject: impl FnOnce(&mut Env),
        clear: impl FnOnce(&mut Env),
        seen: impl FnOnce(&Env, &Row) -> bool,
    ) -> Row {
        let files = self.fresh(self.form.reads * times);
        let bound = self.form.read_timeout + Duration::from_millis(1500);
        inject(self);
        let mut row = Row {
            fault: name.to_string(),
            ..Default::default()
        };
        let mut failed = Vec::new();
        for round in files.chunks(4) {
            let mp = Arc::new(m.mount.mountpoint.clone());
            let handles: Vec<_> = round
                .iter()
                .map(|&i| {
                    let mp = mp.clone();
                    std::thread::spawn(move || {
                        let first = read_file(&mp, i);
                        // The kernel (and many programs) ask again right after an EIO.
                        let again = first.0.is_err().then(|| read_file(&mp, i));
                        (i, first, again)
                    })
                })
                .collect();
            for h in handles {
                let (i, first, again) = h.join().unwrap();
                let want = expected(i);
                let mut total = Duration::ZERO;
                for (r, took) in std::iter::once(first).chain(again) {
                    row.reads += 1;
                    total += took;
                    match r {
                        Ok(data) if data == want => row.ok += 1,
                        Ok(_) => row.bad += 1,
                        Err(libc::EIO) => row.eio += 1,
                        Err(e) => panic!("{name}: f{i}: unexpected errno {e}"),
                    }
                }
                // The first read and its retry together: the data was asked for once.
                row.max = row.max.max(total);
                if total > bound {
                    row.hangs += 1;
                }
                failed.push(i);
            }
        }
        clear(self);
        // Recovery: every file of the fault reads back right.
        let deadline = Instant::now() + self.form.read_timeout * 3 + Duration::from_secs(10);
        row.recovered = failed.iter().all(|&i| loop {
            match read_file(&m.mount.mountpoint, i).0 {
                Ok(data) => break data == expected(i),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(_) => break false,
            }
        });
        row.cache_ok = cache_is_sound(&m.cache);
        row.seen = seen(self, &row);
        eprintln!("chaos {name}: {row:?}");
        row
    }
}

/// Every cache entry's content matches its name (its digest): nothing wrong was cached.
fn cache_is_sound(dir: &Path) -> bool {
    let mut sound = true;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue; // temporary or index files
            }
            let data = std::fs::read(&p).unwrap_or_default();
            if hex::encode(Sha256::digest(&data)) != name {
                eprintln!("corrupt cache entry {}", p.display());
                sound = false;
            }
        }
    }
    sound
}

fn du(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn table(form: &Form, rows: &[Row]) -> String {
    let mut s = format!(
        "| fault ({} form, read_timeout {}s) | survived | fault seen | reads | ok | EIO | bad bytes served | hangs | max read latency | recovered | cache sound |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        form.name,
        form.read_timeout.as_secs()
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {} | {} |\n",
            r.fault,
            if r.survived() { "yes" } else { "**no**" },
            if r.seen { "yes" } else { "no" },
            r.reads,
            r.ok,
            r.eio,
            r.bad,
            r.hangs,
            r.max.as_secs_f64(),
            if r.recovered { "yes" } else { "no" },
            if r.cache_ok { "yes" } else { "no" },
        ));
    }
    let survived = rows.iter().filter(|r| r.survived()).count();
    s.push_str(&format!(
        "\n{survived} of {} faults survived; {} bad bytes served; {} hangs; max read latency {:.2} s\n",
        rows.len(),
        rows.iter().map(|r| r.bad).sum::<u64>(),
        rows.iter().map(|r| r.hangs).sum::<u64>(),
        rows.iter().map(|r| r.max).max().unwrap_or_default().as_secs_f64()
    ));
    s
}

#[test]
fn chaos_faults_are_survived() {
    require!(
        prereq::root(),
        prereq::fuse(),
        prereq::registry(),
        prereq::starling_binary()
    );
    let started = Instant::now();
    let form = form();
    let files = form.reads * 30 + 40;
    let wd = Workdir::new("chaos").unwrap();
    let registry = Registry::start(&wd).unwrap();
    let mut layer = LayerBuilder::new();
    for i in 0..files {
        layer = layer.file(format!("f{i}"), Content::Pattern { len: FILE, seed: i });
    }
    let original = ImageBuilder::new()
        .layer(layer)
        .write_layout(&wd.join("orig"), "latest")
        .unwrap();
    let converted = starling_convert(&original, &wd.join("esgz"), "latest", false).unwrap();
    let name = "chaos/files:esgz".to_string();
    push(&registry, &converted.layout, "latest", &name).unwrap();
    let proxy = FaultProxy::start(registry.addr(), 7).unwrap();
    let mut env = Env {
        digest: converted.layers[0].digest.clone(),
        wd,
        registry,
        proxy,
        name,
        form,
        next: 0,
        files,
    };

    let cache = env.wd.join("cache");
    let m = env.mount("main", &cache, "0");
    let mut rows = Vec::new();
    let eio = |_: &Env, r: &Row| r.eio > 0;
    rows.push(env.fault(
        "none (baseline)",
        &m,
        1,
        |_| {},
        |_| {},
        |_, r| r.ok == r.reads,
    ));
    rows.push(env.fault(
        "registry killed",
        &m,
        1,
        |e| e.registry.kill().unwrap(),
        |e| e.registry.start_again().unwrap(),
        eio,
    ));
    rows.push(env.fault(
        "registry frozen (SIGSTOP)",
        &m,
        1,
        |e| signal(e.registry.daemon().pid(), nix::sys::signal::Signal::SIGSTOP),
        |e| signal(e.registry.daemon().pid(), nix::sys::signal::Signal::SIGCONT),
        eio,
    ));
    let held = env.proxy.stats().held.load(Ordering::Relaxed);
    rows.push(env.fault(
        "registry blackholed (no answers)",
        &m,
        1,
        |e| e.proxy.set(Fault::Blackhole),
        |e| e.proxy.set(Fault::Pass),
        move |e, r| r.eio > 0 && e.proxy.stats().held.load(Ordering::Relaxed) > held,
    ));
    for percent in [5, 50] {
        let flipped = env.proxy.stats().flipped.load(Ordering::Relaxed);
        rows.push(env.fault(
            &format!("{percent} % of range responses bit-flipped"),
            &m,
            if percent < 50 { 8 } else { 2 },
            |e| e.proxy.set(Fault::Flip { percent }),
            |e| e.proxy.set(Fault::Pass),
            move |e, _| e.proxy.stats().flipped.load(Ordering::Relaxed) > flipped,
        ));
    }
    for status in [429, 503] {
        let injected = env.proxy.stats().injected.load(Ordering::Relaxed);
        rows.push(env.fault(
            &format!("{status} storm (50 % of requests)"),
            &m,
            2,
            |e| {
                e.proxy.set(Fault::Status {
                    status,
                    percent: 50,
                })
            },
            |e| e.proxy.set(Fault::Pass),
            move |e, _| e.proxy.stats().injected.load(Ordering::Relaxed) > injected,
        ));
    }
    drop(m);

    // The cache directory full (a 1 MiB tmpfs, cap 16 MiB) and then read-only: reads are
    // served from the network, nothing wrong is cached, the cap holds.
    let small = env.wd.join("small-cache");
    std::fs::create_dir_all(&small).unwrap();
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=256k",
        "tmpfs",
        small.to_str().unwrap(),
    ]);
    let m = env.mount("small", &small, "16MiB");
    let log = m.log.clone();
    let logged = move |what: &'static str| {
        let log = log.clone();
        move |_: &Env, _: &Row| {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(what)
        }
    };
    let mut row = env.fault(
        "cache directory full (ENOSPC)",
        &m,
        2,
        |_| {},
        |_| {},
        logged("os error 28"),
    );
    row.cache_ok &= du(&small) <= 16 << 20;
    rows.push(row);
    rows.push(env.fault(
        "cache directory read-only",
        &m,
        2,
        |_| sh(&["mount", "-o", "remount,ro", small.to_str().unwrap()]),
        |_| {},
        logged("os error 30"),
    ));
    drop(m);
    let _ = nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH);

    let text = table(&env.form, &rows);
    eprintln!(
        "\n{text}\nchaos suite ({} form) took {:.0} s",
        env.form.name,
        started.elapsed().as_secs_f64()
    );
    if let Ok(out) = std::env::var("STL_CHAOS_OUT") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.survived()).collect();
    assert!(failed.is_empty(), "faults not survived:\n{text}");
}
