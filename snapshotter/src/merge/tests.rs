//! The merge component without mounts: labels, name resolution, errors, the stack plan,
//! merge nodes (reuse, hiding, usage, release) and a replay of containerd's GC walk.
//! Flattening with real file types and mounts is in `tests_root.rs` and the
//! `merge_*` integration tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use super::*;
use crate::store::{Kind, Labels};
use crate::{ErrorKind, Options, Snapshots};

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn open(opts: Options) -> (tempfile::TempDir, Snapshots) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshots::open(tmp.path().join("root"), opts).unwrap();
    (tmp, s)
}

/// Commits a layer `name` on `parent` holding `files` (path → content).
fn layer(s: &Snapshots, name: &str, parent: &str, files: &[(&str, &str)]) -> PathBuf {
    let key = format!("{name}-active");
    s.prepare(&key, parent, Labels::new()).unwrap();
    let dir = s.layers(&key).unwrap()[0].dir.clone();
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    s.commit(name, &key, Labels::new()).unwrap();
    dir
}

fn merge_labels(sources: &str, mode: Option<&str>) -> Labels {
    let mut l = labels(&[(SOURCES_LABEL, sources)]);
    if let Some(m) = mode {
        l.insert(MODE_LABEL.into(), m.into());
    }
    l
}

fn lowerdirs(m: &[crate::overlay::Mount]) -> Vec<String> {
    m[0].options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').map(str::to_string).collect())
        .unwrap_or_else(|| vec![m[0].source.clone()])
}

fn kind<T: std::fmt::Debug>(r: crate::Result<T>) -> ErrorKind {
    r.unwrap_err().kind()
}

#[test]
fn labels_turn_into_requests_or_errors() {
    let none = intercept(Kind::Active, "ns/1/k", "", &Labels::new()).unwrap();
    assert!(none.is_none());
    let req = intercept(
        Kind::View,
        "ns/1/k",
        "",
        &merge_labels(" a , b,c ", Some("hardlink")),
    )
    .unwrap()
    .unwrap();
    assert_eq!(req.sources, ["a", "b", "c"]);
    assert_eq!(req.mode, Some(MergeMode::Hardlink));
    assert_eq!(req.kind, Kind::View);
    assert_eq!(req.labels[SOURCES_LABEL], " a , b,c ");
    let overlay = intercept(Kind::Active, "k", "", &merge_labels("a", Some("overlay")));
    assert_eq!(overlay.unwrap().unwrap().mode, Some(MergeMode::Stack));

    let bad = [
        (merge_labels("a", None), "p", "takes no parent"),
        (
            merge_labels("a", Some("zip")),
            "",
            "unknown merge mode \"zip\"",
        ),
        (merge_labels("a,,b", None), "", "empty snapshot name"),
        (labels(&[(MODE_LABEL, "copy")]), "", "without"),
    ];
    for (l, parent, msg) in bad {
        let err = intercept(Kind::Active, "k", parent, &l).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains(msg), "{err}");
    }
    let many = vec!["x"; MAX_SOURCES + 1].join(",");
    assert_eq!(
        intercept(Kind::Active, "k", "", &merge_labels(&many, None))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let reserved = intercept(Kind::Active, ".merge/x", "", &Labels::new()).unwrap_err();
    assert_eq!(reserved.kind(), ErrorKind::InvalidArgument);
    assert_eq!(namespace_of("default/12/my/name"), Some("default"));
    for k in ["default/x/n", "default/12", "/1/n", "plain", "ns/1/"] {
        assert_eq!(namespace_of(k), None, "{k}");
    }
}

