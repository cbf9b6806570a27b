//! Registry hosts as configured: for each host written in references, its endpoints (mirrors
//! in order, then the origin), each with scheme, API root, `ns` query, capabilities, extra
//! headers, TLS settings (its own HTTP client when it has any), request timeout and health;
//! plus the host's request limiter and what we learned about its multi-range support.
//! Endpoints come from `[registry.hosts."HOST"]` (mirrors first) and from containerd's host
//! directory (`registry.hosts_dir`: the `[host."..."]` of the host's `hosts.toml`, then its
//! `server`), following containerd's rules.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::hosts_dir::{HostEndpoint, HostsFile};
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::health::HostHealth;
use super::limiter::Limiter;
use super::reference::DOCKER_HUB;
use super::RegistryError;

/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One place requests can go: a mirror or the origin registry.
pub(crate) struct Endpoint {
    /// `host[:port]` to connect to.
    pub(crate) host: String,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The API root requests go below: `/v2`, or a `hosts.toml` host's path.
    pub(crate) api_root: String,
    /// The `ns` query parameter sent with every request (the registry host the request is
    /// for), when this endpoint is not that host itself — what containerd sends to mirrors.
    pub(crate) namespace: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) request_timeout: Duration,
    pub(crate) is_mirror: bool,
    /// May serve blobs and manifests by digest.
    pub(crate) pull: bool,
    /// May resolve tags.
    pub(crate) resolve: bool,
    /// Its own HTTP client (TLS settings or a dial timeout of its own), else the shared one.
    pub(crate) http: Option<reqwest::Client>,
    /// How long it is skipped after a failure.
    skip_for: Duration,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// `scheme://host` + API root + `path_and_query` (given as `/v2/...`) + `ns`.
    pub(crate) fn url(&self, path_and_query: &str) -> Result<reqwest::Url, String> {
        let rest = path_and_query
            .strip_prefix("/v2")
            .filter(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
            .map_or(path_and_query.to_string(), |r| {
                format!("{}{r}", self.api_root)
            });
        let mut url = reqwest::Url::parse(&format!("{}://{}{}", self.scheme, self.host, rest))
            .map_err(|e| format!("cannot build URL: {e}"))?;
        if let Some(ns) = &self.namespace {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }

    pub(crate) fn insecure(&self) -> bool {
        self.scheme == "http"
    }

    pub(crate) fn is_down(&self) -> bool {
        matches!(*self.down_until.lock(), Some(t) if Instant::now() < t)
    }

    /// Skips this endpoint for its configured while; true if it was up until now.
    pub(crate) fn mark_down(&self) -> bool {
        let mut until = self.down_until.lock();
        let was_up = !matches!(*until, Some(t) if Instant::now() < t);
        *until = Some(Instant::now() + self.skip_for);
        was_up
    }

    pub(crate) fn mark_up(&self) {
        *self.down_until.lock() = None;
    }

    /// Skips a mirror after `cause` (logged once when it goes down).
    pub(crate) fn mirror_failed(&self, cause: &dyn std::fmt::Display) {
        if self.is_mirror && self.mark_down() {
            tracing::warn!(mirror = %self.host, error = %cause, skip_for = ?self.skip_for,
                "mirror failed; using the next mirror or the origin meanwhile");
        }
    }
}

/// The settings every HTTP client of this crate shares (endpoints with TLS settings of their
/// own start from these too).
pub(crate) fn http_builder(fetch: &config::FetchConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(fetch.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("starling/", env!("CARGO_PKG_VERSION")))
}

/// Settings of one endpoint before it is built.
struct Spec {
    scheme: &'static str,
    host: String,
    api_root: String,
    headers: HeaderMap,
    request_timeout: Duration,
    is_mirror: bool,
    pull: bool,
    resolve: bool,
    http: Option<reqwest::Client>,
}

/// Multi-range support of a host, learned from its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MultiRange {
    Unknown = 0,
    Supported = 1,
    Unsupported = 2,
}

/// A registry host as written in references, with its endpoints.
pub(crate) struct RegistryHost {
    pub(crate) name: String,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) limiter: Arc<Limiter>,
    multi_range: AtomicU8,
    /// Recent answers and failures to answer (see [`HostHealth`]).
    pub(crate) health: HostHealth,
}

