//! The daemon's remote-layer hook: [`LazyLayers`] implements [`RemoteLayers`] over the
//! lazy eStargz file system ([`fusefs::mount::MountManager`]).
//!
//! - **prepare**: the layer's identity comes from the Prepare labels ([`identity`]); a
//!   layer without a TOC digest label, one that is not eStargz, whose TOC does not match,
//!   or whose registry does not deliver its footer and TOC within `fetch.mount_timeout`
//!   is declined (the core falls back to a normal snapshot that containerd fills). After
//!   a registry host timed out or refused, layers on it are declined at once for
//!   `fetch.host_failure_hold` unless a request to it succeeds meanwhile, so the later
//!   layers of a pull do not each wait again. Otherwise the footer and TOC are fetched and verified, saved in the
//!   layer's state directory `<root>/snapshots/<id>/layer` (next to the `fs` mountpoint, so
//!   deleting the snapshot directory frees it), the layer is mounted on `fs` and the
//!   prefetch starts; the Prepare returns without waiting for it (reads of prefetched
//!   files wait for its request) unless `fetch.wait_for_prefetch` is set (then bounded by
//!   `fetch.prefetch_timeout`).
//!   While a layer is prepared, the image's later layers (from the Prepare's layer-list
//!   labels) are opened ahead ([`ahead`]): their footers and TOCs fetched and indexed, so
//!   their own Prepares take them over and the image's program is read ahead early.
//! - **restore** (daemon start): mounts the layer again from its state directory, without
//!   the registry. With an fd store that still holds the FUSE connection of the mount on
//!   `fs` (the daemon was killed), that connection is served again: running containers'
//!   requests waited and now complete. Otherwise a dead mount on `fs` is detached first.
//! - **remove**: stops fetching and unmounts (a busy mount is detached and goes with its
//!   last user).
//! - **check**: the mount is there and served by this process.
//! - [`LazyLayers::shutdown`]: unmounts every layer (daemon stop with
//!   `[daemon] unmount_on_stop`, or without an fd store).
//! - [`LazyLayers::hand_over`]: leaves every layer mounted, its FUSE connection with the
//!   fd store holder, for the next daemon (default daemon stop).
//!
//! A layer that carries a TOC digest but is declined (registry, format or local failure)
//! falls back with a WARN naming the cause and, for registry errors that cannot heal, the
//! setting that fixes it; the last ones are kept in `<root>/fallbacks.json`
//! ([`fallbacks`]). Layers without a TOC digest (plain images) are an INFO line only.
//!
//! The chunk cache is shared by all layers and outlives them: a layer removed and pulled
//! again reads what was cached before without fetching it.

pub mod ahead;
pub mod fallbacks;
pub mod identity;
mod program;
#[cfg(test)]
mod test_labels;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fusefs::layer::{has_saved_state, LayerError, LayerSource, LayerStatus};
use fusefs::layer::{ContextError, LayerContext, LayerSettings, OpaqueXattr};
use fusefs::metrics::Metrics;
use fusefs::mount::fdstore::FdStore;
use fusefs::mount::{MountError, MountManager};

use crate::clip::clip;
use crate::overlay::OverlayFeatures;
use crate::remote::{HookError, LayerOutcome, LayerRequest, RemoteLayers, RemoteSnapshot};
use crate::store::Labels;
use ahead::Ahead;
use fallbacks::{Fallback, FallbackLog};
use identity::{IdentityError, LayerIdentity};

/// Name of a layer's state directory inside its snapshot directory.
pub const STATE_DIR: &str = "layer";

/// Errors setting up the hook.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The registry client or chunk cache could not be set up.
    #[error("lazy layers: {0}")]
    Context(#[from] ContextError),
}

/// Why a Prepare was not served lazily, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// The labels do not name a layer with a TOC digest.
    Labels,
    /// The blob is not eStargz, or its TOC does not verify.
    NotEstargz,
    /// The registry failed or did not answer in time.
    Registry,
    /// A local failure (mount, state directory).
    Local,
}

