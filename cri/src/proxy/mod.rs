//! The CRI image service proxy: serves `runtime.v1.ImageService` (what the kubelet calls on
//! its `--image-service-endpoint`: ImageFsInfo, ListImages, ImageStatus, PullImage,
//! RemoveImage) and forwards every call, metadata included, to containerd's CRI plugin.
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

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::image_service_client::ImageServiceClient;
use crate::api::image_service_server::{ImageService, ImageServiceServer};
use crate::api::{self, channel};
use crate::auth::PodAuth;
use crate::credentials::{PodCredentials, Recorded};
use crate::repo::RepoKey;

/// Largest message passed either way (the kubelet allows 16 MiB: a node's image list).
pub const MAX_MESSAGE: usize = 16 << 20;

/// The server failed.
#[derive(Debug, thiserror::Error)]
#[error("CRI image service: {0}")]
pub struct ProxyError(#[from] tonic::transport::Error);

/// The image service proxy.
#[derive(Clone)]
pub struct ImageServiceProxy {
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

/// The request to send on: same message and metadata (tonic drops the reserved headers).
fn onward<T>(req: Request<T>) -> Request<T> {
    let (metadata, _, message) = req.into_parts();
    Request::from_parts(metadata, Default::default(), message)
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
        let upstream = ImageServiceClient::new(channel(runtime))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        ImageServiceProxy {
            upstream,
            pods,
            pulling: Arc::default(),
        }
    }

    /// The credentials it keeps.
    pub fn pods(&self) -> &Arc<PodCredentials> {
        &self.pods
    }

    /// The gRPC service.
    pub fn into_service(self) -> ImageServiceServer<Self> {
        ImageServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Serves the proxy on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProxyError> {
        tonic::transport::Server::builder()
            .add_service(self.into_service())
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

#[tonic::async_trait]
impl ImageService for ImageServiceProxy {
    async fn list_images(
        &self,
        request: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        self.upstream.clone().list_images(onward(request)).await
    }

    async fn image_status(
        &self,
        request: Request<api::ImageStatusRequest>,
    ) -> Result<Response<api::ImageStatusResponse>, Status> {
        self.upstream.clone().image_status(onward(request)).await
    }

    async fn pull_image(
        &self,
        request: Request<api::PullImageRequest>,
    ) -> Result<Response<api::PullImageResponse>, Status> {
        let image = request
            .get_ref()
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let _pulling = self.pulling(&image);
        let recorded = self.record(&image, request.get_ref().auth.as_ref());
        let result = self.upstream.clone().pull_image(onward(request)).await;
        if let (Err(status), Some(r)) = (&result, recorded) {
            tracing::info!(image, code = ?status.code(),
                "pull failed; the credentials kept before it are back");
            if let Err(e) = self.pods.undo(r) {
                tracing::warn!(error = %e, "could not restore the previous pull credentials");
            }
        }
        result
    }

    async fn remove_image(
        &self,
        request: Request<api::RemoveImageRequest>,
    ) -> Result<Response<api::RemoveImageResponse>, Status> {
        let response = self.upstream.clone().remove_image(onward(request)).await?;
        self.forget_unused().await;
        Ok(response)
    }

    async fn image_fs_info(
        &self,
        request: Request<api::ImageFsInfoRequest>,
    ) -> Result<Response<api::ImageFsInfoResponse>, Status> {
        self.upstream.clone().image_fs_info(onward(request)).await
    }
}

#[cfg(test)]
mod tests;
