//! Minimal blocking HTTP client for the harness (readiness checks, manifests, timed blob
//! downloads), on `ureq` without TLS: every registry in the tests speaks plain HTTP.

use std::io::Read;
use std::time::Duration;

use crate::error::{Error, Result};

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into()
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn http_err(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Http {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// GET `url` with extra headers; any status is returned (not an error). Body capped at 1 GiB.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request("GET", url, headers, Duration::from_secs(300))
}

/// HEAD `url`.
pub fn head(url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request("HEAD", url, headers, Duration::from_secs(60))
}

fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let a = agent(timeout);
    let mut resp = if method == "HEAD" {
        let mut r = a.head(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.call()
    } else {
        let mut r = a.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.call()
    }
    .map_err(|e| http_err(url, e))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| http_err(url, e))?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// GET `url`, discarding the body as it streams; returns (status, body bytes read).
pub fn get_discard(url: &str, headers: &[(&str, &str)]) -> Result<(u16, u64)> {
    let mut r = agent(Duration::from_secs(600)).get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.call().map_err(|e| http_err(url, e))?;
    let status = resp.status().as_u16();
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => return Err(http_err(url, e)),
        }
    }
    Ok((status, n))
}

/// True when `url` answers at all (any status) within a short timeout.
pub fn answers(url: &str) -> bool {
    request("GET", url, &[], Duration::from_secs(2)).is_ok()
}
