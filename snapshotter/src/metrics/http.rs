//! The metrics endpoint: HTTP/1.1 on `metrics_address`, `GET /metrics` answers the
//! exposition text, anything else 404 (405 for other methods). Connections are served
//! on the daemon's runtime until the shutdown future resolves.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::DaemonMetrics;

/// OpenMetrics text content type (what `prometheus_client`'s text encoder writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint on {addr}: {source}")]
pub struct MetricsServeError {
    /// The configured address.
    pub addr: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn respond(metrics: &DaemonMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, metrics.encode())
        }
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A bound metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<DaemonMetrics>,
}

impl MetricsServer {
    /// Binds `addr` (`IP:PORT`; port 0 picks one). Must be called inside a tokio runtime.
    pub async fn bind(addr: &str, metrics: Arc<DaemonMetrics>) -> Result<Self, MetricsServeError> {
        let err = |source| MetricsServeError {
            addr: addr.to_string(),
            source,
        };
        let parsed: SocketAddr = addr
            .parse()
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = TcpListener::bind(parsed).await.map_err(err)?;
        Ok(MetricsServer { listener, metrics })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                () = &mut shutdown => return,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let r = respond(&metrics, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_and_404s_elsewhere() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let metrics = Arc::new(DaemonMetrics::new(None));
        metrics
            .ops()
            .observe("usage", "ok", std::time::Duration::from_millis(1));
        let server = rt
            .block_on(MetricsServer::bind("127.0.0.1:0", metrics))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(server.serve(async {
            let _ = rx.await;
        }));
        let ok = get(addr, "/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(
            ok.contains(
                "starling_snapshot_operation_duration_seconds_count{op=\"usage\",code=\"ok\"} 1"
            ),
            "{ok}"
        );
        let nf = get(addr, "/");
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let _ = tx.send(());
        rt.block_on(task).unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "listener closed"
        );
    }

    #[test]
    fn bad_address_is_named() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = Arc::new(DaemonMetrics::new(None));
        let e = rt
            .block_on(MetricsServer::bind("nonsense", m))
            .err()
            .unwrap();
        assert!(e.to_string().contains("nonsense"), "{e}");
    }
}
