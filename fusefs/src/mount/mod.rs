//! Mounting lazy layers: [`MountedLayer`] is one FUSE mount of a [`RemoteLayer`] (its
//! session threads, its status file; dropping it unmounts), and [`MountManager`] owns the
//! mounts of a process by mountpoint — what the daemon's remote-layer hook and
//! `starling mount` use.
//!
//! Life cycle, as the daemon sees it:
//! - [`MountManager::mount`]: open the layer from the registry (footer + TOC, verified
//!   against the TOC digest, saved in the layer's state directory), mount it and start
//!   fetching: the prefetch runs alongside (reads of prefetched files wait for it; with
//!   `fetch.wait_for_prefetch` the mount waits for it, at most `fetch.prefetch_timeout`),
//!   background fetch once the link is quiet.
//! - [`MountManager::restore`]: after a restart, mount the layer again from its state
//!   directory without the registry: with an fd store ([`fdstore`]) that still holds the
//!   mount's FUSE connection, serve that connection again (running containers' requests
//!   just waited); otherwise detach the stale mount and mount anew.
//! - [`MountManager::unmount`]: stop fetching, unmount (detaching lazily if busy), remove
//!   the status file. [`MountManager::check`]: is the mount still served.
//! - [`MountManager::hand_over`] (a daemon's clean stop that keeps running containers'
//!   layers): every mount whose FUSE connection the fd store holds is left mounted and
//!   never unmounted by this process (not on drop either); the process then exits without
//!   answering further requests, which wait in the kernel for the next daemon.
//!
//! The blocking methods must not be called from inside an async task (they block on the
//! context's runtime); the `*_async` ones are for async callers.

pub mod fdstore;
pub mod sys;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{MountOption, Session, SessionACL};
use parking_lot::Mutex;

use crate::fuse::{FsOptions, FsStats, LayerFs};
use crate::layer::LayerContext;
use crate::layer::{EarlyLayer, LayerError, LayerSource, RemoteLayer};
use crate::status::StatusFile;
use fdstore::{FdStore, HeldFd, HeldMeta};
pub use linuxfs::Unmounted;
use linuxfs::{mount as lmount, mountinfo};

/// How long an unmount waits for the session threads to end.
const SESSION_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The layer could not be opened or restored.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The FUSE mount failed.
    #[error("mounting at {path}: {source}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {path}: {source}")]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This manager already has a layer mounted there.
    #[error("a layer is already mounted at {0}")]
    AlreadyMounted(PathBuf),
    /// This manager has nothing mounted there.
    #[error("no layer is mounted at {0}")]
    NotMounted(PathBuf),
    /// The mount no longer answers (its session ended or its connection is gone).
    #[error("the layer mount at {0} is not served any more")]
    Dead(PathBuf),
}

/// One mounted layer. Dropping it unmounts.
pub struct MountedLayer {
    layer: Arc<RemoteLayer>,
    mountpoint: PathBuf,
    dev: Option<u64>,
    session: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    /// fuser's handle on a mount this process made: unmounting through it also tells the
    /// session (else the session, when it ends, unmounts again and warns of EINVAL).
    unmounter: Mutex<Option<fuser::SessionUnmounter>>,
    stats: Arc<FsStats>,
    status: Mutex<Option<StatusFile>>,
    unmounted: AtomicBool,
    /// Left to the fd store for the next daemon: never unmounted by this process.
    kept: AtomicBool,
    store: Option<Arc<FdStore>>,
}

impl std::fmt::Debug for MountedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedLayer")
            .field("mountpoint", &self.mountpoint)
            .field("layer", &self.layer)
            .finish()
    }
}

/// True for the filesystem type of a FUSE mount in `/proc/self/mountinfo` (`fuse`, or
/// `fuse.SUBTYPE` when mounted through fusermount).
fn is_fuse(fstype: &str) -> bool {
    fstype == "fuse" || fstype.starts_with("fuse.")
}