impl RegistryHost {
    pub(crate) fn from_config(
        name: &str,
        fetch: &config::FetchConfig,
        registry: &config::RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let host_cfg = registry.host(name);
        let timeout = |t: Option<Duration>| t.unwrap_or(fetch.request_timeout);
        let mut specs = Vec::new();
        if let Some(h) = host_cfg {
            for m in &h.mirrors {
                specs.push(Spec {
                    scheme: scheme(m.insecure, &m.host),
                    host: m.host.clone(),
                    api_root: "/v2".into(),
                    headers: header_map(&m.headers)?,
                    request_timeout: timeout(m.request_timeout),
                    is_mirror: true,
                    pull: true,
                    resolve: true,
                    http: None,
                });
            }
        }
        let dir = hosts_file(&registry.hosts_dir, name)?;
        let origin_host = if name == DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else {
            name.to_string()
        };
        let origin_headers = match host_cfg {
            Some(h) => header_map(&h.headers)?,
            None => HeaderMap::new(),
        };
        let origin_timeout = timeout(host_cfg.and_then(|h| h.request_timeout));
        let origin_insecure = host_cfg.is_some_and(|h| h.insecure);
        match &dir {
            Some(file) => {
                for m in file.mirrors() {
                    specs.push(from_hosts_file(m, fetch, true, origin_timeout, file)?);
                }
                let o = file.origin();
                let mut spec = from_hosts_file(o, fetch, false, origin_timeout, file)?;
                if o.host.is_empty() {
                    // No `server`: the registry host itself, with the TOML settings.
                    spec.scheme = scheme(origin_insecure, &origin_host);
                    spec.host = origin_host.clone();
                }
                for (k, v) in &origin_headers {
                    spec.headers.insert(k.clone(), v.clone());
                }
                // The origin stays the last resort for every kind of request.
                spec.pull = true;
                spec.resolve = true;
                specs.push(spec);
            }
            None => specs.push(Spec {
                scheme: scheme(origin_insecure, &origin_host),
                host: origin_host,
                api_root: "/v2".into(),
                headers: origin_headers,
                request_timeout: origin_timeout,
                is_mirror: false,
                pull: true,
                resolve: true,
                http: None,
            }),
        }
        let endpoints = specs
            .into_iter()
            .map(|s| {
                Arc::new(Endpoint {
                    namespace: is_proxy_of(&s.host, name).then(|| name.to_string()),
                    host: s.host,
                    scheme: s.scheme,
                    api_root: s.api_root,
                    headers: s.headers,
                    request_timeout: s.request_timeout,
                    is_mirror: s.is_mirror,
                    pull: s.pull,
                    resolve: s.resolve,
                    http: s.http,
                    skip_for: registry.mirror_skip,
                    down_until: Mutex::new(None),
                })
            })
            .collect();
        Ok(RegistryHost {
            name: name.to_string(),
            endpoints,
            limiter: Limiter::new(fetch.max_concurrent_requests),
            health: HostHealth::default(),
            multi_range: AtomicU8::new(if fetch.multi_range {
                MultiRange::Unknown as u8
            } else {
                MultiRange::Unsupported as u8
            }),
        })
    }

    /// The origin endpoint (last).
    pub(crate) fn origin(&self) -> &Arc<Endpoint> {
        self.endpoints.last().expect("the origin is always present")
    }

    /// Endpoints to try in order: the mirrors that are not being skipped and may serve
    /// this kind of request (`resolve`: a tag), then the origin.
    pub(crate) fn candidates(&self, origin_only: bool, resolve: bool) -> Vec<Arc<Endpoint>> {
        if origin_only {
            return vec![self.origin().clone()];
        }
        self.endpoints
            .iter()
            .filter(|e| !e.is_mirror || (!e.is_down() && if resolve { e.resolve } else { e.pull }))
            .cloned()
            .collect()
    }

    pub(crate) fn multi_range(&self) -> MultiRange {
        match self.multi_range.load(Ordering::Relaxed) {
            1 => MultiRange::Supported,
            2 => MultiRange::Unsupported,
            _ => MultiRange::Unknown,
        }
    }

    pub(crate) fn set_multi_range(&self, v: MultiRange) {
        self.multi_range.store(v as u8, Ordering::Relaxed);
    }
}

/// Plain HTTP when configured, and for loopback hosts (like docker does for 127.0.0.0/8).
fn scheme(insecure: bool, host: &str) -> &'static str {
    let name = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(n, _)| n);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if insecure || loopback {
        "http"
    } else {
        "https"
    }
}

/// True if requests for registry `name` sent to `host` need `ns=name` (containerd's rule:
/// any host but the registry itself; Docker Hub's API host counts as Docker Hub).
fn is_proxy_of(host: &str, name: &str) -> bool {
    host != name && !(name == DOCKER_HUB && host == DOCKER_HUB_API)
}

