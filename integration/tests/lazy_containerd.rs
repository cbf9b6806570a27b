//! Lazy pulling end to end: real containerd 1.6, runc, docker-registry and the starling
//! daemon with its remote-layer hook (FUSE mounts of eStargz layers).
//!
//! - busybox + a data layer, converted with `starling convert`, pulled with `starling
//!   rpull`: every layer is a remote snapshot on a FUSE mount, `ctr run` works, fewer
//!   bytes are fetched than the blobs hold (metrics endpoint), and the metrics name the
//!   layers; SIGTERM unmounts every layer; `ctr images rm` + GC leaves no mount or
//!   directory (`lazy_image_runs_from_fuse_mounts_and_fetches_less_than_the_blobs`);
//! - pydeb `python3 -c 'print(1)'`, lazy vs overlayfs, timings printed
//!   (`lazy_pydeb_prints_1`);
//! - an image removed and pulled again reads what it read before from the chunk cache
//!   (`removed_image_pulled_again_reads_from_the_chunk_cache`);
//! - SIGKILL, registry down, restart: layers restored from saved state, metadata walks
//!   and cached files work, uncached reads fail until the registry is back
//!   (`killed_daemon_restores_layers_without_the_registry`);
//! - a wrong or malformed TOC digest falls back to a normal pull with a log line naming
//!   the layer (`wrong_toc_digest_falls_back_with_a_clear_log_line`);
//! - the fd store: a running container keeps reading across SIGKILL + restart
//!   (`running_container_keeps_reading_after_the_daemon_is_killed_and_restarted`), reads
//!   in flight at the kill or issued while the daemon is down complete after the restart
//!   (`reads_issued_while_the_daemon_is_down_complete_after_restart`), and without the
//!   holder the restart falls back to remounting
//!   (`killed_holder_and_daemon_fall_back_to_remounting`);
//! - a clean stop (SIGTERM, the daemon's default) leaves the mounts to the holder and a
//!   running container keeps reading across the restart
//!   (`running_container_keeps_reading_across_a_clean_restart`); with no daemon for
//!   `[daemon] restart_grace` the holder gives up: waiting reads fail, mounts are detached,
//!   it exits (`holder_gives_up_after_the_restart_grace`); `[daemon] unmount_on_stop`
//!   unmounts at SIGTERM as before (`unmount_on_stop_unmounts_every_layer_at_sigterm`);
//!   `starling fdstore --release` after a clean stop leaves nothing
//!   (`release_after_a_clean_stop_leaves_no_mount_and_no_holder`), and so does dropping
//!   the harness (`harness_drop_after_a_hand_over_leaves_no_mount_and_no_holder`).
//!
//! The other tests run the daemon with `--unmount-on-stop` (the harness's default).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::containerd::Ctr;
use integration::images::{busybox, pydeb};
use integration::metrics::{metric, FETCH_BYTES_TOTAL};
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::registry::Registry;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};
use serde_json::Value;

const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// busybox + a layer with two data files: `a.bin` (1 MiB) and `b.bin` (6 MiB: two
/// eStargz chunks).
fn data_image() -> ImageBuilder {
    busybox().unwrap().layer(
        LayerBuilder::new()
            .dir("data")
            .file(
                "data/a.bin",
                Content::Pattern {
                    len: 1 << 20,
                    seed: 11,
                },
            )
            .file(
                "data/b.bin",
                Content::Pattern {
                    len: 6 << 20,
                    seed: 12,
                },
            )
            .file("data/hello", "hello from the data layer\n"),
    )
}

/// Default test config: metrics on a free port, no background fetch (so what is fetched
/// is what was read), short timeouts (a dead registry fails reads quickly).
fn config() -> StarlingConfig {
    StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.background_fetch", false)
        .set("fetch.request_timeout", "5s")
        .set("fetch.read_timeout", "10s")
        .set("fetch.max_retries", 2i64)
}

fn stack(name: &str, cfg: StarlingConfig, names: &[&str]) -> Stack {
    stack_with(name, cfg, names, false)
}

/// [`stack`]; with `keep_mounts_on_stop` the daemon runs without `--unmount-on-stop` (its
/// default: a SIGTERM leaves the lazy mounts to the fd store holder).
fn stack_with(name: &str, cfg: StarlingConfig, names: &[&str], keep_mounts_on_stop: bool) -> Stack {
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(cfg),
                log_level: Some("info,fusefs=info".into()),
                keep_mounts_on_stop,
                ..Default::default()
            }),
            starling_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// `starling convert --plain-http SRC DST`.
fn convert(src: &str, dst: &str) {
    let out = client::run(["convert", "--plain-http", src, dst], client::TIMEOUT).unwrap();
    assert!(out.success(), "convert {src}: {}", out.stderr);
}

fn root(s: &Stack) -> PathBuf {
    s.starling().unwrap().root().to_path_buf()
}

fn daemon_log(s: &Stack) -> String {
    s.starling().unwrap().log()
}

