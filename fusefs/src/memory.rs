//! Handing freed heap memory back to the system. Fetching decodes chunks into short-lived
//! multi-MiB buffers on several threads; glibc keeps what they free in per-thread arenas,
//! so without this a daemon that once fetched a whole layer stays at that size. A context
//! task calls `malloc_trim(0)` every [`TRIM_INTERVAL`] while fetches happen, and once more
//! after they stop.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::context::LayerContext;

/// How often memory is trimmed while layers fetch.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Returns free heap memory to the system (glibc only; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims while the context's fetch counters move; ends when the context is dropped.
pub(crate) async fn trim_while_fetching(ctx: Weak<LayerContext>) {
    let mut last = u64::MAX;
    let mut quiet_ticks = 0u32;
    loop {
        tokio::time::sleep(TRIM_INTERVAL).await;
        let Some(ctx) = ctx.upgrade() else { return };
        let m = ctx.metrics();
        let now = m.bytes_fetched.load(Ordering::Relaxed) + m.disk_hits.load(Ordering::Relaxed);
        drop(ctx);
        if now != last {
            quiet_ticks = 0;
            last = now;
        } else {
            quiet_ticks = quiet_ticks.saturating_add(1);
        }
        // While active and on the first quiet tick after activity.
        if quiet_ticks <= 1 {
            tokio::task::spawn_blocking(trim);
        }
    }
}
