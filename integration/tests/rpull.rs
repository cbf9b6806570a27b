//! End-to-end tests of `starling rpull`, and of the reference client `ctr-remote image
//! rpull` against starling registered as `stargz`: real docker-registry, containerd 1.6,
//! runc and the starling daemon.
//!
//! Lazy or not: the eStargz tests check whichever path ran completely (lazy: every layer
//! snapshot carries `containerd.io/snapshot/remote` and no layer blob is in the content
//! store; fallback: every blob is there with its `containerd.io/uncompressed` label and no
//! snapshot is remote), print which one it was, and require the lazy path (the daemon
//! mounts eStargz layers over FUSE) unless `STARLING_EXPECT_LAZY=0` (e.g. a daemon
//! configured with `snapshotter.lazy = false`), which requires the fallback. Plain-gzip
//! images must fall back either way.

use std::collections::HashMap;
use std::time::Duration;

use integration::containerd::Ctr;
use integration::images::busybox;
use integration::oci::{chain_ids, Content, ImageBuilder, LayerBuilder};
use integration::process::CmdOutput;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};
use serde_json::Value;

/// What every container runs: reads files of all three layers.
const CMD: &[&str] = &[
    "/bin/sh",
    "-c",
    "cat /etc/motd /app/hello; md5sum /usr/share/extra.bin /app/data.bin; ls /bin | wc -l",
];

const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// busybox + two layers: a 3 MiB file and a changed `/etc/motd`; then a 5 MiB file (more
/// than one 4 MiB eStargz chunk), a script and `/etc/motd` again.
fn three_layers() -> ImageBuilder {
    busybox()
        .unwrap()
        .layer(
            LayerBuilder::new()
                .dir("usr")
                .dir("usr/share")
                .file(
                    "usr/share/extra.bin",
                    Content::Pattern {
                        len: 3 << 20,
                        seed: 7,
                    },
                )
                .file("etc/motd", "from layer two\n"),
        )
        .layer(
            LayerBuilder::new()
                .dir("app")
                .file(
                    "app/data.bin",
                    Content::Pattern {
                        len: (5 << 20) + 123,
                        seed: 9,
                    },
                )
                .file("app/hello", "hello from layer three\n")
                .file("etc/motd", "from layer three\n"),
        )
}

/// `STARLING_EXPECT_LAZY`: lazy required unless it is `0` (then the fallback is).
fn expect_lazy() -> Option<bool> {
    match std::env::var("STARLING_EXPECT_LAZY").as_deref() {
        Ok("0") => Some(false),
        _ => Some(true),
    }
}

fn stack(name: &str, starling_names: &[&str]) -> Stack {
    stack_with(name, starling_names, None)
}

fn stack_with(name: &str, starling_names: &[&str], config: Option<StarlingConfig>) -> Stack {
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                log_level: Some("debug".into()),
                config,
                ..Default::default()
            }),
            starling_names: starling_names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Pushes the three-layer image as `app:plain`, converts it with `ctr-remote` to `app:esgz`,
/// and returns both references and what [`CMD`] prints in the eStargz image pulled and run
/// with overlayfs. Leaves containerd without images or content.
fn images(s: &Stack) -> (String, String, String) {
    let ctr = s.ctr();
    three_layers().push(&s.registry, "app:plain").unwrap();
    let plain = s.registry.reference("app:plain");
    let esgz = s.registry.reference("app:esgz");
    ctr.pull(&plain, "overlayfs").unwrap();
    ctr.convert_estargz(&plain, &esgz, &[]).unwrap();
    ctr.push(&esgz).unwrap();
    ctr.remove_all_images().unwrap();
    ctr.pull(&esgz, "overlayfs").unwrap();
    let expected = ctr.run_ok(&esgz, "overlayfs", CMD).unwrap();
    ctr.remove_all_images().unwrap();
    assert!(
        expected.starts_with("from layer three\nhello from layer three\n"),
        "{expected}"
    );
    (plain, esgz, expected)
}