/// The daemon's metrics.
fn scrape(s: &Stack) -> String {
    s.starling().unwrap().metrics().unwrap()
}

fn fetched(s: &Stack) -> f64 {
    s.fetched_bytes().unwrap()
}

/// FUSE mounts below the daemon's root.
fn fuse_mounts(s: &Stack) -> Vec<PathBuf> {
    integration::mounts::mounts_under(&root(s))
        .unwrap()
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse"))
        .map(|m| m.mount_point)
        .collect()
}

fn snapshot_dirs(s: &Stack) -> Vec<String> {
    std::fs::read_dir(root(s).join("snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Layer digests and sizes of `repo:tag` in the registry.
fn layers(reg: &Registry, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let m: Value = serde_json::from_slice(&reg.manifest(repo, tag).unwrap().body).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Labels of snapshot `key`.
fn snapshot_labels(ctr: &Ctr, snapshotter: &str, key: &str) -> Value {
    let out = ctr
        .ctr_ok(["snapshots", "--snapshotter", snapshotter, "info", key])
        .unwrap();
    serde_json::from_str::<Value>(&out).unwrap()["Labels"].clone()
}

/// Removes every image and waits for containerd's GC to remove every snapshot, and for
/// the daemon to leave no snapshot directory and no FUSE mount.
fn remove_all_and_wait_for_gc(s: &Stack) {
    let ctr = s.ctr();
    ctr.remove_all_images().unwrap();
    let mut last = String::new();
    let gone = integration::poll::wait_for("GC", Duration::from_secs(60), || {
        let snaps = ctr.snapshots("starling").unwrap();
        let dirs = snapshot_dirs(s);
        let mounts = fuse_mounts(s);
        last = format!("snapshots {snaps:?}, dirs {dirs:?}, FUSE mounts {mounts:?}");
        snaps.is_empty() && dirs.is_empty() && mounts.is_empty()
    });
    assert!(gone.is_ok(), "left behind after images rm + GC: {last}");
}

/// Pushes [`data_image`] as `data:plain`, converts it to `data:esgz`, and returns the
/// eStargz reference and what `cmd` prints in the plain image on overlayfs.
fn data_images(s: &Stack, cmd: &[&str]) -> (String, String) {
    data_image().push(&s.registry, "data:plain").unwrap();
    let plain = s.registry.reference("data:plain");
    let esgz = s.registry.reference("data:esgz");
    convert(&plain, &esgz);
    let ctr = s.ctr();
    let t = Instant::now();
    ctr.pull(&plain, "overlayfs").unwrap();
    let expected = ctr.run_ok(&plain, "overlayfs", cmd).unwrap();
    eprintln!(
        "data image (busybox + 7 MiB): overlayfs pull+run {:.2}s",
        t.elapsed().as_secs_f64()
    );
    ctr.remove_all_images().unwrap();
    (esgz, expected)
}

const READ_A: &[&str] = &["/bin/sh", "-c", "cat /data/hello; md5sum /data/a.bin"];
const READ_B: &[&str] = &["/bin/md5sum", "/data/b.bin"];
const WALK: &[&str] = &["/bin/sh", "-c", "find / -xdev | wc -l; ls -l /data"];

#[test]
fn lazy_image_runs_from_fuse_mounts_and_fetches_less_than_the_blobs() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut s = stack("lz-run", config(), &[]);
    let (esgz, expected) = data_images(&s, READ_A);
    let blobs = layers(&s.registry, "data", "esgz");
    let ctr = s.ctr().clone();
    let ctr = &ctr;
    let t = Instant::now();
    let summary = client::rpull_ok(ctr, &esgz, "starling").unwrap();
    assert!(
        summary.contains("2 layers: 2 lazy, 0 applied"),
        "{summary}\n{}",
        daemon_log(&s)
    );
    let chain = ctr.image_chain_id(&esgz).unwrap();
    let labels = snapshot_labels(ctr, "starling", &chain);
    assert!(labels.get(REMOTE_LABEL).is_some(), "{labels}");
    assert_eq!(fuse_mounts(&s).len(), 2, "one FUSE mount per layer");

    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected);
    let lazy = t.elapsed();
    let m = scrape(&s);
    let bytes = metric(&m, FETCH_BYTES_TOTAL, &[]);
    let total: u64 = blobs.iter().map(|(_, n)| n).sum();
    eprintln!(
        "data image: starling rpull+run {:.2}s, fetched {bytes} of {total} blob bytes",
        lazy.as_secs_f64()
    );
    assert!(bytes > 0.0, "reads fetched nothing?\n{m}");
    assert!(
        bytes < total as f64,
        "a lazy run fetched {bytes} bytes, the blobs hold {total}"
    );
    // b.bin (6 MiB of the data layer) was not read.
    let (data_digest, data_size) = &blobs[1];
    let data_fetched = metric(
        &m,
        "starling_layer_fetched_bytes",
        &[&format!("layer=\"{data_digest}\"")],
    );
    assert!(
        data_fetched > 0.0 && data_fetched < (*data_size as f64) / 2.0,
        "data layer: {data_fetched} of {data_size} bytes local\n{m}"
    );
    assert_eq!(metric(&m, "starling_lazy_layers_mounted", &[]), 2.0, "{m}");
    assert_eq!(
        metric(&m, "starling_lazy_prepares_total", &["outcome=\"mounted\""]),
        2.0,
        "{m}"
    );
    let data_layer = format!("layer=\"{data_digest}\"");
    assert_eq!(
        metric(
            &m,
            "starling_layer_state",
            &[&data_layer, "state=\"on-demand\""]
        ),
        1.0,
        "half-read data layer, no background fetch\n{m}"
    );
    assert_eq!(
        metric(&m, "starling_layer_state", &[&data_layer]),
        1.0,
        "one state at a time\n{m}"
    );
    assert!(
        metric(
            &m,
            "starling_snapshot_operation_duration_seconds_count",
            &["op=\"prepare\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "starling_cache_misses_total", &[]) > 0.0,
        "cold reads missed the cache\n{m}"
    );

    // SIGTERM unmounts every layer; a start mounts them again.
    let st = s.starling.as_mut().unwrap();
    st.stop().unwrap();
    assert!(
        fuse_mounts(&s).is_empty(),
        "mounts after SIGTERM: {:?}",
        fuse_mounts(&s)
    );
    s.starling.as_mut().unwrap().start_again().unwrap();
    ctr.wait_snapshotter("starling", Duration::from_secs(60))
        .unwrap();
    assert_eq!(fuse_mounts(&s).len(), 2, "restored at start");
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected);

    remove_all_and_wait_for_gc(&s);
}

#[test]
fn lazy_pydeb_prints_1() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::debian_images(),
        prereq::starling_binary()
    );
    let img = pydeb().unwrap();
    let s = stack("lz-py", config(), &[]);
    img.push(&s.registry, "latest", "py:plain").unwrap();
    let plain = s.registry.reference("py:plain");
    let esgz = s.registry.reference("py:esgz");
    convert(&plain, &esgz);
    let ctr = s.ctr();
    let cmd = &["python3", "-c", "print(1)"];

    let t = Instant::now();
    ctr.pull(&plain, "overlayfs").unwrap();
    assert_eq!(ctr.run_ok(&plain, "overlayfs", cmd).unwrap(), "1\n");
    let overlay = t.elapsed();
    ctr.remove_all_images().unwrap();

    let before = fetched(&s);
    let t = Instant::now();
    let summary = client::rpull_ok(ctr, &esgz, "starling").unwrap();
    let pulled = t.elapsed();
    assert_eq!(ctr.run_ok(&esgz, "starling", cmd).unwrap(), "1\n");
    let lazy = t.elapsed();
    assert!(summary.contains("2 layers: 2 lazy"), "{summary}");
    let bytes = fetched(&s) - before;
    let total: u64 = layers(&s.registry, "py", "esgz").iter().map(|l| l.1).sum();
    eprintln!(
        "pydeb print(1) on loopback: overlayfs pull+run {:.2}s; starling rpull {:.2}s, \
         rpull+run {:.2}s ({:.2}x); fetched {:.1} MB of {:.1} MB ({:.1}%)",
        overlay.as_secs_f64(),
        pulled.as_secs_f64(),
        lazy.as_secs_f64(),
        lazy.as_secs_f64() / overlay.as_secs_f64(),
        bytes / 1e6,
        total as f64 / 1e6,
        100.0 * bytes / total as f64
    );
    assert!(
        bytes < total as f64 / 2.0,
        "print(1) fetched {bytes} of {total} bytes"
    );
}

#[test]
fn removed_image_pulled_again_reads_from_the_chunk_cache() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    // Without program read-ahead a pull fetches footer and TOC only, so the bytes of the
    // second pull can be compared with those of the first run.
    let s = stack(
        "lz-again",
        config().set("fetch.program_read_ahead", false),
        &[],
    );
    let (esgz, expected) = data_images(&s, READ_A);
    let ctr = s.ctr();
    let b0 = fetched(&s);
    client::rpull_ok(ctr, &esgz, "starling").unwrap();
    let b1 = fetched(&s);
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected);
    let b2 = fetched(&s);
    assert!(b2 > b1, "the first run fetched what it read");
    eprintln!(
        "first pull: {} bytes (footer + TOC), first run: {} bytes",
        b1 - b0,
        b2 - b1
    );

    remove_all_and_wait_for_gc(&s);
    let summary = client::rpull_ok(ctr, &esgz, "starling").unwrap();
    assert!(summary.contains("2 lazy"), "{summary}");
    let b3 = fetched(&s);
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected);
    // (Fully cached files are opened with FUSE passthrough: their reads never reach the
    // daemon, so the fetched-bytes counter is the thing to check.)
    assert_eq!(
        fetched(&s),
        b3,
        "the second run fetched bytes it had read before the image was removed"
    );
    assert!(
        b3 - b2 < (b2 - b1) / 10.0,
        "the second pull fetched {} bytes (footer and TOC only)",
        b3 - b2
    );
    eprintln!("second pull: {} bytes, second run: 0 bytes", b3 - b2);
}