/// The host directory's settings for `name`, with its warnings logged.
fn hosts_file(root: &Path, name: &str) -> Result<Option<HostsFile>, RegistryError> {
    if root.as_os_str().is_empty() {
        return Ok(None);
    }
    let file =
        config::hosts_dir::load(root, name).map_err(|e| RegistryError::HostsDir(Arc::new(e)))?;
    if let Some(f) = &file {
        for w in &f.warnings {
            tracing::warn!(registry = name, "{w}");
        }
        tracing::debug!(registry = name, dir = %f.dir.display(), endpoints = f.endpoints.len(),
            "using the registry host directory");
    }
    Ok(file)
}

/// An endpoint of a host directory: its scheme, API root, capabilities, headers and (with
/// TLS settings or a dial timeout) its own HTTP client.
fn from_hosts_file(
    e: &HostEndpoint,
    fetch: &config::FetchConfig,
    is_mirror: bool,
    request_timeout: Duration,
    file: &HostsFile,
) -> Result<Spec, RegistryError> {
    let mut headers = HeaderMap::new();
    for (k, values) in &e.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            RegistryError::Setup(format!("{}: invalid header name {k:?}", file.dir.display()))
        })?;
        for v in values {
            let value = HeaderValue::from_str(v).map_err(|_| {
                RegistryError::Setup(format!(
                    "{}: invalid value for header {k:?}",
                    file.dir.display()
                ))
            })?;
            headers.append(name.clone(), value);
        }
    }
    let http = if e.has_tls_settings() || e.dial_timeout.is_some() {
        Some(tls_client(e, fetch, file)?)
    } else {
        None
    };
    Ok(Spec {
        scheme: if e.scheme == "http" { "http" } else { "https" },
        host: e.host.clone(),
        api_root: e.path.clone(),
        headers,
        request_timeout,
        is_mirror,
        pull: e.capabilities.pull,
        resolve: e.capabilities.resolve,
        http,
    })
}

/// An HTTP client with the endpoint's CAs (added to the system's), client certificates,
/// `skip_verify` and dial timeout.
fn tls_client(
    e: &HostEndpoint,
    fetch: &config::FetchConfig,
    file: &HostsFile,
) -> Result<reqwest::Client, RegistryError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| {
            RegistryError::HostsDir(Arc::new(config::hosts_dir::HostsDirError::Read {
                path: p.to_path_buf(),
                source,
            }))
        })
    };
    let bad = |p: &Path, what: &str, e: reqwest::Error| {
        RegistryError::Setup(format!(
            "{} (for {} in {}): {what}: {}",
            p.display(),
            if e.is_builder() { "TLS" } else { "a host" },
            file.dir.display(),
            super::error::describe(e)
        ))
    };
    let mut b = http_builder(fetch);
    for ca in &e.ca {
        for cert in reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|err| bad(ca, "not a PEM certificate bundle", err))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    for (cert, key) in &e.client {
        let mut pem = read(cert)?;
        if let Some(k) = key {
            pem.push(b'\n');
            pem.extend(read(k)?);
        }
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|err| bad(cert, "not a PEM certificate with its private key", err))?;
        b = b.identity(id);
    }
    if let Some(skip) = e.skip_verify {
        b = b.tls_danger_accept_invalid_certs(skip);
    }
    if let Some(t) = e.dial_timeout {
        b = b.connect_timeout(t);
    }
    b.build().map_err(|err| {
        RegistryError::Setup(format!(
            "{}: {}",
            file.dir.display(),
            super::error::describe(err)
        ))
    })
}

