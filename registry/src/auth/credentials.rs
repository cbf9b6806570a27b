//! Where registry credentials come from: the `[registry.hosts."H"]` config keys first, then the
//! docker client config file (`auths.H.auth` base64 `user:pass`, `username`/`password`,
//! `identitytoken`), re-read whenever its mtime or size changes. Credential helpers
//! (`credsStore`, `credHelpers`) are not run. A [`super::CredentialSource`] the daemon plugs
//! in is asked before both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use config::Secret;
use parking_lot::Mutex;

use crate::RegistryError;

/// Credentials for a registry host (or one repository on it).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password (basic auth, or basic auth to the token endpoint).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// An OAuth2 refresh token for the token endpoint.
    IdentityToken(Secret),
    /// A bearer token sent to the registry as it is (no token endpoint involved).
    RegistryToken(Secret),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// Looks up credentials by registry host.
pub(crate) struct CredentialStore {
    configured: HashMap<String, Credentials>,
    docker_config: Option<PathBuf>,
    cached: Mutex<Option<Loaded>>,
}

struct Loaded {
    stamp: (SystemTime, u64),
    auths: HashMap<String, Credentials>,
}

impl CredentialStore {
    /// Credentials from the config file's host sections and the docker config path
    /// (`docker_config`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub(crate) fn new(registry: &config::RegistryConfig) -> Self {
        let mut configured = HashMap::new();
        for (host, h) in &registry.hosts {
            let c = if !h.identity_token.is_empty() {
                Some(Credentials::IdentityToken(h.identity_token.clone()))
            } else if !h.username.is_empty() {
                Some(Credentials::Basic {
                    username: h.username.clone(),
                    password: h.password.clone(),
                })
            } else {
                None
            };
            if let Some(c) = c {
                configured.insert(normalize_host(host), c);
            }
        }
        let docker_config = if !registry.docker_config.as_os_str().is_empty() {
            Some(registry.docker_config.clone())
        } else if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            Some(PathBuf::from(d).join("config.json"))
        } else {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
        };
        CredentialStore {
            configured,
            docker_config,
            cached: Mutex::new(None),
        }
    }

    /// Credentials for `host` (as written in references, or a mirror host), if any.
    pub(crate) fn lookup(&self, host: &str) -> Result<Option<Credentials>, RegistryError> {
        let host = normalize_host(host);
        if let Some(c) = self.configured.get(&host) {
            return Ok(Some(c.clone()));
        }
        let Some(path) = &self.docker_config else {
            return Ok(None);
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *self.cached.lock() = None;
                return Ok(None);
            }
            Err(e) => return Err(cred_err(path, &format!("cannot stat: {e}"))),
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cached = self.cached.lock();
        if cached.as_ref().map(|c| c.stamp) != Some(stamp) {
            let auths = load_docker_config(path)?;
            tracing::debug!(path = %path.display(), hosts = auths.len(), "read docker credentials");
            *cached = Some(Loaded { stamp, auths });
        }
        Ok(cached.as_ref().and_then(|c| c.auths.get(&host).cloned()))
    }
}

fn cred_err(path: &Path, reason: &str) -> RegistryError {
    RegistryError::Credentials {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/v2/` → `h:5000`.
pub(crate) fn normalize_host(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            super::super::reference::DOCKER_HUB.to_string()
        }
        _ => k,
    }
}

/// Parses the `auths` of a docker config file. Error messages never quote values.
fn load_docker_config(path: &Path) -> Result<HashMap<String, Credentials>, RegistryError> {
    let text = std::fs::read(path).map_err(|e| cred_err(path, &format!("cannot read: {e}")))?;
    let doc: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        cred_err(
            path,
            &format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        )
    })?;
    let mut out = HashMap::new();
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(out);
    };
    for (key, entry) in auths {
        let host = normalize_host(key);
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let creds = if let Some(tok) = field("identitytoken") {
            Some(Credentials::IdentityToken(Secret::new(tok)))
        } else if let Some(auth) = field("auth") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| cred_err(path, &format!("auths.{key}.auth is not valid base64")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| cred_err(path, &format!("auths.{key}.auth is not UTF-8")))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                cred_err(path, &format!("auths.{key}.auth is not \"user:password\""))
            })?;
            Some(Credentials::Basic {
                username: u.to_string(),
                password: Secret::new(p),
            })
        } else {
            field("username").map(|u| Credentials::Basic {
                username: u.to_string(),
                password: Secret::new(field("password").unwrap_or("")),
            })
        };
        if let Some(c) = creds {
            out.insert(host, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path: &Path) -> CredentialStore {
        CredentialStore::new(&config::RegistryConfig {
            docker_config: path.to_path_buf(),
            ..Default::default()
        })
    }

    #[test]
    fn reads_docker_config_forms_and_rereads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pw1");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "reg:5000":{{"username":"bob","password":"pw2"}},
                "tok.io":{{"identitytoken":"rt"}}}}}}"#
            ),
        )
        .unwrap();
        let s = store(&p);
        assert!(matches!(s.lookup("docker.io").unwrap(),
            Some(Credentials::Basic { username, password }) if username == "alice" && password.expose() == "pw1"));
        assert!(matches!(s.lookup("reg:5000").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "bob"));
        assert!(
            matches!(s.lookup("tok.io").unwrap(), Some(Credentials::IdentityToken(t)) if t.expose() == "rt")
        );
        assert_eq!(s.lookup("other").unwrap(), None);
        // Change the file (size changes too, so the mtime granularity does not matter).
        std::fs::write(
            &p,
            r#"{"auths":{"reg:5000":{"username":"carol","password":"pw3-longer"}}}"#,
        )
        .unwrap();
        assert!(matches!(s.lookup("reg:5000").unwrap(),
            Some(Credentials::Basic { username, .. }) if username == "carol"));
        assert_eq!(s.lookup("docker.io").unwrap(), None);
    }

    #[test]
    fn bad_files_fail_without_quoting_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"c2VjcmV0LXZhbHVl"}}}"#).unwrap(); // "secret-value"
        let e = store(&p).lookup("h").unwrap_err().to_string();
        assert!(e.contains("user:password") && !e.contains("secret"), "{e}");
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"hunter2!!"}}"#).unwrap();
        let e = store(&p).lookup("h").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn configured_credentials_win() {
        let mut reg = config::RegistryConfig {
            docker_config: "/nonexistent/config.json".into(),
            ..Default::default()
        };
        reg.hosts.insert(
            "h:1".into(),
            config::HostConfig {
                username: "u".into(),
                password: Secret::new("pw-secret"),
                ..Default::default()
            },
        );
        let s = CredentialStore::new(&reg);
        assert!(matches!(
            s.lookup("h:1").unwrap(),
            Some(Credentials::Basic { .. })
        ));
        assert_eq!(s.lookup("x").unwrap(), None);
        let dbg = format!("{:?}", s.lookup("h:1").unwrap());
        assert!(
            !dbg.contains("pw-secret") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }
}
