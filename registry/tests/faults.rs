//! Failure behaviour against a real docker-registry: a frozen or stopped registry makes reads
//! fail within `read_timeout` with a clear error and work again once it is back; a stream
//! resumes across a registry restart; mirrors that are down fall through to the origin.
//! (Corrupted chunks are the fetch layer's: `fusefs/tests/fetch_registry.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use registry::{Priority, RegistryError, Repository};

fn fast_failing() -> config::FetchConfig {
    config::FetchConfig {
        request_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(3),
        max_retries: 20,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_registry_fails_within_read_timeout_then_recovers() {
    require_registry!();
    let mut reg = RegistryProc::start(RegistryAuth::None);
    let fetch = fast_failing();
    let (c, _) = client(&fetch, &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "faults/stop");
    let blob_data = data(20, 1 << 20);
    let digest = push(&c, &repo, &blob_data).await;
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    blob.read_range(0..1000, Priority::OnDemand).await.unwrap();
    let guard = fetch.read_timeout * 5; // a hang guard, not a timing assertion

    for (what, freeze) in [("frozen (SIGSTOP)", true), ("killed", false)] {
        if freeze {
            reg.pause();
        } else {
            reg.kill();
        }
        let started = Instant::now();
        let res = tokio::time::timeout(guard, blob.read_range(1000..200_000, Priority::OnDemand))
            .await
            .unwrap_or_else(|_| panic!("{what}: read hung past {guard:?}"));
        let err = res.unwrap_err();
        eprintln!("{what}: failed after {:?}: {err}", started.elapsed());
        assert!(
            matches!(err, RegistryError::Timeout { .. }),
            "{what}: {err}"
        );
        let msg = err.to_string();
        for part in [reg.host().as_str(), "faults/stop", digest.digest()] {
            assert!(msg.contains(part), "{what}: error lacks {part}: {msg}");
        }
        if freeze {
            reg.resume();
        } else {
            reg.restart(); // same port, same storage
        }
        let again = blob
            .read_range(1000..200_000, Priority::OnDemand)
            .await
            .unwrap();
        assert_eq!(again, blob_data.slice(1000..200_000), "{what}: works again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_across_a_registry_restart() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let mut fetch = fast_failing();
    fetch.request_timeout = Duration::from_secs(5);
    let (c, metrics) = client(&fetch, &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "faults/stream");
    let blob_data = data(21, 48 << 20);
    let digest = push(&c, &repo, &blob_data).await;
    let blob = c.blob(&repo, &digest, None).await.unwrap();
    let mut stream = blob.stream(0, Priority::Background);
    let mut got = Vec::with_capacity(blob_data.len());
    got.extend_from_slice(&stream.next_chunk().await.unwrap().unwrap());
    // Kill the registry mid-transfer; bring it back on the same port a little later.
    let mut reg = reg;
    reg.kill();
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        reg.restart();
        reg
    });
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.next_chunk())
        .await
        .expect("stream hung")
    {
        got.extend_from_slice(&chunk.unwrap());
    }
    let _reg = restarter.await.unwrap();
    assert_eq!(got.len(), blob_data.len());
    assert!(
        got == blob_data,
        "resumed stream content (digest also checked by the stream)"
    );
    assert!(
        metrics.snapshot().retries >= 1,
        "the stream was interrupted and resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_down_fall_through_to_the_origin() {
    require_registry!();
    let origin = RegistryProc::start(RegistryAuth::None);
    let mirror = RegistryProc::start(RegistryAuth::None);
    let mut frozen = RegistryProc::start(RegistryAuth::None);
    frozen.pause(); // accepts connections, never answers
    let plain = registry_config(origin.dir.path());
    let (pusher, _) = client(&fetch_config(), &plain);
    let on_origin = data(30, 100_000);
    let on_mirror = data(31, 100_000);
    let d_origin = push(
        &pusher,
        &Repository::new(origin.host(), "m/repo"),
        &on_origin,
    )
    .await;
    let d_mirror = push(
        &pusher,
        &Repository::new(mirror.host(), "m/repo"),
        &on_mirror,
    )
    .await;

    let closed = format!("127.0.0.1:{}", free_port());
    let mut regcfg = plain.clone();
    regcfg.hosts.insert(
        origin.host(),
        config::HostConfig {
            mirrors: [closed.clone(), frozen.host(), mirror.host()]
                .into_iter()
                .map(|h| config::MirrorConfig {
                    host: h,
                    request_timeout: Some(Duration::from_millis(500)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    );
    let (c, metrics) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(origin.host(), "m/repo");
    // Only the working mirror has this blob: it must be served from there.
    let b = c.blob(&repo, &d_mirror, None).await.unwrap();
    assert_eq!(
        b.read_range(0..50_000, Priority::OnDemand).await.unwrap(),
        on_mirror.slice(0..50_000)
    );
    // Only the origin has this one: the mirror's 404 falls through.
    let b = c.blob(&repo, &d_origin, None).await.unwrap();
    assert_eq!(
        b.read_range(5..60_000, Priority::OnDemand).await.unwrap(),
        on_origin.slice(5..60_000)
    );
    // Dead mirrors are skipped for a while instead of being tried on every request.
    let before = metrics.snapshot().requests;
    b.read_range(60_000..70_000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(
        metrics.snapshot().requests - before,
        2,
        "live mirror (404) + origin only"
    );
    frozen.resume();
}
