//! Merged snapshots in the snapshotter: [`Snapshots::merge`] and the hooks the core calls
//! (release on remove, usage, list, cleanup). See the module docs of [`crate::merge`] for
//! the lifecycle.

use crate::error::{Error, Result};
use crate::overlay::layout::remove_tree;
use crate::overlay::Mount;
use crate::store::{Kind, Labels, Lookup, NewRecord, SnapshotRecord, Usage, WriteTx};
use crate::Snapshots;

use super::flatten::{flatten, FlattenOptions, FlattenStats, LinkMode};
use super::plan::{node_key, stack_misfit, strategy};
use super::request::{
    is_node_key, resolve, MergeRequest, Resolved, Strategy, SOURCES_LABEL, STRATEGY_LABEL,
};

/// What [`Snapshots::merge`] did.
#[derive(Clone, Debug)]
pub struct Merged {
    /// Mounts of the new snapshot.
    pub mounts: Vec<Mount>,
    /// How it was built.
    pub strategy: Strategy,
    /// Key of the internal flattened result it stands on (`None` when stacked).
    pub node: Option<String>,
    /// Whether that result existed already (reused, nothing flattened).
    pub reused: bool,
    /// What flattening did, when this call flattened.
    pub stats: Option<FlattenStats>,
}

/// The requested snapshot, recorded (not committed yet) and installed.
struct CreatedMerge<'a> {
    rec: SnapshotRecord,
    lowers: Vec<(String, SnapshotRecord)>,
    installed: Installed<'a>,
}

/// A snapshot's directories installed in a transaction that is not committed yet;
/// removed on drop unless [`Installed::keep`] was called.
struct Installed<'a> {
    snapshots: &'a Snapshots,
    ids: Vec<u64>,
}

impl Installed<'_> {
    fn keep(mut self) {
        self.ids.clear();
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = remove_tree(&self.snapshots.layout.snapshot_dir(*id));
        }
    }
}

