//! What the metadata store keeps per snapshot, and the public view of it ([`Info`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Snapshot labels (key → value). Empty values are never stored.
pub type Labels = BTreeMap<String, String>;

/// The three kinds of snapshot containerd knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view on a committed parent; never committed.
    View,
    /// A writable snapshot being prepared; may be committed.
    Active,
    /// An immutable snapshot that others may use as parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use for this kind (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage of one snapshot, excluding its parents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated on disk (blocks × 512).
    pub size: i64,
    /// Distinct inodes.
    pub inodes: i64,
}

/// One snapshot as stored, under its key (or name, once committed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Never-reused number naming the snapshot's directory, `snapshots/<id>`.
    pub id: u64,
    /// View, active or committed.
    pub kind: Kind,
    /// Key of the committed parent, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// Keys of committed snapshots whose chains are stacked below the parent chain
    /// (merge snapshots, see `Snapshots::create`). Empty for ordinary snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
    /// Keys of committed snapshots this one keeps from being removed without stacking
    /// them (a flattened merge holds its inputs, see `crate::merge`). Usually empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Creation time (for committed snapshots: commit time, as containerd does).
    pub created: SystemTime,
    /// Last update time.
    pub updated: SystemTime,
    /// Usage computed at commit; zero for active snapshots and views.
    #[serde(default)]
    pub usage: Usage,
}

impl SnapshotRecord {
    /// Every snapshot this one stands on or holds directly: the parent, the merge
    /// sources, then the held snapshots.
    pub fn bases(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.parent.as_str())
            .filter(|p| !p.is_empty())
            .chain(self.merged.iter().map(String::as_str))
            .chain(self.holds.iter().map(String::as_str))
    }

    /// The public info of this record stored under `key`.
    pub fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_string(),
            kind: self.kind,
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        }
    }
}

/// What Stat, List and Update report about a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Parent's name, or empty.
    pub parent: String,
    /// Labels.
    pub labels: Labels,
    /// Creation time.
    pub created: SystemTime,
    /// Last update time.
    pub updated: SystemTime,
}

/// Removes empty values: containerd treats a label set to "" as deleted.
pub fn without_empty(mut labels: Labels) -> Labels {
    labels.retain(|_, v| !v.is_empty());
    labels
}