impl Decline {
    /// Every kind, for metrics.
    pub const ALL: [Decline; 4] = [
        Decline::Labels,
        Decline::NotEstargz,
        Decline::Registry,
        Decline::Local,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Decline::Labels => "labels",
            Decline::NotEstargz => "not_estargz",
            Decline::Registry => "registry",
            Decline::Local => "local",
        }
    }
}

/// Counts of what the hook did since start.
#[derive(Debug, Default)]
pub struct HookCounters {
    /// Layers mounted lazily on Prepare.
    pub mounted: AtomicU64,
    /// Prepares declined, by [`Decline`] (index = position in [`Decline::ALL`]).
    pub declined: [AtomicU64; 4],
    /// Layers mounted again at start.
    pub restored: AtomicU64,
    /// Layers that could not be restored.
    pub restore_failed: AtomicU64,
    /// Layers unmounted (removed).
    pub removed: AtomicU64,
}

/// One mounted layer as the metrics see it.
#[derive(Debug, Clone)]
pub struct MountedStatus {
    /// Where it is mounted (`<root>/snapshots/<id>/fs`).
    pub mountpoint: PathBuf,
    /// Its progress.
    pub status: LayerStatus,
}

/// Lazy eStargz layers for the snapshotter core.
pub struct LazyLayers {
    manager: MountManager,
    counters: HookCounters,
    /// Bound of one Prepare's open + mount (+ prefetch with `fetch.wait_for_prefetch`).
    prepare_timeout: Duration,
    /// How long a host that did not answer makes Prepares decline at once.
    host_failure_hold: Duration,
    /// Footers and TOCs of next layers, fetched while the current one is prepared.
    ahead: Ahead,
    programs: program::Programs,
    /// Layers that fell back, for the WARN and `<root>/fallbacks.json`.
    fallbacks: FallbackLog,
}

impl std::fmt::Debug for LazyLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyLayers")
            .field("mounts", &self.manager.list().len())
            .finish()
    }
}

/// The state directory of the layer mounted at `mountpoint` (`.../<id>/fs` → `.../<id>/layer`).
pub fn state_dir(mountpoint: &Path) -> PathBuf {
    mountpoint.parent().unwrap_or(mountpoint).join(STATE_DIR)
}

impl LazyLayers {
    /// The hook for `cfg` (`[fetch]`, `[cache]`, `[fuse]`, `[registry]`; status files in
    /// `<root>/status`); the opaque-directory xattr follows the overlay `features`
    /// (`userxattr` → `user.overlay.opaque`). Fetches run on `runtime`; `metrics` are the
    /// daemon's shared counters.
    pub fn new(
        cfg: &config::Config,
        features: &OverlayFeatures,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LazyError> {
        Self::with_fd_store(cfg, features, runtime, metrics, None)
    }

    /// [`LazyLayers::new`] whose mounts hand their FUSE connections to `store`, so they
    /// outlive the daemon and the next one serves them again ([`fusefs::mount::fdstore`]).
    pub fn with_fd_store(
        cfg: &config::Config,
        features: &OverlayFeatures,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        store: Option<Arc<FdStore>>,
    ) -> Result<Self, LazyError> {
        let mut settings = LayerSettings::from_config(cfg);
        if features.userxattr {
            settings.opaque_xattr = OpaqueXattr::User;
        }
        let ctx = LayerContext::new(cfg, settings, runtime, metrics)?;
        Ok(LazyLayers {
            manager: MountManager::with_fd_store(ctx, store),
            counters: HookCounters::default(),
            prepare_timeout: cfg.fetch.mount_timeout
                + if cfg.fetch.wait_for_prefetch {
                    cfg.fetch.prefetch_timeout
                } else {
                    Duration::ZERO
                },
            host_failure_hold: cfg.fetch.host_failure_hold,
            ahead: Ahead::default(),
            programs: program::Programs::default(),
            fallbacks: FallbackLog::open(&cfg.root),
        })
    }

    /// The counters of the hook.
    pub fn counters(&self) -> &HookCounters {
        &self.counters
    }

    /// The registry client every layer fetches with.
    pub fn registry_client(&self) -> &registry::RegistryClient {
        self.manager.context().client()
    }

    /// The registry/cache counters shared by every layer.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.manager.context().metrics()
    }

