//! The CRI API (`runtime.v1` of k8s.io/cri-api: messages, clients and servers, from the
//! `k8s-cri` crate) and connecting to a CRI endpoint on a unix socket.

use std::path::{Path, PathBuf};

pub use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the gRPC server on unix socket `socket` that connects on first use and
/// reconnects after failures (the server may start later or restart: calls made meanwhile
/// fail with `Unavailable`). `socket` may be given as `unix:///path` like the kubelet's
/// endpoint flags.
pub fn channel(socket: &Path) -> Channel {
    let path = socket_path(socket);
    // The URI is required by tonic but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://cri.invalid");
    let dial = path.clone();
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(dial).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    }))
}

/// `unix:///run/x.sock` → `/run/x.sock`; a plain path is kept.
pub fn socket_path(socket: &Path) -> PathBuf {
    match socket.to_str().and_then(|s| s.strip_prefix("unix://")) {
        Some(rest) => PathBuf::from(rest),
        None => socket.to_path_buf(),
    }
}

/// A client of the runtime service on `socket` ([`channel`]).
pub fn runtime_client(socket: &Path) -> runtime_service_client::RuntimeServiceClient<Channel> {
    runtime_service_client::RuntimeServiceClient::new(channel(socket))
}

/// A client of the image service on `socket` ([`channel`]).
pub fn image_client(socket: &Path) -> image_service_client::ImageServiceClient<Channel> {
    image_service_client::ImageServiceClient::new(channel(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_style_endpoints_become_paths() {
        assert_eq!(
            socket_path(Path::new("unix:///run/starling/cri.sock")),
            Path::new("/run/starling/cri.sock")
        );
        assert_eq!(
            socket_path(Path::new("/run/x.sock")),
            Path::new("/run/x.sock")
        );
    }
}
