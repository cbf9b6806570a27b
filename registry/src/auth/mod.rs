//! Registry authentication: learns each endpoint's challenge from its 401 answers, then sends
//! basic credentials or bearer tokens. Tokens are cached per (realm, service, scope,
//! credentials host), fetched once at a time per key, and refreshed before `expires_in` runs
//! out. Header values are marked sensitive and never logged.
//!
//! Credentials of a request: the plugged-in [`CredentialSource`] (per host and repository)
//! first, then the configured ones ([`CredentialStore`], per host).

mod challenge;
mod credentials;
mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use config::Secret;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};

pub(crate) use challenge::Challenge;
pub(crate) use credentials::CredentialStore;
pub use credentials::Credentials;
pub use source::{CredentialSource, CredentialsFuture};

use super::error::{describe, redact_url};
use super::{RegistryError, Target};
use crate::Metrics;

/// Token lifetime assumed when the token endpoint does not say (distribution spec: 60 s).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// The access a request needs, as token scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    /// Repository.
    pub(crate) repo: String,
    /// Push access needed (else pull).
    pub(crate) push: bool,
    /// Another repository needing pull access (cross-repository blob mount).
    pub(crate) also_pull: Option<String>,
}

impl Scope {
    pub(crate) fn pull(repo: &str) -> Self {
        Scope {
            repo: repo.to_string(),
            push: false,
            also_pull: None,
        }
    }

    pub(crate) fn push(repo: &str) -> Self {
        Scope {
            repo: repo.to_string(),
            push: true,
            also_pull: None,
        }
    }

