//! The chaos suite's snapshot case: snapshot operations through containerd (`ctr
//! snapshots prepare / commit / rm` against starling registered as a proxy snapshotter)
//! while the daemon is SIGKILLed in the middle of some of them and started again; then
//! every snapshot containerd acknowledged must still be there, of the right kind, in
//! containerd's view and starling's ("snapshots lost" = 0), and `ctr snapshots ls` must
//! list exactly them.
//!
//! An operation that failed because the daemon died under it was acknowledged by nobody:
//! its snapshot is left out of the check (counted as "interrupted"). Any other failure
//! fails the test.
//!
//! `STL_CHAOS=full` (`scripts/chaos`): 300 operations, 5 kills; the short form (CI): 40
//! operations, 2 kills. The table goes to stderr and is appended to `STL_CHAOS_OUT`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use integration::containerd::Ctr;
use integration::prereq;
use integration::require;
use integration::stack::{Stack, StackOptions};
use integration::starling::StarlingOptions;
use rand::{Rng, SeedableRng};

const SNAPSHOTTER: &str = "starling";

/// What the model knows of a snapshot containerd acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Active,
    Committed,
}

/// containerd's acknowledged snapshots, as the operations left them.
#[derive(Default)]
struct Model {
    kinds: HashMap<String, Kind>,
    /// Parent of every snapshot ever created (interrupted ones included).
    parent: HashMap<String, String>,
    /// Snapshots an interrupted operation touched: state unknown, never used again.
    unknown: HashSet<String>,
    next: u64,
}

impl Model {
    fn of_kind(&self, kind: Kind) -> Vec<String> {
        let mut v: Vec<String> = self
            .kinds
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Committed snapshots nothing (known or unknown) is based on.
    fn leaves(&self) -> Vec<String> {
        let bases: HashSet<&String> = self.parent.values().collect();
        self.of_kind(Kind::Committed)
            .into_iter()
            .filter(|n| !bases.contains(n))
            .collect()
    }

    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{}", self.next)
    }
}

/// One snapshot operation, with what it changes in the model when acknowledged.
#[derive(Debug, Clone)]
enum Op {
    Prepare { key: String, parent: Option<String> },
    Commit { name: String, key: String },
    Remove { key: String },
}

impl Op {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "snapshots".into(),
            "--snapshotter".into(),
            SNAPSHOTTER.into(),
        ];
        match self {
            Op::Prepare { key, parent } => {
                a.extend(["prepare".into(), key.clone()]);
                a.extend(parent.clone());
            }
            Op::Commit { name, key } => a.extend(["commit".into(), name.clone(), key.clone()]),
            Op::Remove { key } => a.extend(["rm".into(), key.clone()]),
        }
        a
    }

    /// The snapshots it touches.
    fn touches(&self) -> Vec<String> {
        match self {
            Op::Prepare { key, .. } | Op::Remove { key } => vec![key.clone()],
            Op::Commit { name, key } => vec![name.clone(), key.clone()],
        }
    }

    fn apply(&self, m: &mut Model) {
        match self {
            Op::Prepare { key, .. } => {
                m.kinds.insert(key.clone(), Kind::Active);
            }
            Op::Commit { name, key } => {
                m.kinds.remove(key);
                let parent = m.parent.remove(key);
                if let Some(p) = parent {
                    m.parent.insert(name.clone(), p);
                }
                m.kinds.insert(name.clone(), Kind::Committed);
            }
            Op::Remove { key } => {
                m.kinds.remove(key);
                m.parent.remove(key);
            }
        }
    }
}

fn next_op(m: &mut Model, rng: &mut rand::rngs::StdRng) -> Op {
    let active = m.of_kind(Kind::Active);
    let committed = m.of_kind(Kind::Committed);
    let leaves = m.leaves();
    let roll = rng.random_range(0..100);
    if active.is_empty() || roll < 40 {
        let parent = (!committed.is_empty() && rng.random_range(0..4) > 0)
            .then(|| committed[rng.random_range(0..committed.len())].clone());
        let key = m.name("active");
        if let Some(p) = &parent {
            m.parent.insert(key.clone(), p.clone());
        }
        return Op::Prepare { key, parent };
    }
    if roll < 75 || leaves.is_empty() && roll < 90 {
        let key = active[rng.random_range(0..active.len())].clone();
        return Op::Commit {
            name: m.name("committed"),
            key,
        };
    }
    if !leaves.is_empty() && roll >= 90 {
        return Op::Remove {
            key: leaves[rng.random_range(0..leaves.len())].clone(),
        };
    }
    Op::Remove {
        key: active[rng.random_range(0..active.len())].clone(),
    }
}