#[test]
fn names_resolve_within_the_namespace_of_the_new_key() {
    let (_t, s) = open(Options::default());
    layer(&s, "ns/3/base", "", &[("f", "old")]);
    layer(&s, "ns/9/base", "", &[("f", "new")]);
    layer(&s, "other/20/base", "", &[("f", "other ns")]);
    layer(&s, "ns/4/img", "", &[("g", "img")]);
    s.prepare("ns/10/busy", "", Labels::new()).unwrap();
    let m = s
        .prepare("ns/11/m", "", merge_labels("base,img", Some("stack")))
        .unwrap();
    let d = |id: u64| s.layout().fs_dir(id).display().to_string();
    assert_eq!(
        lowerdirs(&m),
        [d(4), d(2)],
        "img on top of the newest base of namespace ns"
    );
    // An exact backend key works from any namespace.
    let m = s
        .view("ns/12/v", "", merge_labels("other/20/base", None))
        .unwrap();
    assert_eq!(lowerdirs(&m), [d(3)]);
    // Errors name the problem.
    let e = s
        .prepare("ns/13/m", "", merge_labels("base,nope", None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("\"nope\"") && e.to_string().contains("namespace \"ns\""),
        "{e}"
    );
    let e = s
        .prepare("ns/13/m", "", merge_labels("busy", None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("not a committed snapshot"), "{e}");
    // "m" is the active ns/11/m.
    let e = s
        .prepare("ns/13/m", "", merge_labels("m", None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s
        .prepare("ns/13/m", "", merge_labels("ns/13/m", None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s
        .prepare("ns/13/m", "", merge_labels(".merge/hardlink/x", None))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Failed requests leave nothing.
    assert!(s.stat("ns/13/m").is_err());
    assert_eq!(
        fs::read_dir(s.layout().snapshots_dir()).unwrap().count(),
        7,
        "5 layers, busy, m and v: {:?}",
        s.list(&[]).unwrap()
    );
}

#[test]
fn stack_orders_chains_and_skips_a_shared_prefix() {
    let (_t, s) = open(Options::default());
    layer(&s, "a1", "", &[("a", "1")]); // id 1
    layer(&s, "a2", "a1", &[("a", "2")]); // id 2
    layer(&s, "b1", "", &[("b", "1")]); // id 3
    layer(&s, "c1", "a2", &[("c", "1")]); // id 4, chain c1 a2 a1
    let d = |id: u64| s.layout().fs_dir(id).display().to_string();
    let m = s.prepare("m1", "", merge_labels("a2,b1", None)).unwrap();
    assert_eq!(m[0].fstype, "overlay");
    assert_eq!(lowerdirs(&m), [d(3), d(2), d(1)], "b's chain above a's");
    let m = s.prepare("m2", "", merge_labels("a2,c1", None)).unwrap();
    assert_eq!(lowerdirs(&m), [d(4), d(2), d(1)], "a2 is a prefix of c1");
    let m = s.prepare("m3", "", merge_labels("c1,b1,a2", None)).unwrap();
    assert_eq!(
        lowerdirs(&m),
        [d(2), d(1), d(3), d(4)],
        "a2 and a1 once, at their topmost place"
    );
    let m = s.view("v", "", merge_labels("b1,b1", None)).unwrap();
    assert_eq!(m[0].fstype, "bind", "one layer: a read-only bind");
    assert_eq!(s.stat("m1").unwrap().labels[STRATEGY_LABEL], "stack");
    assert_eq!(s.stat("m1").unwrap().parent, "");
    let layers: Vec<u64> = s.layers("m3").unwrap().iter().map(|l| l.id).collect();
    assert_eq!(layers, [5 + 2, 2, 1, 3, 4]);

    // Inputs are held; removing the merges releases them.
    assert_eq!(kind(s.remove("b1")), ErrorKind::FailedPrecondition);
    s.commit("m1c", "m1", Labels::new()).unwrap();
    assert_eq!(kind(s.remove("b1")), ErrorKind::FailedPrecondition);
    let child = s.prepare("on-m1c", "m1c", Labels::new()).unwrap();
    assert_eq!(lowerdirs(&child)[1..], [d(3), d(2), d(1)]);
    for k in ["on-m1c", "m1c", "m3", "v"] {
        s.remove(k).unwrap();
    }
    s.remove("b1").unwrap();
}

#[test]
fn stack_falls_back_to_flattening_beyond_the_limits() {
    let (_t, s) = open(Options {
        merge: MergeOptions {
            max_lowers: 2,
            ..MergeOptions::default()
        },
        ..Options::default()
    });
    layer(&s, "a1", "", &[("f", "a1"), ("only-a1", "x")]);
    layer(&s, "a2", "a1", &[("f", "a2")]);
    layer(&s, "b1", "", &[("g", "b1")]);
    let fits = s
        .merge(&req(Kind::View, "two", "a2", Some(MergeMode::Stack)))
        .unwrap();
    assert_eq!(fits.strategy, Strategy::Stack);
    let over = s
        .merge(&req(Kind::View, "three", "a2,b1", Some(MergeMode::Stack)))
        .unwrap();
    assert_eq!(over.strategy, Strategy::Hardlink);
    let auto = s.merge(&req(Kind::Active, "auto", "a2,b1", None)).unwrap();
    assert_eq!(auto.strategy, Strategy::Hardlink);
    assert!(
        auto.reused,
        "same layers, same strategy: the node is reused"
    );
    let node_fs = &s.layers("auto").unwrap()[1].dir;
    assert_eq!(fs::read_to_string(node_fs.join("f")).unwrap(), "a2");
    assert_eq!(fs::read_to_string(node_fs.join("only-a1")).unwrap(), "x");
    assert_eq!(fs::read_to_string(node_fs.join("g")).unwrap(), "b1");

    // The mount option length limit applies too.
    let (_t, s) = open(Options {
        merge: MergeOptions {
            max_mount_options: 100,
            ..MergeOptions::default()
        },
        ..Options::default()
    });
    layer(&s, "a1", "", &[("f", "a1")]);
    layer(&s, "b1", "", &[("g", "b1")]);
    let m = s.merge(&req(Kind::Active, "m", "a1,b1", None)).unwrap();
    assert_eq!(m.strategy, Strategy::Hardlink);
}

fn req(kind: Kind, key: &str, sources: &str, mode: Option<MergeMode>) -> MergeRequest {
    MergeRequest {
        kind,
        key: key.into(),
        sources: parse_sources(sources).unwrap(),
        mode,
        labels: Labels::new(),
    }
}

#[test]
fn flattened_results_are_reused_hidden_and_released_with_their_last_user() {
    let (_t, s) = open(Options::default());
    let a = layer(
        &s,
        "ns/1/a",
        "",
        &[("etc/a", "from a"), ("big", &"x".repeat(100_000))],
    );
    layer(&s, "ns/2/b", "", &[("etc/b", "from b")]);
    let first = s
        .merge(&req(
            Kind::Active,
            "ns/3/m",
            "a,b",
            Some(MergeMode::Hardlink),
        ))
        .unwrap();
    let node = first.node.clone().unwrap();
    assert!(node.starts_with(".merge/hardlink/"), "{node}");
    assert!(!first.reused);
    let stats = first.stats.unwrap();
    assert_eq!((stats.linked, stats.copied, stats.dirs), (3, 0, 1));
    assert_eq!(lowerdirs(&first.mounts).len(), 1, "one flat lower");

    // Same inputs again (also spelled differently): the node is reused, no new work.
    let again = s
        .merge(&req(
            Kind::View,
            "ns/4/v",
            "ns/1/a,b",
            Some(MergeMode::Hardlink),
        ))
        .unwrap();
    assert!(again.reused && again.stats.is_none());
    assert_eq!(again.node.as_deref(), Some(node.as_str()));
    assert_eq!(again.mounts[0].source, lowerdirs(&first.mounts)[0]);
    // Another strategy is another node.
    let copy = s
        .merge(&req(Kind::View, "ns/5/c", "a,b", Some(MergeMode::Copy)))
        .unwrap();
    assert_ne!(copy.node, first.node);
    assert_eq!(copy.stats.as_ref().unwrap().copied, 3);

    // Nodes are hidden from List and hold the inputs.
    let names: Vec<String> = s.list(&[]).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        ["ns/5/c", "ns/4/v", "ns/3/m", "ns/2/b", "ns/1/a"],
        "newest first"
    );
    assert!(s.stat(&node).is_ok(), "Stat by exact key still works");
    assert_eq!(kind(s.remove("ns/1/a")), ErrorKind::FailedPrecondition);

    // Usage: the upper dir plus what the node owns (dirs; not the hardlinked data).
    let u = s.usage("ns/3/m").unwrap();
    let node_usage = s.stat(&node).map(|_| ()).and(s.usage(&node)).unwrap();
    assert_eq!(u.inodes, 1 + node_usage.inodes);
    assert!(
        node_usage.size < 50_000,
        "hardlinked data is not counted: {node_usage:?}"
    );
    let copy_usage = s.usage("ns/5/c").unwrap();
    assert!(copy_usage.size >= 100_000, "copied data is: {copy_usage:?}");

    // The node lives while any user exists (even after commit), then goes.
    s.commit("ns/6/mc", "ns/3/m", Labels::new()).unwrap();
    s.remove("ns/4/v").unwrap();
    assert!(s.stat(&node).is_ok(), "still used by ns/6/mc");
    let node_dir = s.layers("ns/6/mc").unwrap()[1].dir.clone();
    assert!(node_dir.is_dir());
    s.remove("ns/6/mc").unwrap();
    assert_eq!(s.stat(&node).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!node_dir.exists());
    assert_eq!(
        kind(s.remove("ns/1/a")),
        ErrorKind::FailedPrecondition,
        "copy node holds a"
    );
    s.remove("ns/5/c").unwrap();
    s.remove("ns/1/a").unwrap();
    assert!(!a.exists());
    s.remove("ns/2/b").unwrap();
    assert_eq!(fs::read_dir(s.layout().snapshots_dir()).unwrap().count(), 0);
    assert_eq!(s.cleanup().unwrap(), 0, "nothing stray");
}

#[test]
fn reserved_keys_cannot_be_created_or_committed() {
    let (_t, s) = open(Options::default());
    assert_eq!(
        kind(s.prepare(".merge/x", "", Labels::new())),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(s.view(".merge/x", "", Labels::new())),
        ErrorKind::InvalidArgument
    );
    s.prepare("a", "", Labels::new()).unwrap();
    assert_eq!(
        kind(s.commit(".merge/stack/y", "a", Labels::new())),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn cleanup_removes_stale_builds_and_orphan_nodes() {
    let (_t, s) = open(Options::default());
    layer(&s, "a", "", &[("f", "a")]);
    let stale = s.layout().root().join("merging/999-0/fs/deep");
    fs::create_dir_all(&stale).unwrap();
    let m = s
        .merge(&req(Kind::View, "m", "a", Some(MergeMode::Copy)))
        .unwrap();
    let node = m.node.unwrap();
    // An orphan node (a user removed behind the store's back, as an older version could).
    {
        let tx = s.store.write().unwrap();
        tx.remove("m").unwrap();
        tx.commit().unwrap();
    }
    assert!(s.stat(&node).is_ok());
    let removed = s.cleanup().unwrap();
    assert_eq!(
        removed,
        1 + 1 + 1,
        "stale build, the orphan node's dir, m's dir"
    );
    assert!(s.stat(&node).is_err());
    assert!(!s.layout().root().join("merging/999-0").exists());
    s.remove("a").unwrap();
}

/// containerd's snapshot GC (metadata/snapshot.go `garbageCollect`): walk the backend,
/// build the parent tree in walk order, prune each root's branch children first,
/// removing what containerd does not know and tolerating FailedPrecondition.
fn containerd_gc(s: &Snapshots, known: &[&str]) -> Vec<String> {
    let infos = s.list(&[]).unwrap();
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut roots = Vec::new();
    for info in &infos {
        if info.parent.is_empty() {
            roots.push(info.name.clone());
        } else {
            children
                .entry(info.parent.clone())
                .or_default()
                .push(info.name.clone());
        }
    }
    fn prune(
        s: &Snapshots,
        name: &str,
        children: &BTreeMap<String, Vec<String>>,
        known: &[&str],
        removed: &mut Vec<String>,
    ) {
        for c in children.get(name).into_iter().flatten() {
            prune(s, c, children, known, removed);
        }
        if !known.contains(&name) {
            match s.remove(name) {
                Ok(()) => removed.push(name.to_string()),
                Err(e) => assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}"),
            }
        }
    }
    let mut removed = Vec::new();
    for r in roots {
        prune(s, &r, &children, known, &mut removed);
    }
    s.cleanup().unwrap();
    removed
}

#[test]
fn containerd_gc_keeps_merges_whole_and_frees_inputs_in_one_pass() {
    for mode in [MergeMode::Stack, MergeMode::Hardlink] {
        let (_t, s) = open(Options::default());
        // Two images; a merge of both; an image with a later id than the merge's inputs.
        layer(&s, "ns/1/sha256:a1", "", &[("a", "1")]);
        layer(&s, "ns/2/sha256:a2", "ns/1/sha256:a1", &[("a", "2")]);
        layer(&s, "ns/3/sha256:b1", "", &[("b", "1")]);
        s.merge(&req(
            Kind::Active,
            "ns/4/merged",
            "sha256:a2,sha256:b1",
            Some(mode),
        ))
        .unwrap();
        s.commit("ns/5/merged-c", "ns/4/merged", Labels::new())
            .unwrap();
        s.prepare("ns/6/ctr", "ns/5/merged-c", Labels::new())
            .unwrap();
        let mut all = vec![
            "ns/6/ctr",
            "ns/5/merged-c",
            "ns/3/sha256:b1",
            "ns/2/sha256:a2",
            "ns/1/sha256:a1",
        ];
        // The images are removed from containerd: GC must not break the merge.
        all.retain(|k| !k.contains("sha256"));
        let removed = containerd_gc(&s, &all);
        assert!(removed.is_empty(), "{mode}: {removed:?}");
        let m = s.mounts("ns/6/ctr").unwrap();
        for dir in lowerdirs(&m) {
            assert!(PathBuf::from(&dir).is_dir(), "{mode}: {dir} still exists");
        }
        // The merge is removed too: everything goes in one GC pass.
        let removed = containerd_gc(&s, &[]);
        assert_eq!(removed.len(), 5, "{mode}: {removed:?}");
        assert_eq!(
            fs::read_dir(s.layout().snapshots_dir()).unwrap().count(),
            0,
            "{mode}"
        );
    }
}

#[tokio::test]
async fn grpc_codes_of_merge_requests() {
    use containerd_snapshots::tonic::{Code, Status};
    use containerd_snapshots::Snapshotter as _;
    use std::collections::HashMap;
    use std::sync::Arc;

    let (_t, s) = open(Options::default());
    layer(&s, "ns/1/a", "", &[("f", "a")]);
    s.prepare("ns/2/busy", "", Labels::new()).unwrap();
    let svc = crate::service::Service::new(Arc::new(s));
    let l = |sources: &str, mode: Option<&str>| -> HashMap<String, String> {
        merge_labels(sources, mode).into_iter().collect()
    };
    let code = |r: crate::Result<Vec<containerd_snapshots::api::types::Mount>>| match r {
        Ok(_) => Code::Ok,
        Err(e) => Status::from(e).code(),
    };
    let cases = [
        ("ns/3/m", "", l("a", Some("hardlink")), Code::Ok),
        ("ns/4/m", "", l("nope", None), Code::NotFound),
        ("ns/5/m", "", l("busy", None), Code::InvalidArgument),
        ("ns/6/m", "ns/1/a", l("a", None), Code::InvalidArgument),
        ("ns/7/m", "", l("a", Some("fast")), Code::InvalidArgument),
        ("ns/3/m", "", l("a", None), Code::AlreadyExists),
    ];
    for (key, parent, labels, want) in cases {
        let got = code(svc.prepare(key.into(), parent.into(), labels).await);
        assert_eq!(got, want, "{key}");
    }
    let v = svc
        .view("ns/8/v".into(), String::new(), l("a", Some("stack")))
        .await
        .unwrap();
    assert_eq!(v[0].r#type, "bind");
    let info = svc.stat("ns/3/m".into()).await.unwrap();
    assert_eq!(info.parent, "");
    assert_eq!(info.labels[STRATEGY_LABEL], "hardlink");
    let err = svc.remove("ns/1/a".into()).await.unwrap_err();
    assert_eq!(Status::from(err).code(), Code::FailedPrecondition);
}
