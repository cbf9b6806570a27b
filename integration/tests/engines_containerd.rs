//! Lazy pull + run on the newer containerd releases (extracted from Debian by
//! `scripts/engines`), each started from its `contrib/containerd` snippet, with bookworm's
//! runc; the eStargz image is busybox + a data layer (`engines_common`):
//!
//! - containerd 1.7 (config version 2): `starling rpull` + `ctr run`
//!   (`containerd_1_7_rpull_is_lazy_and_runs`);
//! - containerd 2.1 (config version 3): `ctr image pull --snapshotter starling` through the
//!   transfer service (the proxy's `enable_remote_snapshot_annotations` export and the
//!   `unpack_config` entry), then `starling rpull`, then `ctr image pull --snapshotter
//!   stargz` (the same daemon registered under the name engines special-case)
//!   (`containerd_2_1_transfer_pull_rpull_and_the_stargz_name_are_lazy`).
//!
//! Lazy means: no layer blob in containerd's content store, the image's top snapshot is a
//! remote snapshot, starling serves both layers, and the unread 6 MiB of the data layer
//! were not fetched.

mod engines_common;

use std::time::Duration;

use engines_common::{assert_lazy, esgz_image, stack, HELLO};
use integration::containerd::{ContainerdVersion, Ctr};
use integration::stack::Stack;
use integration::{client, prereq, require};

/// Removes every image and waits until containerd's GC has removed `snapshotter`'s
/// snapshots (the next pull starts from nothing).
fn remove_all_and_wait(ctr: &Ctr, snapshotter: &str) {
    ctr.remove_all_images().unwrap();
    let mut last = Vec::new();
    let gone = integration::poll::wait_for("GC", Duration::from_secs(60), || {
        last = ctr.snapshots(snapshotter).unwrap();
        last.is_empty()
    });
    assert!(gone.is_ok(), "snapshots left after images rm: {last:?}");
}

fn run_hello(s: &Stack, reference: &str, snapshotter: &str) {
    let out = s
        .ctr()
        .run(reference, snapshotter, &["cat", "/data/hello"])
        .unwrap();
    assert!(out.success(), "ctr run {reference}: {}", out.stderr);
    assert_eq!(out.stdout, HELLO);
}

fn rpull_lazy(s: &Stack, reference: &str) {
    let summary = client::rpull_ok(s.ctr(), reference, "starling").unwrap();
    assert!(
        summary.contains("2 layers: 2 lazy, 0 applied"),
        "{summary}\n{}",
        s.starling().unwrap().log()
    );
}

#[test]
fn containerd_1_7_rpull_is_lazy_and_runs() {
    let v = ContainerdVersion::V1_7;
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary(),
        v.check()
    );
    let s = stack("eng17", v, &["starling"]);
    let version = s.ctr().ctr_ok(["version"]).unwrap();
    assert!(version.contains("1.7."), "not containerd 1.7:\n{version}");
    let (esgz, blobs) = esgz_image(&s);
    rpull_lazy(&s, &esgz);
    run_hello(&s, &esgz, "starling");
    assert_lazy(&s, s.ctr(), "starling", &esgz, &blobs);
}

#[test]
fn containerd_2_1_transfer_pull_rpull_and_the_stargz_name_are_lazy() {
    let v = ContainerdVersion::V2_1;
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary(),
        v.check()
    );
    let s = stack("eng21", v, &["starling", "stargz"]);
    let ctr = s.ctr();
    let version = ctr.ctr_ok(["version"]).unwrap();
    assert!(version.contains("2.1."), "not containerd 2.1:\n{version}");
    let (esgz, blobs) = esgz_image(&s);

    // ctr 2.x pulls through the transfer service (no --local)
    ctr.pull(&esgz, "starling").unwrap();
    assert_lazy(&s, ctr, "starling", &esgz, &blobs);
    run_hello(&s, &esgz, "starling");

    remove_all_and_wait(ctr, "starling");
    rpull_lazy(&s, &esgz);
    assert_lazy(&s, ctr, "starling", &esgz, &blobs);
    run_hello(&s, &esgz, "starling");

    remove_all_and_wait(ctr, "starling");
    ctr.pull(&esgz, "stargz").unwrap();
    assert_lazy(&s, ctr, "stargz", &esgz, &blobs);
    run_hello(&s, &esgz, "stargz");
}
