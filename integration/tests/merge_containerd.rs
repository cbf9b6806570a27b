//! Merged snapshots through real containerd (root; containerd, runc, docker-registry,
//! skopeo and a built `starling`): two different images are pulled with the starling
//! snapshotter; `starling merge` (containerd's snapshots API with the merge labels) makes
//! a merged snapshot of both in each mode; a container runs on it (`ctr run --rootfs` on
//! its mounts) and sees both images with the later one's deletions applied; its writes
//! stay in the merged snapshot. Errors come back with their gRPC codes. containerd's GC
//! (`ctr images rm --sync`) with merges present keeps the merges whole; removing the
//! merges (`ctr snapshots rm`, GC after each deletion) releases the inputs and leaves
//! nothing in starling's root.

use std::path::Path;
use std::time::Duration;

use integration::containerd::{Containerd, ContainerdOptions, Ctr};
use integration::mounts::{mounts_under, MountGuard, MountSpec};
use integration::oci::{Entry, ImageBuilder, LayerBuilder};
use integration::poll::wait_for;
use integration::process::{run_cmd, CmdOutput};
use integration::registry::Registry;
use integration::starling::{Starling, StarlingOptions};
use integration::workdir::Workdir;
use integration::{client, images, prereq, require};

const SN: &str = "starling";
/// How long one `starling merge` may take.
const MERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// `starling merge --address <containerd> --namespace <ns> ARGS...`.
fn merge_cmd(ctr: &Ctr, args: &[&str]) -> CmdOutput {
    client::merge(ctr, SN, args, MERGE_TIMEOUT).unwrap()
}

/// Merges and mounts the result at `target`.
fn merge_and_mount(ctr: &Ctr, target: &Path, args: &[&str]) -> Vec<MountGuard> {
    client::merge_and_mount(ctr, SN, target, args, MERGE_TIMEOUT).unwrap()
}

/// Mounts existing snapshot `key` (as `ctr snapshots mounts` prints it) at `target`.
fn mount_snapshot(ctr: &Ctr, key: &str, target: &Path) -> Vec<MountGuard> {
    std::fs::create_dir_all(target).unwrap();
    let text = ctr
        .ctr_ok([
            "snapshots",
            "--snapshotter",
            SN,
            "mounts",
            target.to_str().unwrap(),
            key,
        ])
        .unwrap();
    MountSpec::parse_ctr(&text)
        .unwrap()
        .iter()
        .map(|m| m.mount(target).unwrap())
        .collect()
}

/// `ctr run --rootfs DIR ID sh -c SCRIPT`; returns stdout.
fn run_on(ctr: &Ctr, rootfs: &Path, script: &str) -> String {
    ctr.run_with(
        rootfs.to_str().unwrap(),
        SN,
        &["--rootfs"],
        &["/bin/sh", "-c", script],
    )
    .unwrap()
    .check()
    .unwrap()
    .stdout
}

fn snapshot_dirs(st: &Starling) -> usize {
    std::fs::read_dir(st.root().join("snapshots"))
        .unwrap()
        .count()
}

const SCRIPT: &str = "cat /etc/a-msg /etc/b-msg /etc/shared; \
    test ! -e /etc/drop-me && echo drop-me-gone; \
    ls /usr/share/a; ls /usr/share/b; \
    echo written > /etc/a-msg && cat /etc/a-msg";
const EXPECTED: &str =
    "from image a\nfrom image b\nb's shared\ndrop-me-gone\nonly-b\nb-doc\nwritten\n";