    /// The last layers that fell back to a normal pull, oldest first.
    pub fn fallbacks(&self) -> Vec<Fallback> {
        self.fallbacks.recent()
    }

    /// Every mounted layer with its progress.
    pub fn mounted(&self) -> Vec<MountedStatus> {
        let mut v: Vec<MountedStatus> = self
            .manager
            .list()
            .iter()
            .map(|m| MountedStatus {
                mountpoint: m.mountpoint().to_path_buf(),
                status: m.layer().status(),
            })
            .collect();
        v.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        v
    }

    /// Unmounts every layer (daemon shutdown) and lets the fd store holder go. Blocking.
    pub fn shutdown(&self) {
        self.ahead.clear();
        let n = self.manager.list().len();
        self.manager.unmount_all();
        if n > 0 {
            tracing::info!(layers = n, "lazy layers unmounted");
        }
        if let Some(store) = self.manager.fd_store() {
            if let Err(e) = store.shutdown() {
                tracing::warn!(error = %e, "fd store holder did not confirm its shutdown");
            }
        }
    }

    /// Leaves every layer mounted for the next daemon (clean stop that keeps running
    /// containers' layers): the fd store holder is told to keep their FUSE connections for
    /// at most `restart_grace` without a daemon (`None`: forever). Returns how many layers
    /// were handed over, or `None` when there is nothing to hand over, no fd store, or its
    /// holder did not answer (then every layer is unmounted and the holder let go, as by
    /// [`LazyLayers::shutdown`]). After `Some`, the
    /// process must exit without answering more FUSE requests (they wait in the kernel for
    /// the next daemon) and without dropping fetches in flight (a dropped reply answers
    /// EIO). Blocking.
    pub fn hand_over(&self, restart_grace: Option<Duration>) -> Option<usize> {
        self.ahead.clear();
        let Some(store) = self
            .manager
            .fd_store()
            .filter(|_| !self.manager.list().is_empty())
        else {
            self.shutdown();
            return None;
        };
        match store.keep(restart_grace) {
            Ok(held) => {
                let (kept, unmounted) = self.manager.hand_over();
                tracing::info!(
                    layers = kept,
                    unmounted,
                    held,
                    ?restart_grace,
                    "lazy layers left mounted for the next daemon (fd store holder keeps their connections)"
                );
                Some(kept)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the fd store holder cannot keep the lazy layers; unmounting them");
                self.shutdown();
                None
            }
        }
    }

    /// After the restore at start: FUSE connections the fd store still holds for mounts no
    /// snapshot claimed are let go (their mounts end).
    pub fn restore_finished(&self) {
        if let Some(store) = self.manager.fd_store() {
            let n = store.release_unclaimed();
            if n > 0 {
                tracing::info!(
                    connections = n,
                    "dropped held FUSE connections of gone snapshots"
                );
            }
        }
    }