/// `app:mixed`: the plain image's bottom layer (gzip) under the eStargz image's two upper
/// layers, pushed from an OCI layout; returns its reference.
fn mixed_image(s: &Stack) -> String {
    let reg = &s.registry;
    let json = |b: &[u8]| -> Value { serde_json::from_slice(b).unwrap() };
    let blob = |d: &str| -> Vec<u8> {
        let r = integration::http::get(&reg.blob_url("app", d), &[]).unwrap();
        assert_eq!(r.status, 200, "blob {d}");
        r.body
    };
    let plain = json(&reg.manifest("app", "plain").unwrap().body);
    let esgz = json(&reg.manifest("app", "esgz").unwrap().body);
    let plain_cfg = json(&blob(plain["config"]["digest"].as_str().unwrap()));
    let mut cfg = json(&blob(esgz["config"]["digest"].as_str().unwrap()));
    cfg["rootfs"]["diff_ids"][0] = plain_cfg["rootfs"]["diff_ids"][0].clone();
    let mut m = esgz.clone();
    m["layers"][0] = plain["layers"][0].clone();

    let layout = s.wd.join("mixed-layout");
    integration::oci::image::init_layout(&layout).unwrap();
    let blobs = layout.join("blobs/sha256");
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(
            integration::oci::image::write_blob(&blobs, &blob(d)).unwrap(),
            d
        );
    }
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    m["config"]["digest"] = integration::oci::image::write_blob(&blobs, &cfg_bytes)
        .unwrap()
        .into();
    m["config"]["size"] = cfg_bytes.len().into();
    let m_bytes = serde_json::to_vec(&m).unwrap();
    let m_digest = integration::oci::image::write_blob(&blobs, &m_bytes).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": m_digest, "size": m_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "mixed"}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    reg.push_layout(&layout, "mixed", "app:mixed").unwrap();
    reg.reference("app:mixed")
}

/// `starling rpull --address A --namespace N --snapshotter S --plain-http [EXTRA] REF`.
fn starling_rpull(ctr: &Ctr, reference: &str, snapshotter: &str, extra: &[&str]) -> CmdOutput {
    client::rpull(ctr, reference, snapshotter, extra, Duration::from_secs(300)).unwrap()
}

fn rpull_ok(ctr: &Ctr, reference: &str, snapshotter: &str) -> String {
    let out = starling_rpull(ctr, reference, snapshotter, &[]);
    eprintln!("{}{}", out.stderr, out.stdout);
    assert!(out.success(), "starling rpull failed: {out:?}");
    out.stdout
}

