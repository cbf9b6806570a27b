//! The metadata store: every snapshot's record in one `redb` database
//! (`<root>/metadata.db`), with the rules containerd's snapshot storage enforces (unique
//! keys, committed parents, no removal with children, commit of active snapshots only).
//!
//! Tables:
//! - `snapshots`: key (or name, once committed) → JSON [`SnapshotRecord`];
//! - `ids`: id → key, the snapshot directories that may exist (`Snapshots::cleanup` removes
//!   the others);
//! - `children`: key → keys of the snapshots standing on it (as parent or merge source);
//! - `meta`: `next_id` (ids are never reused) and `schema`.
//!
//! A [`WriteTx`] is one redb write transaction: nothing is visible or durable until
//! [`WriteTx::commit`], and dropping it aborts. The caller does its directory work (create
//! in a temp name, rename into place) between the checks and the commit, so a crash
//! leaves either no record or a record with its directory; stray directories are
//! removed by cleanup.

mod error;
mod record;

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};

pub use error::StoreError;
pub use record::{without_empty, Info, Kind, Labels, SnapshotRecord, Usage};

use crate::clip::clip;
use crate::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const IDS: TableDefinition<u64, &str> = TableDefinition::new("ids");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_NEXT_ID: &str = "next_id";
const META_SCHEMA: &str = "schema";
use error::SCHEMA_VERSION;

fn dberr<E: Into<redb::Error>>(e: E) -> Error {
    Error::Store(StoreError::Db(e.into()))
}

fn decode(key: &str, bytes: &[u8]) -> Result<SnapshotRecord> {
    serde_json::from_slice(bytes).map_err(|source| {
        Error::Store(StoreError::Corrupt {
            key: key.to_string(),
            source,
        })
    })
}

fn encode(key: &str, record: &SnapshotRecord) -> Result<Vec<u8>> {
    // Only a clock before 1970 makes this fail (SystemTime is stored since the epoch).
    serde_json::to_vec(record).map_err(|source| {
        Error::Store(StoreError::Encode {
            key: key.to_string(),
            source,
        })
    })
}

/// The metadata database.
pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    /// Opens (or creates) the database at `path` and makes sure its tables exist.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        {
            tx.open_table(SNAPSHOTS).map_err(dberr)?;
            tx.open_table(IDS).map_err(dberr)?;
            tx.open_multimap_table(CHILDREN).map_err(dberr)?;
            let mut meta = tx.open_table(META).map_err(dberr)?;
            let schema = meta.get(META_SCHEMA).map_err(dberr)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(dberr)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(Error::Store(StoreError::Schema { found })),
            }
        }
        tx.commit().map_err(dberr)?;
        Ok(MetaStore { db })
    }

    /// Starts a read-only transaction (a consistent snapshot of the store).
    pub fn read(&self) -> Result<ReadTx> {
        Ok(ReadTx {
            tx: self.db.begin_read().map_err(dberr)?,
        })
    }

    /// Starts the (single) write transaction; blocks while another one is open.
    pub fn write(&self) -> Result<WriteTx> {
        Ok(WriteTx {
            tx: self.db.begin_write().map_err(dberr)?,
        })
    }
}

/// Record lookup shared by read and write transactions.
pub trait Lookup {
    /// The record stored under `key`, if any.
    fn record(&self, key: &str) -> Result<Option<SnapshotRecord>>;

    /// Every record whose key starts with `prefix`, in key order.
    fn with_prefix(&self, prefix: &str) -> Result<Vec<(String, SnapshotRecord)>>;

    /// The record under `key`, or NotFound naming `what` (e.g. "parent").
    fn expect(&self, key: &str, what: &str) -> Result<SnapshotRecord> {
        self.record(key)?.ok_or_else(|| {
            Error::NotFound(format!("{what} snapshot {:?} does not exist", clip(key)))
        })
    }

    /// The committed snapshots a new snapshot on `parent` (plus merge sources `merged`)
    /// stacks, topmost first: the parent, the parent's own bases recursively, then each
    /// merge source's chain. A snapshot reached twice is listed once, at its first place.
    fn lowers(&self, parent: &str, merged: &[String]) -> Result<Vec<(String, SnapshotRecord)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        // Depth-first, pre-order: a stack of (child, key) still to visit.
        let mut stack: Vec<(String, String)> = Vec::new();
        for m in merged.iter().rev() {
            stack.push((String::new(), m.clone()));
        }
        if !parent.is_empty() {
            stack.push((String::new(), parent.to_string()));
        }
        while let Some((child, key)) = stack.pop() {
            let Some(rec) = self.record(&key)? else {
                return Err(Error::Store(StoreError::Dangling {
                    key: child,
                    missing: key,
                }));
            };
            if !seen.insert(rec.id) {
                continue;
            }
            for m in rec.merged.iter().rev() {
                stack.push((key.clone(), m.clone()));
            }
            if !rec.parent.is_empty() {
                stack.push((key.clone(), rec.parent.clone()));
            }
            out.push((key, rec));
        }
        Ok(out)
    }
}

