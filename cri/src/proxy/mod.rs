//! The CRI image service proxy: serves `runtime.v1.ImageService` (what the kubelet calls on
//! its `--image-service-endpoint`: ImageFsInfo, ListImages, ImageStatus, PullImage,
//! RemoveImage — and any method a newer kubelet adds) and forwards every call byte for
//! byte, metadata included, to containerd's CRI plugin ([`raw`]): fields this build's CRI
//! API does not know reach containerd unchanged.
//!
//! - **PullImage**: the request's `AuthConfig` is kept for the image's registry host and
//!   repository ([`PodCredentials::record`]) *before* the call is forwarded, because
//!   containerd's pull prepares the lazy layers (and starling fetches their TOCs) while
//!   the call runs. If the pull fails, what was kept before is put back. A pull without
//!   credentials leaves the kept ones alone.
//! - **RemoveImage**: after containerd removed the image, the credentials of every
//!   repository of which no image is left (and no pull is running) are forgotten.
//!
//! Credentials are never logged.

mod raw;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use tonic::codegen::http;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::image_service_client::ImageServiceClient;
use crate::api::{self, channel};
use crate::auth::PodAuth;
use crate::credentials::{PodCredentials, Recorded};
use crate::repo::RepoKey;
pub use raw::RawCodec;

/// The gRPC service name.
pub const SERVICE: &str = "runtime.v1.ImageService";
const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";
const REMOVE_IMAGE: &str = "/runtime.v1.ImageService/RemoveImage";

/// Largest message passed either way (the kubelet allows 16 MiB: a node's image list).
pub const MAX_MESSAGE: usize = 16 << 20;

/// The server failed.
#[derive(Debug, thiserror::Error)]
#[error("CRI image service: {0}")]
pub struct ProxyError(#[from] tonic::transport::Error);

/// The image service proxy.
#[derive(Clone)]
pub struct ImageServiceProxy {
    channel: Channel,
    upstream: ImageServiceClient<Channel>,
    pods: Arc<PodCredentials>,
    /// Repositories with a pull running (their credentials are not forgotten meanwhile).
    pulling: Arc<Mutex<HashMap<RepoKey, usize>>>,
}

impl std::fmt::Debug for ImageServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageServiceProxy")
            .field("pods", &self.pods)
            .finish()
    }
}

/// Marks a repository as being pulled for as long as it lives.
struct Pulling {
    map: Arc<Mutex<HashMap<RepoKey, usize>>>,
    key: RepoKey,
}

impl Drop for Pulling {
    fn drop(&mut self) {
        let mut m = self.map.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl ImageServiceProxy {
    /// A proxy to the CRI image service on unix socket `runtime` (containerd's socket),
    /// keeping pull credentials in `pods`. Connects on first use.
    pub fn new(runtime: &Path, pods: Arc<PodCredentials>) -> Self {
        let channel = channel(runtime);
        let upstream = ImageServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        ImageServiceProxy {
            channel,
            upstream,
            pods,
            pulling: Arc::default(),
        }
    }

    /// The credentials it keeps.
    pub fn pods(&self) -> &Arc<PodCredentials> {
        &self.pods
    }

    /// Serves the proxy on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProxyError> {
        tonic::transport::Server::builder()
            .add_service(self)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                shutdown,
            )
            .await?;
        Ok(())
    }

    /// Keeps the credentials of a pull of `image`; `None` when there are none to keep.
    fn record(&self, image: &str, auth: Option<&api::AuthConfig>) -> Option<Recorded> {
        let auth = auth?;
        let key = match RepoKey::from_image(image) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "pull credentials not kept");
                return None;
            }
        };
        let pod_auth = match PodAuth::from_cri(auth, &key.host) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(repository = %key, error = %e, "pull credentials not kept");
                return None;
            }
        };
        match self.pods.record(key.clone(), pod_auth) {
            Ok(r) => {
                tracing::info!(repository = %key, "keeping the pull credentials for lazy layers");
                Some(r)
            }
            Err(e) => {
                tracing::warn!(repository = %key, error = %e,
                    "pull credentials not kept: lazy layers of this image fetch without them");
                None
            }
        }
    }

    /// Forgets the credentials of repositories with no image left (and no pull running).
    async fn forget_unused(&self) {
        let images = match self
            .upstream
            .clone()
            .list_images(api::ListImagesRequest::default())
            .await
        {
            Ok(r) => r.into_inner().images,
            Err(status) => {
                tracing::warn!(error = %status.message(),
                    "cannot list images; keeping every pull credential for now");
                return;
            }
        };
        let mut present = BTreeSet::new();
        for img in &images {
            for name in img.repo_tags.iter().chain(&img.repo_digests) {
                if let Ok(k) = RepoKey::from_image(name) {
                    present.insert(k);
                }
            }
        }
        let pulling = self.pulling.lock().clone();
        match self
            .pods
            .retain(|k| present.contains(k) || pulling.contains_key(k))
        {
            Ok(gone) => {
                for k in gone {
                    tracing::info!(repository = %k, "no image left: pull credentials forgotten");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not forget pull credentials"),
        }
    }

    fn pulling(&self, image: &str) -> Option<Pulling> {
        let key = RepoKey::from_image(image).ok()?;
        *self.pulling.lock().entry(key.clone()).or_default() += 1;
        Some(Pulling {
            map: self.pulling.clone(),
            key,
        })
    }
}

impl ImageServiceProxy {
    /// One call: PullImage and RemoveImage with their bookkeeping, the others as they are.
    async fn call(
        self,
        path: PathAndQuery,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        match path.path() {
            PULL_IMAGE => self.pull_image(path, request).await,
            REMOVE_IMAGE => {
                let response = self.forward(path, request).await?;
                self.forget_unused().await;
                Ok(response)
            }
            _ => self.forward(path, request).await,
        }
    }

    async fn forward(
        &self,
        path: PathAndQuery,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        raw::forward(self.channel.clone(), path, request, MAX_MESSAGE).await
    }

    async fn pull_image(
        &self,
        path: PathAndQuery,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        // Read (a copy of) the request for its image and credentials; it is sent on as it came.
        let (image, auth) = match api::PullImageRequest::decode(request.get_ref().clone()) {
            Ok(r) => (r.image.map(|i| i.image).unwrap_or_default(), r.auth),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable PullImage request; forwarded, credentials not kept");
                (String::new(), None)
            }
        };
        let _pulling = self.pulling(&image);
        let recorded = self.record(&image, auth.as_ref());
        let result = self.forward(path, request).await;
        if let (Err(status), Some(r)) = (&result, recorded) {
            tracing::info!(image, code = ?status.code(),
                "pull failed; the credentials kept before it are back");
            if let Err(e) = self.pods.undo(r) {
                tracing::warn!(error = %e, "could not restore the previous pull credentials");
            }
        }
        result
    }
}

impl tonic::server::NamedService for ImageServiceProxy {
    const NAME: &'static str = SERVICE;
}

/// One unary call of the service, as bytes.
struct Call {
    proxy: ImageServiceProxy,
    path: PathAndQuery,
}

impl tonic::server::UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(self.proxy.clone().call(self.path.clone(), request))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for ImageServiceProxy
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let call = Call {
            proxy: self.clone(),
            path,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(grpc.unary(call, request).await)
        })
    }
}

#[cfg(test)]
mod tests;
