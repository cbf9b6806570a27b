//! `[merge]`: how merged snapshots (an ordered merge of other snapshots) are built.

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

/// How a merged snapshot is materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// Stack layer dirs as overlay lowers when possible, else hardlink, else copy.
    Auto,
    /// Stack the merged snapshots' layer dirs as overlay lowerdirs (keeps lazy layers lazy).
    Overlay,
    /// Hardlink files into one flat dir (same filesystem only).
    Hardlink,
    /// Copy files into one flat dir.
    Copy,
}

/// `[merge]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Merge strategy when a request does not name one: "auto", "overlay", "hardlink" or "copy".
    pub default_mode: MergeMode,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            default_mode: MergeMode::Auto,
        }
    }
}
