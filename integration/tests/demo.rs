//! `scripts/demo`, README's first command, end to end: it must print the container's output
//! for both the lazy (starling) and the normal (overlayfs) run, and leave no process, mount
//! or state of its own behind — after a normal run, and after `--keep` + `--stop`.
//! Uses the built binaries (`STARLING_BIN`, this crate's `stl-env`) and the cached pydeb
//! image, so it takes about a minute (more when pydeb must be built first).

use std::path::Path;
use std::process::Command;

use integration::prereq;
use integration::starling::{starling_bin, workspace_root};
use integration::workdir::Workdir;

/// What the demo's container prints (see `CMD` in scripts/demo).
const CONTAINER_OUTPUT: &str = "hello from python 3.";

struct DemoRun {
    ok: bool,
    output: String,
}

fn run_demo(args: &[&str]) -> DemoRun {
    let out = Command::new(workspace_root().join("scripts/demo"))
        .args(args)
        .env("STARLING_BIN", starling_bin().expect("starling binary"))
        .env("STL_ENV_BIN", env!("CARGO_BIN_EXE_stl-env"))
        .output()
        .expect("spawn scripts/demo");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    DemoRun {
        ok: out.status.success(),
        output,
    }
}

/// Processes whose command line mentions `dir` (the demo's registry, containerd and
/// starling all get config paths inside it), except zombies.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
            .unwrap_or(true);
        if !zombie && cmd.contains(&needle) {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// After teardown only `logs/` is left in the demo dir, and nothing runs or is mounted.
fn assert_clean(dir: &Path, output: &str) {
    // The script's own log `tee` may still be flushing its last lines when the script has
    // exited: give processes a few seconds to end, then every one left is a leak.
    let mut procs = processes_using(dir);
    for _ in 0..50 {
        if procs.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        procs = processes_using(dir);
    }
    assert!(
        procs.is_empty(),
        "processes left running: {procs:#?}\n{output}"
    );
    let mounts = mounts_under(dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}\n{output}");
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .expect("demo dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["logs"], "state left in {}\n{output}", dir.display());
    assert!(dir.join("logs/demo.log").is_file(), "no demo.log");
}

/// The container's line, printed by the lazy run and the overlayfs run.
fn assert_ran_both(output: &str) {
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(CONTAINER_OUTPUT))
        .collect();
    assert_eq!(lines.len(), 2, "container output twice expected:\n{output}");
    for want in [
        "starling convert",
        "lazy pull: starling rpull",
        "starling status",
        "starling / overlayfs",
    ] {
        assert!(output.contains(want), "{want:?} missing:\n{output}");
    }
    // `starling status` right after the run shows what python read (asked from the daemon,
    // not from status files that lag).
    let line = output
        .lines()
        .find(|l| l.contains("lazy layers:"))
        .unwrap_or_else(|| panic!("no lazy layers line:\n{output}"));
    let kb: u64 = line
        .split("fetched ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fetched figure in {line:?}"));
    assert!(
        kb > 0,
        "status right after the run shows nothing fetched: {line}"
    );
}

/// False (after printing why) when a prerequisite is missing; panics instead in CI.
fn prerequisites() -> bool {
    use integration::require_or;
    require_or!(false;
        prereq::root(),
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    true
}

#[test]
fn demo_runs_and_leaves_nothing_behind() {
    if !prerequisites() {
        return;
    }
    let wd = Workdir::new("demo").unwrap();
    let dir = wd.join("d");
    let run = run_demo(&["--dir", dir.to_str().unwrap()]);
    assert!(run.ok, "scripts/demo failed:\n{}", run.output);
    assert_ran_both(&run.output);
    assert!(
        run.output.contains("demo finished in"),
        "no closing line:\n{}",
        run.output
    );
    assert_clean(&dir, &run.output);
}

#[test]
fn demo_keep_then_stop_leaves_nothing_behind() {
    if !prerequisites() {
        return;
    }
    let wd = Workdir::new("demok").unwrap();
    let dir = wd.join("d");
    let run = run_demo(&["--keep", "--dir", dir.to_str().unwrap()]);
    assert!(run.ok, "scripts/demo --keep failed:\n{}", run.output);
    assert_ran_both(&run.output);
    assert!(
        run.output.contains("scripts/demo --stop"),
        "--keep must say how to stop:\n{}",
        run.output
    );
    let procs = processes_using(&dir);
    assert!(
        procs.len() >= 3,
        "registry, starling and containerd should still run: {procs:#?}"
    );
    let stop = run_demo(&["--stop", dir.to_str().unwrap()]);
    assert!(stop.ok, "scripts/demo --stop failed:\n{}", stop.output);
    assert_clean(&dir, &format!("{}\n{}", run.output, stop.output));
}
