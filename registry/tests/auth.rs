//! Authentication against a real docker-registry: htpasswd basic auth (config-file and docker
//! config.json credentials, re-read on change) and bearer tokens from a token-server fixture,
//! including proactive refresh and a token refused mid-test (refresh once, retry). Secrets
//! never show in errors or logs.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::token::{TokenPolicy, TokenServer};
use common::*;
use registry::{Priority, RegistryError, Repository};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-basic-pw";

fn with_credentials(
    dir: &std::path::Path,
    host: &str,
    user: &str,
    pw: &str,
) -> config::RegistryConfig {
    let mut r = registry_config(dir);
    r.hosts.insert(
        host.to_string(),
        config::HostConfig {
            username: user.into(),
            password: config::Secret::new(pw),
            ..Default::default()
        },
    );
    r
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !s.is_empty() && !text.contains(s),
            "secret {s:?} leaked into: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth() {
    require_registry!();
    let logs = capture_logs();
    let reg = RegistryProc::start(RegistryAuth::Htpasswd {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let repo = Repository::new(reg.host(), "auth/basic");
    let blob = data(10, 300_000);
    let digest = digest_of(&blob);

    let (anon, _) = client(&fetch_config(), &registry_config(reg.dir.path()));
    let err = anon.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no credentials"), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");

    let wrong_pw = "wrong-pw-123";
    let (bad, _) = client(
        &fetch_config(),
        &with_credentials(reg.dir.path(), &reg.host(), USER, wrong_pw),
    );
    let err = bad.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"), &[wrong_pw]);

    let (good, metrics) = client(
        &fetch_config(),
        &with_credentials(reg.dir.path(), &reg.host(), USER, PASSWORD),
    );
    push(&good, &repo, &blob).await;
    let b = good.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(10..20_000, Priority::OnDemand).await.unwrap(),
        blob.slice(10..20_000)
    );
    assert_eq!(metrics.snapshot().token_fetches, 0);

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert_no_secret(&text, &[PASSWORD, wrong_pw, &basic]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_credentials_are_read_and_reread_after_change() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::Htpasswd {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("config.json");
    let write = |user: &str, pw: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        let text = format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host()
        );
        std::fs::write(&docker_config, text).unwrap();
    };
    write(USER, "stale-password-1");
    let regcfg = config::RegistryConfig {
        docker_config: docker_config.clone(),
        ..Default::default()
    };
    let (c, _) = client(&fetch_config(), &regcfg);
    let repo = Repository::new(reg.host(), "auth/dockercfg");
    let blob = data(11, 50_000);
    let digest = digest_of(&blob);
    let err = c.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert_no_secret(&err.to_string(), &["stale-password-1"]);

    write(USER, PASSWORD); // different length: the change is seen even within one mtime tick
    push(&c, &repo, &blob).await;
    let b = c.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(0..1000, Priority::OnDemand).await.unwrap(),
        blob.slice(0..1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_refresh_before_expiry_and_after_refusal() {
    require_registry!();
    let logs = capture_logs();
    let state = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        state.path(),
        TokenPolicy {
            expires_in: 300,
            expired_next: 0,
            user: Some((USER.into(), PASSWORD.into())),
        },
    );
    let reg = RegistryProc::start(RegistryAuth::Token {
        realm: tokens.realm(),
        bundle: tokens.bundle.clone(),
    });
    let repo = Repository::new(reg.host(), "auth/bearer");
    let blob = data(12, 400_000);
    let digest = digest_of(&blob);

    // Without credentials the token endpoint refuses: a clear error.
    let (anon, _) = client(&fetch_config(), &registry_config(state.path()));
    let err = anon.blob_exists(&repo, &digest).await.unwrap_err();
    assert!(matches!(err, RegistryError::Token { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");

    let (c, metrics) = client(
        &fetch_config(),
        &with_credentials(state.path(), &reg.host(), USER, PASSWORD),
    );
    push(&c, &repo, &blob).await;
    let b = c.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(0..4096, Priority::OnDemand).await.unwrap(),
        blob.slice(0..4096)
    );
    let issued_before = tokens.issued();
    assert!(issued_before >= 2, "push and pull scopes each got a token");

    // Cached token: no new token for further reads.
    b.read_range(4096..8192, Priority::OnDemand).await.unwrap();
    assert_eq!(tokens.issued(), issued_before);

    // Short-lived tokens are refreshed before they run out, without a 401. A new client
    // starts with no token (and learns the challenge from one 401).
    tokens.policy.lock().unwrap().expires_in = 2;
    let unauthorized_before = reg.count_status(401);
    let (c2, _) = client(
        &fetch_config(),
        &with_credentials(state.path(), &reg.host(), USER, PASSWORD),
    );
    let b2 = c2
        .blob(&repo, &digest, Some(blob.len() as u64))
        .await
        .unwrap();
    b2.read_range(0..100, Priority::OnDemand).await.unwrap(); // 401 (challenge) + token
    let first_token_count = tokens.issued();
    let challenges = reg.count_status(401) - unauthorized_before;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b2.read_range(100..200, Priority::OnDemand).await.unwrap();
    assert!(
        tokens.issued() > first_token_count,
        "token refreshed before expiry"
    );
    assert_eq!(
        reg.count_status(401) - unauthorized_before,
        challenges,
        "no 401 for the proactive refresh"
    );

    // A token the registry refuses mid-use (already expired): refresh once and retry.
    {
        let mut p = tokens.policy.lock().unwrap();
        p.expires_in = 300;
        p.expired_next = 1;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await; // let the 2 s token age out locally
    let before = (tokens.issued(), reg.count_status(401), metrics.snapshot());
    let got = b2
        .read_range(200..300_000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(got, blob.slice(200..300_000));
    assert_eq!(
        tokens.issued() - before.0,
        2,
        "expired token, then a fresh one"
    );
    assert_eq!(
        reg.count_status(401) - before.1,
        1,
        "the expired token was refused once"
    );

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.contains("fetched registry token"),
        "logs were captured"
    );
    let issued: Vec<String> = tokens.tokens.lock().unwrap().clone();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let mut secrets: Vec<&str> = issued.iter().map(String::as_str).collect();
    secrets.extend([PASSWORD, basic.as_str()]);
    assert_no_secret(&text, &secrets);
}

/// A [`CredentialSource`] with credentials for one repository, counting its lookups.
struct OneRepo {
    repo: String,
    creds: registry::Credentials,
    asked: std::sync::atomic::AtomicU32,
}

impl registry::CredentialSource for OneRepo {
    fn credentials<'a>(
        &'a self,
        _host: &'a str,
        repository: &'a str,
    ) -> registry::CredentialsFuture<'a> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let c = (repository == self.repo).then(|| self.creds.clone());
        Box::pin(async move { c })
    }
}

fn one_repo(repo: &str, creds: registry::Credentials) -> std::sync::Arc<OneRepo> {
    std::sync::Arc::new(OneRepo {
        repo: repo.into(),
        creds,
        asked: Default::default(),
    })
}

fn basic(user: &str, pw: &str) -> registry::Credentials {
    registry::Credentials::Basic {
        username: user.into(),
        password: config::Secret::new(pw),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_source_is_asked_per_repository_before_the_configured_ones() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::Htpasswd {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let (private, other) = (
        Repository::new(reg.host(), "pods/private"),
        Repository::new(reg.host(), "pods/other"),
    );
    let blob = data(13, 70_000);
    let digest = digest_of(&blob);
    let (pusher, _) = client(
        &fetch_config(),
        &with_credentials(reg.dir.path(), &reg.host(), USER, PASSWORD),
    );
    push(&pusher, &private, &blob).await;
    push(&pusher, &other, &blob).await;

    // The configured credentials are wrong; the source's win for its repository.
    let (c, _) = client(
        &fetch_config(),
        &with_credentials(reg.dir.path(), &reg.host(), USER, "configured-but-wrong"),
    );
    let source = one_repo("pods/private", basic(USER, PASSWORD));
    c.set_credential_source(source.clone());
    let b = c.blob(&private, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(5..5000, Priority::OnDemand).await.unwrap(),
        blob.slice(5..5000)
    );
    assert!(source.asked.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // Another repository falls back to the configured (wrong) credentials.
    let err = c.blob_exists(&other, &digest).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // A wrong password from the source is refused with a clear error.
    let (c2, _) = client(&fetch_config(), &registry_config(reg.dir.path()));
    c2.set_credential_source(one_repo("pods/private", basic(USER, "pod-secret-wrong")));
    let err = c2.blob_exists(&private, &digest).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"), &["pod-secret-wrong"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_source_feeds_the_token_endpoint_or_gives_the_token_itself() {
    require_registry!();
    let state = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        state.path(),
        TokenPolicy {
            expires_in: 300,
            expired_next: 0,
            user: Some((USER.into(), PASSWORD.into())),
        },
    );
    let reg = RegistryProc::start(RegistryAuth::Token {
        realm: tokens.realm(),
        bundle: tokens.bundle.clone(),
    });
    let repo = Repository::new(reg.host(), "pods/bearer");
    let blob = data(14, 90_000);
    let digest = digest_of(&blob);
    let (pusher, _) = client(
        &fetch_config(),
        &with_credentials(state.path(), &reg.host(), USER, PASSWORD),
    );
    push(&pusher, &repo, &blob).await;

    let (c, _) = client(&fetch_config(), &registry_config(state.path()));
    c.set_credential_source(one_repo("pods/bearer", basic(USER, PASSWORD)));
    let issued = tokens.issued();
    let b = c.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(0..3000, Priority::OnDemand).await.unwrap(),
        blob.slice(0..3000)
    );
    assert!(
        tokens.issued() > issued,
        "a token was fetched with the source's credentials"
    );

    // A registry token (CRI AuthConfig.registry_token) goes to the registry as it is.
    let token = tokens.tokens.lock().unwrap().last().unwrap().clone();
    let (c3, _) = client(&fetch_config(), &registry_config(state.path()));
    c3.set_credential_source(one_repo(
        "pods/bearer",
        registry::Credentials::RegistryToken(config::Secret::new(token)),
    ));
    let issued = tokens.issued();
    let b = c3.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(
        b.read_range(100..900, Priority::OnDemand).await.unwrap(),
        blob.slice(100..900)
    );
    assert_eq!(tokens.issued(), issued, "no token fetched");
}
