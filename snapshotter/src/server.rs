//! Serving the snapshots API on a unix socket: the socket is root-only (directory 0700
//! when we create it, socket 0600), a stale socket of a dead daemon is replaced, a live
//! one is an error; serving stops when the shutdown future resolves (in-flight calls get
//! [`DRAIN_GRACE`] to finish) and the socket file is removed. Connections accept any
//! HTTP/2 `:authority` (see [`crate::authority`]).

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic::transport::Server;
use nix::sys::stat::{umask, Mode};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::authority::AnyAuthority;

use crate::service::Service;
use crate::Snapshots;

/// How long in-flight calls may run after shutdown was asked for.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Failures to set up or run the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file system step on the socket path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Another process is serving on the socket.
    #[error("{} is in use by a running process (another starling daemon?)", .0.display())]
    InUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] containerd_snapshots::tonic::transport::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A bound, root-only listening socket; the file is removed on drop.
pub struct Socket {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// (dev, ino) of the socket file we created.
    inode: (u64, u64),
}

impl Socket {
    /// Binds `path` (creating its directory 0700 if missing, replacing a stale socket).
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Socket, ServeError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err("create socket directory", dir))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServeError::InUse(path.to_path_buf()));
                }
                tracing::info!(path = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
            }
            Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect socket path", path)(e)),
        }
        // Create the socket 0600 from the start (no window with a wider mode).
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(io_err("bind", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod socket", path))?;
        let md = std::fs::symlink_metadata(path).map_err(io_err("inspect socket", path))?;
        Ok(Socket {
            listener: Some(listener),
            path: path.to_path_buf(),
            inode: (md.dev(), md.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, for a server other than the snapshots API (once); the socket file
    /// is still removed when `self` is dropped.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Only remove the file if it is still ours (not replaced by a newer daemon).
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|md| (md.dev(), md.ino()) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `core` on `socket` until `shutdown` resolves, then drains in-flight calls for
/// at most [`DRAIN_GRACE`].
pub async fn serve(
    core: Arc<Snapshots>,
    socket: Socket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_service(Service::new(core), socket, shutdown).await
}

/// [`serve`] for a given service (e.g. one recording metrics).
pub async fn serve_service(
    service: Service,
    mut socket: Socket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = socket.listener.take().expect("socket is served once");
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = asked_tx.send(());
    };
    let server = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(service)))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|conn| conn.map(AnyAuthority::new)),
            signal,
        );
    let deadline = async move {
        match asked_rx.await {
            Ok(()) => tokio::time::sleep(DRAIN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!("calls still running {DRAIN_GRACE:?} after shutdown; closing anyway"),
    }
    drop(socket);
    Ok(())
}
