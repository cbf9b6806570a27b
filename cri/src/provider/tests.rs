//! Plugins as shell scripts: what they are asked, caching by key type and duration,
//! matching, failures and timeouts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use config::{CredentialProviderConfig, KubernetesConfig, Secret};

use super::*;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

/// A plugin that appends its stdin to `<dir>/NAME.log` and prints `answer`.
fn plugin(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\ncat >> \"$0.log\"; echo >> \"$0.log\"\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn answer(key_type: &str, duration: &str, key: &str, user: &str) -> String {
    let dur = if duration.is_empty() {
        String::new()
    } else {
        format!(",\"cacheDuration\":\"{duration}\"")
    };
    format!(
        "cat <<'EOF'\n{{\"apiVersion\":\"{V1}\",\"kind\":\"CredentialProviderResponse\",\"cacheKeyType\":\"{key_type}\"{dur},\"auth\":{{\"{key}\":{{\"username\":\"{user}\",\"password\":\"pw-{user}\"}}}}}}\nEOF"
    )
}

fn config(dir: &Path, providers: Vec<CredentialProviderConfig>) -> KubernetesConfig {
    KubernetesConfig {
        credential_provider_bin_dir: dir.to_path_buf(),
        credential_provider_timeout: Duration::from_secs(5),
        credential_providers: providers,
        ..Default::default()
    }
}

fn provider(name: &str, matches: &[&str]) -> CredentialProviderConfig {
    CredentialProviderConfig {
        name: name.into(),
        match_images: matches.iter().map(|s| s.to_string()).collect(),
        default_cache_duration: Duration::from_secs(600),
        api_version: V1.into(),
        env: [("STL_TEST".to_string(), "1".to_string())].into(),
        ..Default::default()
    }
}

