//! One run of a credential provider plugin, the kubelet's exec protocol: a
//! `CredentialProviderRequest` (`{"apiVersion", "kind", "image"}`) as JSON on its stdin, a
//! `CredentialProviderResponse` (`cacheKeyType`, `cacheDuration`, `auth: {pattern:
//! {username, password}}`) as JSON on its stdout, in the same apiVersion. The plugin gets
//! the daemon's environment plus the configured variables, and is killed when it takes
//! longer than the timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use config::Secret;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::pattern::ImagePattern;
use crate::auth::PodAuth;

/// Most bytes of a plugin's answer read.
const MAX_OUTPUT: usize = 1 << 20;
/// Bytes of a failing plugin's stderr quoted in the error.
const STDERR_TAIL: usize = 400;

/// A plugin run that gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The plugin could not be started.
    #[error("credential provider {}: cannot run it: {source}", program.display())]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the plugin failed.
    #[error("credential provider {}: {what}: {source}", program.display())]
    Io {
        /// The executable.
        program: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plugin did not exit in time (it was killed).
    #[error("credential provider {}: no answer within {after:?}; killed", program.display())]
    Timeout {
        /// The executable.
        program: PathBuf,
        /// The limit.
        after: Duration,
    },
    /// The plugin exited with an error.
    #[error("credential provider {}: {status}: {stderr}", program.display())]
    Failed {
        /// The executable.
        program: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// The answer is not a CredentialProviderResponse we can use.
    #[error("credential provider {}: bad answer: {reason}", program.display())]
    BadAnswer {
        /// The executable.
        program: PathBuf,
        /// What is wrong (never a credential).
        reason: String,
    },
}

/// What the answer may be cached under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKeyType {
    /// The image (host + repository) asked about.
    Image,
    /// The image's registry host.
    Registry,
    /// Every image the plugin matches.
    Global,
}

/// A plugin's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// What it may be cached under.
    pub cache_key_type: CacheKeyType,
    /// How long it may be cached (`None`: the plugin's default; zero: not at all).
    pub cache_duration: Option<Duration>,
    /// Credentials by image pattern.
    pub auth: Vec<(ImagePattern, PodAuth)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: String,
    kind: String,
    cache_key_type: String,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: Option<std::collections::BTreeMap<String, ResponseAuth>>,
}

#[derive(Deserialize)]
struct ResponseAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// How to run one plugin.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The executable.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Variables added to the environment.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// `apiVersion` of the request (and the answer).
    pub api_version: &'a str,
    /// Kill it after this long.
    pub timeout: Duration,
}

/// Runs the plugin for `image` (`HOST[:PORT]/REPOSITORY`).
pub async fn run(inv: &Invocation<'_>, image: &str) -> Result<Answer, ExecError> {
    let program = inv.program.to_path_buf();
    let io = |what: &'static str| {
        let program = program.clone();
        move |source| ExecError::Io {
            program,
            what,
            source,
        }
    };
    let mut child = tokio::process::Command::new(inv.program)
        .args(inv.args)
        .envs(inv.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
    let request = serde_json::json!({
        "apiVersion": inv.api_version,
        "kind": "CredentialProviderRequest",
        "image": image,
    });
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let work = async {
        // A plugin that exits without reading its stdin is not an error by itself.
        let _ = stdin.write_all(request.to_string().as_bytes()).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(inv.timeout, work).await {
        Ok(r) => r.map_err(io("wait for it"))?,
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => {
            return Err(ExecError::Timeout {
                program,
                after: inv.timeout,
            })
        }
    };
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let text = text.trim();
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        return Err(ExecError::Failed {
            program,
            status: output.status,
            stderr: text[start..].to_string(),
        });
    }
    parse_answer(&output.stdout, inv.api_version)
        .map_err(|reason| ExecError::BadAnswer { program, reason })
}

/// Reads a CredentialProviderResponse in `api_version`.
pub fn parse_answer(stdout: &[u8], api_version: &str) -> Result<Answer, String> {
    if stdout.len() > MAX_OUTPUT {
        return Err(format!("more than {MAX_OUTPUT} bytes"));
    }
    let r: Response = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "not a CredentialProviderResponse (JSON line {}, column {}: {})",
            e.line(),
            e.column(),
            classify(&e)
        )
    })?;
    if r.kind != "CredentialProviderResponse" {
        return Err(format!(
            "kind is {:?}, not CredentialProviderResponse",
            r.kind
        ));
    }
    if r.api_version != api_version {
        return Err(format!(
            "apiVersion is {:?}, the request's was {api_version:?}",
            r.api_version
        ));
    }
    let cache_key_type = match r.cache_key_type.as_str() {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => {
            return Err(format!(
                "cacheKeyType {other:?} is not Image, Registry or Global"
            ))
        }
    };
    let cache_duration = match r.cache_duration.as_deref() {
        None | Some("") => None,
        Some(d) => Some(parse_go_duration(d).map_err(|e| format!("cacheDuration: {e}"))?),
    };
    let mut auth = Vec::new();
    for (key, a) in r.auth.unwrap_or_default() {
        let pattern = ImagePattern::parse(&key).map_err(|e| format!("auth key: {e}"))?;
        auth.push((
            pattern,
            PodAuth::Basic {
                username: a.username,
                password: Secret::new(a.password),
            },
        ));
    }
    Ok(Answer {
        cache_key_type,
        cache_duration,
        auth,
    })
}

fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected field type or missing field",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// A Go `time.Duration` string as Kubernetes writes `metav1.Duration` (`"1h2m3.5s"`,
/// `"300ms"`, `"0s"`, `"0"`).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as \"5m0s\"");
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m0s"), Ok(Duration::from_secs(300)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Ok(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "-1s", "1x", "s", "1h-2m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_checked() {
        let v1 = "credentialprovider.kubelet.k8s.io/v1";
        let ok = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse",
            "cacheKeyType":"Registry","cacheDuration":"10m0s",
            "auth":{"reg.io:5000":{"username":"u","password":"hunter2"}}}"#;
        let a = parse_answer(ok, v1).unwrap();
        assert_eq!(a.cache_key_type, CacheKeyType::Registry);
        assert_eq!(a.cache_duration, Some(Duration::from_secs(600)));
        assert_eq!(a.auth.len(), 1);
        assert!(a.auth[0].0.matches("reg.io:5000/app"));
        let other_version = parse_answer(ok, "credentialprovider.kubelet.k8s.io/v1beta1");
        assert!(other_version.unwrap_err().contains("apiVersion"));
        let bad_key = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Pod"}"#;
        assert!(parse_answer(bad_key, v1).unwrap_err().contains("Pod"));
        let e = parse_answer(b"{\"password\": \"hunter2\"", v1).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let none = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":null}"#;
        assert!(parse_answer(none, v1).unwrap().auth.is_empty());
    }
}