    /// Counts and logs a decline; the reason is bounded (see [`MAX_REASON`]) for the log
    /// and for the caller.
    fn decline(&self, kind: Decline, digest: &str, reason: String) -> LayerOutcome {
        let reason = clip_reason(&reason);
        let i = Decline::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.counters.declined[i].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            layer = %clip(digest),
            kind = kind.name(),
            %reason,
            "layer not mounted lazily"
        );
        LayerOutcome::Declined { reason }
    }

    /// Counts a layer with a TOC digest that was not mounted, WARNs with the cause and the
    /// fix (once per host and cause a minute) and records it.
    fn fall_back(&self, id: &LayerIdentity, failure: Failure) -> LayerOutcome {
        let Failure {
            kind,
            reason,
            cause,
            fix,
        } = failure;
        let host = id
            .reference
            .split_once('/')
            .map_or(id.reference.as_str(), |(h, _)| h)
            .to_string();
        self.fallbacks.record(Fallback {
            time: fallbacks::now(),
            reference: id.reference.clone(),
            layer: id.digest.clone(),
            host,
            kind: kind.name().to_string(),
            cause: cause.to_string(),
            reason: reason.clone(),
            fix,
        });
        self.decline(kind, &id.digest, reason)
    }

    /// Mounts the layer; on failure leaves nothing mounted and no state behind.
    fn mount(&self, id: &LayerIdentity, labels: &Labels, mountpoint: &Path) -> Result<(), Failure> {
        let source = LayerSource::new(&id.reference, &id.digest, None, Some(&id.toc_digest))
            .map_err(|e| Failure::new(Decline::Labels, e.to_string()))?;
        let state = state_dir(mountpoint);
        let started = Instant::now();
        let ctx = self.manager.context().clone();
        let host = source.repository.host.clone();
        if let Some(u) = ctx
            .client()
            .unreachable_within(&host, self.host_failure_hold)
        {
            return Err(Failure::new(
                Decline::Registry,
                format!(
                    "layer {}: registry {host} did not answer {:.1}s ago ({}); not waiting \
                     for it again within fetch.host_failure_hold ({:?}) unless it answers",
                    id.digest,
                    u.ago.as_secs_f64(),
                    u.cause,
                    self.host_failure_hold
                ),
            ));
        }
        let early = self.ahead.take(&source);
        note_image(&ctx, labels, &id.digest);
        let tocs = self.programs.start(&ctx, labels, &id.reference, &id.digest);
        let all = ctx.settings().fetch.program_read_ahead;
        for later in ahead::later_layers(labels, &id.digest, all) {
            self.ahead.start(&ctx, &id.reference, later, tocs.clone());
        }
        // The timer is created inside the runtime (the caller may be outside it).
        let result = ctx.runtime().block_on(async {
            tokio::time::timeout(self.prepare_timeout, async {
                let early = match early {
                    Some(f) => ahead::finish(f, &id.digest).await,
                    None => None,
                };
                self.manager
                    .mount_early_async(source, early, &state, mountpoint)
                    .await
            })
            .await
        });
        let failure = match result {
            Ok(Ok(_)) => {
                tracing::info!(
                    layer = %id.digest,
                    mountpoint = %mountpoint.display(),
                    elapsed = ?started.elapsed(),
                    "layer mounted lazily"
                );
                return Ok(());
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => {
                let why = format!(
                    "layer {}: the registry did not deliver the footer, TOC and prefetch \
                     within {:?} (fetch.mount_timeout)",
                    id.digest, self.prepare_timeout
                );
                ctx.client().mark_unreachable(&host, &why);
                Failure::new(Decline::Registry, why)
            }
        };
        // A cancelled mount may have been registered already: take it down.
        let _ = self.manager.unmount(mountpoint);
        if let Err(e) = std::fs::remove_dir_all(&state) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %state.display(), error = %e, "could not remove the state of a declined layer");
            }
        }
        Err(failure)
    }
}

/// Longest decline reason logged: reasons are error chains whose client-supplied parts
/// are clipped already; this bounds the line as a whole.
const MAX_REASON: usize = 2048;

fn clip_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &reason[..end], reason.len())
}

/// Tells the layers which image layer `digest` belongs to (for read-ahead across layers).
fn note_image(ctx: &LayerContext, labels: &Labels, digest: &str) {
    if let Some(list) = ahead::image_layers(labels, digest) {
        ctx.note_image_layers(digest, list.into_iter().map(String::from).collect());
    }
}

