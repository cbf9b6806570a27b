//! `starling doctor`, live `starling status` and loud fallbacks, against a real containerd
//! (started from the contrib snippets), docker-registry and starling daemon:
//!
//! - `doctor_status_and_a_plain_http_fallback` (containerd 1.6): doctor passes on the
//!   contrib setup; right after `ctr run` read a 1 MiB file, `starling status` shows those
//!   bytes (asked from the daemon: no waiting); then the same image pulled as
//!   `0.0.0.0:PORT/...` (a plain-HTTP registry that starling addresses with https, as a
//!   registry on a private address declared nowhere) falls back at once: no retry, one WARN
//!   naming the host, the cause and the fix for both layers, and doctor fails naming the
//!   fix; the record survives a daemon restart.
//! - `doctor_on_containerd_2_good_and_misconfigured` (containerd 2.1): doctor passes on
//!   the v3 contrib setup, then fails on the same file without the 2.x settings (exports,
//!   transfer `unpack_config`), with CRI annotations off, the proxy pointing elsewhere, and
//!   with the daemon stopped.

mod engines_common;

use std::path::Path;

use engines_common::{esgz_image, HELLO};
use integration::containerd::{ContainerdOptions, ContainerdVersion};
use integration::metrics::metric;
use integration::process::CmdOutput;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};
use serde_json::Value;

fn stack(name: &str, version: ContainerdVersion, names: &[&str]) -> Stack {
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(
                    StarlingConfig::new()
                        .set("metrics_address", "127.0.0.1:0")
                        .set("fetch.background_fetch", false)
                        .set("fetch.max_retries", 6_i64),
                ),
                ..Default::default()
            }),
            starling_names: names.iter().map(|s| s.to_string()).collect(),
            containerd: ContainerdOptions::default().version(version),
            ..Default::default()
        },
    )
    .unwrap()
}

