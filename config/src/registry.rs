//! `[registry]`: credentials source, and per-host settings under `[registry.hosts."HOST[:PORT]"]`
//! (plain HTTP, extra headers, timeouts, credentials, mirrors tried before the origin).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// A credential: its `Debug` never shows the value, so configs can be logged safely.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// `[registry]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Docker client config with registry credentials (`auths`), re-read when it changes.
    /// "" means "$DOCKER_CONFIG/config.json", else "~/.docker/config.json".
    pub docker_config: PathBuf,
    /// containerd's registry host directory (its `config_path`, e.g.
    /// "/etc/containerd/certs.d"): each host's hosts.toml adds mirrors (`[host."..."]`, in
    /// file order, after the mirrors configured here), TLS settings, headers and the
    /// `server`. "" (the default) reads none: set it to the directory your containerd uses,
    /// so that both go to the same mirrors.
    pub hosts_dir: PathBuf,
    /// How long a mirror is skipped after it failed (no connection, no answer in time, HTTP
    /// 5xx, a broken answer) or served bytes that failed verification; the next mirror or
    /// the origin is used meanwhile.
    #[serde(with = "crate::units::duration")]
    pub mirror_skip: Duration,
    /// Per-host settings, keyed by "HOST[:PORT]" as written in image references
    /// (e.g. [registry.hosts."ghcr.io"] or [registry.hosts."10.0.0.5:5000"]).
    pub hosts: BTreeMap<String, HostConfig>,
}

/// `[registry.hosts."HOST[:PORT]"]`: one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Use plain HTTP instead of HTTPS (loopback hosts use HTTP unless configured here).
    pub insecure: bool,
    /// Extra HTTP headers sent with every request to this host.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout for this host, overriding `fetch.request_timeout`.
    #[serde(
        with = "crate::units::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// User name for basic auth or for the bearer-token endpoint (instead of config.json).
    pub username: String,
    /// Password that goes with `username`.
    pub password: Secret,
    /// OAuth2 refresh token for the bearer-token endpoint (docker's "identitytoken").
    pub identity_token: Secret,
    /// Mirrors tried in order before this host, e.g. [{ host = "mirror.local:5000",
    /// insecure = true }]. Credentials of this host are not sent to mirrors.
    pub mirrors: Vec<MirrorConfig>,
}

/// One mirror of a registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// The mirror as "HOST[:PORT]" (no scheme, no path).
    pub host: String,
    /// Use plain HTTP for this mirror.
    pub insecure: bool,
    /// Extra HTTP headers sent to this mirror.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout for this mirror, overriding `fetch.request_timeout`.
    #[serde(
        with = "crate::units::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            docker_config: PathBuf::new(),
            hosts_dir: PathBuf::new(),
            mirror_skip: Duration::from_secs(30),
            hosts: BTreeMap::new(),
        }
    }
}

impl RegistryConfig {
    /// The settings of `host` (as written in image references), if configured.
    pub fn host(&self, host: &str) -> Option<&HostConfig> {
        self.hosts.get(host)
    }

    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if !self.hosts_dir.as_os_str().is_empty() && !self.hosts_dir.is_absolute() {
            return Err(Invalid::new(
                at.key("hosts_dir"),
                "must be an absolute path (containerd's config_path, e.g. \"/etc/containerd/certs.d\") or \"\"",
            ));
        }
        check_timeout(Some(self.mirror_skip), &at.key("mirror_skip"))?;
        for (name, host) in &self.hosts {
            let here = at.key("hosts").key(name);
            check_host(name).map_err(|m| Invalid::new(here.clone(), m))?;
            check_headers(&host.headers, &here.key("headers"))?;
            check_timeout(host.request_timeout, &here.key("request_timeout"))?;
            if !host.password.is_empty() && host.username.is_empty() {
                return Err(Invalid::new(
                    here.key("password"),
                    "is set without `username`",
                ));
            }
            for (i, m) in host.mirrors.iter().enumerate() {
                let mat = here.key("mirrors").index(i);
                check_host(&m.host).map_err(|msg| Invalid::new(mat.key("host"), msg))?;
                check_headers(&m.headers, &mat.key("headers"))?;
                check_timeout(m.request_timeout, &mat.key("request_timeout"))?;
            }
        }
        Ok(())
    }
}

fn check_timeout(t: Option<Duration>, at: &KeyPath) -> Result<(), Invalid> {
    match t {
        Some(d) if d.is_zero() => Err(Invalid::new(at.clone(), "must be greater than 0s")),
        _ => Ok(()),
    }
}

/// Checks a "HOST[:PORT]" string: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// optionally with a port; no scheme, path, user info or whitespace.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if host.contains("://") {
        return Err(format!(
            "{host:?} must be HOST[:PORT] without a scheme; use `insecure = true` for plain HTTP"
        ));
    }
    if host.contains(['/', '@', '?', '#']) || host.chars().any(char::is_whitespace) {
        return Err(format!(
            "{host:?} must be HOST[:PORT] (no path, user info or spaces)"
        ));
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{host:?}: unterminated IPv6 address"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?}: invalid IPv6 address"))?;
        match after {
            "" => (None, None),
            p if p.starts_with(':') => (None, Some(&p[1..])),
            _ => return Err(format!("{host:?}: unexpected text after IPv6 address")),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{host:?}: invalid port {p:?}")),
        }
    }
    if let Some(n) = name {
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            return Err(format!("{host:?}: invalid host name"));
        }
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>, at: &KeyPath) -> Result<(), Invalid> {
    for (name, value) in headers {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(Invalid::new(at.key(name), "invalid HTTP header name"));
        }
        if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("host") {
            return Err(Invalid::new(
                at.key(name),
                "cannot be set here (use credentials keys for authorization)",
            ));
        }
        if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
            return Err(Invalid::new(
                at.key(name),
                "invalid HTTP header value (printable ASCII only)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        for ok in [
            "docker.io",
            "localhost:5000",
            "10.0.0.5:443",
            "[::1]:5000",
            "a-b.c",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://x", "x/y", "x:0", "x:99999", "-x", "a..b", "[::1", "u@h", "",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let h = HostConfig {
            username: "me".into(),
            password: Secret::new("hunter2"),
            identity_token: Secret::new("tok-123"),
            ..Default::default()
        };
        let dbg = format!("{h:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("tok-123"),
            "{dbg}"
        );
        assert!(dbg.contains("<redacted>"));
    }
}