fn snapshot_kind(ctr: &Ctr, name: &str) -> Option<Kind> {
    let out = ctr
        .ctr(["snapshots", "--snapshotter", SNAPSHOTTER, "info", name])
        .ok()?;
    if !out.success() {
        eprintln!("info {name}: {}", out.stderr.trim());
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    match v["Kind"].as_str()? {
        "Active" => Some(Kind::Active),
        "Committed" => Some(Kind::Committed),
        _ => None,
    }
}

#[test]
fn chaos_snapshot_operations_survive_daemon_kills() {
    require!(prereq::containerd_stack(), prereq::starling_binary());
    let started = Instant::now();
    let full = std::env::var("STL_CHAOS").as_deref() == Ok("full");
    let (ops, kills) = if full { (300, 5) } else { (40, 2) };
    let mut s = Stack::start(
        "chaos-snap",
        StackOptions {
            starling: Some(StarlingOptions::default()),
            ..Default::default()
        },
    )
    .unwrap();
    let ctr = s.containerd.ctr().clone();
    let kill_at: BTreeSet<usize> = (1..=kills).map(|k| k * ops / (kills + 1)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut m = Model::default();
    let (mut acknowledged, mut interrupted, mut errors) = (0u64, 0u64, Vec::new());
    for i in 0..ops {
        let op = next_op(&mut m, &mut rng);
        let out = if kill_at.contains(&i) {
            // The daemon dies while the operation is on its way or being served.
            let (c, args) = (ctr.clone(), op.args());
            let running = std::thread::spawn(move || c.ctr(args));
            std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
            let st = s.starling.as_mut().unwrap();
            st.kill().unwrap();
            let out = running.join().unwrap();
            st.start_again().unwrap();
            ctr.wait_snapshotter(SNAPSHOTTER, Duration::from_secs(60))
                .unwrap();
            match out {
                Ok(o) if o.success() => Some(o),
                other => {
                    eprintln!("operation {i} {op:?} interrupted by the kill: {other:?}");
                    interrupted += 1;
                    m.unknown.extend(op.touches());
                    for t in op.touches() {
                        m.kinds.remove(&t);
                    }
                    None
                }
            }
        } else {
            let o = ctr.ctr(op.args()).unwrap();
            if !o.success() {
                errors.push(format!("operation {i} {op:?}: {}", o.stderr.trim()));
                break;
            }
            Some(o)
        };
        if out.is_some() {
            acknowledged += 1;
            op.apply(&mut m);
        }
    }
    // A last kill and start: everything is read back from the daemon's store.
    let st = s.starling.as_mut().unwrap();
    st.kill().unwrap();
    st.start_again().unwrap();
    ctr.wait_snapshotter(SNAPSHOTTER, Duration::from_secs(60))
        .unwrap();

    let mut lost = Vec::new();
    let mut names: Vec<(&String, &Kind)> = m.kinds.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, kind) in &names {
        let got = snapshot_kind(&ctr, name);
        if got != Some(**kind) {
            lost.push(format!("{name}: expected {kind:?}, got {got:?}"));
        }
    }
    let listed: BTreeSet<String> = ctr.snapshots(SNAPSHOTTER).unwrap().into_iter().collect();
    let expected: BTreeSet<String> = m.kinds.keys().cloned().collect();
    let unexpected: Vec<&String> = listed
        .difference(&expected)
        .filter(|n| !m.unknown.contains(*n))
        .collect();
    let unlisted: Vec<&String> = expected.difference(&listed).collect();
    let agree = unexpected.is_empty() && unlisted.is_empty();
    let survived = errors.is_empty() && lost.is_empty() && agree && !names.is_empty();
    let form = if full { "full" } else { "short" };
    let text = format!(
        "| snapshot operations via containerd ({form} form) | survived | operations | acknowledged | interrupted by a kill | daemon SIGKILLs | snapshots checked | snapshots lost | containerd and starling agree | took |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | prepare / commit / rm, SIGKILL mid-operation | {} | {ops} | {acknowledged} | {interrupted} | {} | {} | {} | {} | {:.0} s |\n",
        if survived { "yes" } else { "**no**" },
        kills + 1,
        names.len(),
        lost.len(),
        if agree { "yes" } else { "no" },
        started.elapsed().as_secs_f64()
    );
    eprintln!("\n{text}");
    if let Ok(out) = std::env::var("STL_CHAOS_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        writeln!(f, "\n{text}").unwrap();
    }
    assert!(errors.is_empty(), "operations failed: {errors:#?}");
    assert!(lost.is_empty(), "snapshots lost: {lost:#?}");
    assert!(
        agree,
        "ctr snapshots ls: not listed {unlisted:?}, unexpected {unexpected:?}"
    );
    assert!(!names.is_empty(), "nothing was checked");
}
