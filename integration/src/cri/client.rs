//! A blocking CRI client: the runtime and image services over gRPC (the `cri` crate),
//! possibly on different sockets as with the kubelet's `--image-service-endpoint`.

use std::path::Path;
use std::time::Duration;

use cri::api;
use cri::api::image_service_client::ImageServiceClient;
use cri::api::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::error::{Error, IoContext, Result};
use crate::workdir::unique_token;

/// A CRI call failed (its gRPC status), or did not answer in time.
fn cri_err(call: &str, status: tonic::Status) -> Error {
    Error::invalid(
        format!("CRI {call}"),
        format!("{:?}: {}", status.code(), status.message()),
    )
}

/// A blocking client of a CRI runtime service and image service (which may be served on
/// different sockets, as with the kubelet's `--image-service-endpoint`).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Limit of one call.
    pub timeout: Duration,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").finish()
    }
}

/// A running pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its id.
    pub id: String,
    /// Its configuration (CreateContainer needs it again).
    pub config: api::PodSandboxConfig,
}

impl CriClient {
    /// Connects (lazily) to the runtime service on `runtime` and the image service on
    /// `images`.
    pub fn new(runtime: &Path, images: &Path) -> Result<Self> {
        // A worker thread keeps the connections served between calls (a server's GOAWAY
        // at its shutdown is answered at once, as a kubelet would).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::io("start a tokio runtime", e))?;
        let (runtime, images) = rt.block_on(async {
            (
                cri::api::runtime_client(runtime)
                    .max_decoding_message_size(cri::proxy::MAX_MESSAGE),
                cri::api::image_client(images).max_decoding_message_size(cri::proxy::MAX_MESSAGE),
            )
        });
        Ok(CriClient {
            rt,
            runtime,
            images,
            timeout: Duration::from_secs(180),
        })
    }

