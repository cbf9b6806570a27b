//! Responses: bodies (whole or streamed), registry JSON errors
//! (`{"errors":[{"code","message"}]}`) and the status and code an upstream failure maps to
//! (404 and 401/403 passed through as such, a timeout 504, other failures 502).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use registry::RegistryError;

use crate::fetch::BlockError;

/// A response body: whole, or blocks as they arrive.
pub type Body = UnsyncBoxBody<Bytes, BlockError>;

/// A whole body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with `status`, `content_type` and a whole body.
pub fn with_body(status: StatusCode, content_type: &str, data: impl Into<Bytes>) -> Response<Body> {
    let data = data.into();
    let len = data.len();
    let mut r = Response::new(full(data));
    *r.status_mut() = status;
    set(&mut r, CONTENT_TYPE, content_type);
    set(&mut r, CONTENT_LENGTH, &len.to_string());
    r
}

/// Sets a header (values that are not valid header text are left out).
pub fn set(r: &mut Response<Body>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// A registry JSON error.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    with_body(status, "application/json", body.to_string())
}

/// The response for an upstream failure about a blob (`blob`) or a manifest.
pub fn upstream_error(e: &RegistryError, blob: bool) -> Response<Body> {
    let (status, code) = match e {
        RegistryError::NotFound { .. } if blob => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        RegistryError::NotFound { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        RegistryError::Unauthorized { status: 403, .. } => (StatusCode::FORBIDDEN, "DENIED"),
        RegistryError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        RegistryError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
        RegistryError::Status { status, .. } if (400..500).contains(status) => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            "UNKNOWN",
        ),
        _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
    };
    error(status, code, &format!("upstream: {e}"))
}

/// The response for a block failure before anything was sent.
pub fn block_error(e: &BlockError) -> Response<Body> {
    match e {
        BlockError::Upstream(u) => upstream_error(u, true),
        other => error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::Target;

    #[test]
    fn upstream_failures_map_to_statuses() {
        let t = Target::tag("h", "r", "t");
        let nf = RegistryError::NotFound {
            target: t.clone(),
            endpoint: "h".into(),
        };
        assert_eq!(upstream_error(&nf, true).status(), StatusCode::NOT_FOUND);
        let un = RegistryError::Unauthorized {
            target: t.clone(),
            endpoint: "h".into(),
            status: 401,
            reason: "no credentials".into(),
        };
        assert_eq!(
            upstream_error(&un, false).status(),
            StatusCode::UNAUTHORIZED
        );
        let net = RegistryError::Network {
            target: t,
            endpoint: "h".into(),
            cause: "refused".into(),
        };
        assert_eq!(upstream_error(&net, true).status(), StatusCode::BAD_GATEWAY);
        let r = error(StatusCode::BAD_REQUEST, "NAME_INVALID", "bad \"name\"");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
