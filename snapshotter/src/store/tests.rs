//! Store rules and transactions, without directories.

use super::*;
use crate::ErrorKind;

fn store() -> (tempfile::TempDir, MetaStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = MetaStore::open(&tmp.path().join("m.db")).unwrap();
    (tmp, s)
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create(s: &MetaStore, kind: Kind, key: &str, parent: &str) -> Result<SnapshotRecord> {
    let tx = s.write()?;
    let rec = tx.create(NewRecord {
        kind,
        key,
        parent,
        merged: &[],
        labels: Labels::new(),
    })?;
    tx.commit()?;
    Ok(rec)
}

fn commit(s: &MetaStore, key: &str, name: &str) -> Result<SnapshotRecord> {
    let tx = s.write()?;
    let rec = tx.commit_active(
        key,
        name,
        Usage {
            size: 4096,
            inodes: 1,
        },
        Labels::new(),
    )?;
    tx.commit()?;
    Ok(rec)
}

fn remove(s: &MetaStore, key: &str) -> Result<SnapshotRecord> {
    let tx = s.write()?;
    let rec = tx.remove(key)?;
    tx.commit()?;
    Ok(rec)
}

#[test]
fn containerd_rules_and_error_kinds() {
    let (_t, s) = store();
    let a = create(&s, Kind::Active, "a", "").unwrap();
    let kind = |r: Result<SnapshotRecord>| r.unwrap_err().kind();
    assert_eq!(
        kind(create(&s, Kind::Active, "a", "")),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(create(&s, Kind::View, "v", "nope")),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(create(&s, Kind::View, "v", "a")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(create(&s, Kind::Committed, "c", "")),
        ErrorKind::InvalidArgument
    );
    let c = commit(&s, "a", "c").unwrap();
    assert_eq!(c.id, a.id, "commit keeps the id (and directory)");
    assert_eq!(
        c.usage,
        Usage {
            size: 4096,
            inodes: 1
        }
    );
    assert_eq!(kind(commit(&s, "a", "c2")), ErrorKind::NotFound);
    create(&s, Kind::View, "v", "c").unwrap();
    assert_eq!(kind(commit(&s, "v", "c3")), ErrorKind::FailedPrecondition);
    create(&s, Kind::Active, "x", "c").unwrap();
    assert_eq!(
        kind(commit(&s, "x", "c")),
        ErrorKind::AlreadyExists,
        "name checked first"
    );
    assert_eq!(kind(remove(&s, "c")), ErrorKind::FailedPrecondition);
    assert_eq!(kind(remove(&s, "zz")), ErrorKind::NotFound);
    remove(&s, "v").unwrap();
    remove(&s, "x").unwrap();
    remove(&s, "c").unwrap();
    assert!(s.read().unwrap().all().unwrap().is_empty());
}

#[test]
fn ids_are_never_reused_and_track_keys() {
    let (_t, s) = store();
    let a = create(&s, Kind::Active, "a", "").unwrap();
    remove(&s, "a").unwrap();
    let b = create(&s, Kind::Active, "a", "").unwrap();
    assert!(b.id > a.id);
    commit(&s, "a", "n").unwrap();
    let tx = s.write().unwrap();
    assert_eq!(tx.ids().unwrap(), HashSet::from([b.id]));
}

#[test]
fn commit_moves_the_parent_link_to_the_new_name() {
    let (_t, s) = store();
    create(&s, Kind::Active, "p0", "").unwrap();
    commit(&s, "p0", "p").unwrap();
    create(&s, Kind::Active, "child", "p").unwrap();
    commit(&s, "child", "c").unwrap();
    assert_eq!(s.write().unwrap().children("p").unwrap(), ["c"]);
    assert_eq!(
        remove(&s, "p").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    remove(&s, "c").unwrap();
    assert!(s.write().unwrap().children("p").unwrap().is_empty());
    remove(&s, "p").unwrap();
}

#[test]
fn aborted_transactions_leave_nothing() {
    let (_t, s) = store();
    {
        let tx = s.write().unwrap();
        tx.create(NewRecord {
            kind: Kind::Active,
            key: "a",
            parent: "",
            merged: &[],
            labels: Labels::new(),
        })
        .unwrap();
        // dropped without commit
    }
    assert!(s.read().unwrap().record("a").unwrap().is_none());
    let tx = s.write().unwrap();
    assert!(tx.ids().unwrap().is_empty());
    drop(tx);
    // The id of the aborted create is handed out again: no directory was committed for it.
    let rec = create(&s, Kind::Active, "a", "").unwrap();
    assert_eq!(rec.id, 1);
}

#[test]
fn records_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.db");
    {
        let s = MetaStore::open(&path).unwrap();
        create(&s, Kind::Active, "a", "").unwrap();
        commit(&s, "a", "c").unwrap();
    }
    let s = MetaStore::open(&path).unwrap();
    let c = s.read().unwrap().record("c").unwrap().unwrap();
    assert_eq!(c.kind, Kind::Committed);
    assert_eq!(create(&s, Kind::Active, "b", "c").unwrap().id, 2);
}

#[test]
fn label_updates_follow_containerd() {
    let (_t, s) = store();
    {
        let tx = s.write().unwrap();
        tx.create(NewRecord {
            kind: Kind::Active,
            key: "a",
            parent: "",
            merged: &[],
            labels: labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), ("empty", "")]),
        })
        .unwrap();
        tx.commit().unwrap();
    }
    let update = |l: Labels, paths: &[&str]| -> Result<Info> {
        let tx = s.write()?;
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let info = tx.update_labels("a", &l, &paths)?;
        tx.commit()?;
        Ok(info)
    };
    let before = s.read().unwrap().record("a").unwrap().unwrap();
    assert!(
        !before.labels.contains_key("empty"),
        "empty values are not stored"
    );
    let info = update(
        labels(&[("l1", "updated"), ("l4", "v4")]),
        &["labels.l1", "labels.l2"],
    )
    .unwrap();
    assert_eq!(info.labels, labels(&[("l1", "updated"), ("l3", "v3")]));
    assert!(info.updated >= before.updated);
    assert_eq!(info.created, before.created);
    let info = update(labels(&[("l4", "v4"), ("gone", "")]), &["labels"]).unwrap();
    assert_eq!(info.labels, labels(&[("l4", "v4")]));
    let info = update(labels(&[("x", "1")]), &[]).unwrap();
    assert_eq!(info.labels, labels(&[("x", "1")]), "no paths: replace all");
    let err = update(labels(&[]), &["parent"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("parent"));
    let info = update(labels(&[("a.b", "dotted")]), &["labels.a.b"]).unwrap();
    assert_eq!(info.labels.get("a.b").map(String::as_str), Some("dotted"));
    let tx = s.write().unwrap();
    let err = tx
        .update_labels("missing", &Labels::new(), &[])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn lowers_follow_parents_then_merge_sources_once() {
    let (_t, s) = store();
    let mk = |key: &str, parent: &str, merged: &[&str]| {
        let merged: Vec<String> = merged.iter().map(|m| m.to_string()).collect();
        let tx = s.write().unwrap();
        tx.create(NewRecord {
            kind: Kind::Active,
            key: &format!("{key}-a"),
            parent,
            merged: &merged,
            labels: Labels::new(),
        })
        .unwrap();
        tx.commit_active(&format!("{key}-a"), key, Usage::default(), Labels::new())
            .unwrap();
        tx.commit().unwrap();
    };
    mk("base", "", &[]);
    mk("x1", "base", &[]);
    mk("y1", "base", &[]);
    mk("y2", "y1", &[]);
    mk("m", "x1", &["y2"]);
    let tx = s.read().unwrap();
    let names =
        |v: Vec<(String, SnapshotRecord)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        names(tx.lowers("m", &[]).unwrap()),
        ["m", "x1", "base", "y2", "y1"]
    );
    assert_eq!(
        names(tx.lowers("", &["y2".into(), "x1".into()]).unwrap()),
        ["y2", "y1", "base", "x1"]
    );
    drop(tx);
    assert_eq!(
        remove(&s, "y2").unwrap_err().kind(),
        ErrorKind::FailedPrecondition,
        "merge source"
    );
    remove(&s, "m").unwrap();
    remove(&s, "y2").unwrap();
}

#[test]
fn corrupt_record_is_named() {
    let (_t, s) = store();
    {
        let tx = s.write().unwrap();
        tx.tx
            .open_table(SNAPSHOTS)
            .unwrap()
            .insert("bad", b"{not json".as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let err = s.read().unwrap().record("bad").unwrap_err();
    assert!(err.to_string().contains("\"bad\""), "{err}");
    assert_eq!(err.kind(), ErrorKind::Internal);
}