fn scan_prefix(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, SnapshotRecord)>> {
    let mut out = Vec::new();
    for entry in table.range(prefix..).map_err(dberr)? {
        let (k, v) = entry.map_err(dberr)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_string(), decode(key, v.value())?));
    }
    Ok(out)
}

/// A read-only transaction.
pub struct ReadTx {
    tx: redb::ReadTransaction,
}

impl Lookup for ReadTx {
    fn record(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        let bytes = table.get(key).map_err(dberr)?;
        bytes.map(|v| decode(key, v.value())).transpose()
    }

    fn with_prefix(&self, prefix: &str) -> Result<Vec<(String, SnapshotRecord)>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        scan_prefix(&table, prefix)
    }
}

impl ReadTx {
    /// Every snapshot, in key order.
    pub fn all(&self) -> Result<Vec<(String, SnapshotRecord)>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let key = k.value().to_string();
            let rec = decode(&key, v.value())?;
            out.push((key, rec));
        }
        Ok(out)
    }
}

/// The write transaction: snapshot rules are checked here, against the same state that
/// is committed.
pub struct WriteTx {
    tx: redb::WriteTransaction,
}

impl Lookup for WriteTx {
    fn record(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        let bytes = table.get(key).map_err(dberr)?;
        bytes.map(|v| decode(key, v.value())).transpose()
    }

    fn with_prefix(&self, prefix: &str) -> Result<Vec<(String, SnapshotRecord)>> {
        let table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        scan_prefix(&table, prefix)
    }
}

/// A new view or active snapshot, as [`WriteTx::create`] takes it.
#[derive(Clone, Debug)]
pub struct NewRecord<'a> {
    /// View or active.
    pub kind: Kind,
    /// Key; must not exist.
    pub key: &'a str,
    /// Committed parent, or empty.
    pub parent: &'a str,
    /// Further committed snapshots stacked below the parent chain (merge), usually empty.
    pub merged: &'a [String],
    /// Labels (empty values are dropped).
    pub labels: Labels,
}

impl WriteTx {
    /// Makes everything done in this transaction durable and visible.
    pub fn commit(self) -> Result<()> {
        self.tx.commit().map_err(dberr)
    }

