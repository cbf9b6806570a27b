//! Test images: `busybox` (one layer, built in-process in milliseconds), the realistic
//! Debian images `pydeb` (bookworm minbase + python3, 2 layers, ~170 MB) and `pylarge`
//! (+ gcc/g++/JDK, >= 500 MB) built by `scripts/lib/build-image.sh` and cached across runs,
//! the [`broad`] benchmark set (node, java, server, gcc, pysci, script on a shared minbase)
//! built the same way, and the hand-made [`edge`] image.
//!
//! Cache: `$STARLING_TEST_IMAGE_CACHE` or `/var/cache/starling-test/images`; each image is a
//! directory `<name>-<version>/` holding `layout/` (OCI layout), `build.json` and `logs/`,
//! built into a temp dir and renamed into place under an exclusive `flock` on
//! `<name>-<version>.lock`, so concurrent tests wait for one build and then share it.

pub mod broad;
pub mod edge;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::oci::{Content, Entry, ImageBuilder, LayerBuilder, OciImage};
use crate::process::run_cmd;
use crate::registry::Registry;

pub use broad::{broad_image, build_broad, debbase, BroadImage, BROAD_IMAGES};
pub use edge::{edge_image, EdgeImage, EdgeOptions};

/// Version key of the pydeb image (bump when the recipe changes).
pub const PYDEB_KEY: &str = "pydeb-v1";
/// Version key of the pylarge image.
pub const PYLARGE_KEY: &str = "pylarge-v1";

const BUILD_SCRIPT: &str = include_str!("../../../scripts/lib/build-image.sh");

/// Root of the image cache.
pub fn cache_root() -> PathBuf {
    std::env::var_os("STARLING_TEST_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/starling-test/images"))
}

/// A finished, cached OCI layout.
#[derive(Debug, Clone)]
pub struct CachedImage {
    /// Cache key (`pydeb-v1`).
    pub key: String,
    /// The cache entry directory.
    pub dir: PathBuf,
    /// The OCI layout inside it.
    pub layout: PathBuf,
    /// How long the build took (from `build.json`).
    pub build_secs: Option<f64>,
}

impl CachedImage {
    /// The image tagged `tag` in the layout.
    pub fn image(&self, tag: &str) -> Result<OciImage> {
        OciImage::open(&self.layout, tag)
    }

    /// Pushes tag `tag` as `name` (`repo:tag`); returns the manifest digest.
    pub fn push(&self, registry: &Registry, tag: &str, name: &str) -> Result<String> {
        registry.push_layout(&self.layout, tag, name)
    }
}

/// The cached image `name` of any kind the harness builds: pydeb, pylarge, debbase or a
/// broad-set image.
pub fn by_name(name: &str) -> Result<CachedImage> {
    match name {
        "pydeb" => pydeb(),
        "pylarge" => pylarge(),
        "debbase" => debbase(),
        other => build_broad(other).unwrap_or_else(|| {
            Err(Error::invalid(
                "image name",
                format!(
                    "unknown image {other:?} (pydeb, pylarge, debbase, {})",
                    BROAD_IMAGES
                        .iter()
                        .map(|i| i.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }),
    }
}

/// Returns the cache entry `key`, building it with `build(layout_out, scratch_dir, log_dir)`
/// first if it is missing. Concurrent callers (threads or processes) wait for one build.
pub fn cached(
    key: &str,
    build: impl FnOnce(&Path, &Path, &Path) -> Result<()>,
) -> Result<CachedImage> {
    let root = cache_root();
    std::fs::create_dir_all(&root).ctx(|| format!("create {}", root.display()))?;
    let dir = root.join(key);
    let done =
        |dir: &Path| dir.join("build.json").exists() && dir.join("layout/index.json").exists();
    let entry = |dir: PathBuf| -> CachedImage {
        let build_secs = std::fs::read(dir.join("build.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["build_secs"].as_f64());
        CachedImage {
            key: key.to_string(),
            layout: dir.join("layout"),
            dir,
            build_secs,
        }
    };
    if done(&dir) {
        return Ok(entry(dir));
    }
    let lock_path = root.join(format!("{key}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ctx(|| format!("open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::sys(format!("flock {}", lock_path.display()), e))?;
    if done(&dir) {
        return Ok(entry(dir));
    }
    let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ctx(|| format!("remove {}", tmp.display()))?;
    }
    let (scratch, logs) = (tmp.join("work"), tmp.join("logs"));
    std::fs::create_dir_all(&logs).ctx(|| format!("create {}", logs.display()))?;
    let t = Instant::now();
    eprintln!(
        "harness: building test image {key} into {} (cached for later runs)",
        dir.display()
    );
    if let Err(e) = build(&tmp.join("layout"), &scratch, &logs) {
        crate::mounts::unmount_under(&tmp).ok();
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::write(
        tmp.join("build.json"),
        serde_json::json!({"key": key, "build_secs": secs}).to_string(),
    )
    .ctx(|| "write build.json".into())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("remove stale {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).ctx(|| format!("rename {} -> {}", tmp.display(), dir.display()))?;
    eprintln!("harness: built {key} in {secs:.0} s");
    Ok(entry(dir))
}

fn run_build_script(args: &[&Path], kind: &str, logs: &Path) -> Result<()> {
    crate::prereq::debian_images().map_err(Error::Missing)?;
    let script = logs.join("build-image.sh");
    std::fs::write(&script, BUILD_SCRIPT).ctx(|| format!("write {}", script.display()))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(kind).args(args).env("LOG_DIR", logs);
    let out = run_cmd(&mut cmd, Duration::from_secs(3600))?;
    let _ = std::fs::write(
        logs.join("build.log"),
        format!("{}\n{}", out.stdout, out.stderr),
    );
    out.check().map(drop)
}

/// The realistic Python image (tags `latest` and `implicit-parents`), built on first use.
pub fn pydeb() -> Result<CachedImage> {
    cached(PYDEB_KEY, |layout, scratch, logs| {
        run_build_script(&[layout, scratch], "pydeb", logs)
    })
}

/// pydeb + compilers and a JDK (tag `latest`, >= 500 MB unpacked), built on first use.
pub fn pylarge() -> Result<CachedImage> {
    let base = pydeb()?;
    cached(PYLARGE_KEY, |layout, scratch, logs| {
        run_build_script(&[layout, scratch, &base.layout], "pylarge", logs)
    })
}

/// One-layer busybox image: `/bin/busybox` (from Debian's busybox-static) with a symlink per
/// applet, `/etc/passwd`, `/etc/group`; default command prints `hello from busybox`.
pub fn busybox() -> Result<ImageBuilder> {
    let bin = Path::new("/bin/busybox");
    if !bin.exists() {
        return Err(Error::Missing(
            "/bin/busybox (package busybox-static)".into(),
        ));
    }
    let list = run_cmd(Command::new(bin).arg("--list"), Duration::from_secs(10))?
        .check()?
        .stdout;
    let mut l = LayerBuilder::new();
    for d in ["bin", "etc", "dev", "proc", "sys", "root"] {
        l = l.dir(d);
    }
    l = l
        .entry(Entry::dir("tmp").mode(0o1777))
        .entry(Entry::file("bin/busybox", Content::HostFile(bin.to_path_buf())).mode(0o755));
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        l = l.symlink(format!("bin/{applet}"), "busybox");
    }
    l = l
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", "root:x:0:\nnogroup:x:65534:\n");
    Ok(ImageBuilder::new()
        .env(["PATH=/bin"])
        .cmd(["/bin/sh", "-c", "echo hello from busybox"])
        .layer(l))
}
