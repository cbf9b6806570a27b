//! `docker-registry` (distribution v2.8) YAML configuration: storage on a directory we own,
//! a listen address, optional basic (htpasswd, bcrypt) or token auth, and raw passthrough.

use std::path::{Path, PathBuf};

/// How clients must authenticate.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// Anonymous access.
    #[default]
    None,
    /// HTTP basic auth against an htpasswd file (bcrypt) with one user.
    Htpasswd {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Bearer-token auth (`auth.token`): clients get tokens from the test's own token server.
    Token {
        /// Token endpoint URL (`realm`).
        realm: String,
        /// `service` value clients must request.
        service: String,
        /// `issuer` the tokens carry.
        issuer: String,
        /// PEM bundle of the certificate(s) tokens are signed with.
        rootcertbundle: PathBuf,
    },
    /// Raw YAML placed under `auth:` (indented by the caller with two spaces per level,
    /// e.g. `"  silly:\n    realm: x\n    service: y\n"`).
    Raw(String),
}

/// Options of a registry instance.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Authentication.
    pub auth: RegistryAuth,
    /// Storage directory; default `<workdir>/registry/data`. Two registries may share one
    /// (e.g. the loopback one and the one behind the shaped link).
    pub storage: Option<PathBuf>,
    /// Log level (`info` logs one line per request, needed by the access log).
    pub log_level: String,
    /// Extra top-level YAML appended verbatim (e.g. `"notifications:\n  ...\n"`).
    pub extra_yaml: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            auth: RegistryAuth::None,
            storage: None,
            log_level: "info".into(),
            extra_yaml: String::new(),
        }
    }
}

impl RegistryOptions {
    /// Basic auth with one user.
    pub fn htpasswd(user: &str, password: &str) -> Self {
        RegistryOptions {
            auth: RegistryAuth::Htpasswd {
                user: user.into(),
                password: password.into(),
            },
            ..Default::default()
        }
    }
}

/// YAML double-quoted string.
pub(crate) fn yaml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Renders the config. `htpasswd_file` is where the htpasswd file was written (for
/// [`RegistryAuth::Htpasswd`]); `secret` is the HTTP secret shared by registries on the same
/// storage (upload state is signed with it).
pub(crate) fn render(
    opts: &RegistryOptions,
    storage: &Path,
    addr: &str,
    secret: &str,
    htpasswd_file: &Path,
) -> String {
    let mut y = format!(
        "version: 0.1\n\
         log:\n  level: {level}\n  fields: {{service: registry}}\n\
         storage:\n  cache: {{blobdescriptor: inmemory}}\n  filesystem: {{rootdirectory: {storage}}}\n  \
         delete: {{enabled: true}}\n  redirect: {{disable: true}}\n  maintenance:\n    uploadpurging: {{enabled: false}}\n\
         http:\n  addr: {addr}\n  secret: {secret}\n  headers:\n    X-Content-Type-Options: [nosniff]\n\
         health:\n  storagedriver: {{enabled: false}}\n",
        level = opts.log_level,
        storage = yaml_str(&storage.to_string_lossy()),
        addr = yaml_str(addr),
        secret = yaml_str(secret),
    );
    match &opts.auth {
        RegistryAuth::None => {}
        RegistryAuth::Htpasswd { .. } => {
            y.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: starling-test\n    path: {}\n",
                yaml_str(&htpasswd_file.to_string_lossy())
            ));
        }
        RegistryAuth::Token {
            realm,
            service,
            issuer,
            rootcertbundle,
        } => {
            y.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                yaml_str(realm),
                yaml_str(service),
                yaml_str(issuer),
                yaml_str(&rootcertbundle.to_string_lossy())
            ));
        }
        RegistryAuth::Raw(raw) => {
            y.push_str("auth:\n");
            y.push_str(raw);
            if !raw.ends_with('\n') {
                y.push('\n');
            }
        }
    }
    y.push_str(&opts.extra_yaml);
    y
}

/// One htpasswd line (`user:$2a$...`), bcrypt as `docker-registry` requires.
pub(crate) fn htpasswd_line(user: &str, password: &str) -> Result<String, bcrypt::BcryptError> {
    let h = bcrypt::hash_with_result(password, 5)?;
    Ok(format!(
        "{user}:{}\n",
        h.format_for_version(bcrypt::Version::TwoA)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_plain_and_auth_configs() {
        let y = render(
            &RegistryOptions::default(),
            Path::new("/s"),
            "127.0.0.1:0",
            "k",
            Path::new("/h"),
        );
        assert!(y.contains("rootdirectory: \"/s\""));
        assert!(y.contains("addr: \"127.0.0.1:0\""));
        assert!(!y.contains("auth:"));
        let y = render(
            &RegistryOptions::htpasswd("u", "p"),
            Path::new("/s"),
            "a",
            "k",
            Path::new("/h"),
        );
        assert!(y.contains("htpasswd:\n    realm: starling-test\n    path: \"/h\""));
        let t = RegistryOptions {
            auth: RegistryAuth::Token {
                realm: "http://127.0.0.1:1/token".into(),
                service: "reg".into(),
                issuer: "iss".into(),
                rootcertbundle: "/c.pem".into(),
            },
            ..Default::default()
        };
        let y = render(&t, Path::new("/s"), "a", "k", Path::new("/h"));
        assert!(y.contains("token:\n    realm: \"http://127.0.0.1:1/token\""));
    }

    #[test]
    fn htpasswd_is_bcrypt_and_verifies() {
        let l = htpasswd_line("alice", "s3cret").unwrap();
        let (u, h) = l.trim_end().split_once(':').unwrap();
        assert_eq!(u, "alice");
        assert!(h.starts_with("$2a$05$"), "{h}");
        assert!(bcrypt::verify("s3cret", h).unwrap());
    }
}