#[test]
fn killed_daemon_restores_layers_without_the_registry() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut s = stack("lz-kill", config(), &[]);
    let (esgz, expected_a) = data_images(&s, READ_A);
    let ctr = s.ctr().clone();
    ctr.pull(&s.registry.reference("data:plain"), "overlayfs")
        .unwrap();
    let plain = s.registry.reference("data:plain");
    let expected_walk = ctr.run_ok(&plain, "overlayfs", WALK).unwrap();
    let expected_b = ctr.run_ok(&plain, "overlayfs", READ_B).unwrap();
    ctr.remove_all_images().unwrap();

    client::rpull_ok(&ctr, &esgz, "starling").unwrap();
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected_a);
    assert_eq!(ctr.run_ok(&esgz, "starling", WALK).unwrap(), expected_walk);
    let mounts = fuse_mounts(&s);
    assert_eq!(mounts.len(), 2);

    s.starling.as_mut().unwrap().kill().unwrap();
    s.registry.stop().unwrap();
    // The dead daemon's mounts are still there (their connections held by the fd store).
    assert_eq!(fuse_mounts(&s).len(), 2);
    s.starling.as_mut().unwrap().start_again().unwrap();
    ctr.wait_snapshotter("starling", Duration::from_secs(60))
        .unwrap();
    let log = daemon_log(&s);
    assert!(log.contains("remote snapshots restored"), "{log}");
    let mut now = fuse_mounts(&s);
    now.sort();
    let mut before = mounts.clone();
    before.sort();
    assert_eq!(now, before, "one live mount per layer again, no stale ones");
    for m in &now {
        std::fs::read_dir(m).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
    }

    // No registry: metadata and cached files work; an uncached file fails (EIO).
    assert_eq!(ctr.run_ok(&esgz, "starling", WALK).unwrap(), expected_walk);
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected_a);
    let out = ctr.run(&esgz, "starling", READ_B).unwrap();
    assert!(
        !out.success(),
        "an uncached read without the registry succeeded: {out:?}"
    );
    eprintln!("uncached read without the registry: {}", out.stderr.trim());

    // Registry back: the same read works, a new container runs.
    s.registry.start_again().unwrap();
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_B).unwrap(), expected_b);
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected_a);
    remove_all_and_wait_for_gc(&s);
}

