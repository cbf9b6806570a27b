//! Errors that cannot heal are not retried, against a real docker-registry: a plain-HTTP
//! registry addressed with https (the host `0.0.0.0:PORT` is not loopback to the client, so
//! it gets https, while the kernel connects it to the registry on 127.0.0.1), a 401 without
//! credentials, a 404 of a blob and of a tag. Each fails at its first request, says it is
//! permanent and names the setting that fixes it; the plain-HTTP one works once that
//! setting is made.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use registry::{Permanent, Priority, Reference, RegistryError, Repository, TlsProblem};

/// Fetch settings that would retry a transient error many times.
fn retrying() -> config::FetchConfig {
    config::FetchConfig {
        max_retries: 6,
        ..fetch_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_registry_addressed_as_https_fails_at_once_with_the_fix() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let host = format!("0.0.0.0:{}", reg.port);
    let repo = Repository::new(host.clone(), "perm/plain");
    let blob_data = data(30, 100_000);
    let digest = digest_of(&blob_data);

    let (c, metrics) = client(&retrying(), &registry_config(reg.dir.path()));
    let err = c.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RegistryError::Tls {
                problem: TlsProblem::PlainHttp,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.permanent(), Some(Permanent::PlainHttp));
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "https to {host} failed: the server speaks plain HTTP"
        )),
        "{text}"
    );
    let fix = err.fix().expect("a fix");
    assert!(
        fix.contains(&format!("insecure = true in [registry.hosts.\"{host}\"]")),
        "{fix}"
    );
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 0, "not retried");
    assert_eq!(metrics.requests.load(Ordering::Relaxed), 1, "one request");

    // The fix works: the same host declared insecure.
    let mut reg_cfg = registry_config(reg.dir.path());
    reg_cfg.hosts.insert(
        host.clone(),
        config::HostConfig {
            insecure: true,
            ..Default::default()
        },
    );
    let (fixed, _) = client(&retrying(), &reg_cfg);
    push(&fixed, &repo, &blob_data).await;
    let b = fixed.blob(&repo, &digest, None).await.unwrap();
    let got = b.read_range(10..2010, Priority::OnDemand).await.unwrap();
    assert_eq!(&got[..], &blob_data[10..2010]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_without_credentials_is_not_retried() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::Htpasswd {
        user: "bob".into(),
        password: "perm-test-pw".into(),
    });
    let repo = Repository::new(reg.host(), "perm/auth");
    let digest = digest_of(&data(31, 1000));
    let (c, metrics) = client(&retrying(), &registry_config(reg.dir.path()));
    let err = c.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.permanent(), Some(Permanent::NoCredentials));
    let fix = err.fix().expect("a fix");
    assert!(
        fix.contains(&format!("[registry.hosts.\"{}\"]", reg.host()))
            && fix.contains("username and password"),
        "{fix}"
    );
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 0);
    let heads = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"HEAD /v2/perm/auth/") && l.contains("\" 401 "))
        .count();
    assert_eq!(heads, 1, "one request: {}", reg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_blob_and_tag_are_not_retried() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let repo = Repository::new(reg.host(), "perm/missing");
    let (c, metrics) = client(&retrying(), &registry_config(reg.dir.path()));
    // The repository exists (one blob), the blob read below does not.
    push(&c, &repo, &data(32, 5000)).await;
    let missing = digest_of(&data(33, 5000));
    let blob = c.blob(&repo, &missing, Some(5000)).await.unwrap();
    let err = blob
        .read_range(0..100, Priority::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert_eq!(err.permanent(), Some(Permanent::NotFound));
    let fix = err.fix().expect("a fix");
    assert!(fix.contains(missing.as_ref()), "{fix}");

    let reference: Reference = format!("{}/perm/missing:nope", reg.host()).parse().unwrap();
    let err = c.resolve(&reference).await.unwrap_err();
    assert_eq!(err.permanent(), Some(Permanent::NotFound), "{err:?}");
    assert!(err.fix().unwrap().contains("nope"), "{err}");
    assert_eq!(metrics.retries.load(Ordering::Relaxed), 0);
    // One GET each (the push's HEAD of the blob it stored was a 404 too).
    let gets = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/perm/missing/") && l.contains("\" 404 "))
        .count();
    assert_eq!(gets, 2, "{}", reg.log());
}
