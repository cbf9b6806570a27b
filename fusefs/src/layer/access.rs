//! The access log: the files of a layer in the order they were first read (one absolute
//! layer path per line in `access.log` of the state directory), for `starling optimize`.
//! A bit per entry remembers what was logged; names holding a newline are left out.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use estargz::{EntryId, LayerIndex};
use parking_lot::Mutex;

/// File name of the log in the state directory.
pub(crate) const ACCESS_LOG: &str = "access.log";

pub(crate) struct AccessLog {
    seen: Box<[AtomicU64]>,
    file: Mutex<File>,
    files: Mutex<Vec<Vec<u8>>>,
}

impl AccessLog {
    /// Starts a new log (an old one is truncated).
    pub(crate) fn create(dir: &Path, index: &LayerIndex) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join(ACCESS_LOG))?;
        Ok(AccessLog {
            seen: (0..index.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            file: Mutex::new(file),
            files: Mutex::new(Vec::new()),
        })
    }

    /// Records a read of `id`; only its first read is logged.
    pub(crate) fn record(&self, index: &LayerIndex, id: EntryId) {
        let (w, b) = (id as usize / 64, id % 64);
        let Some(word) = self.seen.get(w) else { return };
        if word.load(Ordering::Relaxed) & (1 << b) != 0
            || word.fetch_or(1 << b, Ordering::Relaxed) & (1 << b) != 0
        {
            return;
        }
        let mut line = b"/".to_vec();
        line.extend_from_slice(&index.path_of(id));
        if line.contains(&b'\n') {
            return;
        }
        self.files.lock().push(line.clone());
        line.push(b'\n');
        if let Err(e) = self.file.lock().write_all(&line) {
            tracing::debug!(error = %e, "cannot append to the access log");
        }
    }

    pub(crate) fn files(&self) -> Vec<Vec<u8>> {
        self.files.lock().clone()
    }
}