/// Pushes `repo:tag` again as `repo:new_tag` with its manifest changed by `edit`.
fn push_edited(s: &Stack, repo: &str, tag: &str, new_tag: &str, edit: impl FnOnce(&mut Value)) {
    let reg = &s.registry;
    let blob = |d: &str| -> Vec<u8> {
        let r = integration::http::get(&reg.blob_url(repo, d), &[]).unwrap();
        assert_eq!(r.status, 200, "blob {d}");
        r.body
    };
    let mut m: Value = serde_json::from_slice(&reg.manifest(repo, tag).unwrap().body).unwrap();
    let layout = s.wd.join(format!("layout-{new_tag}"));
    integration::oci::image::init_layout(&layout).unwrap();
    let blobs = layout.join("blobs/sha256");
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in &digests {
        assert_eq!(
            &integration::oci::image::write_blob(&blobs, &blob(d)).unwrap(),
            d
        );
    }
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = integration::oci::image::write_blob(&blobs, &bytes).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": new_tag}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    reg.push_layout(&layout, new_tag, &format!("{repo}:{new_tag}"))
        .unwrap();
}

#[test]
fn wrong_toc_digest_falls_back_with_a_clear_log_line() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("lz-toc", config(), &[]);
    let (_, expected) = data_images(&s, READ_A);
    const TOC: &str = "containerd.io/snapshot/stargz/toc.digest";
    let wrong = format!("sha256:{}", "0".repeat(64));
    push_edited(&s, "data", "esgz", "badtoc", |m| {
        m["layers"][0]["annotations"][TOC] = wrong.clone().into();
        m["layers"][1]["annotations"][TOC] = "sha256:not-hex".into();
    });
    let bad = s.registry.reference("data:badtoc");
    let blobs = layers(&s.registry, "data", "badtoc");
    let ctr = s.ctr();
    let summary = client::rpull_ok(ctr, &bad, "starling").unwrap();
    assert!(
        summary.contains("2 layers: 0 lazy, 2 applied"),
        "{summary}\n{}",
        daemon_log(&s)
    );
    assert_eq!(ctr.run_ok(&bad, "starling", READ_A).unwrap(), expected);
    let log = daemon_log(&s);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("layer not mounted lazily"))
        .collect();
    for (digest, _) in &blobs {
        assert!(
            lines.iter().any(|l| l.contains(digest.as_str())),
            "no log line names {digest}: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&blobs[0].0) && l.contains("not_estargz") && l.contains("TOC")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&blobs[1].0) && l.contains("TOC digest")),
        "{lines:#?}"
    );
    assert!(fuse_mounts(&s).is_empty(), "{:?}", fuse_mounts(&s));
    let m = scrape(&s);
    assert_eq!(
        metric(
            &m,
            "starling_lazy_prepares_total",
            &["outcome=\"not_estargz\""]
        ),
        1.0,
        "{m}"
    );
}

