//! Read-ahead of what a container start needs, with real containerd, runc, docker-registry
//! and the starling daemon (pydeb, whose config runs `python3`):
//!
//! - while the image is lazily pulled, starling fetches the image's program
//!   (`/usr/bin/python3` → `python3.11`, found through `PATH` and the symlink across the
//!   image's layers) and, from its ELF headers, the dynamic loader, `/etc/ld.so.cache` and
//!   the shared libraries it needs, which live in the base layer; and the start files
//!   (`/etc/passwd`, `/etc/group`). Proof: with the registry stopped after the pull,
//!   `python3 -V` still runs, and its output equals overlayfs'. The top layer is opened
//!   ahead during the base layer's Prepare and taken over by its own (the log says so);
//! - with `fetch.program_read_ahead` off, the same run fails (python is not local), so the
//!   first check cannot pass by accident.
//!
//! The harness runs commands through `/bin/sh`, so both add `/bin/sh` to
//! `fetch.start_files`: dash and, through its ELF headers, the C library are read ahead
//! at mount in both tests.
//!
//! Both read ELF files ahead whole (`fetch.elf_read_ahead_extent = "whole"`): by default
//! only what the loader touches is read ahead and the code comes on demand, which needs the
//! registry (what that default fetches is pinned by the unit tests in `fusefs::layer`).

use std::time::{Duration, Instant};

use integration::images::pydeb;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};

const VERSION: &[&str] = &["python3", "-V"];
/// No locale files: python's start coerces the C locale to C.UTF-8 (PEP 538) and maps
/// its `LC_CTYPE`, which neither read-ahead covers.
const PLAIN_C: &[&str] = &["--env", "LC_ALL=C", "--env", "PYTHONCOERCECLOCALE=0"];

fn stack(name: &str, program_read_ahead: bool) -> Stack {
    let start: Vec<toml::Value> = ["/etc/passwd", "/etc/group", "/etc/localtime", "/bin/sh"]
        .iter()
        .map(|f| toml::Value::from(*f))
        .collect();
    let cfg = StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.background_fetch", false)
        .set("fetch.program_read_ahead", program_read_ahead)
        .set("fetch.elf_read_ahead", true)
        .set("fetch.elf_read_ahead_extent", "whole")
        .set("fetch.start_files", start)
        .set("fetch.request_timeout", "3s")
        .set("fetch.read_timeout", "6s")
        .set("fetch.max_retries", 1i64);
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(cfg),
                log_level: Some("info,fusefs=debug".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Waits until the fetched byte count has not moved for a second (read-ahead finished).
fn wait_until_quiet(s: &Stack) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = s.fetched_bytes().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = s.fetched_bytes().unwrap();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Pushes pydeb plain and eStargz; returns (plain, esgz) references.
fn images(s: &Stack) -> (String, String) {
    pydeb()
        .unwrap()
        .push(&s.registry, "latest", "py:plain")
        .unwrap();
    let (plain, esgz) = (
        s.registry.reference("py:plain"),
        s.registry.reference("py:esgz"),
    );
    client::run(["convert", "--plain-http", &plain, &esgz], client::TIMEOUT)
        .unwrap()
        .check()
        .unwrap();
    (plain, esgz)
}

#[test]
fn the_images_program_and_its_libraries_are_fetched_during_the_pull() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let mut s = stack("ra-on", true);
    let (plain, esgz) = images(&s);
    let ctr = s.ctr().clone();
    ctr.pull(&plain, "overlayfs").unwrap();
    let expected = ctr.run_ok(&plain, "overlayfs", VERSION).unwrap();
    assert!(expected.starts_with("Python 3."), "{expected}");

    client::rpull_ok(&ctr, &esgz, "starling").unwrap();
    let bytes = wait_until_quiet(&s);
    s.registry.stop().unwrap();
    // Nothing can be fetched now: python, its loader and libraries must be local.
    let out = ctr.run_with(&esgz, "starling", PLAIN_C, VERSION).unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, expected);
    let log = s.starling().unwrap().log();
    assert!(
        log.contains("reading ahead the image's program")
            && log.contains("file=usr/bin/python3.11"),
        "{log}"
    );
    assert!(log.contains("reading ahead what the loader needs"), "{log}");
    // The top layer was opened ahead during the base layer's Prepare and taken over by its
    // own (no second footer and TOC fetch). Whether the program's read-ahead then started
    // before the top layer's Prepare depends on how fast the manifest and config came
    // (usually it does); it is reported, not asserted.
    assert!(
        log.contains("taking over the layer opened ahead of its Prepare"),
        "{log}"
    );
    let early = log.lines().any(|l| {
        l.contains("reading ahead the image's program") && l.contains("ahead_of_prepare=true")
    });
    eprintln!("program read ahead before the top layer's Prepare: {early}");
    eprintln!("read ahead during the pull: {:.1} MB", bytes / 1e6);
    s.registry.start_again().unwrap();
    ctr.remove_all_images().unwrap();
}

#[test]
fn without_read_ahead_the_same_run_needs_the_registry() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let mut s = stack("ra-off", false);
    let (_plain, esgz) = images(&s);
    let ctr = s.ctr().clone();
    client::rpull_ok(&ctr, &esgz, "starling").unwrap();
    wait_until_quiet(&s);
    s.registry.stop().unwrap();
    let out = ctr.run_with(&esgz, "starling", PLAIN_C, VERSION).unwrap();
    assert!(
        !out.success() && !out.stdout.starts_with("Python 3."),
        "python ran without the registry and without read-ahead: {out:?}"
    );
    // The shell ran (it and libc were read ahead); python could not be loaded.
    assert!(!out.stderr.contains("exec /bin/sh"), "{out:?}");
    s.registry.start_again().unwrap();
    ctr.remove_all_images().unwrap();
}
