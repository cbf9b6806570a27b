//! Mirrors configured through containerd's host directory (`registry.hosts_dir`), against
//! real docker-registry processes: a pull-through cache as the mirror gets `?ns=` and serves
//! ranges (also while it does not have the blob yet); a mirror answering 5xx or not at all is
//! skipped for `registry.mirror_skip` and the origin used; a bad `hosts.toml` is a clear error.
//! (A mirror serving wrong bytes: `fusefs/tests/fetch_registry.rs`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use registry::{Priority, Repository};

/// Writes `hosts.toml` for registry `host` into `root` (directory named the way containerd
/// spells a host with a port: `HOST_PORT_`).
fn write_hosts_toml(root: &Path, host: &str, text: &str) {
    let dir = root.join(config::hosts_dir::port_dir_name(host).unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
}

fn blob_gets(reg: &RegistryProc, digest: &str) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains(digest))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_through_mirror_from_hosts_toml_gets_ns_and_serves_ranges() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    let mirror = RegistryProc::start(RegistryAuth::PullThrough {
        remote_url: format!("http://{}", origin.host()),
    });
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &origin.host(),
        &format!(
            "# a cluster mirror, as for containerd\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    );
    let mut regcfg = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(origin.host(), "mirrored/app");
    let blob_data = data(40, 3 << 20);
    let digest = push(&pusher, &repo, &blob_data).await;

    regcfg.hosts_dir = hosts.path().to_path_buf();
    let (c, _) = client(&fetch_config(), &regcfg);
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    // The mirror does not have the blob yet: it answers with all of it (HTTP 200).
    assert_eq!(
        blob.read_range(100_000..200_000, Priority::OnDemand)
            .await
            .unwrap(),
        blob_data.slice(100_000..200_000)
    );
    // Now it has it: ranges (one and several per request).
    let ranges = [2_000_000..2_100_000, 5..50, 3_000_000..3_100_000];
    let got = blob.read_ranges(&ranges, Priority::OnDemand).await.unwrap();
    for (r, g) in ranges.iter().zip(&got) {
        assert_eq!(g, &blob_data.slice(r.start as usize..r.end as usize));
    }
    let ns = format!("ns={}", origin.host().replace(':', "%3A"));
    let log = mirror.log();
    let mirror_gets: Vec<_> = log
        .lines()
        .filter(|l| l.contains("\"GET /v2/mirrored/app/blobs/"))
        .collect();
    assert!(mirror_gets.len() >= 2, "{log}");
    assert!(
        mirror_gets.iter().all(|l| l.contains(&ns)),
        "every mirror request carries {ns}: {mirror_gets:#?}"
    );
    let origin_gets = blob_gets(&origin, digest.digest());
    eprintln!(
        "origin blob GETs: {origin_gets} (the pull-through cache's own), mirror GETs: {}",
        mirror_gets.len()
    );
    assert!(
        !origin.log().contains(&ns),
        "the client itself never asked the origin for the blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_answering_5xx_is_skipped_for_mirror_skip() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    // A pull-through cache whose upstream is gone answers 500 for blobs it does not have.
    let mut upstream = RegistryProc::start(RegistryAuth::None);
    let mirror = RegistryProc::start(RegistryAuth::PullThrough {
        remote_url: format!("http://{}", upstream.host()),
    });
    upstream.kill();
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &origin.host(),
        &format!("[host.\"http://{}\"]\n", mirror.host()),
    );
    let mut regcfg = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(origin.host(), "five/hundred");
    let blob_data = data(41, 1 << 20);
    let digest = push(&pusher, &repo, &blob_data).await;

    regcfg.hosts_dir = hosts.path().to_path_buf();
    regcfg.mirror_skip = Duration::from_millis(800);
    let (c, _) = client(&fetch_config(), &regcfg);
    let blob = c
        .blob(&repo, &digest, Some(blob_data.len() as u64))
        .await
        .unwrap();
    let read = |r: std::ops::Range<u64>| {
        let blob = blob.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                blob.read_range(r, Priority::OnDemand),
            )
            .await
            .expect("no hang")
            .unwrap()
        }
    };
    assert_eq!(read(0..1000).await, blob_data.slice(0..1000));
    assert_eq!(mirror.count_status(500), 1, "{}", mirror.log());
    for i in 1..5u64 {
        let (a, b) = (i * 10_000, i * 10_000 + 5000);
        assert_eq!(read(a..b).await, blob_data.slice(a as usize..b as usize));
    }
    assert_eq!(
        mirror.count_status(500),
        1,
        "skipped while mirror_skip lasts: {}",
        mirror.log()
    );
    assert_eq!(
        blob_gets(&origin, digest.digest()),
        5,
        "the origin served them"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        read(500_000..501_000).await,
        blob_data.slice(500_000..501_000)
    );
    assert_eq!(
        mirror.count_status(500),
        2,
        "asked again once mirror_skip has passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_that_are_down_or_frozen_fall_through_without_a_hang() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    let mut frozen = RegistryProc::start(RegistryAuth::None);
    frozen.pause(); // accepts connections, never answers
    let closed = format!("127.0.0.1:{}", free_port());
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &origin.host(),
        &format!(
            "[host.\"http://{closed}\"]\n[host.\"http://{}\"]\n  dial_timeout = \"1s\"\n",
            frozen.host()
        ),
    );
    let mut regcfg = registry_config(origin.dir.path());
    let mut fetch = fetch_config();
    fetch.request_timeout = Duration::from_secs(1);
    let (pusher, _) = client(&fetch, &regcfg);
    let repo = Repository::new(origin.host(), "down/mirrors");
    let blob_data = data(42, 200_000);
    let digest = push(&pusher, &repo, &blob_data).await;

    regcfg.hosts_dir = hosts.path().to_path_buf();
    let (c, metrics) = client(&fetch, &regcfg);
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        blob.read_range(10..100_000, Priority::OnDemand),
    )
    .await
    .expect("no hang")
    .unwrap();
    assert_eq!(got, blob_data.slice(10..100_000));
    let before = metrics.snapshot().requests;
    blob.read_range(100_000..150_000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(
        metrics.snapshot().requests - before,
        1,
        "both mirrors are skipped now: the origin only"
    );
    frozen.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hosts_toml_is_a_clear_error_until_it_is_fixed() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &origin.host(),
        "[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"fetch\"]\n",
    );
    let mut regcfg = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(origin.host(), "bad/hosts");
    let blob_data = data(43, 10_000);
    let digest = push(&pusher, &repo, &blob_data).await;

    regcfg.hosts_dir = hosts.path().to_path_buf();
    let (c, _) = client(&fetch_config(), &regcfg);
    let err = c
        .blob(&repo, &digest, None)
        .await
        .err()
        .unwrap()
        .to_string();
    let file = format!(
        "{}/hosts.toml:2:",
        config::hosts_dir::port_dir_name(&origin.host()).unwrap()
    );
    assert!(
        err.contains(&file) && err.contains("unknown capability \"fetch\""),
        "{err}"
    );
    // Fixed (here: the mirror dropped): the next request reads the file again.
    write_hosts_toml(hosts.path(), &origin.host(), "# no mirrors\n");
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(blob.read_all(1 << 20).await.unwrap(), blob_data);
}
