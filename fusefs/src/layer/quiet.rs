//! When background fetch may use the link. Every layer of a process shares it, so the signal
//! is per process ([`Activity`], held by the layer context): opening a layer (footer, TOC),
//! a prefetch, a stream and every read that waits on the network mark the link busy while
//! they run. Background fetch starts a batch only when nothing is busy and the link has been
//! quiet for the silence window (`fetch.background_pause_after_read`); mounting a layer
//! counts as activity, so background fetch never starts right after a pull, while the
//! container is being created and starts reading.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// Longest nap between two checks while something is busy (a guard dropped wakes the
/// waiters at once; this only bounds a missed wake-up).
const BUSY_POLL: Duration = Duration::from_millis(250);

/// What background fetch may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quiet {
    /// Something waits on the network right now.
    Busy,
    /// The link went quiet recently: wait this much longer.
    Wait(Duration),
    /// Quiet for the whole window (or never used).
    Yes,
}

/// Prioritized (non-background) use of the link by the layers of one process.
pub(crate) struct Activity {
    epoch: Instant,
    busy: AtomicUsize,
    /// Milliseconds since `epoch` (+1; 0 = never) when prioritized use last started or ended.
    last: AtomicU64,
    idle: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            idle: Notify::new(),
        }
    }

    fn touch_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Records a moment of activity (e.g. a layer was mounted): the window starts again.
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// Marks the link busy until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy {
            activity: self.clone(),
        }
    }

    /// Whether background fetch may go at `now`, given the silence `window`.
    pub(crate) fn check_at(&self, now: Instant, window: Duration) -> Quiet {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return Quiet::Busy;
        }
        match self.last.load(Ordering::Relaxed) {
            0 => Quiet::Yes,
            ms => {
                let at = self.epoch + Duration::from_millis(ms - 1);
                let since = now.saturating_duration_since(at);
                if since >= window {
                    Quiet::Yes
                } else {
                    Quiet::Wait(window - since)
                }
            }
        }
    }

    /// Waits until the link has been quiet for `window`; false if `closed` turned true
    /// first.
    pub(crate) async fn wait_quiet(
        &self,
        window: Duration,
        closed: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            if *closed.borrow() {
                return false;
            }
            let idle = self.idle.notified();
            let nap = match self.check_at(Instant::now(), window) {
                Quiet::Yes => return true,
                Quiet::Wait(d) => d,
                Quiet::Busy => BUSY_POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = idle => {}
                _ = closed.wait_for(|c| *c) => return false,
            }
        }
    }
}

/// The link is in prioritized use while this lives (see [`Activity::begin`]).
pub(crate) struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.activity;
        a.touch();
        if a.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(2);

    #[test]
    fn never_used_link_is_quiet() {
        let a = Activity::new();
        assert_eq!(a.check_at(Instant::now(), W), Quiet::Yes);
    }

    #[test]
    fn busy_while_a_guard_lives_then_waits_the_whole_window() {
        let a = Arc::new(Activity::new());
        let g1 = a.begin();
        let g2 = a.begin();
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(a.check_at(far, W), Quiet::Busy, "busy regardless of time");
        drop(g1);
        assert_eq!(a.check_at(far, W), Quiet::Busy, "one fetch still waits");
        drop(g2);
        let end = Instant::now();
        // Right after the last guard: the whole window (minus what already passed) remains.
        match a.check_at(end, W) {
            Quiet::Wait(d) => assert!(d > W - Duration::from_millis(100) && d <= W, "{d:?}"),
            q => panic!("expected a wait, got {q:?}"),
        }
        assert_eq!(
            a.check_at(end + W + Duration::from_millis(2), W),
            Quiet::Yes
        );
    }

    #[test]
    fn a_touch_restarts_the_window_and_never_moves_it_back() {
        let a = Activity::new();
        let t0 = Instant::now();
        a.touch_at(t0 + Duration::from_secs(10));
        a.touch_at(t0 + Duration::from_secs(5)); // older: ignored
        match a.check_at(t0 + Duration::from_secs(11), W) {
            Quiet::Wait(d) => {
                assert!(
                    d <= Duration::from_secs(1) && d > Duration::from_millis(990),
                    "{d:?}"
                )
            }
            q => panic!("expected a wait, got {q:?}"),
        }
        assert_eq!(a.check_at(t0 + Duration::from_secs(13), W), Quiet::Yes);
        // A zero window only waits for busy fetches.
        assert_eq!(
            a.check_at(t0 + Duration::from_secs(10), Duration::ZERO),
            Quiet::Yes
        );
    }

    #[tokio::test]
    async fn wait_quiet_waits_for_busy_fetches_and_stops_when_closed() {
        let window = Duration::from_millis(20);
        let a = Arc::new(Activity::new());
        let (tx, mut rx) = watch::channel(false);
        let g = a.begin();
        let waiter = {
            let a = a.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move { a.wait_quiet(window, &mut rx).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "must not go while a fetch is busy");
        drop(g);
        assert!(waiter.await.unwrap(), "goes once quiet");
        let _g = a.begin();
        tx.send_replace(true);
        assert!(!a.wait_quiet(window, &mut rx).await, "closed wins");
    }
}
