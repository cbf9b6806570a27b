//! Layers that carried eStargz labels but fell back to a normal pull: the WARN that says
//! why and what fixes it, and the record of the last [`KEEP`] of them in
//! `<root>/fallbacks.json` (rewritten atomically on each one, so it survives a restart),
//! which `starling doctor` and `starling status` show.
//!
//! One pull of a many-layer image from a misconfigured registry would say the same thing
//! per layer: the WARN is given once per registry host and cause per [`WARN_EVERY`]; the
//! layers in between get the INFO line only, and the next WARN counts them.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use std::sync::{Mutex, MutexGuard};

/// How many fallbacks `<root>/fallbacks.json` keeps.
pub const KEEP: usize = 50;

/// How often the same host and cause may WARN.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// The file under the root.
pub const FILE: &str = "fallbacks.json";

/// One layer that fell back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// Unix time (seconds).
    pub time: u64,
    /// The image reference the layer was pulled for.
    pub reference: String,
    /// The layer digest.
    pub layer: String,
    /// The registry host of the reference.
    pub host: String,
    /// What failed: `registry`, `not_estargz` or `local`.
    pub kind: String,
    /// For errors that cannot heal, their cause (`plain_http`, `certificate`,
    /// `no_credentials`, `credentials_refused`, `not_found`, `bad_request`); else
    /// `transient` (registry) or the kind.
    pub cause: String,
    /// The full reason.
    pub reason: String,
    /// What to change, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The path of the record under `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join(FILE)
}

/// Reads the record of `root`, oldest first (a missing file has none; an unreadable one is
/// an error naming it).
pub fn read(root: &Path) -> std::io::Result<Vec<Fallback>> {
    let p = path(root);
    match std::fs::read(&p) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", p.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The daemon's fallback log.
#[derive(Debug)]
pub struct FallbackLog {
    path: PathBuf,
    recent: Mutex<VecDeque<Fallback>>,
    /// Per (host, cause): when it last warned and how many fell back since without a WARN.
    warned: Mutex<HashMap<(String, String), (Instant, u64)>>,
}

impl FallbackLog {
    /// The log of `root`, with what an earlier daemon recorded.
    pub fn open(root: &Path) -> Self {
        let recent = match read(root) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the unreadable record of past fallbacks");
                Vec::new()
            }
        };
        let skip = recent.len().saturating_sub(KEEP);
        FallbackLog {
            path: path(root),
            recent: Mutex::new(recent.into_iter().skip(skip).collect()),
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// The last fallbacks, oldest first.
    pub fn recent(&self) -> Vec<Fallback> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Logs `f` (WARN, or INFO when the same host and cause warned less than
    /// [`WARN_EVERY`] ago) and records it.
    pub fn record(&self, f: Fallback) {
        let suppressed = self.should_warn(&f.host, &f.cause);
        match suppressed {
            Some(earlier) => {
                let fix = f.fix.as_deref().unwrap_or("-");
                tracing::warn!(
                    image = %f.reference,
                    layer = %f.layer,
                    host = %f.host,
                    cause = %f.cause,
                    "eStargz layer falls back to a full pull: {}; fix: {fix}{}",
                    f.reason,
                    if earlier > 0 {
                        format!(" ({earlier} more layer(s) fell back for this cause since the last warning)")
                    } else {
                        String::new()
                    }
                );
            }
            None => tracing::info!(
                image = %f.reference,
                layer = %f.layer,
                host = %f.host,
                cause = %f.cause,
                "eStargz layer falls back to a full pull for the same cause as warned before"
            ),
        }
        let snapshot: Vec<Fallback> = {
            let mut recent = lock(&self.recent);
            recent.push_back(f);
            while recent.len() > KEEP {
                recent.pop_front();
            }
            recent.iter().cloned().collect()
        };
        if let Err(e) = write_atomic(&self.path, &snapshot) {
            tracing::debug!(file = %self.path.display(), error = %e, "cannot write the fallback record");
        }
    }

    /// `Some(n)` if this host and cause should warn now (`n` = fallbacks since the last
    /// warning that did not warn), `None` if it warned recently.
    fn should_warn(&self, host: &str, cause: &str) -> Option<u64> {
        let mut warned = lock(&self.warned);
        let now = Instant::now();
        let key = (host.to_string(), cause.to_string());
        match warned.get_mut(&key) {
            None => {
                warned.insert(key, (now, 0));
                Some(0)
            }
            Some(entry) if now.duration_since(entry.0) >= WARN_EVERY => {
                let n = entry.1;
                *entry = (now, 0);
                Some(n)
            }
            Some(entry) => {
                entry.1 += 1;
                None
            }
        }
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves plain data, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_atomic(path: &Path, records: &[Fallback]) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Unix time now, in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fallback(layer: &str, host: &str, cause: &str) -> Fallback {
        Fallback {
            time: now(),
            reference: format!("{host}/app:1"),
            layer: layer.into(),
            host: host.into(),
            kind: "registry".into(),
            cause: cause.into(),
            reason: "https failed".into(),
            fix: Some("set insecure = true".into()),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_keep_the_last_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let log = FallbackLog::open(tmp.path());
        assert!(log.recent().is_empty());
        for i in 0..KEEP + 5 {
            log.record(fallback(
                &format!("sha256:{i}"),
                "10.0.0.5:5000",
                "plain_http",
            ));
        }
        let again = FallbackLog::open(tmp.path());
        let recent = again.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].layer, "sha256:5");
        assert_eq!(recent[KEEP - 1].layer, format!("sha256:{}", KEEP + 4));
        assert_eq!(read(tmp.path()).unwrap(), recent);
    }

    #[test]
    fn warns_once_per_host_and_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let log = FallbackLog::open(tmp.path());
        assert_eq!(log.should_warn("a:5000", "plain_http"), Some(0));
        assert_eq!(log.should_warn("a:5000", "plain_http"), None);
        assert_eq!(log.should_warn("a:5000", "plain_http"), None);
        assert_eq!(log.should_warn("a:5000", "not_found"), Some(0));
        assert_eq!(log.should_warn("b:5000", "plain_http"), Some(0));
        // A minute later the next one warns and counts the two in between.
        lock(&log.warned)
            .get_mut(&("a:5000".to_string(), "plain_http".to_string()))
            .unwrap()
            .0 -= WARN_EVERY;
        assert_eq!(log.should_warn("a:5000", "plain_http"), Some(2));
        assert_eq!(log.should_warn("a:5000", "plain_http"), None);
    }

    #[test]
    fn an_unreadable_record_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(path(tmp.path()), "not json").unwrap();
        let e = read(tmp.path()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
        assert!(FallbackLog::open(tmp.path()).recent().is_empty());
    }
}
