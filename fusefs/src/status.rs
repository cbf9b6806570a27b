//! Per-layer status files: each mounted layer keeps `<status dir>/<name>.json` up to date
//! (rewritten atomically when its status changed, at most once a second; removed on
//! unmount), and `starling status` reads the directory. A record names the mountpoint and
//! the process serving it, so records of dead processes can be told apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::layer::{LayerStatus, RemoteLayer};

/// How often a status file is refreshed (when changed).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One status file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Where the layer is mounted.
    pub mountpoint: PathBuf,
    /// The process serving the mount.
    pub pid: u32,
    /// Unix time of this record (seconds).
    pub updated: u64,
    /// The layer's progress.
    #[serde(flatten)]
    pub layer: LayerStatus,
}

impl StatusRecord {
    /// True if the serving process still runs.
    pub fn is_live(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The file name of the status of the layer mounted at `mountpoint`.
pub fn status_file_name(digest_hex: &str, mountpoint: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mountpoint.hash(&mut h);
    let short = &digest_hex[..digest_hex.len().min(12)];
    format!("{short}-{:016x}.json", h.finish())
}

/// Reads every status record in `dir` (unreadable files are skipped), sorted by
/// mountpoint. A missing directory has no records.
pub fn read_status_dir(dir: &Path) -> std::io::Result<Vec<StatusRecord>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        if let Ok(text) = std::fs::read(&p) {
            if let Ok(r) = serde_json::from_slice::<StatusRecord>(&text) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(out)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Keeps a layer's status file current until dropped (then removes it).
pub(crate) struct StatusFile {
    path: PathBuf,
    stop: watch::Sender<bool>,
}

impl StatusFile {
    /// Starts writing the status of `layer` mounted at `mountpoint` into `dir`.
    pub(crate) fn start(
        dir: &Path,
        layer: &Arc<RemoteLayer>,
        mountpoint: &Path,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(status_file_name(layer.source().digest_hex(), mountpoint));
        let (stop, mut stopped) = watch::channel(false);
        let (layer, file, mountpoint) = (
            Arc::downgrade(layer),
            path.clone(),
            mountpoint.to_path_buf(),
        );
        let runtime = match layer.upgrade() {
            Some(l) => l.context().runtime().clone(),
            None => return Err(std::io::Error::other("layer is gone")),
        };
        runtime.spawn(async move {
            let mut last: Option<LayerStatus> = None;
            loop {
                let Some(l) = layer.upgrade() else { break };
                let status = l.status();
                drop(l);
                if last.as_ref() != Some(&status) {
                    let rec = StatusRecord {
                        mountpoint: mountpoint.clone(),
                        pid: std::process::id(),
                        updated: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                        layer: status.clone(),
                    };
                    let json = serde_json::to_vec_pretty(&rec).expect("plain struct serializes");
                    if let Err(e) = write_atomic(&file, &json) {
                        tracing::debug!(file = %file.display(), error = %e, "cannot write status file");
                    }
                    last = Some(status);
                }
                tokio::select! {
                    _ = tokio::time::sleep(STATUS_INTERVAL) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            let _ = std::fs::remove_file(&file);
        });
        Ok(StatusFile { path, stop })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        let _ = std::fs::remove_file(&self.path);
    }
}