/// Why a layer with a TOC digest was not mounted.
#[derive(Debug)]
struct Failure {
    kind: Decline,
    /// The error with every cause.
    reason: String,
    /// A registry error that cannot heal: its [`registry::Permanent::name`]; else
    /// `transient` for the registry, or the kind's name.
    cause: &'static str,
    /// What fixes it, when known.
    fix: Option<String>,
}

impl Failure {
    fn new(kind: Decline, reason: String) -> Self {
        Failure {
            kind,
            reason,
            cause: match kind {
                Decline::Registry => "transient",
                k => k.name(),
            },
            fix: None,
        }
    }
}

/// The decline kind, reason (with every cause), and for registry errors that cannot heal
/// their cause and fix, of a failed mount.
fn classify(e: &MountError) -> Failure {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        src = s.source();
    }
    let kind = match e {
        MountError::Layer(l) if l.is_not_estargz() => Decline::NotEstargz,
        MountError::Layer(LayerError::Registry { .. }) => Decline::Registry,
        MountError::Layer(LayerError::Source(_)) => Decline::Labels,
        _ => Decline::Local,
    };
    let mut failure = Failure::new(kind, reason);
    if let MountError::Layer(LayerError::Registry { source, .. }) = e {
        if let Some(p) = source.permanent() {
            failure.cause = p.name();
            failure.fix = source.fix();
        }
    }
    failure
}

impl RemoteLayers for LazyLayers {
    fn prepare(&self, req: &LayerRequest<'_>) -> LayerOutcome {
        let id = match LayerIdentity::from_labels(req.labels) {
            Ok(id) => id,
            Err(e) => {
                let digest = match &e {
                    IdentityError::NoTocDigest { digest } => digest.clone(),
                    _ => String::new(),
                };
                return self.decline(Decline::Labels, &digest, e.to_string());
            }
        };
        match self.mount(&id, req.labels, req.mountpoint) {
            Ok(()) => {
                self.counters.mounted.fetch_add(1, Ordering::Relaxed);
                LayerOutcome::Mounted {
                    labels: Labels::new(),
                }
            }
            Err(failure) if failure.kind == Decline::Labels => {
                self.decline(failure.kind, &id.digest, failure.reason)
            }
            Err(failure) => self.fall_back(&id, failure),
        }
    }

