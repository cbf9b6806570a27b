//! Many nodes behind one cluster mirror that is `starling mirror`: blobs cached in aligned
//! blocks, missing blocks fetched from the origin by range, once for all nodes
//! (single-flight). The fleet, its scenarios and how bytes are counted: `fleet_common`; the
//! same scenarios with docker-registry's pull-through cache: `fleet_mirror.rs`.
//!
//! The mirror is started without a default upstream, so everything it served was asked for
//! with `?ns=<origin>`. What must hold regardless of timing (byte counts, not times): every
//! node's container output is right; three nodes starting at once make the origin serve at
//! most 1.2× what one node through the mirror does, and so does a staggered rollout.
//!
//! `fleet_three_nodes_share_a_starling_mirror` is the CI form (busybox + a 6 MiB file);
//! `fleet_starling_mirror_figures_pydeb` (ignored) makes the figures of docs/benchmarks.md.

mod fleet_common;
mod fuse_common;

use fleet_common::{
    ci_check, ci_fleet, pydeb_check, pydeb_fleet, MirrorKind, Scenario, Scenarios, CI_CMD,
    PYDEB_CMD,
};
use integration::{prereq, require};

fn assert_shared(direct: &Scenario, one: &Scenario, three: &Scenario, staggered: &Scenario) {
    assert!(direct.origin_bytes > 0 && one.origin_bytes > 0);
    for s in [one, three, staggered] {
        assert!(
            s.mirror_requests_with_ns > 0,
            "the nodes went through the mirror (with ns=): {s:?}"
        );
    }
    // Nodes arriving at once share the mirror's range fetches (bytes, not time).
    assert!(
        (three.origin_bytes as f64) <= 1.2 * one.origin_bytes as f64,
        "3 nodes at once: {three:?} vs one node: {one:?}"
    );
    assert!(
        (staggered.origin_bytes as f64) <= 1.2 * one.origin_bytes as f64,
        "staggered: {staggered:?} vs one node: {one:?}"
    );
}

#[test]
fn fleet_three_nodes_share_a_starling_mirror() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::netns(),
        prereq::ctr_remote(),
        prereq::starling_binary()
    );
    let fleet = ci_fleet("sfleet");
    let check = |out: &str| ci_check(out);
    let Scenarios {
        direct,
        one,
        three,
        staggered,
    } = fleet.scenarios(MirrorKind::Starling, &CI_CMD, &check);
    assert_shared(&direct, &one, &three, &staggered);
}

/// The figures of docs/benchmarks.md ("Many nodes behind a pull-through mirror", starling
/// mirror table). Run with `cargo test --profile ci -p integration --test
/// fleet_starling_mirror -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark figures (about a minute): run explicitly"]
fn fleet_starling_mirror_figures_pydeb() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::netns(),
        prereq::ctr_remote(),
        prereq::starling_binary(),
        prereq::debian_images()
    );
    let fleet = pydeb_fleet("sfleetpy");
    let check = |out: &str| pydeb_check(out);
    let Scenarios {
        direct,
        one,
        three,
        staggered,
    } = fleet.scenarios(MirrorKind::Starling, &PYDEB_CMD, &check);
    assert_shared(&direct, &one, &three, &staggered);
}
