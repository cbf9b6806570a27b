//! Workload-based optimization (`starling optimize`): run the image's workload once,
//! lazily, record the files it reads, and convert the image with those files placed first
//! in the layers that provide them (followed by `.prefetch.landmark`) — the job of
//! `ctr-remote image optimize`, without its full pull and fanotify.
//!
//! Steps:
//! 1. the lazy source: SRC itself when it is an eStargz (or zstd:chunked) image in a
//!    registry; otherwise SRC is first converted (unprioritized) to DST, which must then be
//!    a registry, and profiled from there;
//! 2. profile: mount each layer lazily over FUSE (`fusefs`, `[fuse] access_log` on,
//!    background fetch off: only what the workload reads is fetched), stack the mounts as
//!    overlay lower dirs under a temporary upper dir, and run the workload there with `runc`
//!    ([`bundle`]: the image config's entrypoint, env, workdir and user with overrides from
//!    [`workload`]; no network) for at most the period;
//! 3. per layer, the files it served in first-read order (its access log — overlay only
//!    opens the copy it shows, so whiteouts and opaque dirs are already applied; checked
//!    again with [`owner`]), and a conversion of the lazy source to DST with those lists.
//!
//! Everything lives in one temporary directory (mounts, chunk cache, container state); the
//! container, the mounts and the directory are removed on success, error and Ctrl-C.

pub mod bundle;
mod error;
pub mod owner;
pub mod rootfs;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fusefs::layer::LayerSource;
use fusefs::layer::{LayerContext, LayerSettings};
use fusefs::metrics::Metrics;
use fusefs::mount::{MountManager, MountedLayer};
use registry::{Reference, RegistryClient};
use serde::Serialize;
use serde_json::Value;

use crate::convert::image::ZSTD_MANIFEST_CHECKSUM;
use crate::convert::{
    self, ConvertOptions, ConvertReport, ImageLocation, PlatformChoice, Prioritize, Progress,
};
use linuxfs::{Mount, MountGuard};

pub use bundle::Ending;
pub use error::OptimizeError;
pub use owner::Provider;
pub use workload::{Overrides, Workload};

/// Default profiling period (as `ctr-remote image optimize`).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// Options of [`optimize`].
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// How to write DST (format, chunk size, level, jobs, threads). Its `prioritize` and
    /// `platform` are set by [`optimize`] (the workload runs on this host's platform).
    pub convert: ConvertOptions,
    /// Changes to the image's entrypoint, command, env, workdir, user.
    pub overrides: Overrides,
    /// How long the workload may run before it is killed.
    pub period: Duration,
    /// The OCI runtime (`runc`) [default: along `PATH`].
    pub runtime: Option<PathBuf>,
    /// Where the temporary directory goes [default: the system's temp dir]. Holds the
    /// chunks the workload read and what it wrote.
    pub work_dir: Option<PathBuf>,
    /// Set to stop (Ctrl-C): the workload is killed and everything cleaned up.
    pub stop: Arc<AtomicBool>,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            convert: ConvertOptions::default(),
            overrides: Overrides::default(),
            period: DEFAULT_PERIOD,
            runtime: None,
            work_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Prioritized files of one layer.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct LayerProfile {
    /// Files placed before the landmark, in first-read order (without a leading `/`).
    pub files: Vec<String>,
    /// Their uncompressed size (hardlinks counted per name).
    pub bytes: u64,
    /// Compressed bytes fetched from this layer while profiling.
    pub fetched_bytes: u64,
}

/// The result of [`optimize`].
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    /// The image that was mounted lazily and converted (SRC, or DST after a first
    /// unprioritized conversion).
    pub profiled: String,
    /// True when SRC was not eStargz in a registry and was converted to DST first.
    pub converted_first: bool,
    /// The process that ran.
    pub args: Vec<String>,
    /// How it ended: `exited`, `timed out` or `interrupted`.
    pub ending: String,
    /// Its exit code when it exited by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Per layer (bottom first).
    pub layers: Vec<LayerProfile>,
    /// Logged files that the merged image does not show from that layer (should not
    /// happen), first few.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    /// Seconds preparing (first conversion if any, resolving, mounting).
    pub prepare_seconds: f64,
    /// Seconds the workload ran.
    pub run_seconds: f64,
    /// Seconds converting to DST.
    pub convert_seconds: f64,
    /// Total seconds.
    pub seconds: f64,
    /// The conversion to DST.
    pub convert: ConvertReport,
}

/// Dropped files listed in the report.
const MAX_DROPPED: usize = 50;