    fn restore(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        let state = state_dir(snapshot.mountpoint);
        if let Ok(id) = LayerIdentity::from_labels(snapshot.labels) {
            note_image(self.manager.context(), snapshot.labels, &id.digest);
        }
        let result = if has_saved_state(&state) {
            self.manager
                .restore(&state, snapshot.mountpoint)
                .map(|_| ())
                .map_err(HookError::from)
        } else {
            Err(format!("no saved layer state in {}", state.display()).into())
        };
        match &result {
            Ok(()) => {
                self.counters.restored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(snapshot = snapshot.name, "lazy layer restored");
            }
            Err(_) => {
                self.counters.restore_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn remove(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        self.counters.removed.fetch_add(1, Ordering::Relaxed);
        match self.manager.unmount(snapshot.mountpoint) {
            Ok(_) | Err(MountError::NotMounted(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn check(&self, snapshot: &RemoteSnapshot<'_>) -> Result<(), HookError> {
        self.manager
            .check(snapshot.mountpoint)
            .map_err(HookError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;

    #[test]
    fn state_dir_is_next_to_the_mountpoint() {
        assert_eq!(
            state_dir(Path::new("/r/snapshots/7/fs")),
            Path::new("/r/snapshots/7/layer")
        );
    }

    fn hook(root: &Path, rt: &tokio::runtime::Runtime) -> LazyLayers {
        let mut cfg = config::Config {
            root: root.to_path_buf(),
            ..Default::default()
        };
        cfg.fetch.request_timeout = Duration::from_secs(2);
        cfg.fetch.read_timeout = Duration::from_secs(3);
        cfg.fetch.mount_timeout = Duration::from_secs(2);
        cfg.fetch.max_retries = 0;
        LazyLayers::new(
            &cfg,
            &OverlayFeatures::default(),
            rt.handle().clone(),
            Arc::new(Metrics::default()),
        )
        .unwrap()
    }

    fn offer(h: &LazyLayers, mountpoint: &Path, kv: &[(&str, &str)]) -> LayerOutcome {
        let labels: Labels = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.prepare(&LayerRequest {
            key: "default/1/extract",
            parent: "",
            target: "default/sha256:c",
            labels: &labels,
            id: 1,
            mountpoint,
        })
    }

    fn declined(kind: Decline, h: &LazyLayers) -> u64 {
        let i = Decline::ALL.iter().position(|k| *k == kind).unwrap();
        h.counters().declined[i].load(Ordering::Relaxed)
    }

    #[test]
    fn layers_without_toc_digest_or_registry_are_declined_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = hook(tmp.path(), &rt);
        let mp = tmp.path().join("snapshots/1/fs");
        std::fs::create_dir_all(&mp).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let toc = format!("sha256:{}", "b".repeat(64));

        let out = offer(
            &h,
            &mp,
            &[
                (labels::CRI_IMAGE_REF, "127.0.0.1:1/x/y:t"),
                (labels::CRI_LAYER_DIGEST, &digest),
            ],
        );
        match out {
            LayerOutcome::Declined { reason } => {
                assert!(
                    reason.contains(&digest) && reason.contains(labels::TOC_DIGEST),
                    "{reason}"
                )
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(declined(Decline::Labels, &h), 1);

        // Nothing listens on port 1: declined quickly, no state, no mount.
        let started = Instant::now();
        let out = offer(
            &h,
            &mp,
            &[
                (labels::STARGZ_REFERENCE, "127.0.0.1:1/x/y:t"),
                (labels::STARGZ_DIGEST, &digest),
                (labels::TOC_DIGEST, &toc),
            ],
        );
        match out {
            LayerOutcome::Declined { reason } => {
                assert!(reason.contains(&digest), "{reason}");
                assert!(
                    reason.contains("127.0.0.1:1"),
                    "names the registry: {reason}"
                );
            }
            o => panic!("{o:?}"),
        }
        eprintln!("declined after {:?}", started.elapsed());
        assert_eq!(declined(Decline::Registry, &h), 1);
        // Recorded (a refused connection may heal: transient, no fix), and on disk.
        let recorded = h.fallbacks();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].layer, digest);
        assert_eq!(recorded[0].host, "127.0.0.1:1");
        assert_eq!(recorded[0].cause, "transient");
        assert_eq!(recorded[0].kind, "registry");
        assert_eq!(fallbacks::read(tmp.path()).unwrap(), recorded);
        assert!(
            !state_dir(&mp).exists(),
            "state of a declined layer removed"
        );
        assert!(h.mounted().is_empty());
        assert_eq!(h.counters().mounted.load(Ordering::Relaxed), 0);

        // A malformed TOC digest is a labels problem, named.
        let out = offer(
            &h,
            &mp,
            &[
                (labels::STARGZ_REFERENCE, "127.0.0.1:1/x/y:t"),
                (labels::STARGZ_DIGEST, &digest),
                (labels::TOC_DIGEST, "sha256:zz"),
            ],
        );
        assert!(
            matches!(&out, LayerOutcome::Declined { reason } if reason.contains("sha256:zz")),
            "{out:?}"
        );
        assert_eq!(declined(Decline::Labels, &h), 2);
    }

    /// A registry that accepts connections and never answers (frozen): the first layer
    /// waits `fetch.mount_timeout`, the next layers of the same host decide at once.
    #[test]
    fn after_a_host_timed_out_later_layers_decline_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = hook(tmp.path(), &rt);
        let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = frozen.local_addr().unwrap().to_string();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for c in frozen.incoming().flatten() {
                keep.lock().unwrap().push(c);
            }
        });
        let toc = format!("sha256:{}", "b".repeat(64));
        let mut took = Vec::new();
        for (i, n) in ["1", "2", "3"].iter().enumerate() {
            let mp = tmp.path().join(format!("snapshots/1{n}/fs"));
            std::fs::create_dir_all(&mp).unwrap();
            let digest = format!("sha256:{}", n.repeat(64));
            let reference = format!("{host}/x/y:t");
            let started = Instant::now();
            let out = offer(
                &h,
                &mp,
                &[
                    (labels::STARGZ_REFERENCE, reference.as_str()),
                    (labels::STARGZ_DIGEST, digest.as_str()),
                    (labels::TOC_DIGEST, toc.as_str()),
                ],
            );
            took.push(started.elapsed());
            let LayerOutcome::Declined { reason } = out else {
                panic!("{out:?}");
            };
            if i == 0 {
                assert!(
                    reason.contains("fetch.mount_timeout") || reason.contains("timed out"),
                    "{reason}"
                );
            } else {
                assert!(reason.contains("fetch.host_failure_hold"), "{reason}");
                assert!(reason.contains(&host), "{reason}");
            }
            assert!(!state_dir(&mp).exists());
        }
        assert_eq!(declined(Decline::Registry, &h), 3);
        eprintln!("declined after {took:?}");
        assert!(took[0] >= Duration::from_secs(2), "{took:?}");
        assert!(
            took[1] < Duration::from_secs(1) && took[2] < Duration::from_secs(1),
            "{took:?}"
        );
        drop(held);
    }

    #[test]
    fn huge_label_values_give_a_bounded_decline() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = hook(tmp.path(), &rt);
        let mp = tmp.path().join("snapshots/3/fs");
        std::fs::create_dir_all(&mp).unwrap();
        let huge = format!("127.0.0.1:1/{}:t", "r".repeat(8192));
        let toc = format!("sha256:{}", "b".repeat(64));
        let digest = format!("sha256:{}", "a".repeat(64));
        for labels in [
            vec![
                (labels::STARGZ_REFERENCE, huge.as_str()),
                (labels::STARGZ_DIGEST, digest.as_str()),
                (labels::TOC_DIGEST, toc.as_str()),
            ],
            vec![
                (labels::STARGZ_REFERENCE, "127.0.0.1:1/x/y:t"),
                (labels::STARGZ_DIGEST, huge.as_str()),
                (labels::TOC_DIGEST, toc.as_str()),
            ],
            vec![
                (labels::CRI_IMAGE_REF, "127.0.0.1:1/x/y:t"),
                (labels::CRI_LAYER_DIGEST, digest.as_str()),
                (labels::TOC_DIGEST, huge.as_str()),
            ],
        ] {
            match offer(&h, &mp, &labels) {
                LayerOutcome::Declined { reason } => {
                    assert!(reason.len() < 600, "{} bytes: {reason}", reason.len());
                    assert!(reason.contains("bytes long"), "{reason}");
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(declined(Decline::Labels, &h), 3);
        assert!(clip_reason(&"x".repeat(10_000)).len() < MAX_REASON + 40);
    }

    #[test]
    fn restore_without_saved_state_fails_and_remove_of_unmounted_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = hook(tmp.path(), &rt);
        let mp = tmp.path().join("snapshots/2/fs");
        std::fs::create_dir_all(&mp).unwrap();
        let labels = Labels::new();
        let snap = RemoteSnapshot {
            name: "default/sha256:c",
            id: 2,
            labels: &labels,
            mountpoint: &mp,
        };
        let e = h.restore(&snap).unwrap_err();
        assert!(e.to_string().contains("no saved layer state"), "{e}");
        assert_eq!(h.counters().restore_failed.load(Ordering::Relaxed), 1);
        h.remove(&snap).unwrap();
        assert!(h.check(&snap).is_err(), "nothing is mounted there");
    }
}
