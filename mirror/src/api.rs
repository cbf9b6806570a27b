//! The requests the mirror answers, parsed and checked before anything is asked upstream:
//! `GET /v2/`, `GET|HEAD /v2/<name>/manifests/<reference>`, `GET|HEAD
//! /v2/<name>/blobs/<digest>` (sha256), `GET /metrics`; the upstream host from the `ns`
//! query parameter containerd and starling add for mirrors. Repository names follow the
//! distribution spec's grammar (no `..`, no empty or upper-case parts), so nothing a client
//! sends can name a path outside a repository.

use std::sync::LazyLock;

use regex::Regex;

/// Longest repository name accepted.
const MAX_NAME: usize = 255;

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("valid regex")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("valid regex"));
static SHA256: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sha256:[0-9a-f]{64}$").expect("valid regex"));
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
        .expect("valid regex")
});

/// A request the mirror answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/metrics`.
    Metrics,
    /// A manifest by tag or digest.
    Manifest {
        /// Repository name.
        name: String,
        /// Tag or digest.
        reference: String,
        /// Upstream host named by the request.
        ns: Option<String>,
    },
    /// A blob by digest.
    Blob {
        /// Repository name.
        name: String,
        /// `sha256:<hex>`.
        digest: String,
        /// Upstream host named by the request.
        ns: Option<String>,
    },
}

/// A request the mirror does not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Not a path of the read side of the distribution API.
    #[error("not found: {0} is not a path this mirror serves (/v2/, /v2/NAME/manifests/REF, /v2/NAME/blobs/DIGEST, /metrics)")]
    UnknownPath(String),
    /// A repository name outside the grammar.
    #[error("invalid repository name {0:?}: lower-case parts of letters and digits separated by '/', '.', '_' or '-'")]
    Name(String),
    /// A tag or digest outside the grammar.
    #[error("invalid manifest reference {0:?}: a tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}) or a digest (ALGORITHM:HEX)")]
    Reference(String),
    /// A blob digest that is not sha256.
    #[error("invalid blob digest {0:?}: expected sha256: and 64 lower-case hex digits")]
    Digest(String),
    /// An `ns` that is not a host name.
    #[error("invalid ns query parameter {0:?}: expected a registry host (HOST or HOST:PORT)")]
    Ns(String),
}

impl ApiError {
    /// The distribution API error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownPath(_) => "NOT_FOUND",
            ApiError::Name(_) => "NAME_INVALID",
            ApiError::Reference(_) => "MANIFEST_INVALID",
            ApiError::Digest(_) => "DIGEST_INVALID",
            ApiError::Ns(_) => "NAME_INVALID",
        }
    }

    /// True for 404, else 400.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::UnknownPath(_))
    }
}

/// Parses a request's path and query.
pub fn route(path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    if path == "/metrics" {
        return Ok(Route::Metrics);
    }
    let unknown = || ApiError::UnknownPath(path.chars().take(200).collect());
    let rest = path.strip_prefix("/v2/").ok_or_else(unknown)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 3 {
        return Err(unknown());
    }
    let (name, tail) = parts.split_at(parts.len() - 2);
    let name = name.join("/");
    let (kind, object) = (tail[0], tail[1]);
    if !matches!(kind, "manifests" | "blobs") {
        return Err(unknown());
    }
    if name.len() > MAX_NAME || !NAME.is_match(&name) {
        return Err(ApiError::Name(name.chars().take(300).collect()));
    }
    let ns = ns(query)?;
    if kind == "blobs" {
        if !SHA256.is_match(object) {
            return Err(ApiError::Digest(object.chars().take(200).collect()));
        }
        return Ok(Route::Blob {
            name,
            digest: object.to_string(),
            ns,
        });
    }
    let digest_like = object.contains(':');
    let ok = if digest_like {
        object.parse::<oci_spec::image::Digest>().is_ok()
    } else {
        TAG.is_match(object)
    };
    if !ok {
        return Err(ApiError::Reference(object.chars().take(200).collect()));
    }
    Ok(Route::Manifest {
        name,
        reference: object.to_string(),
        ns,
    })
}

/// The `ns` query parameter, percent-decoded and checked.
fn ns(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = query else {
        return Ok(None);
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "ns" {
            continue;
        }
        let decoded =
            percent_decode(v).ok_or_else(|| ApiError::Ns(v.chars().take(200).collect()))?;
        if decoded.len() > 255 || !HOST.is_match(&decoded) {
            return Err(ApiError::Ns(decoded.chars().take(200).collect()));
        }
        return Ok(Some(decoded));
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_parse() {
        assert_eq!(route("/v2/", None).unwrap(), Route::Base);
        assert_eq!(route("/metrics", None).unwrap(), Route::Metrics);
        assert_eq!(
            route(
                &format!("/v2/library/busybox/blobs/{D}"),
                Some("ns=10.0.0.5%3A5000")
            )
            .unwrap(),
            Route::Blob {
                name: "library/busybox".into(),
                digest: D.into(),
                ns: Some("10.0.0.5:5000".into())
            }
        );
        assert_eq!(
            route("/v2/a/b-c/manifests/v1.2", Some("x=1&ns=docker.io")).unwrap(),
            Route::Manifest {
                name: "a/b-c".into(),
                reference: "v1.2".into(),
                ns: Some("docker.io".into())
            }
        );
        // a repository may itself be called "blobs"
        assert!(matches!(
            route(&format!("/v2/x/blobs/blobs/{D}"), None).unwrap(),
            Route::Blob { name, .. } if name == "x/blobs"
        ));
        assert!(matches!(
            route(&format!("/v2/x/manifests/{D}"), None).unwrap(),
            Route::Manifest { reference, .. } if reference == D
        ));
    }

    #[test]
    fn bad_requests_are_named() {
        let bad = |p: &str, q: Option<&str>| route(p, q).unwrap_err();
        assert!(bad("/v3/x", None).is_not_found());
        assert!(bad("/v2/x/tags/list", None).is_not_found());
        assert!(bad("/v2/x/blobs", None).is_not_found());
        assert_eq!(
            bad(&format!("/v2/../etc/blobs/{D}"), None).code(),
            "NAME_INVALID"
        );
        assert_eq!(
            bad(&format!("/v2/a//b/blobs/{D}"), None).code(),
            "NAME_INVALID"
        );
        assert_eq!(
            bad(&format!("/v2/A/blobs/{D}"), None).code(),
            "NAME_INVALID"
        );
        assert_eq!(
            bad(&format!("/v2/a%2F..%2Fb/blobs/{D}"), None).code(),
            "NAME_INVALID"
        );
        assert_eq!(bad("/v2/a/blobs/sha256:abc", None).code(), "DIGEST_INVALID");
        assert_eq!(bad("/v2/a/blobs/md5:abc", None).code(), "DIGEST_INVALID");
        assert_eq!(bad("/v2/a/manifests/..", None).code(), "MANIFEST_INVALID");
        assert_eq!(
            bad("/v2/a/manifests/sha256:zz", None).code(),
            "MANIFEST_INVALID"
        );
        for q in [
            "ns=a/b",
            "ns=%2e%2e%2Fx",
            "ns=",
            "ns=%zz",
            "ns=host:99999999",
        ] {
            let e = bad(&format!("/v2/a/blobs/{D}"), Some(q));
            assert!(matches!(e, ApiError::Ns(_)), "{q}: {e}");
        }
        let long = "a/".repeat(200) + "a";
        assert!(matches!(
            bad(&format!("/v2/{long}/blobs/{D}"), None),
            ApiError::Name(_)
        ));
    }
}
