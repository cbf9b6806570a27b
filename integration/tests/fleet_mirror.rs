//! Many nodes behind one cluster mirror that is `docker-registry` in pull-through cache
//! mode (`proxy.remoteurl`); the fleet, its scenarios and how bytes are counted:
//! `fleet_common`. The same scenarios with `starling mirror`: `fleet_starling_mirror.rs`.
//!
//! `fleet_three_nodes_share_a_pull_through_mirror` is the CI form (busybox + a 6 MiB file,
//! a few seconds); `fleet_figures_pydeb` (ignored) makes the figures of docs/benchmarks.md
//! with pydeb (python3 importing modules).

mod fleet_common;
mod fuse_common;

use fleet_common::{
    ci_check, ci_fleet, pydeb_check, pydeb_fleet, MirrorKind, Scenarios, CI_CMD, PYDEB_CMD,
};
use integration::{prereq, require};

#[test]
fn fleet_three_nodes_share_a_pull_through_mirror() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::netns(),
        prereq::ctr_remote(),
        prereq::starling_binary()
    );
    let fleet = ci_fleet("fleet");
    let check = |out: &str| ci_check(out);
    let Scenarios {
        direct,
        one,
        three,
        staggered,
    } = fleet.scenarios(MirrorKind::PullThrough, &CI_CMD, &check);
    assert!(direct.origin_bytes > 0);
    assert!(
        one.mirror_requests_with_ns > 0 && three.mirror_requests_with_ns > 0,
        "the nodes went through the mirror (with ns=): {one:?} {three:?}"
    );
    // Once the mirror has the image, more nodes cost the origin nothing: the staggered
    // rollout makes it serve what one node through the mirror does (bytes, not time).
    assert!(
        (staggered.origin_bytes as f64) <= 1.2 * one.origin_bytes as f64,
        "staggered: {staggered:?} vs one node: {one:?}"
    );
}

/// The figures of docs/benchmarks.md ("Many nodes behind a pull-through mirror"): pydeb
/// (converted by `starling estargz build`, cached) over the benchmark link (20 ms RTT,
/// 100 Mbit/s), python3 importing a few modules. Run with
/// `cargo test --profile ci -p integration --test fleet_mirror -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark figures (about a minute): run explicitly"]
fn fleet_figures_pydeb() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::netns(),
        prereq::ctr_remote(),
        prereq::starling_binary(),
        prereq::debian_images()
    );
    let fleet = pydeb_fleet("fleetpy");
    let check = |out: &str| pydeb_check(out);
    fleet.scenarios(MirrorKind::PullThrough, &PYDEB_CMD, &check);
}
