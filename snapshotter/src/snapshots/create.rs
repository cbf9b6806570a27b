//! Creating snapshots: Prepare and View, merge snapshots, and the remote-layer flow of
//! Prepare (create active → hook mounts the layer → commit under the target → answer
//! AlreadyExists; or fall back to the normal snapshot).

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::Snapshots;
use crate::clip::clip;
use crate::error::{Error, Result};
use crate::labels;
use crate::merge;
use crate::overlay::layout::remove_tree;
use crate::overlay::Mount;
use crate::remote::{LayerOutcome, LayerRequest, RemoteLayers, RemoteSnapshot};
use crate::store::{Kind, Labels, Lookup, NewRecord, SnapshotRecord, Usage};

/// A new active snapshot or view.
#[derive(Clone, Debug)]
pub struct NewSnapshot {
    /// Active (writable, committable) or view (read-only).
    pub kind: Kind,
    /// Its key; must be new.
    pub key: String,
    /// Committed parent, or empty.
    pub parent: String,
    /// Merge sources: committed snapshots whose chains are stacked below the parent
    /// chain, in this order (topmost first). A snapshot already in the stack is not
    /// repeated. Sources cannot be removed while the new snapshot (or what is committed
    /// from it) exists. Empty for ordinary snapshots.
    pub merged: Vec<String>,
    /// Labels.
    pub labels: Labels,
}

/// A snapshot just created, with what its mounts are built from.
struct Created {
    key: String,
    rec: SnapshotRecord,
    lowers: Vec<(String, SnapshotRecord)>,
}