    fn scopes(&self) -> Vec<String> {
        let actions = if self.push { "pull,push" } else { "pull" };
        let mut v = vec![format!("repository:{}:{actions}", self.repo)];
        if let Some(other) = &self.also_pull {
            v.push(format!("repository:{other}:pull"));
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: Option<String>,
    scopes: Vec<String>,
    creds_host: String,
}

struct Token {
    value: Secret,
    refresh_at: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Authentication state shared by all requests of a client.
pub(crate) struct Authenticator {
    creds: CredentialStore,
    source: parking_lot::RwLock<Option<Arc<dyn CredentialSource>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<TokenKey, TokenSlot>>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub(crate) fn new(registry: &config::RegistryConfig, metrics: Arc<Metrics>) -> Self {
        Authenticator {
            creds: CredentialStore::new(registry),
            source: parking_lot::RwLock::new(None),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Records the challenge of a 401 answer from `endpoint`; false if it has none we support.
    pub(crate) fn learn(&self, endpoint: &str, headers: &HeaderMap) -> bool {
        let values = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match challenge::parse_challenges(values).into_iter().next() {
            Some(c) => {
                self.challenges.lock().insert(endpoint.to_string(), c);
                true
            }
            None => false,
        }
    }

    /// True if `endpoint` asked for basic auth (asking again without credentials is useless).
    pub(crate) fn is_basic(&self, endpoint: &str) -> bool {
        matches!(self.challenges.lock().get(endpoint), Some(Challenge::Basic))
    }

    /// Forgets the cached token `endpoint` would use for `scope` (after it was refused).
    pub(crate) fn invalidate(&self, endpoint: &str, scope: &Scope) {
        if let Some(key) = self.token_key(endpoint, scope) {
            self.tokens.lock().remove(&key);
        }
    }

    fn token_key(&self, endpoint: &str, scope: &Scope) -> Option<TokenKey> {
        match self.challenges.lock().get(endpoint)? {
            Challenge::Bearer { realm, service } => Some(TokenKey {
                realm: realm.clone(),
                service: service.clone(),
                scopes: scope.scopes(),
                creds_host: endpoint.to_string(),
            }),
            Challenge::Basic => None,
        }
    }

    /// Asks `source` for credentials before the configured ones from now on.
    pub(crate) fn set_source(&self, source: Arc<dyn CredentialSource>) {
        *self.source.write() = Some(source);
    }

    /// The credentials for `repo` on `host`: the plugged-in source's, else the configured.
    async fn credentials(
        &self,
        host: &str,
        repo: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let source = self.source.read().clone();
        if let Some(s) = source {
            let host = credentials::normalize_host(host);
            if let Some(c) = s.credentials(&host, repo).await {
                return Ok(Some(c));
            }
        }
        self.creds.lookup(host)
    }

    /// True if there are credentials for `repo` on `host`.
    pub(crate) async fn has_credentials(&self, host: &str, repo: &str) -> bool {
        matches!(self.credentials(host, repo).await, Ok(Some(_)))
    }

    /// The `Authorization` header for a request to `endpoint` needing `scope`, or `None`
    /// when the endpoint has not asked for authentication (yet).
    pub(crate) async fn header(
        &self,
        http: &reqwest::Client,
        endpoint: &str,
        insecure: bool,
        scope: &Scope,
        target: &Target,
        timeout: Duration,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.challenges.lock().get(endpoint).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match self.credentials(endpoint, &scope.repo).await? {
                Some(Credentials::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, &password)))
                }
                _ => Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let key = TokenKey {
                    realm: realm.clone(),
                    service: service.clone(),
                    scopes: scope.scopes(),
                    creds_host: endpoint.to_string(),
                };
                let slot = self.tokens.lock().entry(key.clone()).or_default().clone();
                let mut guard = slot.lock().await;
                let now = Instant::now();
                if let Some(t) = guard.as_ref().filter(|t| now < t.refresh_at) {
                    return Ok(Some(bearer_header(&t.value)));
                }
                let creds = self.credentials(endpoint, &scope.repo).await?;
                if let Some(Credentials::RegistryToken(token)) = &creds {
                    // Sent as it is; not cached (the source keeps it).
                    return Ok(Some(bearer_header(token)));
                }
                let token = self
                    .fetch_token(http, &key, creds, insecure, target, timeout)
                    .await?;
                let header = bearer_header(&token.value);
                *guard = Some(token);
                Ok(Some(header))
            }
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        key: &TokenKey,
        creds: Option<Credentials>,
        insecure: bool,
        target: &Target,
        timeout: Duration,
    ) -> Result<Token, RegistryError> {
        let realm = reqwest::Url::parse(&key.realm).map_err(|_| RegistryError::Token {
            target: target.clone(),
            realm: "<unparsable realm>".into(),
            reason: "the registry's token realm is not a URL".into(),
        })?;
        let realm_shown = redact_url(&realm);
        let fail = |reason: String| RegistryError::Token {
            target: target.clone(),
            realm: realm_shown.clone(),
            reason,
        };
        if realm.scheme() != "https" && realm.scheme() != "http" {
            return Err(fail("token realm must be http(s)".into()));
        }
        if realm.scheme() == "http" && !insecure && creds.is_some() {
            return Err(fail(
                "refusing to send credentials to a plain-HTTP token realm of an HTTPS registry"
                    .into(),
            ));
        }
        let mut url = realm.clone();
        let request = match &creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = reqwest::Url::parse("http://form.invalid/").expect("static URL");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh.expose());
                    q.append_pair("client_id", "starling");
                    if let Some(s) = &key.service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &key.scopes.join(" "));
                }
                let body = form.query().unwrap_or("").to_string();
                http.post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &key.service {
                        q.append_pair("service", s);
                    }
                    for s in &key.scopes {
                        q.append_pair("scope", s);
                    }
                }
                let mut rb = http.get(url);
                if let Some(Credentials::Basic { username, password }) = &creds {
                    rb = rb.header(AUTHORIZATION, basic_header(username, password));
                }
                rb
            }
        };
        Metrics::inc(&self.metrics.requests);
        Metrics::inc(&self.metrics.token_fetches);
        let resp = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| fail(format!("network error: {}", describe(e))))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(fail(format!(
                "credentials refused (HTTP {status}){}",
                if creds.is_none() {
                    "; no credentials configured for this host"
                } else {
                    ""
                }
            )));
        }
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| fail(format!("network error: {e}")))?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| fail("the token response is not JSON".into()))?;
        let value = ["token", "access_token"]
            .iter()
            .find_map(|k| {
                doc.get(*k)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            })
            .ok_or_else(|| fail("the token response has no token".into()))?;
        let lifetime = doc
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = (lifetime / 5).min(Duration::from_secs(30));
        tracing::debug!(realm = %realm_shown, lifetime_s = lifetime.as_secs(), "fetched registry token");
        Ok(Token {
            value: Secret::new(value),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
}

fn basic_header(user: &str, password: &Secret) -> HeaderValue {
    let raw = format!("{user}:{}", password.expose());
    let enc = base64::engine::general_purpose::STANDARD.encode(raw);
    sensitive(&format!("Basic {enc}"))
}

fn bearer_header(token: &Secret) -> HeaderValue {
    sensitive(&format!("Bearer {}", token.expose()))
}

fn sensitive(v: &str) -> HeaderValue {
    let mut h = HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""));
    h.set_sensitive(true);
    h
}

/// Reads a response body of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if buf.len() + chunk.len() > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
