//! The gRPC adapter: implements `containerd_snapshots::Snapshotter` over [`Snapshots`],
//! converting types at the boundary and running each operation on a blocking thread.
//! This is the one place where snapshot errors become gRPC statuses.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount as GrpcMount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info as GrpcInfo, Kind as GrpcKind, Usage as GrpcUsage};
use futures::stream;

use crate::clip::clip;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::OpMetrics;
use crate::overlay::Mount;
use crate::store::{Info, Kind, Labels};
use crate::Snapshots;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => Status::not_found(msg),
            ErrorKind::AlreadyExists => Status::already_exists(msg),
            ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
            ErrorKind::InvalidArgument => Status::invalid_argument(msg),
            ErrorKind::Unavailable => Status::unavailable(msg),
            ErrorKind::Internal => Status::internal(msg),
        }
    }
}

fn grpc_info(info: Info) -> GrpcInfo {
    GrpcInfo {
        kind: match info.kind {
            Kind::View => GrpcKind::View,
            Kind::Active => GrpcKind::Active,
            Kind::Committed => GrpcKind::Committed,
        },
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
        created_at: info.created,
        updated_at: info.updated,
    }
}

fn grpc_mounts(mounts: Vec<Mount>) -> Vec<GrpcMount> {
    mounts
        .into_iter()
        .map(|m| GrpcMount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(l: HashMap<String, String>) -> Labels {
    l.into_iter().collect()
}

/// The snapshots service containerd talks to.
#[derive(Clone)]
pub struct Service {
    core: Arc<Snapshots>,
    ops: Option<OpMetrics>,
}

/// The metrics label of an outcome.
fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::FailedPrecondition => "failed_precondition",
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

impl Service {
    /// Serves `core`.
    pub fn new(core: Arc<Snapshots>) -> Self {
        Service { core, ops: None }
    }

    /// Serves `core`, recording each call's latency in `ops`.
    pub fn with_metrics(core: Arc<Snapshots>, ops: OpMetrics) -> Self {
        Service {
            core,
            ops: Some(ops),
        }
    }

    /// Runs `f` on a blocking thread, logging failures that are not the caller's fault.
    async fn run<T, F>(&self, op: &'static str, key: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshots) -> Result<T> + Send + 'static,
    {
        let core = self.core.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || f(&core))
            .await
            .unwrap_or_else(|source| Err(Error::Task { op, source }));
        if let Some(ops) = &self.ops {
            let outcome = result.as_ref().map_or_else(|e| code(e.kind()), |_| "ok");
            ops.observe(op, outcome, started.elapsed());
        }
        match &result {
            Ok(_) => tracing::debug!(op, key = %clip(&key), "ok"),
            Err(e) if e.kind() == ErrorKind::Internal => {
                tracing::warn!(op, key = %clip(&key), error = %e, "snapshot operation failed")
            }
            Err(e) => {
                tracing::debug!(op, key = %clip(&key), error = %e, "snapshot operation refused")
            }
        }
        result
    }
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<GrpcInfo> {
        let k = key.clone();
        self.run("stat", k, move |s| s.stat(&key))
            .await
            .map(grpc_info)
    }

    async fn update(&self, info: GrpcInfo, fieldpaths: Option<Vec<String>>) -> Result<GrpcInfo> {
        let (name, l) = (info.name, labels(info.labels));
        let paths = fieldpaths.unwrap_or_default();
        self.run("update", name.clone(), move |s| s.update(&name, &l, &paths))
            .await
            .map(grpc_info)
    }

    async fn usage(&self, key: String) -> Result<GrpcUsage> {
        let u = self
            .run("usage", key.clone(), move |s| s.usage(&key))
            .await?;
        Ok(GrpcUsage {
            inodes: u.inodes,
            size: u.size,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<GrpcMount>> {
        self.run("mounts", key.clone(), move |s| s.mounts(&key))
            .await
            .map(grpc_mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<GrpcMount>> {
        self.run("prepare", key.clone(), move |s| {
            s.prepare(&key, &parent, labels(l))
        })
        .await
        .map(grpc_mounts)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<GrpcMount>> {
        self.run("view", key.clone(), move |s| {
            s.view(&key, &parent, labels(l))
        })
        .await
        .map(grpc_mounts)
    }

    async fn commit(&self, name: String, key: String, l: HashMap<String, String>) -> Result<()> {
        self.run("commit", key.clone(), move |s| {
            s.commit(&name, &key, labels(l))
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<()> {
        self.run("remove", key.clone(), move |s| s.remove(&key))
            .await
    }

    async fn clear(&self) -> Result<()> {
        self.run("cleanup", String::new(), |s| s.cleanup().map(|_| ()))
            .await
    }

    type InfoStream = stream::Iter<std::vec::IntoIter<Result<GrpcInfo>>>;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let infos = self
            .run("list", filters.join(" | "), move |s| s.list(&filters))
            .await?;
        Ok(stream::iter(
            infos
                .into_iter()
                .map(|i| Ok(grpc_info(i)))
                .collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use containerd_snapshots::tonic::Code;
    use containerd_snapshots::Snapshotter as _;

    use super::*;
    use crate::merge::FlattenError;
    use crate::Options;

    fn service() -> (tempfile::TempDir, Service) {
        let tmp = tempfile::tempdir().unwrap();
        let core = Snapshots::open(tmp.path().join("root"), Options::default()).unwrap();
        (tmp, Service::new(Arc::new(core)))
    }

    #[test]
    fn every_kind_maps_to_its_code() {
        let cases = [
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::Flatten(FlattenError::NoLayers), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[tokio::test]
    async fn grpc_codes_of_snapshot_rules() {
        let (_tmp, svc) = service();
        fn code<T>(r: Result<T>) -> Code {
            match r {
                Ok(_) => panic!("expected an error"),
                Err(e) => Status::from(e).code(),
            }
        }
        assert_eq!(code(svc.stat("nope".into()).await), Code::NotFound);
        svc.prepare("ns/1/a".into(), String::new(), HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            code(
                svc.prepare("ns/1/a".into(), String::new(), HashMap::new())
                    .await
            ),
            Code::AlreadyExists
        );
        assert_eq!(
            code(
                svc.prepare("ns/1/b".into(), "ns/1/a".into(), HashMap::new())
                    .await
            ),
            Code::InvalidArgument,
            "parent not committed"
        );
        svc.commit("ns/1/c".into(), "ns/1/a".into(), HashMap::new())
            .await
            .unwrap();
        svc.view("ns/1/v".into(), "ns/1/c".into(), HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            code(svc.remove("ns/1/c".into()).await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(svc.mounts("ns/1/c".into()).await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(svc.list("starling".into(), vec!["name==".into()]).await),
            Code::InvalidArgument
        );
        let info = svc.stat("ns/1/v".into()).await.unwrap();
        assert_eq!(info.kind, GrpcKind::View);
        assert_eq!(info.parent, "ns/1/c");
        assert_eq!(
            code(svc.update(info, Some(vec!["parent".into()])).await),
            Code::InvalidArgument
        );
    }
}