/// `find` + `stat` of every entry under `dir`: (entries, sum of sizes).
fn walk(dir: &std::path::Path) -> (usize, u64) {
    let mut n = 0;
    let mut size = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            n += 1;
            size += md.len();
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (n, size)
}

#[test]
fn stack_merge_over_half_pulled_estargz_layers_fetches_nothing() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("lz-merge", config(), &[]);
    let (esgz, expected) = data_images(&s, READ_A);
    ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .dir("etc")
                .file("etc/other", "from the other image\n")
                .file(
                    "etc/other.bin",
                    Content::Pattern {
                        len: 2 << 20,
                        seed: 5,
                    },
                ),
        )
        .push(&s.registry, "other:plain")
        .unwrap();
    let other = s.registry.reference("other:esgz");
    convert(&s.registry.reference("other:plain"), &other);
    let ctr = s.ctr();
    client::rpull_ok(ctr, &esgz, "starling").unwrap();
    client::rpull_ok(ctr, &other, "starling").unwrap();
    assert_eq!(fuse_mounts(&s).len(), 3);
    // Half pulled: a.bin read, b.bin and other.bin not.
    assert_eq!(ctr.run_ok(&esgz, "starling", READ_A).unwrap(), expected);
    let (ca, cb) = (
        ctr.image_chain_id(&esgz).unwrap(),
        ctr.image_chain_id(&other).unwrap(),
    );

    let before = fetched(&s);
    let target = s.wd.join("merged");
    let args = ["--mode", "stack", "--view", "merged-view", &ca, &cb];
    let guards =
        client::merge_and_mount(ctr, "starling", &target, &args, Duration::from_secs(120)).unwrap();
    let (entries, _) = walk(&target);
    assert!(
        entries > 200,
        "busybox applets, data and other files: {entries}"
    );
    for f in ["bin/busybox", "bin/sh", "data/b.bin", "etc/other.bin"] {
        assert!(target.join(f).exists(), "{f} in the merged view");
    }
    let a = std::fs::read(target.join("data/a.bin")).unwrap();
    assert_eq!(a.len(), 1 << 20);
    let after = fetched(&s);
    assert_eq!(
        after, before,
        "merging, walking the merged view and reading a cached file fetched bytes"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("etc/other")).unwrap(),
        "from the other image\n"
    );
    let b = std::fs::read(target.join("data/b.bin")).unwrap();
    assert_eq!(b.len(), 6 << 20);
    assert!(fetched(&s) - after > 1e6, "b.bin came from the registry");
    drop(guards);
}

/// What the waiting containers below print once triggered: a cached file (`a.bin`, read
/// before the daemon was killed), an uncached one (`b.bin`) and a small one.
const READ_AB: &str = "md5sum /data/a.bin /data/b.bin; cat /data/hello";

/// A container command that reads `a.bin` (so it is cached), says `ready`, waits for
/// `/t/go`, then writes [`READ_AB`]'s output to `/t/out` and says `done` (`/t` is a bind
/// mount of a host directory).
fn waiting_container(ctr: &integration::containerd::Ctr, image: &str, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "md5sum /data/a.bin > /dev/null; echo ready > /t/ready; \
         while [ ! -e /t/go ]; do sleep 0.05; done; \
         ({READ_AB}) > /t/out 2>&1; echo done > /t/done"
    );
    let bind = format!("type=bind,src={},dst=/t,options=rbind:rw", dir.display());
    ctr.run_with(
        image,
        "starling",
        &["-d", "--mount", &bind],
        &["/bin/sh", "-c", &script],
    )
    .unwrap()
    .check()
    .unwrap();
    integration::poll::wait_for("container ready", Duration::from_secs(120), || {
        dir.join("ready").exists()
    })
    .unwrap();
}

/// [`READ_AB`] on overlayfs from the plain image.
fn expected_ab(s: &Stack) -> String {
    let ctr = s.ctr();
    let plain = s.registry.reference("data:plain");
    ctr.pull(&plain, "overlayfs").unwrap();
    let out = ctr
        .run_ok(&plain, "overlayfs", &["/bin/sh", "-c", READ_AB])
        .unwrap();
    ctr.remove_images(&[plain.as_str()]).unwrap();
    out
}

/// Processes serving the daemon's fd store.
fn holders(s: &Stack) -> Vec<u32> {
    s.starling().unwrap().holders()
}

/// Waits up to `timeout` until no process serves the daemon's fd store.
fn wait_until_no_holder(s: &Stack, timeout: Duration) {
    integration::poll::wait_for("holder gone", timeout, || holders(s).is_empty())
        .unwrap_or_else(|_| panic!("holder still running: {:?}", holders(s)));
}