/// The `fuser` settings of a layer mount. With an fd store (`kept`), every worker thread
/// reads the one fd the store holds (no cloned fds): requests a dying daemon had read then
/// stay on that connection (a cloned fd's unanswered requests fail when it closes) and are
/// resent to the next daemon.
fn session_config(layer: &RemoteLayer, kept: bool) -> fuser::Config {
    let settings = layer.context().settings();
    let digest = layer.source().digest_hex();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("starling:{}", &digest[..digest.len().min(12)])),
        MountOption::Subtype("starling".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    cfg.acl = if settings.fuse.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let threads = settings.fuse.threads.max(1);
    cfg.n_threads = Some(threads);
    cfg.clone_fd = threads > 1 && !kept;
    cfg
}

fn new_fs(layer: &Arc<RemoteLayer>) -> LayerFs {
    let settings = layer.context().settings();
    LayerFs::new(
        layer.clone(),
        FsOptions::from_config(&settings.fuse, settings.opaque_xattr),
    )
}

impl MountedLayer {
    /// Mounts `layer` at `mountpoint` (an existing directory) with the context's `[fuse]`
    /// settings and starts its status file. Fetching is not started.
    pub fn mount(layer: Arc<RemoteLayer>, mountpoint: &Path) -> Result<Self, MountError> {
        Self::mount_kept(layer, mountpoint, None)
    }