    /// Every id that has a record: the snapshot directories that must be kept.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        let table = self.tx.open_table(IDS).map_err(dberr)?;
        let mut out = HashSet::new();
        for entry in table.iter().map_err(dberr)? {
            out.insert(entry.map_err(dberr)?.0.value());
        }
        Ok(out)
    }

    fn put(&self, key: &str, rec: &SnapshotRecord) -> Result<()> {
        let mut table = self.tx.open_table(SNAPSHOTS).map_err(dberr)?;
        table
            .insert(key, encode(key, rec)?.as_slice())
            .map_err(dberr)?;
        Ok(())
    }

    fn next_id(&self) -> Result<u64> {
        let mut meta = self.tx.open_table(META).map_err(dberr)?;
        let id = meta
            .get(META_NEXT_ID)
            .map_err(dberr)?
            .map_or(1, |v| v.value());
        meta.insert(META_NEXT_ID, id + 1).map_err(dberr)?;
        Ok(id)
    }

    /// Inserts a view or active snapshot after containerd's checks: the key is new
    /// (AlreadyExists), the parent and merge sources exist (NotFound) and are committed
    /// (InvalidArgument). Allocates its id and links it under its bases.
    pub fn create(&self, new: NewRecord<'_>) -> Result<SnapshotRecord> {
        if new.kind == Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "snapshot {:?}: only active or view snapshots can be created",
                clip(new.key)
            )));
        }
        if new.key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        if self.record(new.key)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "snapshot {:?} already exists",
                clip(new.key)
            )));
        }
        let bases = std::iter::once(new.parent)
            .filter(|p| !p.is_empty())
            .chain(new.merged.iter().map(String::as_str));
        let mut linked = HashSet::new();
        for base in bases {
            let rec = self.expect(base, "parent")?;
            if rec.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {:?} is not a committed snapshot",
                    clip(base)
                )));
            }
            linked.insert(base);
        }
        let now = SystemTime::now();
        let rec = SnapshotRecord {
            id: self.next_id()?,
            kind: new.kind,
            parent: new.parent.to_string(),
            merged: new.merged.to_vec(),
            holds: Vec::new(),
            labels: without_empty(new.labels),
            created: now,
            updated: now,
            usage: Usage::default(),
        };
        self.put(new.key, &rec)?;
        self.tx
            .open_table(IDS)
            .map_err(dberr)?
            .insert(rec.id, new.key)
            .map_err(dberr)?;
        let mut children = self.tx.open_multimap_table(CHILDREN).map_err(dberr)?;
        for base in linked {
            children.insert(base, new.key).map_err(dberr)?;
        }
        Ok(rec)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name` (same id and
    /// directory), with `labels` replacing its labels and `usage` recorded. Checks, in
    /// containerd's order: `name` is new (AlreadyExists), `key` exists (NotFound) and is
    /// active (FailedPrecondition).
    pub fn commit_active(
        &self,
        key: &str,
        name: &str,
        usage: Usage,
        labels: Labels,
    ) -> Result<SnapshotRecord> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        if self.record(name)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "committed snapshot {:?} already exists",
                clip(name)
            )));
        }
        let mut rec = self.expect(key, "active")?;
        if rec.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {:?} is not active",
                clip(key)
            )));
        }
        let now = SystemTime::now();
        rec.kind = Kind::Committed;
        rec.created = now;
        rec.updated = now;
        rec.labels = without_empty(labels);
        rec.usage = usage;
        self.tx
            .open_table(SNAPSHOTS)
            .map_err(dberr)?
            .remove(key)
            .map_err(dberr)?;
        self.put(name, &rec)?;
        self.tx
            .open_table(IDS)
            .map_err(dberr)?
            .insert(rec.id, name)
            .map_err(dberr)?;
        let mut children = self.tx.open_multimap_table(CHILDREN).map_err(dberr)?;
        let bases: HashSet<&str> = rec.bases().collect();
        for base in bases {
            children.remove(base, key).map_err(dberr)?;
            children.insert(base, name).map_err(dberr)?;
        }
        Ok(rec)
    }

    /// Removes the snapshot `key`: NotFound if missing, FailedPrecondition if another
    /// snapshot stands on it. Returns the removed record (its directory is now stray).
    pub fn remove(&self, key: &str) -> Result<SnapshotRecord> {
        let rec = self.expect(key, "")?;
        let mut children = self.tx.open_multimap_table(CHILDREN).map_err(dberr)?;
        let first_child = children
            .get(key)
            .map_err(dberr)?
            .next()
            .transpose()
            .map_err(dberr)?
            .map(|c| c.value().to_string());
        if let Some(child) = first_child {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {:?} with child {:?}",
                clip(key),
                clip(&child)
            )));
        }
        let bases: HashSet<&str> = rec.bases().collect();
        for base in bases {
            children.remove(base, key).map_err(dberr)?;
        }
        drop(children);
        self.tx
            .open_table(SNAPSHOTS)
            .map_err(dberr)?
            .remove(key)
            .map_err(dberr)?;
        self.tx
            .open_table(IDS)
            .map_err(dberr)?
            .remove(rec.id)
            .map_err(dberr)?;
        Ok(rec)
    }

    /// Updates labels the way containerd's `UpdateInfo` does: no field paths replace all
    /// labels; `labels` replaces all labels; `labels.KEY` sets (or, with no or an empty
    /// value in `labels`, deletes) one label; any other path is InvalidArgument. Empty
    /// values are dropped. The updated time is refreshed.
    pub fn update_labels(&self, key: &str, labels: &Labels, paths: &[String]) -> Result<Info> {
        let mut rec = self.expect(key, "")?;
        let mut updated = rec.labels.clone();
        if paths.is_empty() {
            updated = labels.clone();
        }
        for path in paths {
            if let Some(label) = path.strip_prefix("labels.") {
                match labels.get(label) {
                    Some(v) => updated.insert(label.to_string(), v.clone()),
                    None => updated.remove(label),
                };
            } else if path == "labels" {
                updated = labels.clone();
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {:?} field on snapshot {:?}",
                    clip(path),
                    clip(key)
                )));
            }
        }
        rec.labels = without_empty(updated);
        rec.updated = SystemTime::now();
        self.put(key, &rec)?;
        Ok(rec.info(key))
    }

    /// Makes the committed snapshot `key` hold `holds` (committed snapshots it does not
    /// stack): they cannot be removed while `key` exists. NotFound / InvalidArgument
    /// like merge sources of [`WriteTx::create`].
    pub fn hold(&self, key: &str, holds: &[String]) -> Result<SnapshotRecord> {
        let mut rec = self.expect(key, "")?;
        let mut children = self.tx.open_multimap_table(CHILDREN).map_err(dberr)?;
        for held in holds {
            if rec.holds.contains(held) || rec.bases().any(|b| b == held) {
                continue;
            }
            let h = self.expect(held, "held")?;
            if h.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "held snapshot {:?} is not a committed snapshot",
                    clip(held)
                )));
            }
            children.insert(held.as_str(), key).map_err(dberr)?;
            rec.holds.push(held.clone());
        }
        drop(children);
        self.put(key, &rec)?;
        Ok(rec)
    }

    /// Keys of the snapshots standing directly on `key` (for tests and diagnostics).
    pub fn children(&self, key: &str) -> Result<Vec<String>> {
        let children = self.tx.open_multimap_table(CHILDREN).map_err(dberr)?;
        let mut out = Vec::new();
        for c in children.get(key).map_err(dberr)? {
            out.push(c.map_err(dberr)?.value().to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
