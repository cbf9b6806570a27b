//! Kernel overlayfs feature probes, in one place (containerd's `overlayutils`): whether
//! overlay mounts with several lowerdirs work under the root at all, whether to pass
//! `index=off`, and whether `userxattr` is needed (inside a user namespace).

use std::fs;
use std::path::Path;

use linuxfs::mount::{detach, mount_all};
use linuxfs::Mount;

/// A failed probe: overlayfs is unusable under the given root.
#[derive(Debug, thiserror::Error)]
#[error("overlayfs is not usable under {root}: {what}: {source}")]
pub struct ProbeError {
    /// The snapshotter root probed.
    pub root: String,
    /// The step that failed.
    pub what: &'static str,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Overlay mount options the kernel wants from us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayFeatures {
    /// Pass `index=off` (the `index` module parameter exists): keeps overlay from
    /// binding lowerdirs to one upper, so layers can be shared by many mounts.
    pub index_off: bool,
    /// Pass `userxattr` (running in a user namespace: trusted.* xattrs are not ours).
    pub userxattr: bool,
}

impl OverlayFeatures {
    /// Options every overlay mount starts with.
    pub fn options(&self) -> Vec<String> {
        let mut o = Vec::new();
        if self.index_off {
            o.push("index=off".to_string());
        }
        if self.userxattr {
            o.push("userxattr".to_string());
        }
        o
    }

    /// Probes the kernel: mounts an overlay with two lowerdirs in a scratch directory
    /// under `root` (which must exist) and unmounts it. Needs CAP_SYS_ADMIN.
    pub fn probe(root: &Path) -> Result<Self, ProbeError> {
        let features = OverlayFeatures {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: in_user_namespace(),
        };
        let err = |what, source| ProbeError {
            root: root.display().to_string(),
            what,
            source,
        };
        let scratch = tempfile_dir(root).map_err(|e| err("create probe directory", e))?;
        let result = (|| {
            for d in ["lower1", "lower2", "upper", "work", "merged"] {
                fs::create_dir(scratch.join(d)).map_err(|e| err("create probe directory", e))?;
            }
            let p = |d: &str| scratch.join(d).display().to_string();
            let mut options = features.options();
            options.push(format!("lowerdir={}:{}", p("lower2"), p("lower1")));
            options.push(format!("upperdir={}", p("upper")));
            options.push(format!("workdir={}", p("work")));
            let m = Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options,
            };
            let merged = scratch.join("merged");
            mount_all(&[m], &merged).map_err(|e| err("mount overlay with two lowerdirs", e))?;
            detach(&merged).map_err(|e| err("unmount probe overlay", e))
        })();
        let _ = fs::remove_dir_all(&scratch);
        result.map(|()| features)
    }
}

fn tempfile_dir(root: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = root.join(format!("overlay-probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir)?;
    Ok(dir)
}

/// Whether this process runs in a user namespace (uid map is not the identity over
/// all 2^32 ids), like containerd's `userns.RunningInUserNS`.
fn in_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_initial_uid_map(&map),
        Err(_) => false,
    }
}

fn is_initial_uid_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_containerd_order() {
        let f = OverlayFeatures {
            index_off: true,
            userxattr: true,
        };
        assert_eq!(f.options(), ["index=off", "userxattr"]);
        assert!(OverlayFeatures::default().options().is_empty());
    }

    #[test]
    fn uid_map_detection() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("0 1000 1\n"));
        assert!(!is_initial_uid_map("0 0 4294967295\n1 1 1\n"));
    }

    #[test]
    fn probe_mounts_for_real_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount overlayfs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = OverlayFeatures::probe(tmp.path()).unwrap();
        assert_eq!(
            f.index_off,
            Path::new("/sys/module/overlay/parameters/index").exists()
        );
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "probe cleans up"
        );
    }
}