    /// [`MountedLayer::mount`], handing a dup of the mount's FUSE connection to `store`
    /// (so the connection outlives this process; see [`fdstore`]). A store that fails is
    /// logged: the mount works, it just does not survive a daemon crash.
    pub fn mount_kept(
        layer: Arc<RemoteLayer>,
        mountpoint: &Path,
        store: Option<Arc<FdStore>>,
    ) -> Result<Self, MountError> {
        let err = |source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        };
        let mountpoint = std::fs::canonicalize(mountpoint).map_err(err)?;
        let fs = new_fs(&layer);
        let stats = fs.stats();
        let cfg = session_config(&layer, store.is_some());
        let mut session = Session::new(fs, &mountpoint, &cfg).map_err(err)?;
        let unmounter = session.unmount_callable();
        // From mountinfo: asks the (not yet running) session nothing.
        let dev = mountinfo::mount_at(&mountpoint)
            .ok()
            .flatten()
            .filter(|m| is_fuse(&m.fstype))
            .map(|m| m.dev);
        if let (Some(store), Some(dev)) = (&store, dev) {
            let meta = HeldMeta {
                mountpoint: mountpoint.clone(),
                dev,
                layer: layer.source().digest.to_string(),
            };
            if let Err(e) = store.put(meta, session.as_fd()) {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "FUSE connection not handed to the fd store: the mount will not outlive the daemon");
            }
        }
        let thread = std::thread::Builder::new()
            .name("starling-fuse".into())
            .spawn(move || session.run())
            .map_err(err)?;
        // mountinfo did not say (unexpected): ask the served mount itself.
        let dev = dev.or_else(|| sys::device_of(&mountpoint).ok().flatten());
        tracing::info!(layer = %layer.source().digest, mountpoint = %mountpoint.display(), "layer mounted");
        let mounted = Self::started(layer, mountpoint, dev, thread, stats, store);
        *mounted.unmounter.lock() = Some(unmounter);
        Ok(mounted)
    }

    /// Serves again the FUSE connection `held` of a mount left by a previous daemon (no
    /// remount: the mountpoint, the inode numbers and the kernel's caches stay). The
    /// kernel is asked to resend the requests the previous daemon read and never
    /// answered. The resumed session serves opens without passthrough (the kernel switches
    /// to opens without a round trip); see `docs/daemon.md` for what that means for files
    /// held open in passthrough across the restart.
    pub fn resume(
        layer: Arc<RemoteLayer>,
        held: HeldFd,
        store: Arc<FdStore>,
    ) -> Result<Self, MountError> {
        let HeldFd { meta, fd } = held;
        let mountpoint = meta.mountpoint.clone();
        let err = |source| MountError::Mount {
            path: mountpoint.clone(),
            source,
        };
        let fs = new_fs(&layer);
        let stats = fs.stats();
        let cfg = session_config(&layer, true);
        store.adopt(meta.clone(), fd.as_fd());
        let resend = fd.try_clone().map_err(err)?;
        let session = Session::from_initialized_fd(fs, fd, cfg.acl, cfg.clone(), None);
        // Before any worker reads, so that only requests of the dead daemon are requeued.
        match sys::resend_unanswered(resend.as_fd()) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "kernel did not resend the requests the previous daemon left unanswered; they wait until the mount goes")
            }
        }
        drop(resend);
        let thread = std::thread::Builder::new()
            .name("starling-fuse".into())
            .spawn(move || session.run())
            .map_err(err)?;
        tracing::info!(layer = %layer.source().digest, mountpoint = %mountpoint.display(), "layer connection of the previous daemon served again");
        Ok(Self::started(
            layer,
            mountpoint,
            Some(meta.dev),
            thread,
            stats,
            Some(store),
        ))
    }

    fn started(
        layer: Arc<RemoteLayer>,
        mountpoint: PathBuf,
        dev: Option<u64>,
        thread: JoinHandle<std::io::Result<()>>,
        stats: Arc<FsStats>,
        store: Option<Arc<FdStore>>,
    ) -> Self {
        let status = match &layer.context().settings().status_dir {
            Some(dir) => match StatusFile::start(dir, &layer, &mountpoint) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write layer status files");
                    None
                }
            },
            None => None,
        };
        MountedLayer {
            layer,
            mountpoint,
            dev,
            session: Mutex::new(Some(thread)),
            unmounter: Mutex::new(None),
            stats,
            status: Mutex::new(status),
            unmounted: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            store,
        }
    }

    /// The layer.
    pub fn layer(&self) -> &Arc<RemoteLayer> {
        &self.layer
    }

    /// Where it is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters of its file system.
    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// The status file, if one is written.
    pub fn status_file(&self) -> Option<PathBuf> {
        self.status.lock().as_ref().map(|s| s.path().to_path_buf())
    }

    /// True while the FUSE session runs (false after an unmount, also an external one).
    pub fn is_served(&self) -> bool {
        self.session
            .lock()
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Blocks until the session ends (the mount was unmounted) or `timeout` passes; true if
    /// it ended.
    pub fn wait_session(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if !self.is_served() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks that the mount is served and answers.
    pub fn check(&self) -> Result<(), MountError> {
        if self.unmounted.load(Ordering::SeqCst) || !self.is_served() {
            return Err(MountError::Dead(self.mountpoint.clone()));
        }
        match sys::device_of(&self.mountpoint) {
            Ok(Some(d)) if Some(d) == self.dev => Ok(()),
            _ => Err(MountError::Dead(self.mountpoint.clone())),
        }
    }

    /// Stops fetching and unmounts; a busy mount is detached and goes away with its last
    /// user. Idempotent.
    pub fn unmount(&self) -> Result<Unmounted, MountError> {
        let Some(outcome) = self.begin_unmount()? else {
            return Ok(Unmounted::NotMounted);
        };
        self.finish_unmount(outcome, Instant::now() + SESSION_JOIN_TIMEOUT);
        Ok(outcome)
    }

    /// [`MountedLayer::unmount`] without waiting for the session to end; `None` if there
    /// was nothing to do (unmounted before, or handed over: never touched again).
    fn begin_unmount(&self) -> Result<Option<Unmounted>, MountError> {
        if self.kept.load(Ordering::SeqCst) || self.unmounted.swap(true, Ordering::SeqCst) {
            return Ok(None);
        }
        self.layer.close();
        self.status.lock().take();
        if let Some(store) = &self.store {
            if let Err(e) = store.remove(&self.mountpoint) {
                tracing::debug!(mountpoint = %self.mountpoint.display(), error = %e, "fd store drop failed");
            }
        }
        let st = &self.stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            mountpoint = %self.mountpoint.display(),
            lookups = n(&st.lookups),
            getattrs = n(&st.getattrs),
            readdirs = n(&st.readdirs),
            cached_opens = n(&st.cached_opens),
            passthrough_opens = n(&st.passthrough_opens),
            cached_reads = n(&st.cached_reads),
            fetched_reads = n(&st.fetched_reads),
            failed_reads = n(&st.failed_reads),
            "unmounting layer"
        );
        let mp = &self.mountpoint;
        let uerr = |source| MountError::Unmount {
            path: mp.clone(),
            source,
        };
        let outcome = match sys::device_of(mp) {
            // Ours, or a connection that is gone (nothing else can be on our path then).
            Ok(Some(d)) if Some(d) == self.dev => self.unmount_ours().map_err(uerr)?,
            Ok(None) => self.unmount_ours().map_err(uerr)?,
            Ok(Some(_)) => {
                if self.is_served() {
                    tracing::warn!(mountpoint = %mp.display(), "another mount covers the layer mount; leaving both");
                }
                Unmounted::NotMounted
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Unmounted::NotMounted,
            Err(e) => return Err(uerr(e)),
        };
        if outcome == Unmounted::Detached {
            tracing::info!(mountpoint = %mp.display(), "layer mount busy: detached, it goes away with its last user");
        }
        Ok(Some(outcome))
    }

    /// Unmounts the layer's mount (known to be ours): through fuser when this process made
    /// it, so the session does not try again when it ends; a busy mount (or one fuser cannot
    /// unmount) is left to [`lmount::unmount`], which detaches it.
    fn unmount_ours(&self) -> std::io::Result<lmount::Unmounted> {
        if let Some(mut u) = self.unmounter.lock().take() {
            if u.unmount().is_ok() {
                return Ok(lmount::Unmounted::Done);
            }
        }
        lmount::unmount(&self.mountpoint)
    }

    /// Waits until `end` for the session of a mount unmounted by
    /// [`MountedLayer::begin_unmount`] to end, and aborts its connection if it did not (the
    /// superblock lives on, e.g. in an overlay's private clone of the mount).
    fn finish_unmount(&self, outcome: Unmounted, end: Instant) {
        if outcome == Unmounted::Detached {
            return;
        }
        let Some(t) = self.session.lock().take() else {
            return;
        };
        // The session ends once the kernel drops the connection.
        while !t.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        } else if let Some(dev) = self.dev {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "FUSE session did not end after unmount; aborting its connection");
            let _ = sys::abort_connection(dev);
        }
    }

    /// Aborts the FUSE connection (pending and future requests fail with ENOTCONN); for a
    /// mount stuck after a lazy detach.
    pub fn abort(&self) -> std::io::Result<()> {
        match self.dev {
            Some(d) => sys::abort_connection(d),
            None => Ok(()),
        }
    }
}

