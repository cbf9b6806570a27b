//! `[daemon]`: what a stopping daemon does with its lazy layers' FUSE mounts, and how long
//! they wait for the next daemon.

use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// Shortest non-zero `restart_grace`: shorter ones would end the connections before a
/// restarted daemon could take them.
pub const MIN_RESTART_GRACE: Duration = Duration::from_secs(1);

/// `[daemon]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// On SIGTERM/SIGINT, unmount every lazy layer and stop the fd store holder (running
    /// containers lose their lazy layers). false: hand the mounts to the fd store holder, so
    /// a restarted daemon serves them again and running containers keep them (their reads
    /// wait meanwhile, at most `restart_grace`). `starling daemon --unmount-on-stop` sets it.
    pub unmount_on_stop: bool,
    /// How long the fd store holder keeps the lazy layers' FUSE connections while no daemon
    /// runs (after a crash or a stop that handed them over). Then it aborts them (waiting
    /// reads fail with ENOTCONN instead of hanging), detaches their mounts and exits.
    /// "0s": wait for the next daemon forever. Else at least 1s.
    #[serde(with = "crate::units::duration")]
    pub restart_grace: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            unmount_on_stop: false,
            restart_grace: Duration::from_secs(600),
        }
    }
}

impl DaemonConfig {
    /// `restart_grace` as the holder takes it: `None` = wait forever.
    pub fn restart_grace(&self) -> Option<Duration> {
        (!self.restart_grace.is_zero()).then_some(self.restart_grace)
    }

    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        if !self.restart_grace.is_zero() && self.restart_grace < MIN_RESTART_GRACE {
            return Err(Invalid::new(
                at.key("restart_grace"),
                "must be \"0s\" (wait forever) or at least 1s",
            ));
        }
        Ok(())
    }
}
