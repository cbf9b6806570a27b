//! The connection to containerd: one gRPC channel on its unix socket, requests tagged with
//! the namespace (`containerd-namespace` header) and the pull's lease (`containerd-lease`),
//! and the few calls a pull makes on the images, leases, snapshots and diff services — all
//! of which containerd 1.6 serves (no transfer service). Content calls live in
//! [`super::content`].

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, Info as SnapshotInfo,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    diff_client::DiffClient, images_client::ImagesClient, leases_client::LeasesClient,
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, Image, UpdateImageRequest,
};
use containerd_client::tonic::metadata::{AsciiMetadataValue, MetadataMap};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::{Descriptor, Mount};

use super::RpullError;

/// Label that lets containerd's GC collect a lease nobody deleted (a killed pull).
const LEASE_EXPIRE: &str = "containerd.io/gc.expire";
/// How long a pull's lease protects its content if the pull dies before deleting it
/// (containerd's own clients use 24 h).
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A containerd connection scoped to one namespace (and, once taken, one lease).
#[derive(Clone)]
pub(crate) struct Containerd {
    channel: Channel,
    namespace: AsciiMetadataValue,
    lease: Option<AsciiMetadataValue>,
}

/// Checks a containerd namespace name (containerd: alphanumerics separated by single `.`,
/// `_` or `-`, at most 76 characters).
pub(crate) fn check_namespace(ns: &str) -> Result<(), RpullError> {
    let bad = |reason: &str| RpullError::InvalidArgument {
        what: "namespace",
        value: ns.to_string(),
        reason: reason.to_string(),
    };
    if ns.is_empty() || ns.len() > 76 {
        return Err(bad("must be 1 to 76 characters"));
    }
    let mut prev_sep = true;
    for c in ns.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(bad(
                "must be letters and digits separated by single '.', '_' or '-'",
            ));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(bad("must end with a letter or digit"));
    }
    Ok(())
}

impl Containerd {
    /// Connects to containerd's socket.
    pub(crate) async fn connect(address: &Path, namespace: &str) -> Result<Self, RpullError> {
        check_namespace(namespace)?;
        let channel =
            containerd_client::connect(address)
                .await
                .map_err(|e| RpullError::Connect {
                    address: address.to_path_buf(),
                    cause: describe(&e),
                })?;
        Ok(Containerd {
            channel,
            namespace: ascii(namespace)?,
            lease: None,
        })
    }

    /// A request carrying the namespace and lease headers.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        self.tag(req.metadata_mut());
        req
    }

    fn tag(&self, md: &mut MetadataMap) {
        md.insert("containerd-namespace", self.namespace.clone());
        if let Some(l) = &self.lease {
            md.insert("containerd-lease", l.clone());
        }
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Creates a lease that expires after a day and returns a connection that works under
    /// it: everything created through it is kept from GC until the lease is deleted.
    pub(crate) async fn with_new_lease(&self, id: &str) -> Result<Containerd, RpullError> {
        let expire = humantime::format_rfc3339_seconds(SystemTime::now() + LEASE_TTL);
        let req = CreateLeaseRequest {
            id: id.to_string(),
            labels: HashMap::from([(LEASE_EXPIRE.to_string(), expire.to_string())]),
        };
        LeasesClient::new(self.channel())
            .create(self.request(req))
            .await
            .map_err(|s| RpullError::containerd(format!("create lease {id}"), &s))?;
        Ok(Containerd {
            lease: Some(ascii(id)?),
            ..self.clone()
        })
    }

    /// Deletes lease `id` (its content stays if something else refers to it).
    pub(crate) async fn delete_lease(&self, id: &str) -> Result<(), RpullError> {
        let plain = Containerd {
            lease: None,
            ..self.clone()
        };
        let req = DeleteLeaseRequest {
            id: id.to_string(),
            sync: false,
        };
        match LeasesClient::new(self.channel())
            .delete(plain.request(req))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(RpullError::containerd(format!("delete lease {id}"), &s)),
        }
    }

    /// Creates image record `name` → `target`, or points an existing one at `target`.
    pub(crate) async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), RpullError> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel());
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match images.create(self.request(create)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                // containerd's own pull does the same: replace the record (no field mask).
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                images
                    .update(self.request(update))
                    .await
                    .map(drop)
                    .map_err(|s| RpullError::containerd(format!("update image record {name}"), &s))
            }
            Err(s) => Err(RpullError::containerd(
                format!("create image record {name}"),
                &s,
            )),
        }
    }

    /// Stat of snapshot `key` on `snapshotter`; `None` if it does not exist.
    pub(crate) async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<SnapshotInfo>, Status> {
        let req = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel())
            .stat(self.request(req))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Prepare of an active snapshot; the raw status on failure (AlreadyExists matters).
    pub(crate) async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        SnapshotsClient::new(self.channel())
            .prepare(self.request(req))
            .await
            .map(|r| r.into_inner().mounts)
    }

    /// Commit of active snapshot `key` as `name`.
    pub(crate) async fn commit_snapshot(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let req = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        };
        SnapshotsClient::new(self.channel())
            .commit(self.request(req))
            .await
            .map(drop)
    }

    /// Removal of snapshot `key`.
    pub(crate) async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<(), Status> {
        let req = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        SnapshotsClient::new(self.channel())
            .remove(self.request(req))
            .await
            .map(drop)
    }

    /// Applies layer `layer` (in the content store) onto `mounts` with containerd's diff
    /// service; returns the digest of the uncompressed tar it read (the diff ID).
    pub(crate) async fn apply_layer(
        &self,
        layer: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<String, Status> {
        let req = ApplyRequest {
            diff: Some(layer),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = DiffClient::new(self.channel())
            .apply(self.request(req))
            .await?
            .into_inner()
            .applied;
        Ok(applied.map(|d| d.digest).unwrap_or_default())
    }
}

fn ascii(value: &str) -> Result<AsciiMetadataValue, RpullError> {
    value.parse().map_err(|_| RpullError::InvalidArgument {
        what: "gRPC header value",
        value: value.to_string(),
        reason: "must be visible ASCII".into(),
    })
}

/// An error with its sources, on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_like_containerd() {
        for ok in ["default", "k8s.io", "a-b_c.d", "x1"] {
            check_namespace(ok).unwrap();
        }
        for bad in ["", "a..b", "-a", "a-", "a/b", "a b", &"x".repeat(77)] {
            assert!(
                matches!(
                    check_namespace(bad),
                    Err(RpullError::InvalidArgument {
                        what: "namespace",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }
}
