//! The failure hold of one blob's fetch layer: chunks whose fetch failed recently, with the
//! error, so that reads of them fail at once for `fetch.failure_hold` instead of waiting
//! `fetch.read_timeout` again (the kernel asks once more for a page whose read failed, and
//! applications retry in loops). A held failure is dropped as soon as the source answers a
//! request made after it (a read of another chunk, or the background probe a held read
//! starts), so a registry that is back serves again at once. A read of a chunk that
//! failed a while ago (longer than [`RETRY_WINDOW`]: not the kernel's immediate retry)
//! first waits briefly ([`PROBE_WAIT`]) for that probe's answer, so the first read after
//! the registry came back is served, not failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::FetchError;
use crate::cache::ChunkKey;

/// Most failed chunks remembered at once; past that the older half is forgotten.
const MAX_FAILED: usize = 4096;
/// A held read this soon after the failure is the kernel's (or an application's)
/// immediate retry: it fails at once.
pub(crate) const RETRY_WINDOW: Duration = Duration::from_millis(250);
/// How long a later held read waits for the probe's answer before failing.
pub(crate) const PROBE_WAIT: Duration = Duration::from_millis(500);

/// See the module doc.
pub(crate) struct FailureHold {
    hold: Duration,
    failed: Mutex<HashMap<ChunkKey, (Instant, FetchError)>>,
    /// When the source last answered a request of this fetch layer.
    answered: Mutex<Option<Instant>>,
    /// A probe of the source is running.
    probing: AtomicBool,
    /// Woken when a probe ends.
    probed: tokio::sync::Notify,
    /// [`RETRY_WINDOW`] (milliseconds; tests change it).
    retry_window_ms: AtomicU64,
}

impl FailureHold {
    /// Holds failures for `hold` (zero: off).
    pub(crate) fn new(hold: Duration) -> Self {
        FailureHold {
            hold,
            failed: Mutex::new(HashMap::new()),
            answered: Mutex::new(None),
            probing: AtomicBool::new(false),
            probed: tokio::sync::Notify::new(),
            retry_window_ms: AtomicU64::new(RETRY_WINDOW.as_millis() as u64),
        }
    }

    /// Remembers that `key`'s fetch failed now with `err`. Only failures of the source
    /// (no answer, error answers, copies failing verification) are held; a cache that
    /// refused an entry or an abandoned fetch are not.
    pub(crate) fn note(&self, key: ChunkKey, err: &FetchError) {
        if self.hold.is_zero() || !matches!(err, FetchError::Registry(_) | FetchError::Corrupt(_)) {
            return;
        }
        let mut m = self.failed.lock();
        if m.len() >= MAX_FAILED {
            let mut ages: Vec<Instant> = m.values().map(|(t, _)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            m.retain(|_, (t, _)| *t > cut);
        }
        m.insert(key, (Instant::now(), err.clone()));
    }

    /// The source answered a request now.
    pub(crate) fn answered(&self) {
        *self.answered.lock() = Some(Instant::now());
    }

    /// The error of `key`'s failed fetch if it is less than the hold old and the source
    /// has not answered since (neither through this fetch layer nor, as `elsewhere` tells
    /// for the failure's time, any other way); forgets it otherwise.
    pub(crate) fn recent(
        &self,
        key: &ChunkKey,
        elsewhere: impl Fn(Instant) -> bool,
    ) -> Option<FetchError> {
        let mut m = self.failed.lock();
        let (at, err) = m.get(key)?;
        let back = self.answered.lock().is_some_and(|ok| ok > *at) || elsewhere(*at);
        if at.elapsed() < self.hold && !back {
            return Some(err.clone());
        }
        m.remove(key);
        None
    }

    /// True if `key`'s held failure happened longer than [`RETRY_WINDOW`] ago.
    pub(crate) fn failed_before_retry_window(&self, key: &ChunkKey) -> bool {
        let window = Duration::from_millis(self.retry_window_ms.load(Ordering::Relaxed));
        self.failed
            .lock()
            .get(key)
            .is_some_and(|(at, _)| at.elapsed() >= window)
    }

    /// Replaces [`RETRY_WINDOW`] (tests: a long one makes every held read an immediate
    /// retry whatever the machine's load, zero makes none).
    #[cfg(test)]
    pub(crate) fn set_retry_window(&self, window: Duration) {
        self.retry_window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// A future that completes when the next probe ends (created before the probe is
    /// started, it does not miss the end).
    pub(crate) fn probe_end(&self) -> tokio::sync::futures::Notified<'_> {
        self.probed.notified()
    }

    /// True if the caller should start a probe of the source (none is running); it calls
    /// [`FailureHold::probe_done`] when the probe ends.
    pub(crate) fn begin_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The probe started after [`FailureHold::begin_probe`] ended.
    pub(crate) fn probe_done(&self) {
        self.probing.store(false, Ordering::Release);
        self.probed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> FetchError {
        FetchError::Registry(Box::new(registry::RegistryError::Network {
            target: registry::Target::digest("memory", "blob", "sha256:test"),
            endpoint: "memory".into(),
            cause: "refused".into(),
        }))
    }

    #[test]
    fn held_until_the_source_answers_or_the_hold_passes() {
        let key = ChunkKey::of(b"chunk");
        let hold = FailureHold::new(Duration::from_secs(60));
        assert!(hold.recent(&key, |_| false).is_none());
        hold.note(key, &failure());
        assert!(matches!(
            hold.recent(&key, |_| false),
            Some(FetchError::Registry(_))
        ));
        // Another way to the same host answered after the failure.
        assert!(hold.recent(&key, |_| true).is_none());
        assert!(hold.recent(&key, |_| false).is_none(), "forgotten");
        hold.note(key, &failure());
        hold.answered();
        assert!(hold.recent(&key, |_| false).is_none());

        let off = FailureHold::new(Duration::ZERO);
        off.note(key, &failure());
        assert!(off.recent(&key, |_| false).is_none());
        let held = FailureHold::new(Duration::from_secs(60));
        held.note(key, &FetchError::Abandoned);
        assert!(
            held.recent(&key, |_| false).is_none(),
            "not a source failure"
        );
    }

    #[test]
    fn remembers_a_bounded_number() {
        let hold = FailureHold::new(Duration::from_secs(60));
        for i in 0..(MAX_FAILED * 2) as u32 {
            hold.note(ChunkKey::of(&i.to_le_bytes()), &failure());
        }
        assert!(hold.failed.lock().len() <= MAX_FAILED);
        let last = ChunkKey::of(&((MAX_FAILED * 2 - 1) as u32).to_le_bytes());
        assert!(hold.recent(&last, |_| false).is_some());
    }
}
