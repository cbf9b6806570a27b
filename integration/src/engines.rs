//! Which container engines the tests drive and where their programs are: bookworm's
//! containerd 1.6 (the system package) and the newer ones `scripts/engines` extracts from
//! Debian trixie/sid into a private cache (containerd 1.7 and 2.1, Docker 28 with its CLI
//! and the buildx plugin). Nothing here is installed system-wide: the harness runs the
//! programs from the cache by full path (runc stays bookworm's `/usr/sbin/runc`).

use std::path::{Path, PathBuf};

use crate::prereq::Check;

/// Root of the engine cache: `$STARLING_ENGINES_DIR`, default
/// `/var/cache/starling-test/engines` (what `scripts/engines` fills).
pub fn engines_dir() -> PathBuf {
    std::env::var_os("STARLING_ENGINES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/starling-test/engines"))
}

/// Checks that `prefix/rel` is an executable file for every `rel`.
fn programs_in(what: &str, prefix: &Path, rels: &[&str]) -> Check {
    let missing: Vec<String> = rels
        .iter()
        .map(|r| prefix.join(r))
        .filter(|p| crate::process::which(&p.to_string_lossy()).is_none())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: missing {} (run scripts/engines or scripts/setup as root)",
            missing.join(", ")
        ))
    }
}

/// A containerd release line the harness knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContainerdVersion {
    /// Debian bookworm's containerd 1.6 (`/usr/bin/containerd`, the system package).
    #[default]
    V1_6,
    /// containerd 1.7 from Debian trixie (extracted into the engine cache).
    V1_7,
    /// containerd 2.1 from Debian sid (extracted into the engine cache).
    V2_1,
}

impl ContainerdVersion {
    /// Every version, oldest first.
    pub const ALL: [ContainerdVersion; 3] = [Self::V1_6, Self::V1_7, Self::V2_1];

    /// `"1.6"`, `"1.7"`, `"2.1"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1_6 => "1.6",
            Self::V1_7 => "1.7",
            Self::V2_1 => "2.1",
        }
    }

    /// The extracted package's root (`<cache>/containerd-X.Y`), `None` for the system one.
    pub fn prefix(self) -> Option<PathBuf> {
        match self {
            Self::V1_6 => None,
            v => Some(engines_dir().join(format!("containerd-{}", v.name()))),
        }
    }

    /// Directory of `containerd`, `ctr` and `containerd-shim-runc-v2`; `None` for the
    /// system one (found in `$PATH`).
    pub fn bin_dir(self) -> Option<PathBuf> {
        self.prefix().map(|p| p.join("usr/bin"))
    }

    fn program(self, name: &str) -> PathBuf {
        match self.bin_dir() {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The `containerd` program.
    pub fn containerd(self) -> PathBuf {
        self.program("containerd")
    }

    /// The matching `ctr`.
    pub fn ctr(self) -> PathBuf {
        self.program("ctr")
    }

    /// containerd 2.x (config version 3, transfer service pulls, CRI split in plugins).
    pub fn is_2x(self) -> bool {
        matches!(self, Self::V2_1)
    }

    /// The config file `version` it reads: 2 for 1.x, 3 for 2.x.
    pub fn config_version(self) -> i64 {
        if self.is_2x() {
            3
        } else {
            2
        }
    }

    /// The CRI plugins to disable when a test does not want the CRI.
    pub fn cri_plugins(self) -> &'static [&'static str] {
        if self.is_2x() {
            &[
                "io.containerd.grpc.v1.cri",
                "io.containerd.cri.v1.images",
                "io.containerd.cri.v1.runtime",
                "io.containerd.podsandbox.controller.v1.podsandbox",
            ]
        } else {
            &["io.containerd.grpc.v1.cri"]
        }
    }

    /// `$PATH` for the containerd process: its own directory first, so it starts its own
    /// `containerd-shim-runc-v2` (containerd looks the shim up in `$PATH`), then the
    /// caller's (bookworm's `runc`).
    pub fn path_env(self) -> Option<std::ffi::OsString> {
        let dir = self.bin_dir()?;
        let rest =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut v = vec![dir];
        v.extend(std::env::split_paths(&rest));
        std::env::join_paths(v).ok()
    }

    /// Prerequisite check: the programs of this version are there.
    pub fn check(self) -> Check {
        match self.prefix() {
            None => crate::prereq::binaries(&["containerd", "ctr"]),
            Some(p) => programs_in(
                &format!("containerd {}", self.name()),
                &p,
                &[
                    "usr/bin/containerd",
                    "usr/bin/ctr",
                    "usr/bin/containerd-shim-runc-v2",
                ],
            ),
        }
    }
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "containerd {}", self.name())
    }
}

/// Docker 28 (Debian sid's `docker.io`, `docker-cli`, `docker-buildx`) extracted into
/// `<cache>/docker-28`.
pub fn docker_prefix() -> PathBuf {
    engines_dir().join("docker-28")
}

/// Prerequisite check: dockerd, the docker CLI and the buildx plugin are there.
pub fn docker_check() -> Check {
    programs_in(
        "Docker 28",
        &docker_prefix(),
        &[
            "usr/sbin/dockerd",
            "usr/bin/docker",
            "usr/libexec/docker/cli-plugins/docker-buildx",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_programs_and_config_versions() {
        assert_eq!(
            ContainerdVersion::V1_6.containerd(),
            PathBuf::from("containerd")
        );
        assert!(ContainerdVersion::V2_1
            .ctr()
            .ends_with("containerd-2.1/usr/bin/ctr"));
        assert_eq!(ContainerdVersion::V1_7.config_version(), 2);
        assert_eq!(ContainerdVersion::V2_1.config_version(), 3);
        assert!(ContainerdVersion::V1_6.path_env().is_none());
        let p = ContainerdVersion::V1_7.path_env().unwrap();
        let first = std::env::split_paths(&p).next().unwrap();
        assert!(first.ends_with("containerd-1.7/usr/bin"), "{first:?}");
    }
}
