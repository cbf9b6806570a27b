//! What a merge request is and how it arrives: the labels of a Prepare or View
//! ([`intercept`]), the modes, and how input names are resolved to committed snapshots
//! ([`resolve`]), within the containerd namespace of the key being created.

use std::fmt;
use std::str::FromStr;

use crate::clip::clip;
use crate::error::{Error, Result};
use crate::store::{Kind, Labels, Lookup, SnapshotRecord};

/// Prepare/View label: the merge inputs, comma separated, bottom first
/// (`merge(A,B,C)`: C's changes on B's on A's).
pub const SOURCES_LABEL: &str = "containerd.io/snapshot/starling/merge.sources";
/// Prepare/View label: `auto` (default), `stack`, `hardlink` or `copy`.
pub const MODE_LABEL: &str = "containerd.io/snapshot/starling/merge.mode";
/// Set by starling on a merged snapshot: the strategy used (`stack`, `hardlink`, `copy`).
pub const STRATEGY_LABEL: &str = "containerd.io/snapshot/starling/merge.strategy";
/// Keys of internal merge results start with this (never a containerd key: containerd
/// namespaces cannot start with a dot). Clients cannot create or commit such keys.
pub const NODE_PREFIX: &str = ".merge/";
/// Most inputs one merge may name.
pub const MAX_SOURCES: usize = 256;

/// How a merge request wants the result built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergeMode {
    /// Stack when it fits the overlay limits, else hardlink (with copy fallback).
    #[default]
    Auto,
    /// Stack the inputs' layer directories as overlay lowerdirs (flattens with hardlinks
    /// when the stack would exceed overlay's limits).
    Stack,
    /// Flatten into one directory, hardlinking files (copying where that fails).
    Hardlink,
    /// Flatten into one directory, copying every file.
    Copy,
}

impl MergeMode {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMode::Auto => "auto",
            MergeMode::Stack => "stack",
            MergeMode::Hardlink => "hardlink",
            MergeMode::Copy => "copy",
        }
    }
}

impl fmt::Display for MergeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MergeMode {
    type Err = Error;

    /// Parses a label value; `overlay` (the configuration file's word) means `stack`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(MergeMode::Auto),
            "stack" | "overlay" => Ok(MergeMode::Stack),
            "hardlink" => Ok(MergeMode::Hardlink),
            "copy" => Ok(MergeMode::Copy),
            other => Err(Error::InvalidArgument(format!(
                "label {MODE_LABEL}: unknown merge mode {other:?} (expected auto, stack, hardlink or copy)",
                other = clip(other)
            ))),
        }
    }
}

/// How a merge was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Layer directories stacked as overlay lowerdirs.
    Stack,
    /// Flattened with hardlinks (copies where a hardlink is impossible).
    Hardlink,
    /// Flattened with copies.
    Copy,
}

impl Strategy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Stack => "stack",
            Strategy::Hardlink => "hardlink",
            Strategy::Copy => "copy",
        }
    }
}

/// A request for a merged snapshot.
#[derive(Clone, Debug)]
pub struct MergeRequest {
    /// Active (writable, committable) or view.
    pub kind: Kind,
    /// The new snapshot's key.
    pub key: String,
    /// Input names, bottom first.
    pub sources: Vec<String>,
    /// The requested mode; `None` takes the snapshotter's default.
    pub mode: Option<MergeMode>,
    /// Labels of the new snapshot.
    pub labels: Labels,
}

/// Whether `key` names an internal merge result.
pub fn is_node_key(key: &str) -> bool {
    key.starts_with(NODE_PREFIX)
}

/// Refuses a client-chosen key or name in the internal namespace.
pub fn check_client_key(key: &str) -> Result<()> {
    if is_node_key(key) {
        return Err(Error::InvalidArgument(format!(
            "snapshot key {key:?}: keys starting with {NODE_PREFIX:?} are reserved for starling's merge results", key = clip(key)
        )));
    }
    Ok(())
}

/// The merge request carried by the labels of a Prepare or View, if any. Also refuses
/// reserved keys. Errors: a merge with a parent, a mode without sources, a bad mode, an
/// empty or oversized source list (all InvalidArgument).
pub fn intercept(
    kind: Kind,
    key: &str,
    parent: &str,
    labels: &Labels,
) -> Result<Option<MergeRequest>> {
    check_client_key(key)?;
    let sources = labels.get(SOURCES_LABEL).filter(|v| !v.is_empty());
    let mode = labels.get(MODE_LABEL).filter(|v| !v.is_empty());
    let Some(sources) = sources else {
        if mode.is_some() {
            return Err(Error::InvalidArgument(format!(
                "snapshot {key:?}: label {MODE_LABEL} without {SOURCES_LABEL}",
                key = clip(key)
            )));
        }
        return Ok(None);
    };
    if !parent.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "snapshot {key:?}: a merge ({SOURCES_LABEL}) takes no parent, got {parent:?}",
            key = clip(key),
            parent = clip(parent)
        )));
    }
    let sources = parse_sources(sources)?;
    let mode = mode.map(|m| m.parse()).transpose()?;
    Ok(Some(MergeRequest {
        kind,
        key: key.to_string(),
        sources,
        mode,
        labels: labels.clone(),
    }))
}

