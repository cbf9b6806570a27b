//! The harness's binaries work from a shell: `treecmp` exit codes and output.

use std::process::Command;

use integration::workdir::Workdir;

#[test]
fn treecmp_binary_reports_and_exits() {
    let wd = Workdir::new("tcbin").unwrap();
    let (a, b) = (wd.subdir("a").unwrap(), wd.subdir("b").unwrap());
    std::fs::write(a.join("f"), b"1").unwrap();
    std::fs::write(b.join("f"), b"1").unwrap();
    let bin = env!("CARGO_BIN_EXE_treecmp");
    let eq = Command::new(bin).arg(&a).arg(&b).output().unwrap();
    assert_eq!(
        eq.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&eq.stdout)
    );
    std::fs::write(b.join("f"), b"2").unwrap();
    std::fs::write(b.join("g"), b"").unwrap();
    let ne = Command::new(bin).arg(&a).arg(&b).output().unwrap();
    let out = String::from_utf8_lossy(&ne.stdout);
    assert_eq!(ne.status.code(), Some(1));
    assert!(
        out.contains("f: Content") && out.contains("g: OnlyRight"),
        "{out}"
    );
    let ig = Command::new(bin)
        .arg(&a)
        .arg(&b)
        .args(["--ignore", "g", "--no-content"])
        .output()
        .unwrap();
    assert_eq!(
        ig.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ig.stdout)
    );
    let err = Command::new(bin)
        .arg(wd.join("missing"))
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(2));
}

#[test]
fn stl_env_up_status_down() {
    integration::require!(
        integration::prereq::containerd_stack(),
        integration::prereq::netns()
    );
    let bin = env!("CARGO_BIN_EXE_stl-env");
    let wd = Workdir::new("stlenv").unwrap();
    let state = wd.join("s");
    let up = Command::new(bin)
        .args(["up", "--shaped", "--images", "busybox", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let env = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        env.contains("export CONTAINERD_ADDRESS=") && env.contains("export STL_SHAPED_REGISTRY="),
        "{env}"
    );
    let st = Command::new(bin)
        .arg("status")
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let script = format!(
        "eval \"$({bin} env --state {s})\" && ctr images pull --plain-http $STL_SHAPED_REGISTRY/busybox:latest >/dev/null && \
         ctr run --rm $STL_CTR_RUN_OPTS $STL_SHAPED_REGISTRY/busybox:latest t-stl-env echo ok-from-bash",
        s = state.display()
    );
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "ok-from-bash\n",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let pids: Vec<u32> = String::from_utf8_lossy(&st.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).and_then(|p| p.parse().ok()))
        .collect();
    assert_eq!(pids.len(), 4, "{}", String::from_utf8_lossy(&st.stdout));
    let down = Command::new(bin)
        .args(["down", "--purge", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for p in pids {
        assert!(
            !integration::process::pid_running(p),
            "pid {p} still running"
        );
    }
    assert!(!state.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(wd.path().to_str().unwrap()),
        "mounts left under {}",
        wd.path().display()
    );
}