/// [`wait_until_no_holder`], then no FUSE mount may be left.
fn wait_until_no_holder_and_no_mount(s: &Stack, timeout: Duration) {
    wait_until_no_holder(s, timeout);
    assert!(fuse_mounts(s).is_empty(), "{:?}", fuse_mounts(s));
}

/// The FUSE mount holding `data/` (the data layer).
fn data_mount(s: &Stack) -> PathBuf {
    fuse_mounts(s)
        .into_iter()
        .find(|m| m.join("data/b.bin").exists())
        .expect("a FUSE mount with data/b.bin")
}

/// A stack whose data image ([`data_images`]) was pulled lazily, with a
/// [`waiting_container`] running on it: the fixture of the restart tests.
struct Restart {
    s: Stack,
    ctr: Ctr,
    /// The eStargz reference.
    esgz: String,
    /// [`READ_AB`]'s output on overlayfs.
    expected: String,
    /// The waiting container's `/t`.
    dir: PathBuf,
}

impl Restart {
    fn start(name: &str, cfg: StarlingConfig, keep_mounts_on_stop: bool) -> Restart {
        let s = stack_with(name, cfg, &[], keep_mounts_on_stop);
        let (esgz, _) = data_images(&s, READ_A);
        let expected = expected_ab(&s);
        let ctr = s.ctr().clone();
        client::rpull_ok(&ctr, &esgz, "starling").unwrap();
        let dir = s.starling.as_ref().unwrap().dir().join(format!("{name}-t"));
        waiting_container(&ctr, &esgz, &dir);
        Restart {
            s,
            ctr,
            esgz,
            expected,
            dir,
        }
    }

    fn starling(&mut self) -> &mut integration::starling::Starling {
        self.s.starling.as_mut().unwrap()
    }

    /// SIGTERM; the daemon must exit 0.
    fn stop_daemon(&mut self) {
        let st = self.starling().daemon().stop().unwrap();
        assert!(
            st.is_some_and(|st| st.success()),
            "daemon stop: {st:?}\n{}",
            daemon_log(&self.s)
        );
    }

    /// Starts the daemon again and waits until containerd reaches it.
    fn start_daemon(&mut self) {
        self.starling().start_again().unwrap();
        self.ctr
            .wait_snapshotter("starling", Duration::from_secs(60))
            .unwrap();
    }

    /// Lets the waiting container read and returns what it wrote.
    fn trigger_and_wait(&self) -> String {
        std::fs::write(self.dir.join("go"), b"").unwrap();
        integration::poll::wait_for("container done", Duration::from_secs(120), || {
            self.dir.join("done").exists()
        })
        .unwrap();
        std::fs::read_to_string(self.dir.join("out")).unwrap()
    }

    /// Starts the daemon again and checks that it serves the previous daemon's layer
    /// connections: the same `mounts`, kept by the same `holder` (`holder_msg` otherwise).
    fn start_daemon_on_held_layers(
        &mut self,
        mounts: &[PathBuf],
        holder: &[u32],
        holder_msg: &str,
    ) {
        self.start_daemon();
        let log = daemon_log(&self.s);
        assert!(
            log.contains("layer connection of the previous daemon served again"),
            "{log}"
        );
        assert_eq!(
            fuse_mounts(&self.s),
            mounts,
            "same mounts, nothing remounted"
        );
        assert_eq!(holders(&self.s), holder, "{holder_msg}");
    }

    /// [`Restart::trigger_and_wait`], which must read what it read before `restart`
    /// (begun at `restarted`); `reads` says when, for the failure message.
    fn check_running_container(&self, restarted: Instant, restart: &str, reads: &str) {
        let out = self.trigger_and_wait();
        eprintln!(
            "container read a cached and an uncached file {:.2}s after {restart} began",
            restarted.elapsed().as_secs_f64()
        );
        assert_eq!(out, self.expected, "the running container's reads {reads}");
    }

    /// A new container reads [`READ_AB`] right.
    fn check_new_container(&self) {
        assert_eq!(
            self.ctr
                .run_ok(&self.esgz, "starling", &["/bin/sh", "-c", READ_AB])
                .unwrap(),
            self.expected,
            "a new container's reads"
        );
    }
}

/// Stops the stack's containers and images and checks nothing is left: no snapshot, mount,
/// directory, and, after the daemon's clean stop, no fd store holder.
fn clean_up_and_check(s: &mut Stack) {
    // After a daemon restart containerd's connection to it may still be in its reconnect
    // backoff: a GC pass then fails ("connection refused") and containerd does not retry
    // the backend cleanup until the next deletion. Wait until it reaches the daemon.
    s.ctr()
        .wait_snapshotter("starling", Duration::from_secs(60))
        .unwrap();
    s.ctr().remove_all_containers().unwrap();
    remove_all_and_wait_for_gc(s);
    s.starling.as_mut().unwrap().stop().unwrap();
    wait_until_no_holder_and_no_mount(s, Duration::from_secs(30));
}