#[test]
fn containers_run_on_merges_of_two_images_and_gc_keeps_them_whole() {
    require!(prereq::containerd_stack(), prereq::starling_binary());
    let wd = Workdir::new("merge").unwrap();
    let registry = Registry::start(&wd).unwrap();
    let starling = Starling::start(
        &wd,
        StarlingOptions {
            log_level: Some("debug".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut opts = ContainerdOptions::default().proxy(SN, starling.socket());
    // GC right after every deletion, so `ctr snapshots rm` is followed by a GC pass.
    opts.extra_toml = "\n  [plugins.\"io.containerd.gc.v1.scheduler\"]\n    \
                       deletion_threshold = 1\n    schedule_delay = \"0s\"\n"
        .into();
    let containerd = Containerd::start(&wd, opts).unwrap();
    let ctr = containerd.ctr();
    ctr.wait_snapshotter(SN, Duration::from_secs(60)).unwrap();

    // Image A: busybox + a layer with A's files. Image B (no busybox): its own files,
    // then a layer deleting a file only A has and hiding A's /usr/share/a content.
    images::busybox()
        .unwrap()
        .layer(
            LayerBuilder::new()
                .file("etc/a-msg", "from image a\n")
                .file("etc/shared", "a's shared\n")
                .file("etc/drop-me", "deleted by image b\n")
                .file("usr/share/a/hidden-by-b", "x\n"),
        )
        .push(&registry, "merge-a:latest")
        .unwrap();
    ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .dir("etc")
                .file("etc/b-msg", "from image b\n")
                .file("etc/shared", "b's shared\n")
                .file("usr/share/b/b-doc", "b\n"),
        )
        .layer(
            LayerBuilder::new()
                .whiteout("etc/drop-me")
                .entry(Entry::opaque("usr/share/a"))
                .file("usr/share/a/only-b", "b\n"),
        )
        .push(&registry, "merge-b:latest")
        .unwrap();
    let (ra, rb) = (
        registry.reference("merge-a:latest"),
        registry.reference("merge-b:latest"),
    );
    ctr.pull(&ra, SN).unwrap();
    ctr.pull(&rb, SN).unwrap();
    let (ca, cb) = (
        ctr.image_chain_id(&ra).unwrap(),
        ctr.image_chain_id(&rb).unwrap(),
    );
    let layers = snapshot_dirs(&starling);
    assert_eq!(layers, 4, "busybox + a, b1 + b2");

    // A container on a merge of both images, in each mode.
    for mode in ["stack", "hardlink", "copy"] {
        let key = format!("merged-{mode}");
        let mnt = wd.join(format!("mnt-{mode}"));
        let guards = merge_and_mount(ctr, &mnt, &["--mode", mode, &key, &ca, &cb]);
        assert_eq!(run_on(ctr, &mnt, SCRIPT), EXPECTED, "{mode}");
        drop(guards);
        let info = ctr
            .ctr_ok(["snapshots", "--snapshotter", SN, "info", &key])
            .unwrap();
        assert!(
            info.contains(&format!(
                "\"containerd.io/snapshot/starling/merge.strategy\": \"{mode}\""
            )),
            "{info}"
        );
    }
    // stack adds only the merged snapshot's dir; hardlink and copy add a node each.
    assert_eq!(snapshot_dirs(&starling), layers + 3 + 2);
    // The inputs were not written to.
    {
        let view = ctr.mount_image(&ra, SN, &wd.join("view-a")).unwrap();
        assert_eq!(
            std::fs::read_to_string(view.path().join("etc/a-msg")).unwrap(),
            "from image a\n"
        );
    }
    // (The view is removed from containerd; the GC after that deletion removes it here.)
    wait_for("GC of the view", Duration::from_secs(60), || {
        snapshot_dirs(&starling) == layers + 5
    })
    .unwrap();

    // The same merge again reuses the flattened result (one more dir: its own upper).
    let before = snapshot_dirs(&starling);
    merge_cmd(
        ctr,
        &[
            "--mode", "hardlink", "--commit", "merged-c", "tmp-key", &ca, &cb,
        ],
    )
    .check()
    .unwrap();
    assert_eq!(snapshot_dirs(&starling), before + 1);
    let info = ctr
        .ctr_ok(["snapshots", "--snapshotter", SN, "info", "merged-c"])
        .unwrap();
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    {
        ctr.ctr_ok([
            "snapshots",
            "--snapshotter",
            SN,
            "view",
            "on-merged-c",
            "merged-c",
        ])
        .unwrap();
        let mnt = wd.join("mnt-view");
        let g = mount_snapshot(ctr, "on-merged-c", &mnt);
        assert_eq!(
            std::fs::read_to_string(mnt.join("etc/shared")).unwrap(),
            "b's shared\n"
        );
        drop(g);
        ctr.ctr_ok(["snapshots", "--snapshotter", SN, "rm", "on-merged-c"])
            .unwrap();
    }

    // Bad input comes back with its code and names the problem.
    let out = merge_cmd(ctr, &["bad-1", &ca, "no-such-snapshot"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("NotFound") && out.stderr.contains("no-such-snapshot"),
        "{}",
        out.stderr
    );
    ctr.ctr_ok(["snapshots", "--snapshotter", SN, "prepare", "active-1", &ca])
        .unwrap();
    let out = merge_cmd(ctr, &["bad-2", "active-1"]);
    assert!(
        !out.success()
            && out.stderr.contains("InvalidArgument")
            && out.stderr.contains("not a committed"),
        "{}",
        out.stderr
    );
    ctr.ctr_ok(["snapshots", "--snapshotter", SN, "rm", "active-1"])
        .unwrap();

    // Straight at starling's socket: backend keys, names resolved in the key's namespace;
    // containerd's GC later removes this snapshot it does not know.
    let mut direct = client::command(["merge"]).unwrap();
    direct.arg("--address").arg(starling.socket()).args([
        "--mode",
        "stack",
        "--view",
        "default/999999/direct",
        &ca,
        &cb,
    ]);
    let out = run_cmd(&mut direct, Duration::from_secs(60))
        .unwrap()
        .check()
        .unwrap();
    assert!(out.stdout.contains("lowerdir="), "{}", out.stdout);
    assert!(!out.stdout.contains("gc.root"));

    // containerd's GC after the images are removed: the merges stay whole.
    ctr.remove_images(&[&ra, &rb]).unwrap();
    let keys = ctr.snapshots(SN).unwrap();
    for k in ["merged-stack", "merged-hardlink", "merged-copy", "merged-c"] {
        assert!(keys.iter().any(|x| x == k), "{k} survives GC: {keys:?}");
    }
    assert!(
        !keys.iter().any(|k| k == &ca || k == &cb),
        "containerd forgot the image layers: {keys:?}"
    );
    for mode in ["stack", "hardlink", "copy"] {
        let mnt = wd.join(format!("mnt2-{mode}"));
        let g = mount_snapshot(ctr, &format!("merged-{mode}"), &mnt);
        let out = run_on(ctr, &mnt, "cat /etc/a-msg /etc/b-msg; ls /usr/share/a");
        assert_eq!(out, "written\nfrom image b\nonly-b\n", "{mode} after GC");
        drop(g);
    }

    // Removing the merges releases everything. containerd schedules a GC after each
    // deletion but drops one that lands while a collection runs, so force collections.
    for k in ["merged-stack", "merged-hardlink", "merged-copy", "merged-c"] {
        ctr.ctr_ok(["snapshots", "--snapshotter", SN, "rm", k])
            .unwrap();
    }
    wait_for(
        "GC to free the merged snapshots and their inputs",
        Duration::from_secs(60),
        || {
            ctr.collect_garbage().unwrap();
            snapshot_dirs(&starling) == 0
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} dirs left\n--- starling log tail:\n{}",
            snapshot_dirs(&starling),
            std::fs::read_to_string(wd.join("starling/starling.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let merging = starling.root().join("merging");
    assert!(
        !merging.exists() || std::fs::read_dir(&merging).unwrap().count() == 0,
        "no merge build left"
    );
    let left: Vec<String> = mounts_under(starling.root())
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point.display().to_string())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
