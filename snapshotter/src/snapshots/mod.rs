//! [`Snapshots`]: containerd's snapshot operations over the metadata store and the
//! overlay layout, with containerd's overlayfs semantics, plus the two extension points:
//! remote layers ([`crate::remote`]) and merge snapshots ([`Snapshots::create`] with
//! `merged` sources).
//!
//! Every operation that changes state is one store transaction; directories are created
//! under a temp name and renamed into place before the commit, and deleted only after
//! the record is gone, so a crash leaves at worst a stray directory that
//! [`Snapshots::cleanup`] removes. Operations are synchronous (the gRPC service runs them
//! on blocking threads).

mod create;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

pub use create::NewSnapshot;

use crate::clip::clip;
use crate::error::{Error, Result};
use crate::filter::{Fields, Filter};
use crate::labels;
use crate::merge::{self, MergeOptions, MergeState};
use crate::overlay::layout::remove_tree;
use crate::overlay::mounts::MountPlan;
use crate::overlay::{usage, Layout, Mount, OverlayFeatures};
use crate::remote::{RemoteLayers, RemoteSnapshot};
use crate::store::{Info, Kind, Labels, Lookup, MetaStore, SnapshotRecord, Usage};

/// How to open [`Snapshots`].
#[derive(Clone)]
pub struct Options {
    /// Overlay features to use in mounts (see [`OverlayFeatures::probe`]).
    pub features: OverlayFeatures,
    /// The remote-layer hook, if any (none: every snapshot is a normal one).
    pub remote: Option<Arc<dyn RemoteLayers>>,
    /// When the hook declines a layer: true (default) goes on with a normal snapshot
    /// that containerd fills; false fails the Prepare with Unavailable.
    pub allow_fallback: bool,
    /// Merged snapshots (see [`crate::merge`]).
    pub merge: MergeOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            features: OverlayFeatures::default(),
            remote: None,
            allow_fallback: true,
            merge: MergeOptions::default(),
        }
    }
}

/// One layer directory of a snapshot, as [`Snapshots::layers`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The snapshot's key or name.
    pub name: String,
    /// Its id.
    pub id: u64,
    /// Its `fs` directory.
    pub dir: PathBuf,
    /// Whether `dir` is a remote (lazily fetched) mount.
    pub remote: bool,
}

/// What [`Snapshots::restore_remote`] did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Remote snapshots mounted again.
    pub restored: usize,
    /// Remote snapshots that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
}

/// The snapshotter core.
pub struct Snapshots {
    pub(crate) layout: Layout,
    pub(crate) store: MetaStore,
    pub(crate) features: OverlayFeatures,
    pub(crate) remote: Option<Arc<dyn RemoteLayers>>,
    allow_fallback: bool,
    pub(crate) merge: MergeState,
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<&str> {
        match path.first()?.as_str() {
            "kind" => Some(self.kind.as_str()),
            "name" => Some(&self.name),
            "parent" => Some(&self.parent),
            "labels" if !self.labels.is_empty() => {
                self.labels.get(&path[1..].join(".")).map(String::as_str)
            }
            _ => None,
        }
    }
}

impl Snapshots {
    /// Opens the snapshotter rooted at `root`, creating `root`, `root/snapshots` (0700)
    /// and the metadata store as needed. Does not restore remote mounts
    /// (see [`Snapshots::restore_remote`]).
    pub fn open(root: impl Into<PathBuf>, options: Options) -> Result<Self> {
        let layout = Layout::new(root);
        layout.create_dirs()?;
        let store = MetaStore::open(&layout.db_path())?;
        let merge = MergeState::new(layout.root(), options.merge);
        // No build runs yet: leftovers of a crash go now (they may be large copies).
        merge.cleanup();
        Ok(Snapshots {
            layout,
            store,
            features: options.features,
            remote: options.remote,
            allow_fallback: options.allow_fallback,
            merge,
        })
    }