#[test]
fn running_container_keeps_reading_after_the_daemon_is_killed_and_restarted() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut w = Restart::start("lz-keep", config(), false);
    let before = fuse_mounts(&w.s);
    assert_eq!(
        holders(&w.s).len(),
        1,
        "one fd store holder per daemon root"
    );
    let holder = holders(&w.s);

    w.starling().kill().unwrap();
    // The container's layers stay mounted and their connections alive (held).
    assert_eq!(fuse_mounts(&w.s), before);
    assert_eq!(holders(&w.s), holder, "the holder outlives the daemon");
    let restarted = Instant::now();
    w.start_daemon_on_held_layers(
        &before,
        &holder,
        "the restarted daemon uses the same holder",
    );
    w.check_running_container(restarted, "the restart", "after the restart");
    w.check_new_container();
    clean_up_and_check(&mut w.s);
}

#[test]
fn running_container_keeps_reading_across_a_clean_restart() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    // The daemon's default stop (no --unmount-on-stop): the mounts go to the holder.
    let mut w = Restart::start("lz-handover", config(), true);
    let before = fuse_mounts(&w.s);
    let holder = holders(&w.s);
    assert_eq!(holder.len(), 1, "one fd store holder per daemon root");

    w.stop_daemon();
    let log = daemon_log(&w.s);
    assert!(
        log.contains("lazy layers left mounted for the next daemon"),
        "{log}"
    );
    assert_eq!(fuse_mounts(&w.s), before, "SIGTERM left the layers mounted");
    assert_eq!(holders(&w.s), holder, "the holder keeps them");

    let restarted = Instant::now();
    w.start_daemon_on_held_layers(&before, &holder, "the same holder");
    w.check_running_container(restarted, "the clean restart", "across the clean restart");
    w.check_new_container();
    // With no layer left (images removed), a stop lets the holder go.
    clean_up_and_check(&mut w.s);
}

#[test]
fn holder_gives_up_after_the_restart_grace() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let cfg = config().set("daemon.restart_grace", "2s");
    let mut w = Restart::start("lz-grace", cfg, true);
    assert!(!fuse_mounts(&w.s).is_empty());
    assert_eq!(holders(&w.s).len(), 1);
    w.stop_daemon();
    // No daemon comes back: the container's read of the uncached b.bin fails once the
    // holder gives up, instead of waiting forever (bounded by `trigger_and_wait`).
    let out = w.trigger_and_wait();
    let b_line = w
        .expected
        .lines()
        .find(|l| l.ends_with("/data/b.bin"))
        .unwrap()
        .to_string();
    // (The container's md5sum fails with an I/O error, or dies of SIGBUS when a page of
    // the busybox binary it maps is no longer cached.)
    assert!(
        out != w.expected && !out.contains(&b_line),
        "the uncached read must fail: {out}"
    );
    wait_until_no_holder_and_no_mount(&w.s, Duration::from_secs(60));
    let holder_log = std::fs::read_to_string(root(&w.s).join("fdstore.log")).unwrap();
    assert!(
        holder_log.contains("giving up the held FUSE connections"),
        "{holder_log}"
    );

    // The next daemon mounts the layers anew.
    w.start_daemon();
    assert!(!fuse_mounts(&w.s).is_empty());
    w.check_new_container();
    clean_up_and_check(&mut w.s);
}

#[test]
fn release_after_a_clean_stop_leaves_no_mount_and_no_holder() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut w = Restart::start("lz-release", config(), true);
    let n = fuse_mounts(&w.s).len();
    assert!(n > 0);
    w.stop_daemon();
    assert_eq!(fuse_mounts(&w.s).len(), n, "handed over");
    // The user's full stop after a stop that handed the mounts over.
    let sock = root(&w.s).join("fdstore.sock");
    let release = ["fdstore", "--socket", sock.to_str().unwrap(), "--release"];
    let out = client::run(release, client::TIMEOUT).unwrap();
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("released {n} ")),
        "{}",
        out.stdout
    );
    wait_until_no_holder_and_no_mount(&w.s, Duration::from_secs(30));
    let out = w.trigger_and_wait();
    assert_ne!(out, w.expected, "reads succeeded on released layers: {out}");
    // Nothing to release any more: a clear error.
    let again = client::run(release, client::TIMEOUT).unwrap();
    assert!(
        !again.success() && again.stderr.contains("fdstore.sock"),
        "{again:?}"
    );
    w.start_daemon();
    w.check_new_container();
    clean_up_and_check(&mut w.s);
}

