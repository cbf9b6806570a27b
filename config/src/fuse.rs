//! `[fuse]`: kernel-facing options of the lazy layer mounts.

use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// `[fuse]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct FuseConfig {
    /// How long the kernel may cache file attributes (layers are immutable, so this is safe;
    /// long timeouts keep repeated metadata walks in the kernel's caches).
    #[serde(with = "crate::units::duration")]
    pub attr_timeout: Duration,
    /// How long the kernel may cache name lookups.
    #[serde(with = "crate::units::duration")]
    pub entry_timeout: Duration,
    /// How long the kernel may cache "no such file" answers ("0s" = do not cache).
    #[serde(with = "crate::units::duration")]
    pub negative_timeout: Duration,
    /// Serve reads of fully cached files by FUSE passthrough to the cache file (kernel >= 6.9;
    /// without kernel support, reads go through the daemon). Off by default: passthrough
    /// needs an OPEN round trip to the daemon for every open, while without it the kernel
    /// opens files by itself and serves warm reads from its page cache (docs/benchmarks.md).
    pub passthrough: bool,
    /// FUSE request worker threads per mount (at least 1).
    pub threads: usize,
    /// Let users other than the mounting one (root) access the mounts; containers need it.
    pub allow_other: bool,
    /// Record, per layer, the files read in first-read order (`access.log` in the layer's state
    /// directory; drives `starling optimize`). Off in production.
    pub access_log: bool,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            attr_timeout: Duration::from_secs(3600),
            entry_timeout: Duration::from_secs(3600),
            negative_timeout: Duration::from_secs(3600),
            passthrough: false,
            threads: 4,
            allow_other: true,
            access_log: false,
        }
    }
}

impl FuseConfig {
    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if self.threads == 0 || self.threads > 1024 {
            return Err(Invalid::new(
                at.key("threads"),
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }
}