impl Drop for MountedLayer {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// The layer mounts of one process, by mountpoint. Dropping it unmounts them all.
pub struct MountManager {
    ctx: Arc<LayerContext>,
    mounts: Mutex<HashMap<PathBuf, Arc<MountedLayer>>>,
    store: Option<Arc<FdStore>>,
}

fn canonical(mountpoint: &Path) -> Result<PathBuf, MountError> {
    std::fs::canonicalize(mountpoint).map_err(|source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    })
}

impl MountManager {
    /// A manager for layers of `ctx`.
    pub fn new(ctx: Arc<LayerContext>) -> Self {
        Self::with_fd_store(ctx, None)
    }

    /// A manager whose mounts hand their FUSE connections to `store`, and whose restores
    /// serve the connections a previous process left there again.
    pub fn with_fd_store(ctx: Arc<LayerContext>, store: Option<Arc<FdStore>>) -> Self {
        MountManager {
            ctx,
            mounts: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// The fd store, if any.
    pub fn fd_store(&self) -> Option<&Arc<FdStore>> {
        self.store.as_ref()
    }

    /// The context.
    pub fn context(&self) -> &Arc<LayerContext> {
        &self.ctx
    }

    /// Opens the layer from the registry (saving its state in `state_dir`), mounts it at
    /// `mountpoint` and starts the prefetch (waited for, at most `fetch.prefetch_timeout`,
    /// only with `fetch.wait_for_prefetch`). Blocking.
    pub fn mount(
        &self,
        source: LayerSource,
        state_dir: &Path,
        mountpoint: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        self.ctx
            .runtime
            .block_on(self.mount_async(source, state_dir, mountpoint))
    }

    /// [`MountManager::mount`] for async callers.
    pub async fn mount_async(
        &self,
        source: LayerSource,
        state_dir: &Path,
        mountpoint: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        self.mount_early_async(source, None, state_dir, mountpoint)
            .await
    }

    /// [`MountManager::mount_async`] taking over the layer opened ahead of its Prepare
    /// ([`RemoteLayer::open_early`]) when it [`EarlyLayer::fits`] `source`; otherwise (or
    /// `None`) the layer is opened from the registry.
    pub async fn mount_early_async(
        &self,
        source: LayerSource,
        early: Option<EarlyLayer>,
        state_dir: &Path,
        mountpoint: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        let mp = canonical(mountpoint)?;
        if self.mounts.lock().contains_key(&mp) {
            return Err(MountError::AlreadyMounted(mp));
        }
        let early = early.filter(|e| {
            let fits = e.fits(&source);
            if !fits {
                tracing::debug!(layer = %source.digest, early = ?e, "layer opened ahead does not fit its Prepare; opening it again");
            }
            fits
        });
        let layer = match early {
            Some(e) => {
                tracing::debug!(layer = %source.digest, "taking over the layer opened ahead of its Prepare");
                RemoteLayer::adopt(e, &source, state_dir).await?
            }
            None => RemoteLayer::open(&self.ctx, source, state_dir).await?,
        };
        let mounted = self.attach(layer, &mp).await?;
        let prefetch = mounted.layer().start_fetching();
        let fetch = &self.ctx.settings.fetch;
        if fetch.wait_for_prefetch {
            let timeout = fetch.prefetch_timeout;
            if !prefetch.wait(timeout).await {
                tracing::info!(mountpoint = %mp.display(), ?timeout, "prefetch not done in time; the mount is ready anyway");
            }
        }
        Ok(mounted)
    }

    /// Mounts the layer saved in `state_dir` at `mountpoint` again, without network access,
    /// and starts fetching in the background. When the fd store holds the FUSE connection
    /// of the layer mount still on `mountpoint` (a daemon died), that connection is served
    /// again ([`MountedLayer::resume`]); otherwise a stale mount on `mountpoint` is detached
    /// and the layer mounted anew. Blocking.
    pub fn restore(
        &self,
        state_dir: &Path,
        mountpoint: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        self.ctx
            .runtime
            .block_on(self.restore_async(state_dir, mountpoint))
    }

    /// [`MountManager::restore`] for async callers.
    pub async fn restore_async(
        &self,
        state_dir: &Path,
        mountpoint: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        let abs = std::path::absolute(mountpoint).map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
        if let Some(mounted) = self.resume_held(state_dir, &abs).await? {
            return Ok(mounted);
        }
        if let Ok(Some(kind)) = mountinfo::mounted_type(&abs) {
            if self.mounts.lock().contains_key(&abs) {
                return Err(MountError::AlreadyMounted(abs));
            }
            tracing::info!(mountpoint = %abs.display(), kind, "detaching a stale mount before restoring the layer");
            lmount::unmount(&abs).map_err(|source| MountError::Unmount {
                path: abs.clone(),
                source,
            })?;
        }
        let mp = canonical(&abs)?;
        let layer = RemoteLayer::restore(&self.ctx, state_dir).await?;
        let mounted = self.attach(layer, &mp).await?;
        let _ = mounted.layer().start_fetching();
        Ok(mounted)
    }

    /// Serves the held connection of the mount at `abs` again, if the store has one and the
    /// mount on `abs` is still that connection's.
    async fn resume_held(
        &self,
        state_dir: &Path,
        abs: &Path,
    ) -> Result<Option<Arc<MountedLayer>>, MountError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        // The key is the canonical mountpoint; canonicalizing the mountpoint itself would ask
        // the FUSE server (us, not serving yet) for its attributes.
        let key = match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
            (Some(Ok(parent)), Some(name)) => parent.join(name),
            _ => abs.to_path_buf(),
        };
        let Some(held) = store.take_inherited(&key) else {
            return Ok(None);
        };
        match mountinfo::mount_at(&key) {
            Ok(Some(m)) if is_fuse(&m.fstype) && m.dev == held.meta.dev => {}
            found => {
                tracing::info!(mountpoint = %key.display(), ?found, "the held FUSE connection no longer serves this mountpoint; mounting anew");
                let _ = store.remove(&key);
                return Ok(None);
            }
        }
        if self.mounts.lock().contains_key(&key) {
            return Err(MountError::AlreadyMounted(key));
        }
        let layer = match RemoteLayer::restore(&self.ctx, state_dir).await {
            Ok(l) => l,
            Err(e) => {
                // Nobody can serve it: let the connection end (reads fail, as without a store)
                // and detach the mount, as a stale one is before a restore.
                let _ = store.remove(&key);
                drop(held);
                if let Err(u) = lmount::unmount(&key) {
                    tracing::warn!(mountpoint = %key.display(), error = %u, "could not detach the mount of an unrestorable layer");
                }
                return Err(e.into());
            }
        };
        let store = store.clone();
        let mounted = tokio::task::spawn_blocking(move || MountedLayer::resume(layer, held, store))
            .await
            .map_err(|e| MountError::Mount {
                path: key.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let mounted = Arc::new(mounted);
        self.mounts.lock().insert(key, mounted.clone());
        let _ = mounted.layer().start_fetching();
        Ok(Some(mounted))
    }

    async fn attach(
        &self,
        layer: Arc<RemoteLayer>,
        mp: &Path,
    ) -> Result<Arc<MountedLayer>, MountError> {
        let path = mp.to_path_buf();
        let store = self.store.clone();
        let mounted =
            tokio::task::spawn_blocking(move || MountedLayer::mount_kept(layer, &path, store))
                .await
                .map_err(|e| MountError::Mount {
                    path: mp.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        let mounted = Arc::new(mounted);
        let mut mounts = self.mounts.lock();
        if mounts.contains_key(mp) {
            drop(mounts);
            return Err(MountError::AlreadyMounted(mp.to_path_buf()));
        }
        mounts.insert(mp.to_path_buf(), mounted.clone());
        Ok(mounted)
    }

    /// The mount at `mountpoint`, if this manager has one.
    pub fn get(&self, mountpoint: &Path) -> Option<Arc<MountedLayer>> {
        let mp = std::fs::canonicalize(mountpoint)
            .unwrap_or_else(|_| std::path::absolute(mountpoint).unwrap_or_default());
        self.mounts.lock().get(&mp).cloned()
    }

    /// Every mount.
    pub fn list(&self) -> Vec<Arc<MountedLayer>> {
        self.mounts.lock().values().cloned().collect()
    }

    /// Checks that the layer at `mountpoint` is mounted and served.
    pub fn check(&self, mountpoint: &Path) -> Result<(), MountError> {
        self.get(mountpoint)
            .ok_or_else(|| MountError::NotMounted(mountpoint.to_path_buf()))?
            .check()
    }

    /// Unmounts the layer at `mountpoint` and forgets it.
    pub fn unmount(&self, mountpoint: &Path) -> Result<Unmounted, MountError> {
        let m = self
            .get(mountpoint)
            .ok_or_else(|| MountError::NotMounted(mountpoint.to_path_buf()))?;
        self.mounts.lock().remove(m.mountpoint());
        m.unmount()
    }

    /// Leaves every mount whose FUSE connection the fd store holds to it, for the next
    /// process (a daemon's clean stop that keeps running containers' layers): this manager
    /// forgets them, and neither it nor their drop unmounts them; their sessions go on
    /// until the process exits. Mounts the store does not hold (their hand-over failed) are
    /// unmounted. Returns (kept, unmounted). The caller tells the holder
    /// ([`FdStore::keep`]) and exits without answering more requests.
    pub fn hand_over(&self) -> (usize, usize) {
        let all: Vec<_> = self.mounts.lock().drain().map(|(_, m)| m).collect();
        let (mut kept, mut unmounted) = (0, 0);
        for m in all {
            let held = self.store.as_ref().is_some_and(|s| s.holds(m.mountpoint()));
            if held {
                m.kept.store(true, Ordering::SeqCst);
                kept += 1;
                continue;
            }
            tracing::warn!(mountpoint = %m.mountpoint().display(), "the fd store does not hold this layer's connection; unmounting it");
            match m.unmount() {
                Ok(_) => unmounted += 1,
                Err(e) => tracing::warn!(error = %e, "unmount failed"),
            }
        }
        (kept, unmounted)
    }

    /// Unmounts everything; the sessions get [`SESSION_JOIN_TIMEOUT`] in all to end.
    pub fn unmount_all(&self) {
        let all: Vec<_> = self.mounts.lock().drain().map(|(_, m)| m).collect();
        let mut begun = Vec::with_capacity(all.len());
        for m in all {
            match m.begin_unmount() {
                Ok(Some(outcome)) => begun.push((m, outcome)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "unmount failed"),
            }
        }
        let end = Instant::now() + SESSION_JOIN_TIMEOUT;
        for (m, outcome) in begun {
            m.finish_unmount(outcome, end);
        }
    }
}

impl Drop for MountManager {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

#[cfg(test)]
mod tests {
    //! A resumed session answers for inodes the kernel learnt from the previous daemon:
    //! inode numbers (index id + 1) must be a function of the TOC alone.

    use std::collections::BTreeMap;

    use estargz::index::{IndexOptions, LayerIndex};
    use estargz::{Footer, Format};

    fn inodes(json: &str) -> BTreeMap<Vec<u8>, u32> {
        let footer = Footer {
            format: Format::Estargz,
            toc_offset: 1 << 30,
            toc_compressed_size: 100,
            toc_uncompressed_size: None,
            blob_size: (1 << 30) + 151,
        };
        let ix =
            LayerIndex::from_toc_json(json.as_bytes(), &footer, &IndexOptions::default()).unwrap();
        let mut out = BTreeMap::new();
        let mut todo = vec![estargz::index::ROOT_ID];
        while let Some(dir) = todo.pop() {
            for (_, id) in ix.children(dir) {
                if out.insert(ix.path_of(id), id).is_none() && ix.children(id).next().is_some() {
                    todo.push(id);
                }
            }
        }
        out
    }

    #[test]
    fn inode_numbers_depend_on_the_toc_only() {
        let entries = [
            r#"{"name":"etc/","type":"dir","mode":493}"#,
            r#"{"name":"etc/passwd","type":"reg","size":0,"mode":420}"#,
            r#"{"name":"usr/bin/","type":"dir","mode":493}"#,
            r#"{"name":"usr/bin/sh","type":"symlink","linkName":"busybox"}"#,
            r#"{"name":"usr/bin/busybox","type":"reg","size":0,"mode":493}"#,
            r#"{"name":"usr/bin/ash","type":"hardlink","linkName":"usr/bin/busybox"}"#,
            r#"{"name":"a/b/c/d","type":"reg","size":0}"#,
            r#"{"name":"a/.wh.gone","type":"reg","size":0}"#,
        ];
        let json = |order: &[usize]| {
            let e: Vec<&str> = order.iter().map(|&i| entries[i]).collect();
            format!("{{\"version\":1,\"entries\":[{}]}}", e.join(","))
        };
        let first = inodes(&json(&[0, 1, 2, 3, 4, 5, 6, 7]));
        assert!(first.len() >= 10, "{first:?}");
        // Built again (new hash seeds): the same numbers, every time.
        for _ in 0..5 {
            assert_eq!(inodes(&json(&[0, 1, 2, 3, 4, 5, 6, 7])), first);
        }
    }
}