fn header_map(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, RegistryError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| RegistryError::Setup(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| RegistryError::Setup(format!("invalid value for header {k:?}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &RegistryHost, origin_only: bool, resolve: bool) -> Vec<String> {
        h.candidates(origin_only, resolve)
            .iter()
            .map(|e| e.host.clone())
            .collect()
    }

    #[test]
    fn endpoints_are_mirrors_then_origin() {
        let mut reg = config::RegistryConfig::default();
        reg.hosts.insert(
            "docker.io".into(),
            config::HostConfig {
                mirrors: vec![
                    config::MirrorConfig {
                        host: "m1.local:5000".into(),
                        insecure: true,
                        ..Default::default()
                    },
                    config::MirrorConfig {
                        host: "m2.local".into(),
                        request_timeout: Some(Duration::from_secs(3)),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        let h = RegistryHost::from_config("docker.io", &Default::default(), &reg).unwrap();
        let hosts_and_schemes: Vec<_> = h
            .endpoints
            .iter()
            .map(|e| (e.host.as_str(), e.scheme))
            .collect();
        assert_eq!(
            hosts_and_schemes,
            [
                ("m1.local:5000", "http"),
                ("m2.local", "https"),
                ("registry-1.docker.io", "https")
            ]
        );
        assert_eq!(h.endpoints[1].request_timeout, Duration::from_secs(3));
        h.endpoints[0].mark_down();
        assert_eq!(
            hosts(&h, false, false),
            ["m2.local", "registry-1.docker.io"]
        );
        h.endpoints[1].mark_down();
        assert_eq!(
            hosts(&h, false, false),
            ["registry-1.docker.io"],
            "mirrors being skipped are skipped even when all are"
        );
        assert_eq!(hosts(&h, true, false), ["registry-1.docker.io"]);
        h.endpoints[0].mark_up();
        assert_eq!(
            hosts(&h, false, false),
            ["m1.local:5000", "registry-1.docker.io"]
        );
    }

    #[test]
    fn mirrors_get_the_ns_query_and_their_api_root() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("reg.example_5000_");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            r#"
[host."http://spegel.local:30020"]
  capabilities = ["pull", "resolve"]
  [host."http://spegel.local:30020".header]
    x-node = "n1"
[host."https://pull-only.local/cache"]
  capabilities = ["pull"]
  override_path = true
"#,
        )
        .unwrap();
        let mut reg = config::RegistryConfig {
            hosts_dir: root.path().to_path_buf(),
            mirror_skip: Duration::from_secs(7),
            ..Default::default()
        };
        reg.hosts.insert(
            "reg.example:5000".into(),
            config::HostConfig {
                insecure: true,
                mirrors: vec![config::MirrorConfig {
                    host: "toml-mirror:5000".into(),
                    insecure: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let h = RegistryHost::from_config("reg.example:5000", &Default::default(), &reg).unwrap();
        let path = "/v2/lib/app/blobs/sha256:ab";
        let urls: Vec<_> = h
            .endpoints
            .iter()
            .map(|e| e.url(path).unwrap().to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "http://toml-mirror:5000/v2/lib/app/blobs/sha256:ab?ns=reg.example%3A5000",
                "http://spegel.local:30020/v2/lib/app/blobs/sha256:ab?ns=reg.example%3A5000",
                "https://pull-only.local/cache/lib/app/blobs/sha256:ab?ns=reg.example%3A5000",
                "http://reg.example:5000/v2/lib/app/blobs/sha256:ab",
            ],
            "TOML mirrors, then hosts.toml's in file order, then the origin (no ns)"
        );
        assert_eq!(h.endpoints[1].headers["x-node"], "n1");
        assert_eq!(
            hosts(&h, false, true),
            ["toml-mirror:5000", "spegel.local:30020", "reg.example:5000"],
            "a pull-only mirror does not resolve tags"
        );
        assert_eq!(hosts(&h, false, false).len(), 4);
        assert_eq!(h.endpoints[1].skip_for, Duration::from_secs(7));
    }

    #[test]
    fn docker_hub_server_gets_no_ns_and_a_bad_file_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("docker.io");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.gcr.io\"]\n",
        )
        .unwrap();
        let reg = config::RegistryConfig {
            hosts_dir: root.path().to_path_buf(),
            ..Default::default()
        };
        let h = RegistryHost::from_config("docker.io", &Default::default(), &reg).unwrap();
        let ns: Vec<_> = h.endpoints.iter().map(|e| e.namespace.as_deref()).collect();
        assert_eq!(ns, [Some("docker.io"), None]);

        std::fs::write(
            dir.join("hosts.toml"),
            "[host.\"https://m\"]\ncapabilities = [\"fetch\"]\n",
        )
        .unwrap();
        let err = RegistryHost::from_config("docker.io", &Default::default(), &reg)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("docker.io/hosts.toml:2:") && err.contains("unknown capability \"fetch\""),
            "{err}"
        );
    }

    #[test]
    fn loopback_defaults_to_http() {
        assert_eq!(scheme(false, "127.0.0.1:5000"), "http");
        assert_eq!(scheme(false, "localhost"), "http");
        assert_eq!(scheme(false, "[::1]:80"), "http");
        assert_eq!(scheme(false, "reg.io"), "https");
        assert_eq!(scheme(true, "reg.io"), "http");
    }
}