/// The image's platform manifest, from containerd's content store.
fn manifest(ctr: &Ctr, reference: &str) -> Value {
    let ls = ctr.ctr_ok(["images", "ls"]).unwrap();
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`:\n{ls}"));
    let digest = line
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap();
    let m: Value = serde_json::from_slice(&ctr.content(digest).unwrap()).unwrap();
    if let Some(ms) = m["manifests"].as_array() {
        let d = ms[0]["digest"].as_str().unwrap().to_string();
        return serde_json::from_slice(&ctr.content(&d).unwrap()).unwrap();
    }
    m
}

/// `ctr snapshots info KEY` (None if it does not exist).
fn snapshot_info(ctr: &Ctr, snapshotter: &str, key: &str) -> Option<Value> {
    let out = ctr
        .ctr(["snapshots", "--snapshotter", snapshotter, "info", key])
        .unwrap();
    out.success()
        .then(|| serde_json::from_str(&out.stdout).unwrap())
}

/// `ctr content ls`: digest → labels.
fn content(ctr: &Ctr) -> HashMap<String, String> {
    ctr.ctr_ok(["content", "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let d = w.next()?.to_string();
            Some((d, w.last().unwrap_or("").to_string()))
        })
        .collect()
}

/// `ctr content ls` as digest → sorted labels, with the snapshotter's name replaced by
/// `SNAPSHOTTER` (in `containerd.io/gc.ref.snapshot.<name>`).
fn content_labels(ctr: &Ctr, snapshotter: &str) -> HashMap<String, Vec<String>> {
    content(ctr)
        .into_iter()
        .map(|(d, l)| {
            let mut v: Vec<String> = l
                .split(',')
                .filter(|x| !x.is_empty() && *x != "-")
                .map(|x| x.replace(&format!("snapshot.{snapshotter}="), "snapshot.SNAPSHOTTER="))
                .collect();
            v.sort();
            (d, v)
        })
        .collect()
}

/// Layers of `reference` as unpacked on `snapshotter`: every chain ID is a committed
/// snapshot whose labels name the layer; all lazy or all applied (checked accordingly);
/// returns whether they are lazy.
fn check_unpacked(ctr: &Ctr, snapshotter: &str, reference: &str, labels_of: &[&str]) -> bool {
    let m = manifest(ctr, reference);
    let layers: Vec<&Value> = m["layers"].as_array().unwrap().iter().collect();
    let cfg = ctr.image_config(reference).unwrap();
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let chains = chain_ids(&diff_ids);
    let blobs = content(ctr);
    let mut remote = Vec::new();
    for (i, (layer, chain)) in layers.iter().zip(&chains).enumerate() {
        let digest = layer["digest"].as_str().unwrap();
        let info = snapshot_info(ctr, snapshotter, chain)
            .unwrap_or_else(|| panic!("layer {i}: no snapshot {chain} on {snapshotter}"));
        assert_eq!(info["Kind"], "Committed", "{info}");
        let labels = &info["Labels"];
        for key in labels_of {
            assert_eq!(
                labels[*key].as_str(),
                Some(digest),
                "layer {i}: label {key}: {labels}"
            );
        }
        if let Some(toc) = layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"].as_str()
        {
            assert_eq!(
                labels["containerd.io/snapshot/stargz/toc.digest"].as_str(),
                Some(toc),
                "layer {i}: the TOC digest reached the snapshotter: {labels}"
            );
        }
        let is_remote = labels.get(REMOTE_LABEL).is_some();
        remote.push(is_remote);
        if is_remote {
            assert!(
                !blobs.contains_key(digest),
                "layer {i} is lazy but its blob was downloaded"
            );
        } else {
            let l = blobs
                .get(digest)
                .unwrap_or_else(|| panic!("layer {i} was applied without its blob in content"));
            assert!(
                l.contains(&format!("containerd.io/uncompressed={}", diff_ids[i])),
                "layer {i}: {l}"
            );
        }
    }
    let lazy = remote[0];
    assert!(
        remote.iter().all(|r| *r == lazy),
        "some layers lazy, some not: {remote:?}"
    );
    lazy
}

/// Asserts the lazy/fallback expectation for an eStargz image and says which path ran.
fn check_path(test: &str, lazy: bool) {
    eprintln!(
        "{test}: eStargz layers were {}",
        if lazy {
            "mounted lazily"
        } else {
            "fetched and applied (fallback)"
        }
    );
    if let Some(want) = expect_lazy() {
        assert_eq!(lazy, want, "STARLING_EXPECT_LAZY={}", want as u8);
    }
}

#[test]
fn rpull_estargz_image_runs_like_overlayfs() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("rpl-esgz", &[]);
    let ctr = s.ctr();
    let (_, esgz, expected) = images(&s);
    let summary = rpull_ok(ctr, &esgz, "starling");
    assert!(ctr.images().unwrap().contains(&esgz));
    let lazy = check_unpacked(
        ctr,
        "starling",
        &esgz,
        &[
            "containerd.io/snapshot/cri.layer-digest",
            "containerd.io/snapshot/remote/stargz.digest",
        ],
    );
    check_path(module_path!(), lazy);
    let counts = if lazy {
        "3 layers: 3 lazy, 0 applied"
    } else {
        "3 layers: 0 lazy, 3 applied"
    };
    assert!(summary.contains(counts), "{summary}");
    assert!(summary.contains(", 0 already present"), "{summary}");
    assert_eq!(ctr.run_ok(&esgz, "starling", CMD).unwrap(), expected);
    // The pull's lease is gone; the image record alone keeps the content.
    assert_eq!(ctr.ctr_ok(["leases", "ls", "-q"]).unwrap().trim(), "");
}

#[test]
fn rpull_plain_gzip_image_falls_back_and_runs() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("rpl-gzip", &[]);
    let ctr = s.ctr();
    let img = three_layers().push(&s.registry, "app:plain").unwrap();
    let plain = s.registry.reference("app:plain");
    ctr.pull(&plain, "overlayfs").unwrap();
    let expected = ctr.run_ok(&plain, "overlayfs", CMD).unwrap();
    let by_ctr = content_labels(ctr, "overlayfs");
    ctr.remove_all_images().unwrap();

    let summary = rpull_ok(ctr, &plain, "starling");
    // Content carries the labels containerd's own pull gives it (GC references between
    // blobs, distribution source, uncompressed digests, the snapshot reference).
    assert_eq!(content_labels(ctr, "starling"), by_ctr);
    assert!(
        summary.contains("3 layers: 0 lazy, 3 applied"),
        "plain gzip layers fall back: {summary}"
    );
    let lazy = check_unpacked(
        ctr,
        "starling",
        &plain,
        &[
            "containerd.io/snapshot/cri.layer-digest",
            "containerd.io/snapshot/remote/stargz.digest",
        ],
    );
    assert!(!lazy);
    assert_eq!(
        ctr.image_chain_id(&plain).unwrap(),
        img.chain_ids()[2],
        "top chain ID"
    );
    assert_eq!(ctr.run_ok(&plain, "starling", CMD).unwrap(), expected);

    // Errors name what failed.
    let missing = s.registry.reference("app:nope");
    let out = starling_rpull(ctr, &missing, "starling", &[]);
    assert!(!out.success());
    eprintln!("{}", out.stderr.trim());
    assert!(
        out.stderr.contains("app:nope") && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    let mut nowhere = ctr.clone();
    nowhere.address = "/nonexistent.sock".into();
    let out = starling_rpull(&nowhere, &plain, "starling", &[]);
    assert!(!out.success());
    eprintln!("{}", out.stderr.trim());
    assert!(
        out.stderr
            .contains("cannot connect to containerd at /nonexistent.sock"),
        "{}",
        out.stderr
    );
    let out = starling_rpull(ctr, &plain, "no-such-snapshotter", &[]);
    assert!(!out.success());
    eprintln!("{}", out.stderr.trim());
    assert!(
        out.stderr.contains("layer 1/3") && out.stderr.contains("no-such-snapshotter"),
        "{}",
        out.stderr
    );
}

#[test]
fn ctr_remote_rpull_works_against_starling_as_stargz() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("rpl-ctrr", &["stargz"]);
    let ctr = s.ctr();
    let (_, esgz, expected) = images(&s);
    ctr.rpull(&esgz, "stargz").unwrap();
    // ctr-remote 0.12 sends the stargz label family only; the daemon saw all of it.
    let lazy = check_unpacked(
        ctr,
        "stargz",
        &esgz,
        &["containerd.io/snapshot/remote/stargz.digest"],
    );
    check_path(module_path!(), lazy);
    let chain = ctr.image_chain_id(&esgz).unwrap();
    let top = snapshot_info(ctr, "stargz", &chain).unwrap();
    eprintln!(
        "labels of the top layer as ctr-remote prepared it: {:#}",
        top["Labels"]
    );
    assert_eq!(
        top["Labels"]["containerd.io/snapshot/remote/stargz.reference"].as_str(),
        Some(esgz.as_str()),
        "{top}"
    );
    assert_eq!(ctr.run_ok(&esgz, "stargz", CMD).unwrap(), expected);
}

#[test]
fn images_rm_and_gc_leave_no_snapshots_content_or_mounts() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("rpl-gc", &[]);
    let ctr = s.ctr();
    let (plain, esgz, expected) = images(&s);
    rpull_ok(ctr, &esgz, "starling");
    rpull_ok(ctr, &plain, "starling");
    assert_eq!(ctr.run_ok(&esgz, "starling", CMD).unwrap(), expected);
    assert_eq!(ctr.run_ok(&plain, "starling", CMD).unwrap(), expected);
    assert!(!ctr.snapshots("starling").unwrap().is_empty());
    ctr.remove_images(&[&esgz, &plain]).unwrap();

    let root = s.starling.as_ref().unwrap().root().to_path_buf();
    let snap_dirs = || -> Vec<String> {
        std::fs::read_dir(root.join("snapshots"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut last = String::new();
    let gone =
        integration::poll::wait_for("GC to remove everything", Duration::from_secs(60), || {
            let snaps = ctr.snapshots("starling").unwrap();
            let blobs = ctr.ctr_ok(["content", "ls", "-q"]).unwrap();
            let leases = ctr.ctr_ok(["leases", "ls", "-q"]).unwrap();
            let dirs = snap_dirs();
            last =
                format!("snapshots {snaps:?}, content {blobs:?}, leases {leases:?}, dirs {dirs:?}");
            snaps.is_empty()
                && blobs.trim().is_empty()
                && leases.trim().is_empty()
                && dirs.is_empty()
        });
    assert!(gone.is_ok(), "left behind: {last}");
    assert!(
        integration::mounts::mounts_under(&root).unwrap().is_empty(),
        "mounts left under {}",
        root.display()
    );
}

#[test]
fn repull_skips_layers_that_exist() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    // No background fetch or program read-ahead: they could still be reading the first
    // pull's layers while the second pull runs, and this test counts the layer reads of
    // the second pull.
    let cfg = StarlingConfig::new()
        .set("fetch.background_fetch", false)
        .set("fetch.program_read_ahead", false);
    let s = stack_with("rpl-again", &[], Some(cfg));
    let ctr = s.ctr();
    let (_, esgz, expected) = images(&s);
    rpull_ok(ctr, &esgz, "starling");
    let mark = s.registry.access_mark();
    let again = rpull_ok(ctr, &esgz, "starling");
    assert!(
        again.contains("3 layers: 0 lazy, 0 applied, 3 already present"),
        "{again}"
    );
    let log = s.registry.access_since_settled(mark);
    let layers: Vec<String> = manifest(ctr, &esgz)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !log.iter()
            .any(|e| e.is_blob_get() && layers.iter().any(|d| e.uri.contains(d.as_str()))),
        "a re-pull fetched layer blobs: {log:?}"
    );

    // A two-layer image sharing the bottom layers: only its chain IDs matter.
    let two = busybox().unwrap().layer(three_layers().layers()[1].clone());
    let two_img = two.push(&s.registry, "app:two").unwrap();
    let plain_img = three_layers().push(&s.registry, "app:plain2").unwrap();
    assert_eq!(
        two_img.layers[1].digest, plain_img.layers[1].digest,
        "the builder is deterministic"
    );
    rpull_ok(ctr, &s.registry.reference("app:plain2"), "starling");
    let two_ref = s.registry.reference("app:two");
    let out = rpull_ok(ctr, &two_ref, "starling");
    assert!(
        out.contains("2 layers: 0 lazy, 0 applied, 2 already present"),
        "{out}"
    );
    let out = ctr
        .run_ok(&two_ref, "starling", &["/bin/cat", "/etc/motd"])
        .unwrap();
    assert_eq!(out, "from layer two\n");
    assert_eq!(ctr.run_ok(&esgz, "starling", CMD).unwrap(), expected);
}

/// A stack with the reference peer (registered as `stargz-peer`) and no starling, or why
/// the peer cannot be built.
fn peer_stack(name: &str) -> Result<Stack, String> {
    let bin = integration::peer::peer_binary()?;
    let opts = StackOptions {
        peer: Some((bin, Default::default())),
        ..Default::default()
    };
    Ok(Stack::start(name, opts).unwrap())
}

#[test]
fn rpull_is_lazy_with_the_stargz_peer() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = match peer_stack("rpl-peer") {
        Ok(s) => s,
        Err(reason) => return prereq::skip_optional(module_path!(), &reason),
    };
    let ctr = s.ctr();
    let (_, esgz, expected) = images(&s);
    let mark = s.registry.access_mark();
    let summary = rpull_ok(ctr, &esgz, "stargz-peer");
    assert!(
        summary.contains("3 layers: 3 lazy, 0 applied"),
        "the reference remote snapshotter mounts every layer: {summary}"
    );
    let log = s.registry.access_since_settled(mark);
    let config_digest = manifest(ctr, &esgz)["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let own_blob_gets: Vec<_> = log
        .iter()
        .filter(|e| e.is_blob_get() && e.user_agent.starts_with("starling/"))
        .collect();
    assert!(
        own_blob_gets.len() == 1 && own_blob_gets[0].uri.contains(&config_digest),
        "rpull itself fetched only the config blob: {own_blob_gets:?}"
    );
    let lazy = check_unpacked(
        ctr,
        "stargz-peer",
        &esgz,
        &["containerd.io/snapshot/remote/stargz.digest"],
    );
    assert!(lazy);
    assert_eq!(ctr.run_ok(&esgz, "stargz-peer", CMD).unwrap(), expected);
}

#[test]
fn mixed_image_is_lazy_where_it_can_be_with_the_stargz_peer() {
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = match peer_stack("rpl-mix") {
        Ok(s) => s,
        Err(reason) => return prereq::skip_optional(module_path!(), &reason),
    };
    let ctr = s.ctr();
    let (_, _, expected) = images(&s);
    let mixed = mixed_image(&s);
    let mark = s.registry.access_mark();
    let summary = rpull_ok(ctr, &mixed, "stargz-peer");
    assert!(
        summary.contains("3 layers: 2 lazy, 1 applied"),
        "the gzip layer falls back, the eStargz ones stay lazy: {summary}"
    );
    let m = manifest(ctr, &mixed);
    let digests: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let log = s.registry.access_since_settled(mark);
    // Bytes the client itself (not the peer's lazy reads) fetched of each layer.
    let fetched = |d: &str| -> u64 {
        log.iter()
            .filter(|e| {
                e.is_blob_get() && e.user_agent.starts_with("starling/") && e.uri.contains(d)
            })
            .map(|e| e.bytes)
            .sum()
    };
    let size0 = m["layers"][0]["size"].as_u64().unwrap();
    assert_eq!(
        fetched(digests[0]),
        size0,
        "the gzip layer was fetched once: {log:?}"
    );
    for d in &digests[1..] {
        assert_eq!(
            fetched(d),
            0,
            "lazy layer {d} was not fetched by rpull: {log:?}"
        );
    }
    let blobs = content(ctr);
    assert!(blobs.contains_key(digests[0]));
    assert!(!blobs.contains_key(digests[1]) && !blobs.contains_key(digests[2]));
    assert_eq!(ctr.run_ok(&mixed, "stargz-peer", CMD).unwrap(), expected);
}