/// The temporary directory; mounts left under it are detached before it is removed.
struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    fn new(parent: Option<&Path>) -> Result<WorkDir, OptimizeError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("stl-optimize-")
            .tempdir_in(&parent)
            .map_err(|e| {
                OptimizeError::io(format!("creating a work dir in {}", parent.display()), e)
            })?;
        Ok(WorkDir { dir })
    }

    fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let mut points = vec![self.join("rootfs")];
        if let Ok(rd) = std::fs::read_dir(self.join("m")) {
            points.extend(rd.flatten().map(|e| e.path()));
        }
        for p in points {
            if let Err(e) = linuxfs::mount::detach_all(&p) {
                tracing::warn!("{e}");
            }
        }
    }
}

async fn until_stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` unless `stop` is set first.
async fn stoppable<T>(
    stop: &AtomicBool,
    f: impl std::future::Future<Output = Result<T, OptimizeError>>,
) -> Result<T, OptimizeError> {
    tokio::select! {
        r = f => r,
        _ = until_stopped(stop) => Err(OptimizeError::Interrupted),
    }
}

fn check_options(opts: &OptimizeOptions) -> Result<PathBuf, OptimizeError> {
    if opts.period.is_zero() {
        return Err(OptimizeError::Option(
            "the period must be longer than 0 seconds".into(),
        ));
    }
    bundle::find_runtime(opts.runtime.as_deref()).ok_or_else(|| {
        OptimizeError::NoRuntime(match &opts.runtime {
            Some(p) => format!("the OCI runtime {} is not an executable file", p.display()),
            None => "runc was not found along PATH (install runc or give --runtime)".into(),
        })
    })
}

/// True if a layer descriptor says eStargz or zstd:chunked (mountable lazily).
fn is_lazy_layer(d: &oci_spec::image::Descriptor) -> bool {
    d.annotations().as_ref().is_some_and(|a| {
        a.contains_key(estargz::toc::TOC_DIGEST_ANNOTATION)
            || a.contains_key(ZSTD_MANIFEST_CHECKSUM)
    })
}

fn registry_err(image: &Reference, e: registry::RegistryError) -> OptimizeError {
    OptimizeError::Source(format!("{image}: {e}"))
}

/// Profiles the workload of the image at `src` and writes it to `dst` with the accessed
/// files prioritized. `cfg` gives registry hosts, credentials and fetch settings.
pub async fn optimize(
    cfg: &config::Config,
    src: &ImageLocation,
    dst: &ImageLocation,
    opts: &OptimizeOptions,
    progress: Arc<dyn Progress>,
) -> Result<OptimizeReport, OptimizeError> {
    let started = Instant::now();
    let runc = check_options(opts)?;
    let work = WorkDir::new(opts.work_dir.as_deref())?;
    let metrics = Arc::new(Metrics::default());
    let client = RegistryClient::new(cfg, metrics.registry.clone())
        .map_err(|e| OptimizeError::Source(format!("registry client: {e}")))?;
    let stop = &opts.stop;

    // 1. The lazy source.
    let plain = ConvertOptions {
        prioritize: Prioritize::None,
        platform: PlatformChoice::Host,
        ..opts.convert.clone()
    };
    let mut converted_first = false;
    let mut image = None;
    if let ImageLocation::Registry(r) = src {
        let img = stoppable(stop, async {
            client.resolve(r).await.map_err(|e| registry_err(r, e))
        })
        .await?;
        if img.layers().iter().all(is_lazy_layer) {
            image = Some(img);
        }
    }
    let image = match image {
        Some(img) => img,
        None => {
            let ImageLocation::Registry(d) = dst else {
                return Err(OptimizeError::NotLazy(format!(
                    "{src} is not an eStargz image in a registry, and DST is not a registry \
                     to convert it to first: convert it with `starling convert` and optimize \
                     that, or give a registry DST"
                )));
            };
            tracing::info!("{src} is not eStargz in a registry: converting it to {dst} first");
            stoppable(stop, async {
                convert::convert(&client, src, dst, &plain, progress.clone())
                    .await
                    .map_err(OptimizeError::Convert)
            })
            .await?;
            converted_first = true;
            stoppable(stop, async {
                client.resolve(d).await.map_err(|e| registry_err(d, e))
            })
            .await?
        }
    };
    let config: Value = serde_json::from_slice(&image.config_bytes).map_err(|e| {
        OptimizeError::Source(format!("{}: config is not JSON: {e}", image.reference))
    })?;
    let workload =
        Workload::from_config(&config, &opts.overrides).map_err(OptimizeError::Workload)?;

    // 2. Mount lazily and run.
    let mut fcfg = cfg.clone();
    fcfg.root = work.join("root");
    fcfg.cache.dir = PathBuf::new();
    fcfg.fuse.access_log = true;
    fcfg.fetch.background_fetch = false;
    let mut settings = LayerSettings::from_config(&fcfg);
    settings.status_dir = None;
    let ctx = LayerContext::new(&fcfg, settings, tokio::runtime::Handle::current(), metrics)
        .map_err(|e| OptimizeError::Source(format!("lazy layers: {e}")))?;
    let manager = MountManager::new(ctx);
    let reference = image.reference.to_string();
    let count = image.layers().len();
    let mut mounted: Vec<Arc<MountedLayer>> = Vec::new();
    let mut mountpoints = Vec::new();
    for (i, d) in image.layers().iter().enumerate() {
        let layer_err = |reason: String| OptimizeError::Layer {
            position: i + 1,
            count,
            reason,
        };
        let state = work.join(&format!("s/{i}"));
        let mp = work.join(&format!("m/{i}"));
        for dir in [&state, &mp] {
            std::fs::create_dir_all(dir)
                .map_err(|e| layer_err(format!("{}: {e}", dir.display())))?;
        }
        let toc = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(estargz::toc::TOC_DIGEST_ANNOTATION))
            .map(String::as_str);
        let source = LayerSource::new(&reference, d.digest().as_ref(), Some(d.size()), toc)
            .map_err(|e| layer_err(e.to_string()))?;
        let m = stoppable(stop, async {
            manager
                .mount_async(source, &state, &mp)
                .await
                .map_err(|e| layer_err(format!("lazy mount: {e}")))
        })
        .await?;
        mounted.push(m);
        mountpoints.push(mp);
    }
    let prepare_seconds = started.elapsed().as_secs_f64();
    tracing::info!(command = ?workload.args, period = ?opts.period, "running the workload");
    let run_started = Instant::now();
    let ending = {
        let work_root = work.dir.path().to_path_buf();
        let workload = workload.clone();
        let period = opts.period;
        let stop = opts.stop.clone();
        let lowers = mountpoints.clone();
        tokio::task::spawn_blocking(move || {
            profile(&work_root, &lowers, &workload, &runc, period, &stop)
        })
        .await
        .map_err(|e| OptimizeError::io("running the workload", std::io::Error::other(e)))??
    };
    let run_seconds = run_started.elapsed().as_secs_f64();
    match ending {
        Ending::Exited(0) | Ending::TimedOut => {}
        Ending::Exited(code) => tracing::warn!(
            code,
            "the workload exited with a non-zero status; its accesses are used anyway"
        ),
        Ending::Interrupted => return Err(OptimizeError::Interrupted),
    }

    // 3. Per-layer lists, then convert.
    let logs: Vec<Vec<Vec<u8>>> = mounted
        .iter()
        .map(|m| m.layer().accessed_files().unwrap_or_default())
        .collect();
    let fetched: Vec<u64> = mounted
        .iter()
        .map(|m| m.layer().status().fetched_bytes)
        .collect();
    let indexes: Vec<&estargz::LayerIndex> = mounted.iter().map(|m| m.layer().index()).collect();
    let (mut per_layer, dropped) = assign(&indexes, &logs);
    for (l, f) in per_layer.iter_mut().zip(fetched) {
        l.fetched_bytes = f;
    }
    drop(indexes);
    drop(mounted);
    manager.unmount_all();
    drop(manager);

    let lists: Vec<Vec<Vec<u8>>> = per_layer
        .iter()
        .map(|l| l.files.iter().map(|f| f.as_bytes().to_vec()).collect())
        .collect();
    let final_opts = ConvertOptions {
        prioritize: Prioritize::PerLayer(lists),
        reconvert: true,
        ..plain
    };
    let profiled = ImageLocation::Registry(image.reference.clone());
    tracing::info!("writing {dst}");
    let convert_started = Instant::now();
    let mut report = stoppable(stop, async {
        convert::convert(&client, &profiled, dst, &final_opts, progress)
            .await
            .map_err(OptimizeError::Convert)
    })
    .await?;
    report.source = src.to_string();
    drop(work);
    Ok(OptimizeReport {
        profiled: profiled.to_string(),
        converted_first,
        args: workload.args,
        ending: match ending {
            Ending::Exited(_) => "exited",
            Ending::TimedOut => "timed out",
            Ending::Interrupted => "interrupted",
        }
        .into(),
        exit_code: match ending {
            Ending::Exited(c) => Some(c),
            _ => None,
        },
        layers: per_layer,
        dropped,
        prepare_seconds,
        run_seconds,
        convert_seconds: convert_started.elapsed().as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
        convert: report,
    })
}

/// Stacks `lowers` (bottom first) with a writable upper at `work/rootfs`, runs the
/// workload there until it exits or `period` passes; unmounts before returning.
fn profile(
    work: &Path,
    lowers: &[PathBuf],
    w: &Workload,
    runc: &Path,
    period: Duration,
    stop: &AtomicBool,
) -> Result<Ending, OptimizeError> {
    let rootfs = work.join("rootfs");
    let upper = work.join("upper");
    let ovl_work = work.join("work");
    let empty = work.join("empty");
    for d in [&rootfs, &upper, &ovl_work, &empty] {
        std::fs::create_dir_all(d)
            .map_err(|e| OptimizeError::io(format!("creating {}", d.display()), e))?;
    }
    let mut lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if lower.is_empty() {
        lower.push(empty.display().to_string());
    }
    let mount = Mount {
        fstype: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={}", lower.join(":")),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", ovl_work.display()),
        ],
    };
    let guard = MountGuard::new(&[mount], &rootfs)
        .map_err(|e| OptimizeError::io("mounting the container's root (overlay)", e))?;

    let root = rootfs::Root::open(&rootfs)
        .map_err(|e| OptimizeError::io("opening the container's root", e))?;
    let (uid, gid) = root
        .resolve_user(&w.user)
        .map_err(OptimizeError::Workload)?;
    if root
        .find_command(&w.args[0], w.path_env(), &w.cwd)
        .is_none()
    {
        return Err(OptimizeError::Workload(format!(
            "command {:?} not found in the image (PATH={}, working directory {})",
            w.args[0],
            w.path_env(),
            w.cwd
        )));
    }
    drop(root);

    let bundle_dir = work.join("bundle");
    std::fs::create_dir_all(&bundle_dir)
        .map_err(|e| OptimizeError::io("creating the bundle dir", e))?;
    let spec = bundle::runtime_spec(
        &bundle::ProcessSpec {
            args: w.args.clone(),
            env: w.env.clone(),
            cwd: w.cwd.clone(),
            uid,
            gid,
        },
        &rootfs,
        "optimize",
    );
    std::fs::write(
        bundle_dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("a JSON value serializes"),
    )
    .map_err(|e| OptimizeError::io("writing the bundle's config.json", e))?;

    let id = format!(
        "stl-optimize-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let state = work.join("runc");
    let ending = {
        let mut c = bundle::Container::start(runc, &state, &bundle_dir, &id)
            .map_err(|e| OptimizeError::io(format!("starting {}", runc.display()), e))?;
        c.wait(period, stop)
            .map_err(|e| OptimizeError::io("waiting for the workload", e))?
        // Dropped here: `runc delete --force`.
    };
    drop(guard);
    Ok(ending)
}

/// Per layer, the logged files (`/path`, first-read order) that the merged image shows
/// from that layer, with their size; and the ones it does not (first [`MAX_DROPPED`]).
fn assign(
    layers: &[&estargz::LayerIndex],
    logs: &[Vec<Vec<u8>>],
) -> (Vec<LayerProfile>, Vec<String>) {
    let mut per_layer = vec![LayerProfile::default(); layers.len()];
    let mut dropped = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        for p in log {
            let rel = p.strip_prefix(b"/").unwrap_or(p);
            if !rel.is_empty() && owner::provider(layers, rel) == Provider::Layer(i) {
                per_layer[i].bytes += owner::file_size(layers[i], rel);
                per_layer[i]
                    .files
                    .push(String::from_utf8_lossy(rel).into_owned());
            } else if dropped.len() < MAX_DROPPED {
                dropped.push(format!("layer {}: {}", i + 1, String::from_utf8_lossy(p)));
            }
        }
    }
    (per_layer, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_first() {
        let o = OptimizeOptions {
            period: Duration::ZERO,
            ..Default::default()
        };
        assert!(matches!(check_options(&o), Err(OptimizeError::Option(m)) if m.contains("period")));
        let o = OptimizeOptions {
            runtime: Some("/nonexistent/runc".into()),
            ..Default::default()
        };
        let e = check_options(&o).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/runc"), "{e}");
    }
}
