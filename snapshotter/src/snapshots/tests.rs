//! The core's operations: directories, usage, list, cleanup, merge sources and the
//! remote-layer hook protocol (with a fake hook that writes into the mountpoint instead
//! of mounting). Tests that mount for real are in `tests_root.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;
use crate::remote::{HookError, LayerOutcome, LayerRequest};
use crate::ErrorKind;

pub(super) fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn open(opts: Options) -> (tempfile::TempDir, Snapshots) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshots::open(tmp.path().join("root"), opts).unwrap();
    (tmp, s)
}

fn dirs(s: &Snapshots) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.layout().snapshots_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_commit_view_remove_with_directories() {
    let (_t, s) = open(Options::default());
    let m = s.prepare("ns/1/a", "", Labels::new()).unwrap();
    assert_eq!(m[0].fstype, "bind");
    let info = s.stat("ns/1/a").unwrap();
    assert_eq!(info.kind, Kind::Active);
    assert_eq!(dirs(&s), ["1"]);
    let fs_dir = s.layout().fs_dir(1);
    assert!(s.layout().work_dir(1).is_dir());
    fs::write(fs_dir.join("f"), vec![1u8; 10_000]).unwrap();
    let active = s.usage("ns/1/a").unwrap();
    assert_eq!(active.inodes, 2);
    assert!(active.size >= 10_000);
    s.commit("ns/1/c", "ns/1/a", labels(&[("k", "v")])).unwrap();
    assert_eq!(s.usage("ns/1/c").unwrap(), active, "usage stored at commit");
    fs::write(fs_dir.join("g"), b"late").unwrap();
    assert_eq!(
        s.usage("ns/1/c").unwrap(),
        active,
        "committed usage is not walked again"
    );
    let info = s.stat("ns/1/c").unwrap();
    assert_eq!(
        (info.kind, info.labels),
        (Kind::Committed, labels(&[("k", "v")]))
    );
    assert_eq!(s.stat("ns/1/a").unwrap_err().kind(), ErrorKind::NotFound);

    let m = s.view("ns/1/v", "ns/1/c", Labels::new()).unwrap();
    assert_eq!(
        m[0].source,
        fs_dir.display().to_string(),
        "view of one layer binds it"
    );
    assert_eq!(m[0].options, ["ro", "rbind"]);
    assert!(!s.layout().work_dir(2).exists(), "views have no workdir");
    assert_eq!(s.mounts("ns/1/v").unwrap(), m);
    let m = s.prepare("ns/1/b", "ns/1/c", Labels::new()).unwrap();
    assert_eq!(m[0].fstype, "overlay");
    assert!(m[0]
        .options
        .contains(&format!("lowerdir={}", fs_dir.display())));
    assert_eq!(s.usage("ns/1/v").unwrap(), Usage::default());

    assert_eq!(
        s.remove("ns/1/c").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    s.remove("ns/1/v").unwrap();
    s.remove("ns/1/b").unwrap();
    s.remove("ns/1/c").unwrap();
    assert!(dirs(&s).is_empty(), "remove deletes directories");
    assert!(s.list(&[]).unwrap().is_empty());
}

#[test]
fn new_fs_dir_takes_the_parent_root_ownership() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let (_t, s) = open(Options::default());
    s.prepare("a", "", Labels::new()).unwrap();
    std::os::unix::fs::lchown(s.layout().fs_dir(1), Some(1234), Some(5678)).unwrap();
    s.commit("c", "a", Labels::new()).unwrap();
    s.prepare("b", "c", Labels::new()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(s.layout().fs_dir(2)).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
}

#[test]
fn list_filters_like_containerd_walk() {
    let (_t, s) = open(Options::default());
    let gc = ("containerd.io/gc.root", "check-walk");
    s.prepare("a-np", "", labels(&[gc])).unwrap();
    s.prepare("p-tmp", "", labels(&[gc])).unwrap();
    s.commit("p", "p-tmp", labels(&[gc])).unwrap();
    s.prepare("a", "p", labels(&[gc])).unwrap();
    s.view("v", "p", labels(&[gc, ("l", "3")])).unwrap();
    let names = |f: &[&str]| {
        let f: Vec<String> = f.iter().map(|x| x.to_string()).collect();
        let mut n: Vec<String> = s.list(&f).unwrap().into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(&[]), ["a", "a-np", "p", "v"]);
    assert_eq!(names(&["kind==active"]), ["a", "a-np"]);
    assert_eq!(names(&["parent==p"]), ["a", "v"]);
    assert_eq!(
        names(&[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#]),
        ["a", "v"]
    );
    assert_eq!(names(&["name==p", "name==a-np"]), ["a-np", "p"]);
    assert_eq!(names(&["labels.l"]), ["v"]);
    let err = s.list(&["labels.l=3".to_string()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn cleanup_removes_only_strays() {
    let (_t, s) = open(Options::default());
    s.prepare("a", "", Labels::new()).unwrap();
    let sd = s.layout().snapshots_dir();
    // Leftovers of crashes: an assembled-but-not-renamed dir, a renamed-but-not-committed
    // dir, a stray file.
    fs::create_dir_all(sd.join("new-7/fs")).unwrap();
    fs::create_dir_all(sd.join("9/fs/deep")).unwrap();
    fs::write(sd.join("junk"), b"x").unwrap();
    assert_eq!(s.cleanup().unwrap(), 3);
    assert_eq!(dirs(&s), ["1"]);
    assert_eq!(s.cleanup().unwrap(), 0);
    // A stray directory with the id the next create gets is replaced, not an error.
    fs::create_dir_all(sd.join("2/fs/old")).unwrap();
    s.prepare("b", "", Labels::new()).unwrap();
    assert_eq!(fs::read_dir(s.layout().fs_dir(2)).unwrap().count(), 0);
}

#[test]
fn merge_snapshots_stack_several_chains() {
    let (_t, s) = open(Options::default());
    for (k, p) in [("base", ""), ("x", "base"), ("y", "")] {
        s.prepare(&format!("{k}-a"), p, Labels::new()).unwrap();
        s.commit(k, &format!("{k}-a"), Labels::new()).unwrap();
    }
    let m = s
        .create(NewSnapshot {
            kind: Kind::Active,
            key: "merge".into(),
            parent: "x".into(),
            merged: vec!["y".into(), "base".into()],
            labels: Labels::new(),
        })
        .unwrap();
    let d = |id: u64| s.layout().fs_dir(id).display().to_string();
    let lower = m[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(
        *lower,
        format!("lowerdir={}:{}:{}", d(2), d(1), d(3)),
        "base once, at its first place"
    );
    let layers: Vec<u64> = s.layers("merge").unwrap().iter().map(|l| l.id).collect();
    assert_eq!(layers, [4, 2, 1, 3]);
    assert_eq!(
        s.remove("y").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    s.commit("merged", "merge", Labels::new()).unwrap();
    let m = s.view("mv", "merged", Labels::new()).unwrap();
    assert!(m[0]
        .options
        .iter()
        .any(|o| *o == format!("lowerdir={}:{}:{}:{}", d(4), d(2), d(1), d(3))));
    assert_eq!(s.stat("merged").unwrap().parent, "x");
    let err = s
        .create(NewSnapshot {
            kind: Kind::View,
            key: "bad".into(),
            parent: String::new(),
            merged: vec!["nope".into()],
            labels: Labels::new(),
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// A remote-layer hook that "mounts" by writing a file into the mountpoint and records
/// every call.
#[derive(Default)]
struct FakeHook {
    decline: Option<String>,
    panic: bool,
    unavailable: bool,
    calls: Mutex<Vec<String>>,
}

impl FakeHook {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl RemoteLayers for FakeHook {
    fn prepare(&self, req: &LayerRequest<'_>) -> LayerOutcome {
        self.calls
            .lock()
            .unwrap()
            .push(format!("prepare {} -> {}", req.key, req.target));
        assert!(
            fs::read_dir(req.mountpoint).unwrap().next().is_none(),
            "mountpoint is empty"
        );
        if self.panic {
            panic!("hook bug");
        }
        if let Some(reason) = &self.decline {
            return LayerOutcome::Declined {
                reason: reason.clone(),
            };
        }
        fs::write(req.mountpoint.join("lazy"), req.target).unwrap();
        LayerOutcome::Mounted {
            labels: BTreeMap::from([("starling.test/layer".to_string(), "fake".to_string())]),
        }
    }
    fn restore(&self, snap: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("restore {}", snap.name));
        Ok(())
    }
    fn remove(&self, snap: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove {}", snap.name));
        assert!(
            snap.mountpoint.join("lazy").exists(),
            "called before the directory is deleted"
        );
        Ok(())
    }
    fn check(&self, snap: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("check {}", snap.name));
        if self.unavailable {
            return Err("registry unreachable".into());
        }
        Ok(())
    }
}

fn layer_labels(target: &str) -> Labels {
    labels(&[
        (crate::labels::TARGET_REF, target),
        (crate::labels::CRI_IMAGE_REF, "127.0.0.1:5000/img:1"),
        (crate::labels::CRI_LAYER_DIGEST, "sha256:layer"),
    ])
}

fn with_hook(
    hook: FakeHook,
    allow_fallback: bool,
) -> (tempfile::TempDir, Snapshots, Arc<FakeHook>) {
    let hook = Arc::new(hook);
    let (t, s) = open(Options {
        remote: Some(hook.clone()),
        allow_fallback,
        ..Options::default()
    });
    (t, s, hook)
}

#[test]
fn remote_layer_is_committed_under_the_target_and_answers_already_exists() {
    let (_t, s, hook) = with_hook(FakeHook::default(), true);
    let err = s
        .prepare("ns/1/extract-1 sha256:c1", "", layer_labels("sha256:c1"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        s.stat("ns/1/extract-1 sha256:c1").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let info = s.stat("sha256:c1").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(
        info.labels.get(crate::labels::REMOTE).map(String::as_str),
        Some("remote snapshot")
    );
    assert_eq!(
        info.labels.get("starling.test/layer").map(String::as_str),
        Some("fake")
    );
    // What containerd looks for after AlreadyExists:
    let found = s
        .list(&[r#"labels."containerd.io/snapshot.ref"==sha256:c1,parent=="""#.to_string()])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "sha256:c1");

    // A second pull of the same layer is answered without asking the hook.
    let err = s
        .prepare("ns/2/extract-2 sha256:c1", "", layer_labels("sha256:c1"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        hook.calls(),
        ["prepare ns/1/extract-1 sha256:c1 -> sha256:c1"]
    );

    // A container on top checks the remote lower, then sees its content.
    let m = s.prepare("ns/1/ctr", "sha256:c1", Labels::new()).unwrap();
    let lower = s.layout().fs_dir(1);
    assert_eq!(m[0].fstype, "overlay");
    assert!(m[0]
        .options
        .contains(&format!("lowerdir={}", lower.display())));
    assert_eq!(fs::read_to_string(lower.join("lazy")).unwrap(), "sha256:c1");
    assert!(hook.calls().contains(&"check sha256:c1".to_string()));
    assert_eq!(s.restore_remote().unwrap().restored, 1);
    s.remove("ns/1/ctr").unwrap();
    s.remove("sha256:c1").unwrap();
    assert!(hook.calls().contains(&"restore sha256:c1".to_string()));
    assert_eq!(hook.calls().last().unwrap(), "remove sha256:c1");
    assert!(dirs(&s).is_empty());
}

#[test]
fn existing_target_on_another_parent_is_not_claimed() {
    let (_t, s, hook) = with_hook(FakeHook::default(), true);
    s.prepare("ns/1/p-a", "", Labels::new()).unwrap();
    s.commit("ns/1/p", "ns/1/p-a", Labels::new()).unwrap();
    // The target exists (lazily pulled elsewhere) on the empty parent...
    s.prepare("ns/2/x", "", layer_labels("sha256:c1"))
        .unwrap_err();
    // ...so a Prepare of that target on another parent gets a normal snapshot.
    let m = s
        .prepare("ns/1/extract", "ns/1/p", layer_labels("sha256:c1"))
        .unwrap();
    assert_eq!(m[0].fstype, "overlay");
    assert_eq!(hook.calls().len(), 1, "the hook was not asked again");
    assert_eq!(s.stat("ns/1/extract").unwrap().kind, Kind::Active);
}

#[test]
fn declined_or_panicking_hook_falls_back_to_a_normal_snapshot() {
    for hook in [
        FakeHook {
            decline: Some("layer is not eStargz".into()),
            ..Default::default()
        },
        FakeHook {
            panic: true,
            ..Default::default()
        },
    ] {
        let (_t, s, hook) = with_hook(hook, true);
        let m = s
            .prepare("ns/1/extract", "", layer_labels("sha256:c1"))
            .unwrap();
        assert_eq!(m[0].fstype, "bind");
        assert_eq!(s.stat("ns/1/extract").unwrap().kind, Kind::Active);
        assert_eq!(hook.calls().len(), 1);
        s.commit("ns/1/sha256:c1", "ns/1/extract", Labels::new())
            .unwrap();
    }
}

#[test]
fn declined_hook_without_fallback_fails_unavailable_and_leaves_nothing() {
    let hook = FakeHook {
        decline: Some("TOC digest mismatch".into()),
        ..Default::default()
    };
    let (_t, s, _hook) = with_hook(hook, false);
    let err = s
        .prepare("ns/1/extract", "", layer_labels("sha256:c1"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("TOC digest mismatch"), "{err}");
    assert!(s.list(&[]).unwrap().is_empty());
    assert!(dirs(&s).is_empty());
}

#[test]
fn hook_is_not_asked_without_layer_labels() {
    let (_t, s, hook) = with_hook(FakeHook::default(), false);
    let only_ref = labels(&[(crate::labels::TARGET_REF, "sha256:c1")]);
    s.prepare("ns/1/extract", "", only_ref).unwrap();
    s.prepare("ns/1/plain", "", Labels::new()).unwrap();
    assert!(hook.calls().is_empty());
}

#[test]
fn unavailable_remote_lower_fails_mounts() {
    let (_t, s, _) = with_hook(FakeHook::default(), true);
    s.prepare("ns/1/x", "", layer_labels("sha256:c1"))
        .unwrap_err();
    let hook = Arc::new(FakeHook {
        unavailable: true,
        ..Default::default()
    });
    let root = s.layout().root().to_path_buf();
    drop(s);
    let s = Snapshots::open(
        &root,
        Options {
            remote: Some(hook.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let err = s.view("ns/1/v", "sha256:c1", Labels::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("registry unreachable"));
    assert_eq!(
        s.mounts("ns/1/v").unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

#[test]
fn remote_lower_without_a_hook_is_unavailable_not_an_empty_layer() {
    let (_t, s, _) = with_hook(FakeHook::default(), true);
    s.prepare("ns/1/x", "", layer_labels("sha256:c1"))
        .unwrap_err();
    let root = s.layout().root().to_path_buf();
    drop(s);
    // Reopened with lazy layers switched off: nothing mounts the layer any more.
    let s = Snapshots::open(&root, Options::default()).unwrap();
    let err = s.view("ns/1/v", "sha256:c1", Labels::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("lazy = false"), "{err}");
    assert_eq!(
        s.mounts("ns/1/v").unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    // Both can still be removed (e.g. by containerd's GC).
    s.remove("ns/1/v").unwrap();
    s.remove("sha256:c1").unwrap();
}

#[test]
fn reopen_keeps_snapshots_and_the_store_is_exclusive() {
    let (_t, s) = open(Options::default());
    s.prepare("a", "", Labels::new()).unwrap();
    let root = s.layout().root().to_path_buf();
    let second = Snapshots::open(&root, Options::default());
    assert!(
        second.is_err(),
        "a second daemon on the same root is refused"
    );
    drop(s);
    let s = Snapshots::open(&root, Options::default()).unwrap();
    assert_eq!(s.stat("a").unwrap().kind, Kind::Active);
    assert!(Path::new(&s.layout().fs_dir(1)).is_dir());
}

const CRASH_ROOT_ENV: &str = "STARLING_CRASH_WORKER_ROOT";

/// Worker of `sigkill_at_any_point_leaves_store_and_disk_consistent`: creates, commits
/// and removes snapshots in a loop until killed. Does nothing when run normally.
#[test]
#[ignore = "run by sigkill_at_any_point_leaves_store_and_disk_consistent"]
fn crash_worker() {
    let Some(root) = std::env::var_os(CRASH_ROOT_ENV) else {
        return;
    };
    let s = Snapshots::open(PathBuf::from(root), Options::default()).unwrap();
    let mut n: u64 = s.list(&[]).unwrap().len() as u64 * 1000;
    loop {
        n += 1;
        let key = format!("k{n}");
        let parent = if n % 3 == 0 {
            String::new()
        } else {
            format!("c{}", n - 1)
        };
        let parent = if s.stat(&parent).is_ok() {
            parent
        } else {
            String::new()
        };
        s.prepare(&key, &parent, labels(&[("n", &n.to_string())]))
            .unwrap();
        fs::write(
            s.layout().fs_dir(s.layers(&key).unwrap()[0].id).join("f"),
            b"x",
        )
        .unwrap();
        s.commit(&format!("c{n}"), &key, Labels::new()).unwrap();
        if n % 4 == 0 {
            // Remove a leaf from time to time.
            let _ = s.remove(&format!("c{}", n));
        }
    }
}

#[test]
fn sigkill_at_any_point_leaves_store_and_disk_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for round in 0..6u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "snapshots::tests::crash_worker",
                "--nocapture",
            ])
            .env(CRASH_ROOT_ENV, &root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it get into its loop, then kill it wherever it is.
        std::thread::sleep(std::time::Duration::from_millis(150 + 70 * round));
        child.kill().unwrap();
        child.wait().unwrap();

        let s = Snapshots::open(&root, Options::default()).unwrap();
        let all = s.store.read().unwrap().all().unwrap();
        assert!(!all.is_empty() || round == 0, "the worker made progress");
        for (key, rec) in &all {
            assert!(s.layout().fs_dir(rec.id).is_dir(), "{key} has its fs dir");
            if rec.kind == Kind::Active {
                assert!(
                    s.layout().work_dir(rec.id).is_dir(),
                    "{key} has its work dir"
                );
            }
            s.layers(key).unwrap();
        }
        let strays = s.cleanup().unwrap();
        eprintln!(
            "round {round}: {} snapshots, {strays} stray directories removed",
            all.len()
        );
        let mut ids: Vec<String> = all.iter().map(|(_, r)| r.id.to_string()).collect();
        ids.sort();
        assert_eq!(
            dirs(&s),
            ids,
            "after cleanup, directories are exactly the records'"
        );
    }
}
