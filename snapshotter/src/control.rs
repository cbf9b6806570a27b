//! The daemon's control socket, `<root>/control.sock` (0600): a client writes one request
//! line, `state`, and reads one JSON [`DaemonState`]; then the connection closes. It is what
//! is true at that moment: `starling status` shows the bytes a container just read (the
//! per-layer status files lag up to a second), `starling doctor` the daemon's fallbacks.
//! [`ControlServer`] serves it on the daemon's runtime; [`ask`] is the (blocking) client.

use std::future::Future;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fusefs::status::StatusRecord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::lazy::fallbacks::{self, Fallback};
use crate::lazy::LazyLayers;

/// The socket's file name under the root.
pub const SOCKET: &str = "control.sock";

/// The one request.
pub const STATE: &str = "state";

/// Longest request line read.
const MAX_REQUEST: u64 = 256;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket of the daemon with root `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(SOCKET)
}

/// What the daemon answers to `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonState {
    /// The daemon's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// The root it serves.
    pub root: PathBuf,
    /// The snapshots socket it serves.
    pub address: PathBuf,
    /// Whether lazy layers are on (`[snapshotter] lazy`).
    pub lazy: bool,
    /// Every lazy layer it serves, with its progress now.
    pub layers: Vec<StatusRecord>,
    /// The last layers that fell back to a normal pull, oldest first.
    pub fallbacks: Vec<Fallback>,
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be set up.
    #[error("control socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No daemon answers there (not running, or another root).
    #[error("no daemon answers on {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a daemon state.
    #[error("control socket {path}: unexpected answer: {source}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The daemon's side.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    state: Arc<dyn Fn() -> DaemonState + Send + Sync>,
}

impl ControlServer {
    /// Binds `<root>/control.sock` (a stale file is replaced), 0600. Inside a tokio runtime.
    pub fn bind(
        root: &Path,
        address: &Path,
        lazy: Option<Arc<LazyLayers>>,
    ) -> Result<Self, ControlError> {
        let path = socket_path(root);
        let err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let (root, address) = (root.to_path_buf(), address.to_path_buf());
        let state = Arc::new(move || current_state(&root, &address, lazy.as_deref()));
        Ok(ControlServer {
            listener,
            path,
            state,
        })
    }

    /// Answers requests until `shutdown` resolves, then removes the socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let ControlServer {
            listener,
            path,
            state,
        } = self;
        tokio::pin!(shutdown);
        loop {
            let conn = tokio::select! {
                _ = &mut shutdown => break,
                c = listener.accept() => c,
            };
            match conn {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, state).await {
                            tracing::debug!(error = %e, "control socket request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    state: Arc<dyn Fn() -> DaemonState + Send + Sync>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let body = match line.trim() {
        STATE => {
            // Layer status reads locks of the layers: off the async workers.
            let s = tokio::task::spawn_blocking(move || state())
                .await
                .map_err(std::io::Error::other)?;
            serde_json::to_vec(&s).map_err(std::io::Error::other)?
        }
        other => format!(
            "{{\"error\":{}}}",
            serde_json::Value::String(format!("unknown request {other:?}; send \"{STATE}\""))
        )
        .into_bytes(),
    };
    write.write_all(&body).await?;
    write.shutdown().await
}

fn current_state(root: &Path, address: &Path, lazy: Option<&LazyLayers>) -> DaemonState {
    let pid = std::process::id();
    let now = fallbacks::now();
    let (layers, fallbacks) = match lazy {
        Some(l) => (
            l.mounted()
                .into_iter()
                .map(|m| StatusRecord {
                    mountpoint: m.mountpoint,
                    pid,
                    updated: now,
                    layer: m.status,
                })
                .collect(),
            l.fallbacks(),
        ),
        None => (Vec::new(), fallbacks::read(root).unwrap_or_default()),
    };
    DaemonState {
        pid,
        version: env!("CARGO_PKG_VERSION").to_string(),
        root: root.to_path_buf(),
        address: address.to_path_buf(),
        lazy: lazy.is_some(),
        layers,
        fallbacks,
    }
}

/// Asks the daemon of `root` for its state (blocking; each step bounded by `timeout`).
pub fn ask(root: &Path, timeout: Duration) -> Result<DaemonState, ControlError> {
    let path = socket_path(root);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut s =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ControlError::Connect {
            path: path.clone(),
            source,
        })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{STATE}\n").as_bytes()).map_err(io)?;
    let mut body = Vec::new();
    BufReader::new(s).read_to_end(&mut body).map_err(io)?;
    serde_json::from_slice(&body).map_err(|source| ControlError::Answer {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn answers_state_and_refuses_other_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let root = tmp.path().to_path_buf();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let server = rt.block_on(async {
            ControlServer::bind(&root, Path::new("/run/x.sock"), None).unwrap()
        });
        let mode = std::fs::metadata(socket_path(&root))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let task = rt.spawn(server.serve(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        let state = ask(&root, Duration::from_secs(5)).unwrap();
        assert_eq!(state.pid, std::process::id());
        assert_eq!(state.address, Path::new("/run/x.sock"));
        assert!(!state.lazy && state.layers.is_empty() && state.fallbacks.is_empty());

        let mut s = std::os::unix::net::UnixStream::connect(socket_path(&root)).unwrap();
        s.write_all(b"bogus\n").unwrap();
        let mut text = String::new();
        BufReader::new(s).read_line(&mut text).unwrap();
        assert!(text.contains("unknown request"), "{text}");

        stop_tx.send(true).unwrap();
        rt.block_on(task).unwrap();
        assert!(!socket_path(&root).exists(), "socket removed on stop");
        let e = ask(&root, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ControlError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(SOCKET), "{e}");
    }
}
