//! The broad benchmark set (`scripts/bench --suite broad`): images of different kinds, each
//! Debian bookworm minbase ([`debbase`], one layer shared by all) plus application layers,
//! built offline by `scripts/lib/build-image.sh` and cached like pydeb (see the parent
//! module). [`BROAD_IMAGES`] says what each one holds.

use super::{cached, run_build_script, CachedImage};
use crate::error::Result;

/// Version key of the shared base (bump when its recipe changes).
pub const DEBBASE_KEY: &str = "debbase-v1";

/// One image of the broad set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadImage {
    /// Name (`--images`, the recipe's kind, the registry repository).
    pub name: &'static str,
    /// Cache key (bump the version when the recipe changes).
    pub key: &'static str,
    /// What it holds.
    pub describe: &'static str,
}

/// The images of the broad set built on [`debbase`] (pydeb, built its own way, is the
/// seventh member of the set).
pub const BROAD_IMAGES: &[BroadImage] = &[
    BroadImage {
        name: "node",
        key: "node-v1",
        describe: "minbase + nodejs (2 layers)",
    },
    BroadImage {
        name: "java",
        key: "java-v1",
        describe: "minbase + openjdk-17-jre-headless + a Hello class (3 layers)",
    },
    BroadImage {
        name: "server",
        key: "server-v1",
        describe: "minbase + postgresql 15 with an initdb'd cluster (2 layers, user postgres)",
    },
    BroadImage {
        name: "gcc",
        key: "gcc-v1",
        describe: "minbase + gcc + libc6-dev (2 layers)",
    },
    BroadImage {
        name: "pysci",
        key: "pysci-v1",
        describe: "minbase + python3/numpy/scipy + pandas, matplotlib, scikit-learn, \
                   scikit-image, statsmodels, sympy, numba, torch (3 layers, >= 1 GB)",
    },
    BroadImage {
        name: "script",
        key: "script-v1",
        describe: "minbase + sqlite3 + a shell entrypoint that execs sqlite3 (2 layers)",
    },
];

/// Looks up a broad-set image by name.
pub fn broad_image(name: &str) -> Option<&'static BroadImage> {
    BROAD_IMAGES.iter().find(|i| i.name == name)
}

/// Debian bookworm minbase alone (tag `latest`, one layer), built on first use.
pub fn debbase() -> Result<CachedImage> {
    cached(DEBBASE_KEY, |layout, scratch, logs| {
        run_build_script(&[layout, scratch], "debbase", logs)
    })
}

/// Builds (or finds in the cache) broad-set image `name` (tag `latest`); `None` when the
/// set has no such image.
pub fn build_broad(name: &str) -> Option<Result<CachedImage>> {
    let image = broad_image(name)?;
    Some(debbase().and_then(|base| {
        cached(image.key, |layout, scratch, logs| {
            run_build_script(&[layout, scratch, &base.layout], image.name, logs)
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_distinct() {
        let mut names: Vec<&str> = BROAD_IMAGES.iter().map(|i| i.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), BROAD_IMAGES.len());
        for i in BROAD_IMAGES {
            assert!(i.key.starts_with(i.name), "{i:?}");
            assert!(
                super::super::BUILD_SCRIPT.contains(&format!("build_{}()", i.name)),
                "the build script has a recipe for {}",
                i.name
            );
        }
        assert!(broad_image("node").is_some());
        assert!(broad_image("pydeb").is_none());
    }
}
