//! Registry hosts as configured: for each host written in references, its endpoints (mirrors in
//! order, then the origin), each with scheme, extra headers, request timeout and health; plus
//! the host's request limiter and what we learned about its multi-range support.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::limiter::Limiter;
use super::reference::DOCKER_HUB;
use super::RegistryError;

/// How long a mirror that failed to connect is skipped.
const MIRROR_DOWN_FOR: Duration = Duration::from_secs(30);

/// One place requests can go: a mirror or the origin registry.
pub(crate) struct Endpoint {
    /// `host[:port]` to connect to.
    pub(crate) host: String,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    pub(crate) headers: HeaderMap,
    pub(crate) request_timeout: Duration,
    pub(crate) is_mirror: bool,
    down_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// `scheme://host` + `path_and_query`.
    pub(crate) fn url(&self, path_and_query: &str) -> Result<reqwest::Url, String> {
        reqwest::Url::parse(&format!(
            "{}://{}{}",
            self.scheme, self.host, path_and_query
        ))
        .map_err(|e| format!("cannot build URL: {e}"))
    }

    pub(crate) fn insecure(&self) -> bool {
        self.scheme == "http"
    }

    pub(crate) fn is_down(&self) -> bool {
        matches!(*self.down_until.lock(), Some(t) if Instant::now() < t)
    }

    pub(crate) fn mark_down(&self) {
        *self.down_until.lock() = Some(Instant::now() + MIRROR_DOWN_FOR);
    }

    pub(crate) fn mark_up(&self) {
        *self.down_until.lock() = None;
    }
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
}

impl RegistryHost {
    pub(crate) fn from_config(
        name: &str,
        fetch: &config::FetchConfig,
        registry: &config::RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let host_cfg = registry.host(name);
        let mut endpoints = Vec::new();
        if let Some(h) = host_cfg {
            for m in &h.mirrors {
                endpoints.push(Arc::new(Endpoint {
                    host: m.host.clone(),
                    scheme: scheme(m.insecure, &m.host),
                    headers: header_map(&m.headers)?,
                    request_timeout: m.request_timeout.unwrap_or(fetch.request_timeout),
                    is_mirror: true,
                    down_until: Mutex::new(None),
                }));
            }
        }
        let origin = if name == DOCKER_HUB {
            "registry-1.docker.io".to_string()
        } else {
            name.to_string()
        };
        endpoints.push(Arc::new(Endpoint {
            scheme: scheme(host_cfg.is_some_and(|h| h.insecure), &origin),
            host: origin,
            headers: match host_cfg {
                Some(h) => header_map(&h.headers)?,
                None => HeaderMap::new(),
            },
            request_timeout: host_cfg
                .and_then(|h| h.request_timeout)
                .unwrap_or(fetch.request_timeout),
            is_mirror: false,
            down_until: Mutex::new(None),
        }));
        Ok(RegistryHost {
            name: name.to_string(),
            endpoints,
            limiter: Limiter::new(fetch.max_concurrent_requests),
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

    /// Endpoints to try in order: healthy mirrors, then the origin; when every mirror is
    /// marked down, they are still tried (in case they are back) before the origin.
    pub(crate) fn candidates(&self, origin_only: bool) -> Vec<Arc<Endpoint>> {
        if origin_only {
            return vec![self.origin().clone()];
        }
        let up: Vec<_> = self
            .endpoints
            .iter()
            .filter(|e| !e.is_mirror || !e.is_down())
            .cloned()
            .collect();
        if up.len() == 1 && self.endpoints.len() > 1 {
            return self.endpoints.clone();
        }
        up
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
        let hosts: Vec<_> = h
            .endpoints
            .iter()
            .map(|e| (e.host.as_str(), e.scheme))
            .collect();
        assert_eq!(
            hosts,
            [
                ("m1.local:5000", "http"),
                ("m2.local", "https"),
                ("registry-1.docker.io", "https")
            ]
        );
        assert_eq!(h.endpoints[1].request_timeout, Duration::from_secs(3));
        h.endpoints[0].mark_down();
        let c: Vec<_> = h.candidates(false).iter().map(|e| e.host.clone()).collect();
        assert_eq!(c, ["m2.local", "registry-1.docker.io"]);
        h.endpoints[1].mark_down();
        assert_eq!(
            h.candidates(false).len(),
            3,
            "all mirrors down: try them all again"
        );
        assert_eq!(h.candidates(true).len(), 1);
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
