//! The proxy between a client and an in-memory image service (standing in for containerd),
//! over real gRPC on unix sockets: what is forwarded, kept, put back and forgotten.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use super::*;
use crate::api::image_service_server::{ImageService, ImageServiceServer};

/// containerd's image service as far as the proxy cares: pulls add images (and fail for
/// references containing "fail"), removals drop them; every pull's auth is recorded.
#[derive(Default)]
struct State {
    images: Mutex<Vec<String>>,
    pulls: Mutex<Vec<(String, Option<api::AuthConfig>)>>,
}

#[derive(Clone, Default)]
struct FakeUpstream(Arc<State>);

impl std::ops::Deref for FakeUpstream {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

fn spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ImageService for FakeUpstream {
    async fn list_images(
        &self,
        _: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        let images = self
            .images
            .lock()
            .iter()
            .map(|i| api::Image {
                id: format!("sha256:{}", i.len()),
                repo_tags: vec![i.clone()],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        r: Request<api::ImageStatusRequest>,
    ) -> Result<Response<api::ImageStatusResponse>, Status> {
        let name = r.into_inner().image.unwrap_or_default().image;
        let image = self.images.lock().contains(&name).then(|| api::Image {
            repo_tags: vec![name],
            ..Default::default()
        });
        Ok(Response::new(api::ImageStatusResponse {
            image,
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        r: Request<api::PullImageRequest>,
    ) -> Result<Response<api::PullImageResponse>, Status> {
        let r = r.into_inner();
        let image = r.image.unwrap_or_default().image;
        self.pulls.lock().push((image.clone(), r.auth));
        if image.contains("fail") {
            return Err(Status::unknown(
                "failed to resolve reference: 401 Unauthorized",
            ));
        }
        self.images.lock().push(image);
        Ok(Response::new(api::PullImageResponse {
            image_ref: "sha256:feed".into(),
        }))
    }

    async fn remove_image(
        &self,
        r: Request<api::RemoveImageRequest>,
    ) -> Result<Response<api::RemoveImageResponse>, Status> {
        let name = r.into_inner().image.unwrap_or_default().image;
        self.images.lock().retain(|i| *i != name);
        Ok(Response::new(api::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<api::ImageFsInfoRequest>,
    ) -> Result<Response<api::ImageFsInfoResponse>, Status> {
        Ok(Response::new(api::ImageFsInfoResponse::default()))
    }
}

fn serve_on(path: &Path, svc: impl ImageService) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ImageServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
}

fn serve_proxy(path: &Path, proxy: ImageServiceProxy) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(proxy.serve(listener, std::future::pending()));
}

fn basic(user: &str, password: &str) -> Option<api::AuthConfig> {
    Some(api::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    })
}

fn pull(image: &str, auth: Option<api::AuthConfig>) -> api::PullImageRequest {
    api::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    }
}

fn password(pods: &PodCredentials, image: &str) -> Option<String> {
    match pods.lookup(&RepoKey::from_image(image).unwrap()) {
        Some(PodAuth::Basic { password, .. }) => Some(password.expose().to_string()),
        Some(other) => panic!("{other:?}"),
        None => None,
    }
}

#[tokio::test]
async fn pulls_keep_credentials_failures_put_them_back_removals_forget() {
    let dir = tempfile::tempdir().unwrap();
    let (up_sock, proxy_sock) = (dir.path().join("up.sock"), dir.path().join("proxy.sock"));
    let upstream = FakeUpstream::default();
    serve_on(&up_sock, upstream.clone());
    let pods = Arc::new(PodCredentials::open(&dir.path().join("creds.json")).unwrap());
    serve_proxy(&proxy_sock, ImageServiceProxy::new(&up_sock, pods.clone()));
    let mut c = crate::api::image_client(&proxy_sock);

    let (app, app2, other) = (
        "reg:5000/team/app:v1",
        "reg:5000/team/app:v2",
        "reg:5000/other:1",
    );
    c.pull_image(pull(app, basic("alice", "pw1")))
        .await
        .unwrap();
    assert_eq!(password(&pods, app).as_deref(), Some("pw1"));
    // The call and its credentials reach containerd unchanged.
    assert_eq!(
        upstream.pulls.lock()[0],
        (app.to_string(), basic("alice", "pw1"))
    );

    // A failing pull puts back what was kept before it; a failing first pull keeps none.
    let err = c
        .pull_image(pull("reg:5000/team/app:fail", basic("alice", "wrong")))
        .await
        .unwrap_err();
    assert!(err.message().contains("401"), "{err:?}");
    assert_eq!(password(&pods, app).as_deref(), Some("pw1"));
    c.pull_image(pull("reg:5000/new:fail", basic("x", "y")))
        .await
        .unwrap_err();
    assert_eq!(password(&pods, "reg:5000/new:1"), None);

    // A newer pull brings new credentials; a pull without any keeps them.
    c.pull_image(pull(app2, basic("alice", "pw2")))
        .await
        .unwrap();
    assert_eq!(password(&pods, app).as_deref(), Some("pw2"));
    c.pull_image(pull(app, None)).await.unwrap();
    assert_eq!(password(&pods, app).as_deref(), Some("pw2"));
    c.pull_image(pull(other, basic("bob", "pw3")))
        .await
        .unwrap();

    // Removing one tag keeps the repository's credentials while another image is left.
    c.remove_image(api::RemoveImageRequest { image: spec(app2) })
        .await
        .unwrap();
    assert_eq!(password(&pods, app).as_deref(), Some("pw2"));
    // The last image of the repository goes: so do its credentials; the others stay.
    upstream.images.lock().retain(|i| i != app);
    c.remove_image(api::RemoveImageRequest { image: spec(app) })
        .await
        .unwrap();
    assert_eq!(password(&pods, app), None);
    assert_eq!(password(&pods, other).as_deref(), Some("pw3"));
    // What is on disk agrees.
    let again = PodCredentials::open(pods.path()).unwrap();
    assert_eq!(again.keys(), vec![RepoKey::from_image(other).unwrap()]);

    // The other calls are forwarded.
    let st = c
        .image_status(api::ImageStatusRequest {
            image: spec(other),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_some());
    c.image_fs_info(api::ImageFsInfoRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_runtime_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_sock = dir.path().join("proxy.sock");
    let pods = Arc::new(PodCredentials::open(&dir.path().join("creds.json")).unwrap());
    serve_proxy(
        &proxy_sock,
        ImageServiceProxy::new(&dir.path().join("nobody.sock"), pods.clone()),
    );
    let mut c = crate::api::image_client(&proxy_sock);
    let err = c
        .pull_image(pull("reg:5000/team/app:v1", basic("alice", "pw")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(password(&pods, "reg:5000/team/app:v1"), None);
}

/// An upstream that records the bytes of every call (path, message) and answers an empty
/// message.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Bytes)>>>);

struct RecordCall(Recorder, String);

impl tonic::server::UnaryService<Bytes> for RecordCall {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.0
             .0
            .lock()
            .push((self.1.clone(), request.into_inner()));
        Box::pin(async { Ok(Response::new(Bytes::new())) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Recorder
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
        let call = RecordCall(self.clone(), request.uri().path().to_string());
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(call, request)
                .await)
        })
    }
}

impl tonic::server::NamedService for Recorder {
    const NAME: &'static str = SERVICE;
}

#[tokio::test]
async fn calls_reach_containerd_byte_for_byte_unknown_fields_and_methods_included() {
    let dir = tempfile::tempdir().unwrap();
    let (up_sock, proxy_sock) = (dir.path().join("up.sock"), dir.path().join("proxy.sock"));
    let recorder = Recorder::default();
    let listener = tokio::net::UnixListener::bind(&up_sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(recorder.clone())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let pods = Arc::new(PodCredentials::open(&dir.path().join("creds.json")).unwrap());
    serve_proxy(&proxy_sock, ImageServiceProxy::new(&up_sock, pods.clone()));

    // A PullImage as a newer kubelet may send it: with a field this API does not know
    // (number 99, a string).
    let mut body = pull("reg:5000/team/app:v1", basic("alice", "pw")).encode_to_vec();
    body.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
    let mut grpc = tonic::client::Grpc::new(crate::api::channel(&proxy_sock));
    grpc.ready().await.unwrap();
    grpc.unary::<Bytes, Bytes, _>(
        Request::new(Bytes::from(body.clone())),
        PathAndQuery::from_static(PULL_IMAGE),
        RawCodec,
    )
    .await
    .unwrap();
    // A method this API does not know.
    grpc.ready().await.unwrap();
    grpc.unary::<Bytes, Bytes, _>(
        Request::new(Bytes::from_static(b"\x0a\x01x")),
        PathAndQuery::from_static("/runtime.v1.ImageService/FutureMethod"),
        RawCodec,
    )
    .await
    .unwrap();
    let seen = recorder.0.lock().clone();
    assert_eq!(seen[0], (PULL_IMAGE.to_string(), Bytes::from(body)));
    assert_eq!(
        seen[1],
        (
            "/runtime.v1.ImageService/FutureMethod".to_string(),
            Bytes::from_static(b"\x0a\x01x")
        )
    );
    // The credentials were read from it all the same.
    assert_eq!(
        password(&pods, "reg:5000/team/app:v1").as_deref(),
        Some("pw")
    );
}