/// Splits the sources label: comma separated, blanks around names ignored.
pub fn parse_sources(value: &str) -> Result<Vec<String>> {
    let names: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err(Error::InvalidArgument(format!(
            "label {SOURCES_LABEL}: empty snapshot name in {value:?}",
            value = clip(value)
        )));
    }
    if names.len() > MAX_SOURCES {
        return Err(Error::InvalidArgument(format!(
            "label {SOURCES_LABEL}: {} inputs, at most {MAX_SOURCES} are allowed",
            names.len()
        )));
    }
    Ok(names)
}

/// A request's inputs looked up in one transaction.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Backend keys of the inputs, bottom first, each once (at its topmost place).
    pub sources: Vec<String>,
    /// The layers to stack, topmost first, each once at its topmost place: the chains of
    /// the inputs, last input first.
    pub layers: Vec<(String, SnapshotRecord)>,
}

impl Resolved {
    /// The inputs topmost first: what a stacked snapshot's `merged` lists.
    pub fn sources_topmost_first(&self) -> Vec<String> {
        self.sources.iter().rev().cloned().collect()
    }

    /// The layer ids, topmost first: the identity of the merge.
    pub fn layer_ids(&self) -> Vec<u64> {
        self.layers.iter().map(|(_, r)| r.id).collect()
    }
}

/// Resolves `req`'s inputs to committed snapshots and their layers.
pub fn resolve(tx: &impl Lookup, req: &MergeRequest) -> Result<Resolved> {
    if req.sources.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "merge {:?}: no inputs",
            clip(&req.key)
        )));
    }
    let mut keys: Vec<String> = Vec::with_capacity(req.sources.len());
    for name in &req.sources {
        let (key, rec) = resolve_source(tx, &req.key, name)?;
        if rec.kind != Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "merge {:?}: input {name:?} ({key:?}) is not a committed snapshot",
                clip(&req.key),
                key = clip(&key),
                name = clip(name),
            )));
        }
        keys.push(key);
    }
    // Each input once, at its topmost place (a repeated input adds nothing below itself).
    let mut topmost_first: Vec<String> = Vec::with_capacity(keys.len());
    for k in keys.iter().rev() {
        if !topmost_first.contains(k) {
            topmost_first.push(k.clone());
        }
    }
    let layers = tx.lowers("", &topmost_first)?;
    topmost_first.reverse();
    Ok(Resolved {
        sources: topmost_first,
        layers,
    })
}

/// The containerd namespace of a backend key `NAMESPACE/ID/NAME` (ID all digits).
pub fn namespace_of(key: &str) -> Option<&str> {
    let (ns, rest) = key.split_once('/')?;
    let (id, name) = rest.split_once('/')?;
    let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    (!ns.is_empty() && numeric && !name.is_empty()).then_some(ns)
}

/// Finds input `name` for the snapshot `key` being created: an exact backend key, or
/// (when `key` is a containerd key `NS/ID/NAME`) the backend key `NS/<id>/name` with
/// the highest id, preferring committed ones (containerd's ids only grow, so that is the
/// snapshot containerd knows under that name; older ones may still wait for its GC).
fn resolve_source(tx: &impl Lookup, key: &str, name: &str) -> Result<(String, SnapshotRecord)> {
    if is_node_key(name) {
        return Err(Error::InvalidArgument(format!(
            "merge {key:?}: input {name:?} is an internal merge result, not a snapshot name",
            key = clip(key),
            name = clip(name)
        )));
    }
    if name == key {
        return Err(Error::InvalidArgument(format!(
            "merge {key:?}: a merge cannot take itself as input",
            key = clip(key)
        )));
    }
    if let Some(rec) = tx.record(name)? {
        return Ok((name.to_string(), rec));
    }
    let ns = namespace_of(key);
    if let Some(ns) = ns {
        let prefix = format!("{ns}/");
        let mut best: Option<(bool, u64, String, SnapshotRecord)> = None;
        for (k, rec) in tx.with_prefix(&prefix)? {
            let Some((id, rest)) = k[prefix.len()..].split_once('/') else {
                continue;
            };
            if rest != name || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let rank = (rec.kind == Kind::Committed, id.parse::<u64>().unwrap_or(0));
            if best.as_ref().is_none_or(|b| rank > (b.0, b.1)) {
                best = Some((rank.0, rank.1, k, rec));
            }
        }
        if let Some((_, _, k, rec)) = best {
            if k == key {
                return Err(Error::InvalidArgument(format!(
                    "merge {key:?}: a merge cannot take itself as input",
                    key = clip(key)
                )));
            }
            return Ok((k, rec));
        }
    }
    Err(Error::NotFound(match ns {
        Some(ns) => {
            format!(
                "merge {key:?}: input snapshot {name:?} does not exist in namespace {ns:?}",
                key = clip(key),
                name = clip(name)
            )
        }
        None => format!(
            "merge {key:?}: input snapshot {name:?} does not exist",
            key = clip(key),
            name = clip(name)
        ),
    }))
}
