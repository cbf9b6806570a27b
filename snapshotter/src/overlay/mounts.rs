//! The mounts containerd gets for a snapshot, exactly as its overlayfs snapshotter builds
//! them:
//!
//! | snapshot | lowers | mount |
//! |---|---|---|
//! | active | none | `bind` of its `fs`, `rw,rbind` |
//! | view | none | `bind` of its (empty) `fs`, `ro,rbind` |
//! | view | one | `bind` of that lower's `fs`, `ro,rbind` |
//! | view | several | `overlay`, `lowerdir=` only (read-only by construction) |
//! | active | some | `overlay`, `workdir=`, `upperdir=`, `lowerdir=` |
//!
//! Lowerdirs are listed topmost first. Overlay options start with the probed features
//! (`index=off`, `userxattr`).

use std::path::PathBuf;

use linuxfs::Mount;

use super::features::OverlayFeatures;
use crate::store::Kind;

/// The directories a snapshot's mounts are made of.
#[derive(Clone, Debug)]
pub struct MountPlan {
    /// View or active (committed snapshots have no mounts).
    pub kind: Kind,
    /// The snapshot's own `fs` directory (upperdir when active).
    pub upper: PathBuf,
    /// Its `work` directory (used when active with lowers).
    pub work: PathBuf,
    /// The `fs` directories of the committed snapshots below, topmost first.
    pub lowers: Vec<PathBuf>,
}

impl MountPlan {
    /// The mounts for this plan.
    pub fn mounts(&self, features: &OverlayFeatures) -> Vec<Mount> {
        let bind = |dir: &PathBuf, mode: &str| Mount {
            fstype: "bind".into(),
            source: dir.display().to_string(),
            options: vec![mode.into(), "rbind".into()],
        };
        let writable = self.kind == Kind::Active;
        match (writable, self.lowers.as_slice()) {
            (true, []) => return vec![bind(&self.upper, "rw")],
            (false, []) => return vec![bind(&self.upper, "ro")],
            (false, [only]) => return vec![bind(only, "ro")],
            _ => {}
        }
        let mut options = features.options();
        if writable {
            options.push(format!("workdir={}", self.work.display()));
            options.push(format!("upperdir={}", self.upper.display()));
        }
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        vec![Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: Kind, lowers: &[&str]) -> MountPlan {
        MountPlan {
            kind,
            upper: "/r/snapshots/9/fs".into(),
            work: "/r/snapshots/9/work".into(),
            lowers: lowers.iter().map(PathBuf::from).collect(),
        }
    }

    const F: OverlayFeatures = OverlayFeatures {
        index_off: true,
        userxattr: false,
    };

    #[test]
    fn binds_without_overlay() {
        let m = plan(Kind::Active, &[]).mounts(&F);
        assert_eq!(
            m,
            [Mount {
                fstype: "bind".into(),
                source: "/r/snapshots/9/fs".into(),
                options: vec!["rw".into(), "rbind".into()]
            }]
        );
        let m = plan(Kind::View, &[]).mounts(&F);
        assert_eq!(m[0].options, ["ro", "rbind"]);
        assert_eq!(m[0].source, "/r/snapshots/9/fs");
        let m = plan(Kind::View, &["/r/snapshots/1/fs"]).mounts(&F);
        assert_eq!(m[0].fstype, "bind");
        assert_eq!(m[0].source, "/r/snapshots/1/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn overlays() {
        let m = plan(Kind::Active, &["/r/snapshots/2/fs", "/r/snapshots/1/fs"]).mounts(&F);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(m[0].source, "overlay");
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
            ]
        );
        let m = plan(Kind::View, &["/r/snapshots/2/fs", "/r/snapshots/1/fs"])
            .mounts(&OverlayFeatures::default());
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
    }
}
