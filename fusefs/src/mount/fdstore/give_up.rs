//! When and how a holder gives up the connections it holds: after `restart_grace` with
//! fds held and no daemon connected ([`Grace`]), or when told to (`starling fdstore
//! --release`). Giving up aborts each held connection whose mount is still where it was
//! (waiting requests fail with ENOTCONN instead of hanging), detaches that mount
//! (`MNT_DETACH`: it leaves the mount table now and goes with its last user) and closes the
//! fds. A connection whose mount is not found is only closed: with the daemon gone the
//! holder's fd is its last, and closing it ends the connection too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::HeldMeta;
use crate::mount::sys;
use linuxfs::mountinfo::{self, MountInfo};

/// The restart grace of a holder: how long it keeps fds while no daemon is connected.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grace {
    /// `None`: forever.
    limit: Option<Duration>,
    /// Since when fds are held with no daemon connected.
    orphan_since: Option<Instant>,
}

impl Grace {
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Grace {
            limit,
            orphan_since: None,
        }
    }

    /// Sets the limit (a daemon that hands over tells its own).
    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
    }

    /// The limit.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// Records the state at `now`; true once fds have been held without a daemon for the
    /// whole limit.
    pub(crate) fn expired(&mut self, now: Instant, holds: bool, daemons: usize) -> bool {
        if !holds || daemons > 0 {
            self.orphan_since = None;
            return false;
        }
        let since = *self.orphan_since.get_or_insert(now);
        self.limit
            .is_some_and(|l| now.saturating_duration_since(since) >= l)
    }
}

/// The held connections whose mount is still on their mountpoint (topmost mount there, a
/// FUSE mount with the held device number): these are aborted and detached.
pub(crate) fn still_mounted<'a>(
    mounts: &[MountInfo],
    held: impl IntoIterator<Item = &'a HeldMeta>,
) -> Vec<&'a HeldMeta> {
    held.into_iter()
        .filter(|h| {
            mounts
                .iter()
                .rev()
                .find(|m| m.path == h.mountpoint)
                .is_some_and(|m| super::super::is_fuse(&m.fstype) && m.dev == h.dev)
        })
        .collect()
}

/// Aborts the connections of `held` that are still mounted and detaches their mounts;
/// returns the mountpoints detached. The caller closes the fds afterwards.
pub(crate) fn abort_and_detach<'a>(held: impl IntoIterator<Item = &'a HeldMeta>) -> Vec<PathBuf> {
    let mounts = match mountinfo::mounts() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the mount table; closing the held connections without detaching their mounts");
            return Vec::new();
        }
    };
    let mut detached = Vec::new();
    for h in still_mounted(&mounts, held) {
        if let Err(e) = sys::abort_connection(h.dev) {
            tracing::warn!(mountpoint = %h.mountpoint.display(), error = %e, "could not abort the FUSE connection");
        }
        match nix::mount::umount2(&h.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => detached.push(h.mountpoint.clone()),
            Err(e) => {
                tracing::warn!(mountpoint = %h.mountpoint.display(), error = %e, "could not detach the layer mount")
            }
        }
    }
    detached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mp: &str, dev: u64) -> HeldMeta {
        HeldMeta {
            mountpoint: PathBuf::from(mp),
            dev,
            layer: "sha256:ab".into(),
        }
    }

    fn mount(path: &str, fstype: &str, dev: u64) -> MountInfo {
        MountInfo {
            path: PathBuf::from(path),
            fstype: fstype.into(),
            dev,
        }
    }

    #[test]
    fn grace_runs_only_while_fds_are_held_without_a_daemon() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Grace::new(Some(s(10)));
        assert!(!g.expired(t0, true, 1), "a daemon is connected");
        assert!(!g.expired(t0 + s(1), true, 0), "starts now");
        assert!(!g.expired(t0 + s(10), true, 0));
        // A daemon came and went: the clock starts again.
        assert!(!g.expired(t0 + s(10), true, 1));
        assert!(!g.expired(t0 + s(12), true, 0));
        assert!(!g.expired(t0 + s(21), true, 0));
        assert!(g.expired(t0 + s(22), true, 0));
        // Holding nothing: never (the idle rule applies then).
        let mut g = Grace::new(Some(s(1)));
        assert!(!g.expired(t0, false, 0));
        assert!(!g.expired(t0 + s(100), false, 0));
        // No limit: forever.
        let mut g = Grace::new(None);
        assert!(!g.expired(t0, true, 0));
        assert!(!g.expired(t0 + s(1 << 30), true, 0));
        g.set_limit(Some(s(5)));
        assert!(g.expired(t0 + s(1 << 30), true, 0));
    }

    #[test]
    fn only_connections_still_on_their_mountpoint_are_aborted() {
        let held = [
            meta("/r/snapshots/1/fs", 50),
            meta("/r/snapshots/2/fs", 51),
            meta("/r/snapshots/3/fs", 52),
            meta("/r/snapshots/4/fs", 53),
        ];
        let mounts = [
            mount("/", "ext4", 2049),
            mount("/r/snapshots/1/fs", "fuse.starling", 50),
            // Another connection now serves 2 (remounted): not ours.
            mount("/r/snapshots/2/fs", "fuse.starling", 60),
            // 3 is covered by a later mount of another kind.
            mount("/r/snapshots/3/fs", "fuse.starling", 52),
            mount("/r/snapshots/3/fs", "overlay", 52),
            // 4 is gone.
        ];
        let got: Vec<&str> = still_mounted(&mounts, &held)
            .iter()
            .map(|h| h.mountpoint.to_str().unwrap())
            .collect();
        assert_eq!(got, ["/r/snapshots/1/fs"]);
    }
}