/// `starling doctor` for this stack (`containerd_config` instead of the running one's).
fn doctor(s: &Stack, version: ContainerdVersion, containerd_config: Option<&Path>) -> CmdOutput {
    let st = s.starling().unwrap();
    let cfg = containerd_config.unwrap_or_else(|| s.containerd.config_path());
    let bin = version.containerd();
    let mut args = vec![
        "doctor".to_string(),
        "--root".into(),
        st.root().display().to_string(),
        "--address".into(),
        st.socket().display().to_string(),
        "--containerd-config".into(),
        cfg.display().to_string(),
        "--containerd-bin".into(),
        bin.display().to_string(),
    ];
    if let Some(c) = st.config_path() {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    let out = client::run(&args, client::TIMEOUT).unwrap();
    eprintln!(
        "$ starling {}\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out
}

fn status_json(s: &Stack) -> Value {
    let root = s.starling().unwrap().root().display().to_string();
    let out = client::run(["status", "--root", &root, "--json"], client::TIMEOUT)
        .unwrap()
        .check()
        .unwrap();
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn doctor_status_and_a_plain_http_fallback() {
    let v = ContainerdVersion::V1_6;
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary(),
        v.check()
    );
    let mut s = stack("doctor16", v, &["starling", "stargz"]);

    // The contrib setup passes.
    let out = doctor(&s, v, None);
    assert!(out.success(), "doctor failed on the contrib setup");
    for want in [
        "OK    proxy plugin \"starling\": type snapshot at",
        "OK    proxy plugin \"stargz\"",
        "OK    daemon: pid",
        "OK    fallbacks: no eStargz layer fell back",
        "OK    overlayfs",
        " 0 failure(s)",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing");
    }

    // Live status: right after the container read data/a.bin (1 MiB), status shows it.
    let (esgz, blobs) = esgz_image(&s);
    let summary = client::rpull_ok(s.ctr(), &esgz, "starling").unwrap();
    assert!(summary.contains("2 layers: 2 lazy"), "{summary}");
    let run = s
        .ctr()
        .run(
            &esgz,
            "starling",
            &["sh", "-c", "cat /data/hello; wc -c < /data/a.bin"],
        )
        .unwrap();
    assert!(run.success(), "{}", run.stderr);
    assert_eq!(run.stdout, format!("{HELLO}1048576\n"));
    let status = status_json(&s);
    assert_eq!(status["daemon"], true, "{status}");
    let (data, data_size) = &blobs[1];
    let layer = status["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == data.as_str())
        .unwrap_or_else(|| panic!("data layer {data} not in {status}"));
    let fetched = layer["fetched_bytes"].as_u64().unwrap();
    let total = layer["total_bytes"].as_u64().unwrap();
    eprintln!("status right after the run: data layer {fetched} of {total} bytes");
    // The total counts the chunks: the blob less its TOC and footer.
    assert!(
        total <= *data_size && total > data_size - (64 << 10),
        "{total} of {data_size}"
    );
    // a.bin is incompressible: its 1 MiB arrived; b.bin's 6 MiB were not read.
    assert!(
        fetched >= 1 << 20 && fetched < total - (5 << 20),
        "data layer: {fetched} of {data_size} bytes fetched right after the read: {status}"
    );
    // Not ahead of the daemon's own metric, asked after it.
    let m = s.starling().unwrap().metrics().unwrap();
    let from_metrics = metric(
        &m,
        "starling_layer_fetched_bytes",
        &[&format!("layer=\"{data}\"")],
    );
    assert!(from_metrics as u64 >= fetched, "{from_metrics} < {fetched}");

    // Start from nothing: the same layers pulled again would be "already present".
    s.ctr().remove_all_images().unwrap();
    integration::poll::wait_for("GC", std::time::Duration::from_secs(60), || {
        s.ctr().snapshots("starling").unwrap().is_empty()
    })
    .unwrap();

    // A plain-HTTP registry addressed with https: the same image as 0.0.0.0:PORT.
    let host = format!("0.0.0.0:{}", s.registry.addr().port());
    let plain = format!("{host}/data:esgz");
    let out = client::rpull(s.ctr(), &plain, "starling", &[], client::TIMEOUT)
        .unwrap()
        .check()
        .unwrap();
    assert!(
        out.stdout.contains("2 layers: 0 lazy, 2 applied"),
        "{}",
        out.stdout
    );
    let log = s.starling().unwrap().log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("falls back to a full pull"))
        .collect();
    eprintln!("fallback WARN lines:\n{}", warns.join("\n"));
    assert_eq!(warns.len(), 1, "one WARN for the two layers:\n{log}");
    for want in [
        format!("https to {host} failed: the server speaks plain HTTP"),
        format!("insecure = true in [registry.hosts.\"{host}\"]"),
        plain.clone(),
        "cause=plain_http".to_string(),
    ] {
        assert!(warns[0].contains(&want), "{want:?} not in {}", warns[0]);
    }
    let infos = log
        .lines()
        .filter(|l| l.contains("for the same cause as warned before"))
        .count();
    assert_eq!(infos, 1, "the second layer: INFO\n{log}");
    let m = s.starling().unwrap().metrics().unwrap();
    assert_eq!(
        metric(&m, "starling_fetch_retries_total", &[]),
        0.0,
        "not retried\n{m}"
    );

    // doctor fails and names the fix; status lists the fallbacks.
    let out = doctor(&s, v, None);
    assert!(!out.success(), "doctor passed after a plain-HTTP fallback");
    assert!(
        out.stdout.contains(&format!(
            "FAIL  fallbacks from {host}: 2 layer(s) of {host} fell back (plain_http)"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "fix: declare it insecure (plain HTTP): set insecure = true in [registry.hosts.\"{host}\"]"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("1 check(s) failed"), "{}", out.stderr);
    let status = status_json(&s);
    assert_eq!(status["fallbacks"].as_array().unwrap().len(), 2, "{status}");

    // The record survives a restart of the daemon.
    s.starling.as_mut().unwrap().restart().unwrap();
    let root = s.starling().unwrap().root().display().to_string();
    let text = client::run(["status", "--root", &root], client::TIMEOUT)
        .unwrap()
        .check()
        .unwrap()
        .stdout;
    eprintln!("$ starling status\n{text}");
    assert!(
        text.contains("last 2 of 2 layer fallback(s)") && text.contains("(plain_http)"),
        "{text}"
    );
}

#[test]
fn doctor_on_containerd_2_good_and_misconfigured() {
    let v = ContainerdVersion::V2_1;
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary(),
        v.check()
    );
    let mut s = stack("doctor21", v, &["starling", "stargz"]);
    let out = doctor(&s, v, None);
    assert!(out.success(), "doctor failed on the contrib v3 setup");
    for want in [
        "(version 3",
        "OK    proxy plugin \"starling\" exports: enable_remote_snapshot_annotations",
        "OK    transfer service unpack_config \"starling\"",
        " 0 failure(s)",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing");
    }

    let good = std::fs::read_to_string(s.containerd.config_path()).unwrap();
    let bad_path = s.wd.join("containerd-misconfigured.toml");
    let check_bad = |s: &Stack, text: &str, wants: &[&str]| {
        std::fs::write(&bad_path, text).unwrap();
        let out = doctor(s, v, Some(&bad_path));
        assert!(!out.success(), "doctor passed a misconfigured containerd");
        for w in wants {
            assert!(out.stdout.contains(w), "{w:?} missing");
        }
    };

    // Without the 2.x settings.
    let mut table: toml::Table = good.parse().unwrap();
    for name in ["starling", "stargz"] {
        if let Some(p) = table["proxy_plugins"]
            .get_mut(name)
            .and_then(|p| p.as_table_mut())
        {
            p.remove("exports");
        }
    }
    table["plugins"]
        .as_table_mut()
        .unwrap()
        .remove("io.containerd.transfer.v1.local");
    check_bad(
        &s,
        &toml::to_string(&table).unwrap(),
        &[
            "FAIL  proxy plugin \"starling\" exports",
            "fix: add [proxy_plugins.starling.exports] enable_remote_snapshot_annotations = \"true\"",
            "FAIL  transfer service unpack_config: missing",
        ],
    );

    // The proxy plugin pointing at another socket.
    let socket = s.starling().unwrap().socket().display().to_string();
    check_bad(
        &s,
        &good.replace(&socket, "/run/elsewhere.sock"),
        &[
            "FAIL  proxy plugin \"starling\": points at \"/run/elsewhere.sock\"",
            &format!("fix: set address = \"{socket}\""),
        ],
    );

    // CRI on starling with snapshot annotations off.
    let mut table: toml::Table = good.parse().unwrap();
    table.remove("disabled_plugins");
    let plugins = table["plugins"].as_table_mut().unwrap();
    let mut images = toml::Table::new();
    images.insert("snapshotter".into(), "starling".into());
    images.insert("disable_snapshot_annotations".into(), true.into());
    plugins.insert("io.containerd.cri.v1.images".into(), images.into());
    check_bad(
        &s,
        &toml::to_string(&table).unwrap(),
        &[
            "FAIL  CRI snapshot annotations",
            "fix: set disable_snapshot_annotations = false in [plugins.\"io.containerd.cri.v1.images\"]",
        ],
    );

    // The daemon stopped.
    s.starling.as_mut().unwrap().stop().unwrap();
    let out = doctor(&s, v, None);
    assert!(!out.success());
    assert!(out.stdout.contains("FAIL  daemon socket"), "{}", out.stdout);
    assert!(out.stdout.contains("WARN  daemon state"), "{}", out.stdout);
}
