//! Kubernetes' CRI path as the kubelet drives it: containerd's CRI plugin configured from
//! the shipped `contrib/containerd/config.toml` (its `io.containerd.grpc.v1.cri` table:
//! snapshotter, snapshot annotations) plus what a test node needs (private dirs, the
//! sandbox image, plain-HTTP registries, `restrict_oom_score_adj`), and a blocking CRI
//! client ([`CriClient`]: the runtime and image services over gRPC, from the `cri` crate)
//! for PullImage, RunPodSandbox, CreateContainer, StartContainer, ExecSync, RemoveImage.
//!
//! Pods run in the host's network namespace (no CNI needed) and without a hostname; the
//! sandbox ("pause") image comes from a local registry ([`pause_image`]: busybox with
//! `sleep infinity`).

pub mod client;
pub mod config;
pub mod node;

pub use client::{read_container_log, CallError, CriClient, ExecOutput, Pod};
pub use config::{
    contrib_snapshotter, cri_toml, pause_image, push_estargz, CriSettings, NAMESPACE,
};
pub use node::{CriNode, CriNodeOptions};