#[test]
fn harness_drop_after_a_hand_over_leaves_no_mount_and_no_holder() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut w = Restart::start("lz-drop", config(), true);
    w.stop_daemon();
    assert!(!fuse_mounts(&w.s).is_empty(), "handed over");
    let held = holders(&w.s);
    assert_eq!(held.len(), 1);
    let root = root(&w.s);
    // A test that ends (or fails) here: dropping the stack must clean up.
    drop(w);
    assert!(
        held.iter().all(|p| !integration::process::pid_running(*p)),
        "holder left running: {held:?}"
    );
    let left: Vec<_> = integration::mounts::mounts_under(&root).unwrap_or_default();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn unmount_on_stop_unmounts_every_layer_at_sigterm() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    // The config key (not the harness's --unmount-on-stop flag).
    let cfg = config().set("daemon.unmount_on_stop", true);
    let mut w = Restart::start("lz-unmount", cfg, true);
    assert!(!fuse_mounts(&w.s).is_empty());
    w.stop_daemon();
    assert!(fuse_mounts(&w.s).is_empty(), "{:?}", fuse_mounts(&w.s));
    wait_until_no_holder(&w.s, Duration::from_secs(30));
    // The running container lost its lazy layers, as before the hand-over existed.
    let out = w.trigger_and_wait();
    assert_ne!(
        out, w.expected,
        "reads succeeded on unmounted layers: {out}"
    );
    w.start_daemon();
    w.check_new_container();
    clean_up_and_check(&mut w.s);
}

#[test]
fn reads_issued_while_the_daemon_is_down_complete_after_restart() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    // A read the daemon is serving when it is killed waits for a frozen registry: the read
    // timeout must not end it first.
    let cfg = config()
        .set("fetch.request_timeout", "120s")
        .set("fetch.read_timeout", "240s");
    let mut w = Restart::start("lz-down", cfg, false);
    let mount = data_mount(&w.s);
    let misses = |s: &Stack| metric(&scrape(s), "starling_cache_misses_total", &[]);
    let misses_before = misses(&w.s);

    // The container's read of the uncached b.bin reaches the daemon, which waits for the
    // frozen registry: the request is read from the connection but not answered.
    let registry_pid = nix::unistd::Pid::from_raw(w.s.registry.daemon().pid() as i32);
    nix::sys::signal::kill(registry_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let triggered = Instant::now();
    std::fs::write(w.dir.join("go"), b"").unwrap();
    integration::poll::wait_for("a read in flight", Duration::from_secs(60), || {
        misses(&w.s) > misses_before
    })
    .unwrap();
    w.starling().kill().unwrap();
    nix::sys::signal::kill(registry_pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    // Reads issued now, with no daemon: from the host straight on the layer mount. They
    // report through channels, so that a read that never completes fails the test instead
    // of hanging it.
    let b = mount.join("data/b.bin");
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let out = Command::new("md5sum").arg(&b).output().unwrap();
        let _ = read_tx.send((out, t.elapsed()));
    });
    let hello = mount.join("data/hello");
    let (meta_tx, meta_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = meta_tx.send(std::fs::read_to_string(hello));
    });
    // No server: nothing can finish, and the container is still waiting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        read_rx.try_recv().is_err(),
        "a read finished with no daemon"
    );
    assert!(
        !w.dir.join("done").exists(),
        "the container finished with no daemon"
    );

    let restarted = Instant::now();
    w.starling().start_again().unwrap();
    let (out, waited) = read_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the host read issued while the daemon was down never completed");
    assert!(out.status.success(), "host read after restart: {out:?}");
    eprintln!(
        "host read issued while the daemon was down: waited {:.2}s, done {:.2}s after the restart began",
        waited.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    let hello = meta_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the host metadata read never completed")
        .unwrap();
    assert_eq!(hello, "hello from the data layer\n");
    integration::poll::wait_for("container done", Duration::from_secs(120), || {
        w.dir.join("done").exists()
    })
    .unwrap();
    eprintln!(
        "container read in flight at the kill: done {:.2}s after its trigger, {:.2}s after the restart began",
        triggered.elapsed().as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    let got = std::fs::read_to_string(w.dir.join("out")).unwrap();
    assert_eq!(
        got, w.expected,
        "the running container's reads across the kill"
    );
    let host_md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        w.expected
            .lines()
            .any(|l| l.starts_with(&host_md5) && l.ends_with("/data/b.bin")),
        "host md5 {host_md5} of b.bin vs {}",
        w.expected
    );
    clean_up_and_check(&mut w.s);
}

#[test]
fn killed_holder_and_daemon_fall_back_to_remounting() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let mut w = Restart::start("lz-noholder", config(), false);
    let old = holders(&w.s);
    assert_eq!(old.len(), 1);
    let pid = nix::unistd::Pid::from_raw(old[0] as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until_no_holder(&w.s, Duration::from_secs(10));
    w.starling().kill().unwrap();
    // Nothing holds the connections now: the running container's reads fail rather than
    // wait, as without an fd store.
    let out = w.trigger_and_wait();
    assert_ne!(out, w.expected, "reads succeeded on dead mounts: {out}");

    w.start_daemon();
    let log = daemon_log(&w.s);
    assert!(
        log.contains("detaching a stale mount before restoring the layer"),
        "{log}"
    );
    let new = holders(&w.s);
    assert!(
        new.len() == 1 && new != old,
        "a new holder: {old:?} -> {new:?}"
    );
    w.check_new_container();
    clean_up_and_check(&mut w.s);
}