    /// The on-disk layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Info of the snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.store.read()?.expect(key, "")?.info(key))
    }

    /// Updates labels of snapshot `name` (see [`crate::store::WriteTx::update_labels`]).
    pub fn update(&self, name: &str, labels: &Labels, field_paths: &[String]) -> Result<Info> {
        let tx = self.store.write()?;
        let info = tx.update_labels(name, labels, field_paths)?;
        tx.commit()?;
        Ok(info)
    }

    /// Usage of `key`: stored at commit for committed snapshots, walked for active ones;
    /// plus, for a flattened merge, what its merge result owns.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let tx = self.store.read()?;
        let rec = tx.expect(key, "")?;
        let merged = merge::nodes_usage(&tx, &rec)?;
        drop(tx);
        let own = if rec.kind == Kind::Active {
            let dir = self.layout.fs_dir(rec.id);
            usage::disk_usage(&dir).map_err(|e| Error::io("compute usage of", &dir, e))?
        } else {
            rec.usage
        };
        Ok(Usage {
            size: own.size.saturating_add(merged.size),
            inodes: own.inodes.saturating_add(merged.inodes),
        })
    }

    /// Mounts of the active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let tx = self.store.read()?;
        let rec = tx.expect(key, "")?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {:?} is committed: only active snapshots and views have mounts",
                clip(key)
            )));
        }
        let lowers = tx.lowers(&rec.parent, &rec.merged)?;
        drop(tx);
        self.mounts_for(&rec, &lowers)
    }

    /// Commits the active snapshot `key` as `name` with `labels` (replacing its labels)
    /// and its disk usage.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        merge::check_client_key(name)?;
        // Walk the upper dir before taking the write lock; the kind and id are checked
        // again in the transaction.
        let before = self.store.read()?.record(key)?;
        let mut usage = match &before {
            Some(rec) if rec.kind == Kind::Active => self.walk_usage(rec.id)?,
            _ => Usage::default(),
        };
        let tx = self.store.write()?;
        if let Some(now) = tx.record(key)? {
            if now.kind == Kind::Active && before.as_ref().map(|b| b.id) != Some(now.id) {
                usage = self.walk_usage(now.id)?;
            }
        }
        tx.commit_active(key, name, usage, labels)?;
        tx.commit()
    }

    fn walk_usage(&self, id: u64) -> Result<Usage> {
        let dir = self.layout.fs_dir(id);
        usage::disk_usage(&dir).map_err(|e| Error::io("compute usage of", &dir, e))
    }

    /// Removes `key` (NotFound if missing, FailedPrecondition if it has children). A
    /// remote snapshot's layer is unmounted through the hook first. Merge results no
    /// longer used go with it (see [`crate::merge`]). Failures to delete the directory
    /// are logged and left for [`Snapshots::cleanup`].
    pub fn remove(&self, key: &str) -> Result<()> {
        let tx = self.store.write()?;
        let rec = tx.remove(key)?;
        let released = merge::release_nodes(&tx, &rec)?;
        tx.commit()?;
        self.remove_dirs(&released);
        if rec.labels.contains_key(labels::REMOTE) {
            if let Some(hook) = &self.remote {
                let mountpoint = self.layout.fs_dir(rec.id);
                let snap = RemoteSnapshot {
                    name: key,
                    id: rec.id,
                    labels: &rec.labels,
                    mountpoint: &mountpoint,
                };
                if let Err(e) = hook.remove(&snap) {
                    tracing::warn!(key = %clip(key), error = %e, "remote layer did not unmount cleanly; detaching it");
                }
            }
        }
        let dir = self.layout.snapshot_dir(rec.id);
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(key = %clip(key), error = %e, "snapshot directory left for cleanup");
        }
        Ok(())
    }

    /// Every snapshot matching `filters` (containerd's filter syntax; none = all),
    /// newest first, without the internal merge results. Newest first lets containerd's
    /// GC, which prunes the trees it walks in order, remove a merged snapshot before the
    /// (older) inputs it holds.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter = Filter::parse_all(filters)?;
        let mut all = self.store.read()?.all()?;
        all.retain(|(key, _)| !merge::is_node_key(key));
        all.sort_by_key(|(_, rec)| std::cmp::Reverse(rec.id));
        Ok(all
            .into_iter()
            .map(|(key, rec)| rec.info(&key))
            .filter(|info| filter.matches(info))
            .collect())
    }

    /// Deletes the directories of snapshots whose records are gone (failures are left
    /// for cleanup).
    fn remove_dirs(&self, removed: &[SnapshotRecord]) {
        for rec in removed {
            if let Err(e) = remove_tree(&self.layout.snapshot_dir(rec.id)) {
                tracing::warn!(id = rec.id, error = %e, "snapshot directory left for cleanup");
            }
        }
    }

    /// Removes directories under `snapshots/` that belong to no snapshot (left by a crash,
    /// a failed create or a failed delete), unused merge results and stale merge build
    /// directories. Returns how many directories were removed.
    pub fn cleanup(&self) -> Result<usize> {
        let orphans = {
            let tx = self.store.write()?;
            let orphans = merge::orphan_nodes(&tx)?;
            tx.commit()?;
            orphans
        };
        self.remove_dirs(&orphans);
        let stale_builds = self.merge.cleanup();
        let dir = self.layout.snapshots_dir();
        let stray: Vec<PathBuf> = {
            // Holding the write transaction keeps creates (which assemble their directory
            // inside theirs) from running while we list.
            let tx = self.store.write()?;
            let ids = tx.ids()?;
            let entries = fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
            let mut stray = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                let keep = name
                    .to_str()
                    .and_then(Layout::parse_id)
                    .is_some_and(|id| ids.contains(&id));
                if !keep {
                    stray.push(entry.path());
                }
            }
            stray
        };
        let mut removed = 0;
        for path in stray {
            let result = if path.is_dir() {
                remove_tree(&path)
            } else {
                fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(error = %e, "cleanup could not remove a stray directory"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "cleanup removed stray snapshot directories");
        }
        Ok(removed + stale_builds + orphans.len())
    }

    /// Mounts every committed remote snapshot again through the hook (daemon start).
    /// Failures are logged and reported; those snapshots answer Unavailable if the hook's
    /// `check` says so.
    pub fn restore_remote(&self) -> Result<RestoreReport> {
        let mut report = RestoreReport::default();
        let Some(hook) = &self.remote else {
            return Ok(report);
        };
        for (name, rec) in self.store.read()?.all()? {
            if rec.kind != Kind::Committed || !rec.labels.contains_key(labels::REMOTE) {
                continue;
            }
            let mountpoint = self.layout.fs_dir(rec.id);
            let snap = RemoteSnapshot {
                name: &name,
                id: rec.id,
                labels: &rec.labels,
                mountpoint: &mountpoint,
            };
            match hook.restore(&snap) {
                Ok(()) => report.restored += 1,
                Err(e) => {
                    tracing::error!(snapshot = %clip(&name), error = %e, "could not restore remote snapshot");
                    report.failed.push((name.clone(), e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// The layer directories that make up snapshot `key`, topmost first: its own `fs`,
    /// then those of the committed snapshots below it. For merge components that need
    /// the real directories (to hardlink or copy from, or to stack in their own mounts).
    pub fn layers(&self, key: &str) -> Result<Vec<Layer>> {
        let tx = self.store.read()?;
        let rec = tx.expect(key, "")?;
        let lowers = tx.lowers(&rec.parent, &rec.merged)?;
        let mut out = vec![self.layer(key, &rec)];
        out.extend(lowers.iter().map(|(name, r)| self.layer(name, r)));
        Ok(out)
    }

    fn layer(&self, name: &str, rec: &SnapshotRecord) -> Layer {
        Layer {
            name: name.to_string(),
            id: rec.id,
            dir: self.layout.fs_dir(rec.id),
            remote: rec.labels.contains_key(labels::REMOTE),
        }
    }

    /// Checks that every remote (lazy) layer among `layers` can be served now: before
    /// handing out mounts on them or reading them for a merge.
    pub(crate) fn check_remote_layers(&self, layers: &[(String, SnapshotRecord)]) -> Result<()> {
        for (name, rec) in layers {
            if !rec.labels.contains_key(labels::REMOTE) {
                continue;
            }
            // A remote layer's directory is empty unless the hook mounted it: without a
            // hook (lazy layers switched off) it must not be served as an empty layer.
            let Some(hook) = &self.remote else {
                return Err(Error::Unavailable(format!(
                    "remote layer {:?} needs lazy layers, which are switched off \
                     ([snapshotter] lazy = false): remove the image and pull it again",
                    clip(name)
                )));
            };
            let mountpoint = self.layout.fs_dir(rec.id);
            let snap = RemoteSnapshot {
                name,
                id: rec.id,
                labels: &rec.labels,
                mountpoint: &mountpoint,
            };
            hook.check(&snap).map_err(|e| {
                Error::Unavailable(format!("remote layer {:?} is unavailable: {e}", clip(name)))
            })?;
        }
        Ok(())
    }

    /// Mounts for `rec` standing on `lowers`, after checking remote lowers are available.
    pub(crate) fn mounts_for(
        &self,
        rec: &SnapshotRecord,
        lowers: &[(String, SnapshotRecord)],
    ) -> Result<Vec<Mount>> {
        self.check_remote_layers(lowers)?;
        let plan = MountPlan {
            kind: rec.kind,
            upper: self.layout.fs_dir(rec.id),
            work: self.layout.work_dir(rec.id),
            lowers: lowers
                .iter()
                .map(|(_, r)| self.layout.fs_dir(r.id))
                .collect(),
        };
        Ok(plan.mounts(&self.features))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_root;