impl Snapshots {
    /// containerd's Prepare: a new active snapshot on `parent`; with the merge labels, a
    /// merged snapshot instead (see [`crate::merge`]). With a remote-layer hook
    /// and a `containerd.io/snapshot.ref` label naming a layer, the layer may instead be
    /// mounted remotely and committed under the target name: then the answer is
    /// AlreadyExists (see [`crate::remote`]).
    pub fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if let Some(req) = merge::intercept(Kind::Active, key, parent, &labels)? {
            return self.merge(&req).map(|m| m.mounts);
        }
        let target = labels
            .get(labels::TARGET_REF)
            .filter(|t| !t.is_empty())
            .cloned();
        let mut remote = match (&self.remote, target) {
            (Some(hook), Some(target)) => Some((hook.clone(), target)),
            _ => None,
        };
        if let Some((_, target)) = &remote {
            if let Some(rec) = self.store.read()?.record(target)? {
                // containerd looks the target up by ref label *and* parent after an
                // AlreadyExists; answer it only when that lookup will succeed.
                if rec.kind == Kind::Committed && rec.parent == parent {
                    return Err(Error::AlreadyExists(format!(
                        "target snapshot {:?} already exists",
                        clip(target)
                    )));
                }
                tracing::info!(
                    key = %clip(key),
                    target = %clip(target),
                    "layer is not lazy: a snapshot named like the target exists on another parent"
                );
                remote = None;
            }
        }
        let created = self.create_snapshot(NewSnapshot {
            kind: Kind::Active,
            key: key.to_string(),
            parent: parent.to_string(),
            merged: Vec::new(),
            labels,
        })?;
        if let Some((hook, target)) = remote {
            if !labels::names_layer(&created.rec.labels) {
                tracing::info!(
                    key = %clip(key),
                    target = %clip(&target),
                    "layer is not lazy: the Prepare labels do not name a layer (plain `ctr images pull` \
                     sends none; use `starling rpull`); containerd downloads it"
                );
            } else if self.try_remote(hook.as_ref(), &created, &target)? {
                return Err(Error::AlreadyExists(format!(
                    "target snapshot {:?} (remote layer)",
                    clip(&target)
                )));
            }
        }
        self.mounts_for(&created.rec, &created.lowers)
    }

    /// containerd's View: a read-only snapshot of `parent`, or of a merge (see
    /// [`crate::merge`]).
    pub fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if let Some(req) = merge::intercept(Kind::View, key, parent, &labels)? {
            return self.merge(&req).map(|m| m.mounts);
        }
        self.create(NewSnapshot {
            kind: Kind::View,
            key: key.to_string(),
            parent: parent.to_string(),
            merged: Vec::new(),
            labels,
        })
    }

    /// Creates an active snapshot or view, possibly merging several chains (see
    /// [`NewSnapshot::merged`]), and returns its mounts. No remote-layer handling: this is
    /// the entry point for merge components.
    pub fn create(&self, new: NewSnapshot) -> Result<Vec<Mount>> {
        let created = self.create_snapshot(new)?;
        self.mounts_for(&created.rec, &created.lowers)
    }

    /// One transaction: checks, id, directory assembled under `new-<id>` and renamed to
    /// `<id>`, commit. Any failure leaves neither record nor directory.
    fn create_snapshot(&self, new: NewSnapshot) -> Result<Created> {
        let tx = self.store.write()?;
        let rec = tx.create(NewRecord {
            kind: new.kind,
            key: &new.key,
            parent: &new.parent,
            merged: &new.merged,
            labels: new.labels,
        })?;
        let lowers = tx.lowers(&rec.parent, &rec.merged)?;
        self.materialize(&rec, &lowers)?;
        if let Err(e) = tx.commit() {
            let _ = remove_tree(&self.layout.snapshot_dir(rec.id));
            return Err(e);
        }
        Ok(Created {
            key: new.key,
            rec,
            lowers,
        })
    }

    /// Creates the directory of the new snapshot `rec` (standing on `lowers`, topmost
    /// first): assembled under `new-<id>` (owned like the topmost lower) and renamed to
    /// `<id>`. A failure leaves no directory behind; the caller's transaction decides the
    /// record.
    pub(crate) fn materialize(
        &self,
        rec: &SnapshotRecord,
        lowers: &[(String, SnapshotRecord)],
    ) -> Result<()> {
        let owner = lowers.first().map(|(_, r)| self.layout.fs_dir(r.id));
        let tmp = match self
            .layout
            .assemble(rec.id, rec.kind == Kind::Active, owner.as_deref())
        {
            Ok(tmp) => tmp,
            Err(e) => {
                let _ = remove_tree(&self.layout.new_dir(rec.id));
                return Err(e);
            }
        };
        if let Err(e) = self.layout.install(&tmp, rec.id) {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// Offers the just-created active snapshot to the hook. Ok(true): committed as a
    /// remote snapshot under `target` (or someone else committed `target` meanwhile);
    /// Ok(false): declined, go on with the normal snapshot.
    fn try_remote(&self, hook: &dyn RemoteLayers, c: &Created, target: &str) -> Result<bool> {
        let mountpoint = self.layout.fs_dir(c.rec.id);
        let req = LayerRequest {
            key: &c.key,
            parent: &c.rec.parent,
            target,
            labels: &c.rec.labels,
            id: c.rec.id,
            mountpoint: &mountpoint,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| hook.prepare(&req))).unwrap_or_else(|_| {
            LayerOutcome::Declined {
                reason: "the remote layer hook panicked".into(),
            }
        });
        let extra = match outcome {
            LayerOutcome::Mounted { labels } => labels,
            LayerOutcome::Declined { reason } => {
                // The hook promised to leave nothing mounted; make sure.
                linuxfs::mount::detach_all(&mountpoint)
                    .map_err(|e| Error::io("detach mounts at", &mountpoint, e))?;
                if !self.allow_fallback {
                    tracing::warn!(key = %clip(&c.key), target = %clip(target), %reason, "layer is not lazy and fallback is off");
                    if let Err(e) = self.remove(&c.key) {
                        tracing::warn!(key = %clip(&c.key), error = %e, "could not remove the refused snapshot");
                    }
                    return Err(Error::Unavailable(format!(
                        "layer {:?} cannot be mounted lazily ({reason}) and \
                         snapshotter.allow_fallback is off",
                        clip(target),
                    )));
                }
                tracing::info!(
                    key = %clip(&c.key),
                    target = %clip(target),
                    %reason,
                    "layer is not lazy: falling back to a normal snapshot; containerd downloads it"
                );
                return Ok(false);
            }
        };
        let mut labels = c.rec.labels.clone();
        labels.extend(extra);
        labels.insert(labels::REMOTE.into(), labels::REMOTE_VALUE.into());
        let committed = (|| {
            let tx = self.store.write()?;
            tx.commit_active(&c.key, target, Usage::default(), labels)?;
            tx.commit()
        })();
        match committed {
            Ok(()) => {
                tracing::info!(key = %clip(&c.key), target = %clip(target), "layer mounted lazily");
                Ok(true)
            }
            Err(e) => {
                let snap = RemoteSnapshot {
                    name: target,
                    id: c.rec.id,
                    labels: &c.rec.labels,
                    mountpoint: &mountpoint,
                };
                if let Err(he) = hook.remove(&snap) {
                    tracing::warn!(target = %clip(target), error = %he, "could not unmount an uncommitted remote layer");
                }
                if let Err(re) = self.remove(&c.key) {
                    tracing::warn!(key = %clip(&c.key), error = %re, "could not remove an uncommitted remote snapshot");
                }
                if e.kind() == crate::ErrorKind::AlreadyExists {
                    // Another Prepare committed the same layer first: containerd finds it.
                    Ok(true)
                } else {
                    Err(e)
                }
            }
        }
    }
}