impl Snapshots {
    /// Creates the merged snapshot `req` asks for (see [`crate::merge`]): resolves the
    /// inputs, picks the strategy, stacks or flattens (reusing an existing flattened
    /// result of the same layers), and records the new snapshot. On any error nothing
    /// is left behind.
    pub fn merge(&self, req: &MergeRequest) -> Result<Merged> {
        if req.kind == Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "merge {:?}: only active snapshots and views can be created",
                req.key
            )));
        }
        let resolved = resolve(&self.store.read()?, req)?;
        let mode = req.mode.unwrap_or(self.merge.options.default_mode);
        let dirs: Vec<_> = resolved
            .layers
            .iter()
            .map(|(_, r)| self.layout.fs_dir(r.id))
            .collect();
        let misfit = stack_misfit(
            &self.merge.options,
            &self.layout,
            &self.features,
            req.kind,
            &dirs,
        );
        let strategy = strategy(mode, misfit.is_none());
        if let Some(why) = &misfit {
            if strategy != Strategy::Copy && mode != super::MergeMode::Hardlink {
                tracing::info!(key = %req.key, %why, "merge does not fit an overlay stack: flattening");
            }
        }
        match strategy {
            Strategy::Stack => self.merge_stack(req),
            flat => self.merge_flat(req, flat, resolved),
        }
    }

    fn merge_stack(&self, req: &MergeRequest) -> Result<Merged> {
        let tx = self.store.write()?;
        let resolved = resolve(&tx, req)?;
        let merged = resolved.sources_topmost_first();
        let CreatedMerge {
            rec,
            lowers,
            installed,
        } = self.create_merged(&tx, req, &merged, Strategy::Stack)?;
        tx.commit()?;
        installed.keep();
        let mounts = self.mounts_for(&rec, &lowers)?;
        tracing::info!(key = %req.key, layers = lowers.len(), "merged snapshot stacked");
        Ok(Merged {
            mounts,
            strategy: Strategy::Stack,
            node: None,
            reused: false,
            stats: None,
        })
    }

    fn merge_flat(
        &self,
        req: &MergeRequest,
        strategy: Strategy,
        first: Resolved,
    ) -> Result<Merged> {
        let ids = first.layer_ids();
        let node = node_key(strategy, &ids);
        let _building = self.merge.build_lock(&node);
        if self.store.read()?.record(&node)?.is_some() {
            return self.merge_on_node(req, strategy, &node, &ids, None);
        }
        self.check_remote_layers(&first.layers)?;
        let tmp = self.merge.temp_dir()?;
        let dirs: Vec<_> = first
            .layers
            .iter()
            .map(|(_, r)| self.layout.fs_dir(r.id))
            .collect();
        let link = match strategy {
            Strategy::Copy => LinkMode::Copy,
            _ => LinkMode::Hardlink,
        };
        let opts = FlattenOptions::new(link, self.features.userxattr);
        let stats = flatten(&dirs, &tmp.fs_dir(), &opts).map_err(|e| {
            // A layer vanishing under us is an input removed concurrently.
            match self.check_unchanged(req, &ids) {
                Err(changed) => changed,
                Ok(()) => e.into(),
            }
        })?;
        let tx = self.store.write()?;
        let resolved = self.resolve_unchanged(&tx, req, &ids)?;
        let mut node_labels = Labels::new();
        node_labels.insert(STRATEGY_LABEL.into(), strategy.as_str().into());
        node_labels.insert(SOURCES_LABEL.into(), resolved.sources.join(","));
        let building = format!("{node}#building");
        let created = tx.create(NewRecord {
            kind: Kind::Active,
            key: &building,
            parent: "",
            merged: &[],
            labels: node_labels.clone(),
        })?;
        tx.commit_active(&building, &node, stats.owned, node_labels)?;
        tx.hold(&node, &resolved.sources)?;
        self.layout.install(tmp.path(), created.id)?;
        let node_dir = Installed {
            snapshots: self,
            ids: vec![created.id],
        };
        drop(tmp);
        let CreatedMerge {
            rec,
            lowers,
            installed,
        } = self.create_merged(&tx, req, std::slice::from_ref(&node), strategy)?;
        tx.commit()?;
        node_dir.keep();
        installed.keep();
        tracing::info!(
            key = %req.key,
            node = %node,
            strategy = strategy.as_str(),
            layers = ids.len(),
            linked = stats.linked,
            copied = stats.copied,
            copied_bytes = stats.copied_bytes,
            "merged snapshot flattened"
        );
        Ok(Merged {
            mounts: self.mounts_for(&rec, &lowers)?,
            strategy,
            node: Some(node),
            reused: false,
            stats: Some(stats),
        })
    }

    /// Creates the requested snapshot on the existing result `node`.
    fn merge_on_node(
        &self,
        req: &MergeRequest,
        strategy: Strategy,
        node: &str,
        ids: &[u64],
        stats: Option<FlattenStats>,
    ) -> Result<Merged> {
        let tx = self.store.write()?;
        self.resolve_unchanged(&tx, req, ids)?;
        tx.expect(node, "merge result")?;
        let CreatedMerge {
            rec,
            lowers,
            installed,
        } = self.create_merged(&tx, req, &[node.to_string()], strategy)?;
        tx.commit()?;
        installed.keep();
        tracing::info!(key = %req.key, node, "merged snapshot reuses an existing result");
        Ok(Merged {
            mounts: self.mounts_for(&rec, &lowers)?,
            strategy,
            node: Some(node.to_string()),
            reused: true,
            stats,
        })
    }

    /// Records the requested snapshot standing on `merged` (inputs or a result) and
    /// installs its directory; the caller commits `tx`.
    fn create_merged(
        &self,
        tx: &WriteTx,
        req: &MergeRequest,
        merged: &[String],
        strategy: Strategy,
    ) -> Result<CreatedMerge<'_>> {
        let mut labels = req.labels.clone();
        labels.insert(STRATEGY_LABEL.into(), strategy.as_str().into());
        let rec = tx.create(NewRecord {
            kind: req.kind,
            key: &req.key,
            parent: "",
            merged,
            labels,
        })?;
        let lowers = tx.lowers("", merged)?;
        self.materialize(&rec, &lowers)?;
        let installed = Installed {
            snapshots: self,
            ids: vec![rec.id],
        };
        Ok(CreatedMerge {
            rec,
            lowers,
            installed,
        })
    }

    /// Resolves `req` again in `tx` and checks it still means the layers `ids`.
    fn resolve_unchanged(
        &self,
        tx: &impl Lookup,
        req: &MergeRequest,
        ids: &[u64],
    ) -> Result<Resolved> {
        let resolved = resolve(tx, req).map_err(|e| match e {
            Error::NotFound(msg) => {
                Error::NotFound(format!("{msg} (removed while the merge was being built)"))
            }
            other => other,
        })?;
        if resolved.layer_ids() != ids {
            return Err(Error::FailedPrecondition(format!(
                "merge {:?}: an input was removed or replaced while the merge was built",
                req.key
            )));
        }
        Ok(resolved)
    }

    fn check_unchanged(&self, req: &MergeRequest, ids: &[u64]) -> Result<()> {
        self.resolve_unchanged(&self.store.read()?, req, ids)
            .map(|_| ())
    }
}

/// In the transaction removing `rec`: removes the merge results `rec` stood on that no
/// snapshot uses any more (releasing their inputs). Returns them; the caller deletes
/// their directories after the commit.
pub fn release_nodes(tx: &WriteTx, rec: &SnapshotRecord) -> Result<Vec<SnapshotRecord>> {
    let mut released = Vec::new();
    for m in rec.merged.iter().filter(|m| is_node_key(m)) {
        if tx.record(m)?.is_some() && tx.children(m)?.is_empty() {
            released.push(tx.remove(m)?);
        }
    }
    Ok(released)
}

/// What the merge results `rec` stands on directly own (added to its usage).
pub fn nodes_usage(tx: &impl Lookup, rec: &SnapshotRecord) -> Result<Usage> {
    let mut total = Usage::default();
    for m in rec.merged.iter().filter(|m| is_node_key(m)) {
        if let Some(node) = tx.record(m)? {
            total.size = total.size.saturating_add(node.usage.size);
            total.inodes = total.inodes.saturating_add(node.usage.inodes);
        }
    }
    Ok(total)
}

/// Merge results no snapshot uses (none should exist: results are removed with their
/// last user); removed by cleanup. Returns them; the caller deletes their directories.
pub fn orphan_nodes(tx: &WriteTx) -> Result<Vec<SnapshotRecord>> {
    let mut out = Vec::new();
    for (key, _) in tx.with_prefix(super::request::NODE_PREFIX)? {
        if tx.children(&key)?.is_empty() {
            out.push(tx.remove(&key)?);
        }
    }
    Ok(out)
}