fn user(a: Option<(PodAuth, &str)>) -> Option<String> {
    a.map(|(a, _)| match a {
        PodAuth::Basic { username, password } => {
            assert_eq!(password, Secret::new(format!("pw-{username}")));
            username
        }
        other => panic!("{other:?}"),
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn asks_matching_plugins_and_caches_by_registry() {
    let dir = tempfile::tempdir().unwrap();
    plugin(
        dir.path(),
        "reg",
        &answer("Registry", "", "reg.io:5000", "alice"),
    );
    plugin(dir.path(), "never", &answer("Global", "", "*", "bob"));
    let ps = CredentialProviders::new(&config(
        dir.path(),
        vec![
            provider("reg", &["reg.io:5000"]),
            provider("never", &["*.other.io"]),
        ],
    ))
    .unwrap();
    rt().block_on(async {
        let a = ps.lookup(&RepoKey::new("reg.io:5000", "team/app")).await;
        assert_eq!(user(a), Some("alice".into()));
        // Same registry, other repository: from the cache.
        let b = ps.lookup(&RepoKey::new("reg.io:5000", "other")).await;
        assert_eq!(user(b), Some("alice".into()));
        // Not matched by anyone.
        assert!(ps
            .lookup(&RepoKey::new("elsewhere.io", "x"))
            .await
            .is_none());
    });
    assert_eq!(ps.runs("reg"), 1);
    assert_eq!(ps.runs("never"), 0);
    let log = std::fs::read_to_string(dir.path().join("reg.log")).unwrap();
    let req: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(req["apiVersion"], V1);
    assert_eq!(req["kind"], "CredentialProviderRequest");
    assert_eq!(req["image"], "reg.io:5000/team/app");
}

#[test]
fn image_keys_zero_durations_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    plugin(dir.path(), "img", &answer("Image", "", "reg.io", "carol"));
    plugin(
        dir.path(),
        "nocache",
        &answer("Global", "0s", "reg2.io", "dave"),
    );
    plugin(
        dir.path(),
        "short",
        &answer("Global", "1s", "reg3.io", "erin"),
    );
    let ps = CredentialProviders::new(&config(
        dir.path(),
        vec![
            provider("img", &["reg.io"]),
            provider("nocache", &["reg2.io"]),
            provider("short", &["reg3.io"]),
        ],
    ))
    .unwrap();
    rt().block_on(async {
        for _ in 0..2 {
            assert_eq!(
                user(ps.lookup(&RepoKey::new("reg.io", "a")).await),
                Some("carol".into())
            );
        }
        // An Image key does not cover another repository.
        assert_eq!(
            user(ps.lookup(&RepoKey::new("reg.io", "b")).await),
            Some("carol".into())
        );
        for _ in 0..2 {
            assert_eq!(
                user(ps.lookup(&RepoKey::new("reg2.io", "a")).await),
                Some("dave".into())
            );
        }
        assert_eq!(
            user(ps.lookup(&RepoKey::new("reg3.io", "a")).await),
            Some("erin".into())
        );
        assert_eq!(
            user(ps.lookup(&RepoKey::new("reg3.io", "b")).await),
            Some("erin".into())
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            user(ps.lookup(&RepoKey::new("reg3.io", "a")).await),
            Some("erin".into())
        );
    });
    assert_eq!(ps.runs("img"), 2, "cached per image");
    assert_eq!(ps.runs("nocache"), 2, "cacheDuration 0s: never cached");
    assert_eq!(ps.runs("short"), 2, "run again once the 1s cache expired");
}

#[test]
fn answers_without_a_matching_key_give_nothing_and_the_next_plugin_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    plugin(
        dir.path(),
        "first",
        &answer("Registry", "", "reg.io/team", "frank"),
    );
    plugin(
        dir.path(),
        "second",
        &answer("Registry", "", "*.io", "grace"),
    );
    let ps = CredentialProviders::new(&config(
        dir.path(),
        vec![
            provider("first", &["reg.io"]),
            provider("second", &["*.io"]),
        ],
    ))
    .unwrap();
    rt().block_on(async {
        let a = ps
            .lookup(&RepoKey::new("reg.io", "team/app"))
            .await
            .unwrap();
        assert_eq!(a.1, "first");
        let b = ps
            .lookup(&RepoKey::new("reg.io", "solo/app"))
            .await
            .unwrap();
        assert_eq!(b.1, "second");
        assert_eq!(user(Some(b)), Some("grace".into()));
    });
}

#[test]
fn failures_and_hangs_give_nothing_and_are_not_retried_at_once() {
    let dir = tempfile::tempdir().unwrap();
    plugin(
        dir.path(),
        "fails",
        "echo 'no credentials for you' >&2; exit 3",
    );
    plugin(dir.path(), "hangs", "exec sleep 60");
    plugin(dir.path(), "garbage", "echo '{not json'");
    let mut cfg = config(
        dir.path(),
        vec![
            provider("fails", &["a.io"]),
            provider("hangs", &["b.io"]),
            provider("garbage", &["c.io"]),
            provider("missing", &["d.io"]),
        ],
    );
    cfg.credential_provider_timeout = Duration::from_millis(500);
    let ps = CredentialProviders::new(&cfg).unwrap();
    rt().block_on(async {
        for host in ["a.io", "b.io", "c.io", "d.io"] {
            assert!(
                ps.lookup(&RepoKey::new(host, "x")).await.is_none(),
                "{host}"
            );
            assert!(
                ps.lookup(&RepoKey::new(host, "x")).await.is_none(),
                "{host}"
            );
        }
    });
    for name in ["fails", "hangs", "garbage", "missing"] {
        assert_eq!(ps.runs(name), 1, "{name}: not run again within RETRY_AFTER");
    }
}

#[test]
fn plugin_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    plugin(dir.path(), "fails", "echo 'token service down' >&2; exit 3");
    plugin(dir.path(), "hangs", "exec sleep 60");
    let run = |name: &str, timeout: Duration| {
        let program = dir.path().join(name);
        let env = Default::default();
        let inv = Invocation {
            program: &program,
            args: &[],
            env: &env,
            api_version: V1,
            timeout,
        };
        rt().block_on(exec::run(&inv, "a.io/x"))
            .unwrap_err()
            .to_string()
    };
    let e = run("fails", Duration::from_secs(5));
    assert!(
        e.contains("token service down") && e.contains("exit status: 3"),
        "{e}"
    );
    let e = run("hangs", Duration::from_millis(300));
    assert!(
        e.contains("no answer within") && e.contains("killed"),
        "{e}"
    );
    let e = run("missing", Duration::from_secs(1));
    assert!(e.contains("cannot run it"), "{e}");
}