    fn block<T>(
        &self,
        call: &str,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> std::result::Result<T, CallError> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(CallError::Status(Box::new(status))),
            Err(_) => Err(CallError::Timeout(Error::Timeout {
                what: format!("CRI {call}"),
                after: self.timeout,
                detail: String::new(),
            })),
        }
    }

    fn call<T>(
        &self,
        call: &str,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.block(call, fut).map_err(|e| e.into_error(call))
    }

    /// Polls the runtime's `Status` until it reports RuntimeReady (the CRI plugin answers
    /// a while after containerd's socket appears).
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        crate::poll::poll_until("the CRI runtime to be ready", timeout, || {
            let mut c = self.runtime.clone();
            match self.block("Status", async move {
                c.status(api::StatusRequest { verbose: false }).await
            }) {
                Ok(s) => {
                    let ready = s.status.as_ref().is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.r#type == "RuntimeReady" && c.status)
                    });
                    last = format!("{:?}", s.status);
                    Ok(ready.then_some(()))
                }
                Err(e) => {
                    last = e.into_error("Status").to_string();
                    Ok(None)
                }
            }
        })
        .map_err(|e| match e {
            Error::Timeout { what, after, .. } => Error::Timeout {
                what,
                after,
                detail: format!("\nlast answer: {last}"),
            },
            other => other,
        })
    }

    /// PullImage with optional credentials; returns the image ref (its id). The error is
    /// the gRPC status, for tests that expect a refusal.
    pub fn pull(
        &self,
        image: &str,
        auth: Option<api::AuthConfig>,
    ) -> std::result::Result<String, CallError> {
        let req = api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        };
        let mut c = self.images.clone();
        self.block("PullImage", async move { c.pull_image(req).await })
            .map(|r| r.image_ref)
    }

    /// [`pull`](Self::pull) with a user name and password.
    pub fn pull_with(&self, image: &str, user: &str, password: &str) -> Result<String> {
        let auth = api::AuthConfig {
            username: user.into(),
            password: password.into(),
            ..Default::default()
        };
        self.pull(image, Some(auth))
            .map_err(|e| e.into_error("PullImage"))
    }

    /// ImageStatus: the image, if present.
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>> {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let mut c = self.images.clone();
        Ok(self
            .call("ImageStatus", async move { c.image_status(req).await })?
            .image)
    }

    /// ListImages.
    pub fn list_images(&self) -> Result<Vec<api::Image>> {
        let mut c = self.images.clone();
        Ok(self
            .call("ListImages", async move {
                c.list_images(api::ListImagesRequest::default()).await
            })?
            .images)
    }

    /// RemoveImage (by reference or id).
    pub fn remove_image(&self, image: &str) -> Result<()> {
        let req = api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
        };
        let mut c = self.images.clone();
        self.call("RemoveImage", async move { c.remove_image(req).await })
            .map(drop)
    }

    /// ImageFsInfo (the kubelet's first call on an image endpoint).
    pub fn image_fs_info(&self) -> Result<api::ImageFsInfoResponse> {
        let mut c = self.images.clone();
        self.call("ImageFsInfo", async move {
            c.image_fs_info(api::ImageFsInfoRequest::default()).await
        })
    }

    /// RunPodSandbox: a pod `name` in the host's network namespace, logs under `log_dir`.
    pub fn run_pod(&self, name: &str, log_dir: &Path) -> Result<Pod> {
        std::fs::create_dir_all(log_dir).ctx(|| format!("create {}", log_dir.display()))?;
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-{}", unique_token(8)),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: api::NamespaceMode::Node as i32,
                        pid: api::NamespaceMode::Pod as i32,
                        ipc: api::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let mut c = self.runtime.clone();
        let id = self
            .call("RunPodSandbox", async move { c.run_pod_sandbox(req).await })?
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// CreateContainer `name` in `pod` from `image` running `command`; its log goes to
    /// `<pod log dir>/<name>.log`. Returns the container id.
    pub fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let mut c = self.runtime.clone();
        Ok(self
            .call(
                "CreateContainer",
                async move { c.create_container(req).await },
            )?
            .container_id)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            async move { c.start_container(req).await },
        )
        .map(drop)
    }

    /// ExecSync `cmd` in container `id`; returns (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        let mut c = self.runtime.clone();
        let r = self.call("ExecSync", async move { c.exec_sync(req).await })?;
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// Stops and removes every pod sandbox (and so its containers).
    pub fn remove_all_pods(&self) -> Result<()> {
        let mut c = self.runtime.clone();
        let pods = self
            .call("ListPodSandbox", async move {
                c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                    .await
            })?
            .items;
        for p in pods {
            self.remove_pod(&p.id)?;
        }
        Ok(())
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let stop = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "StopPodSandbox",
            async move { c.stop_pod_sandbox(stop).await },
        )?;
        let mut c = self.runtime.clone();
        let rm = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "RemovePodSandbox",
            async move { c.remove_pod_sandbox(rm).await },
        )
        .map(drop)
    }
}

/// A failed CRI call: the server's status, or no answer in time.
#[derive(Debug)]
pub enum CallError {
    /// The gRPC status the server answered.
    Status(Box<tonic::Status>),
    /// No answer within the client's timeout.
    Timeout(Error),
}

impl CallError {
    /// As a harness error naming the call.
    pub fn into_error(self, call: &str) -> Error {
        match self {
            CallError::Status(s) => cri_err(call, *s),
            CallError::Timeout(e) => e,
        }
    }

    /// The status, if the server answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            CallError::Status(s) => Some(s),
            CallError::Timeout(_) => None,
        }
    }
}

/// What an ExecSync gave.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// The messages of a CRI container log (`TIMESTAMP STREAM P|F MESSAGE` lines), joined
/// back into the container's output ("P" lines continue on the next one).
pub fn read_container_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_ts, _stream, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(msg.unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("stl-cri-cfg-{}", unique_token(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn container_logs_are_joined() {
        let d = tempfile_dir();
        let p = d.join("c.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00Z stdout P hel\n2026-01-01T00:00:00Z stdout F lo\n2026-01-01T00:00:01Z stderr F oops\n",
        )
        .unwrap();
        assert_eq!(read_container_log(&p), "hello\noops\n");
        let _ = std::fs::remove_dir_all(&d);
    }
}
