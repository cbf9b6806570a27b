//! Handing freed heap memory back to the system. Fetching decodes chunks into short-lived
//! multi-MiB buffers on several threads; glibc keeps what they free in per-thread arenas,
//! so without this a daemon that once fetched a whole layer stays at that size.
//!
//! Two measures: [`tune_allocator`] (called once at process start by the daemon and
//! `starling mount`) caps glibc at [`ARENA_MAX`] arenas and serves every allocation of
//! [`MMAP_THRESHOLD`] or more with its own mapping, returned to the system when freed (glibc
//! otherwise raises that threshold to the largest block freed so far, up to 32 MiB, and
//! multi-MiB chunk buffers then stay in the arenas); and a context task calls
//! `malloc_trim(0)` every [`TRIM_INTERVAL`] while fetches happen, and once more after they
//! stop. `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment win over the
//! built-in values.

use std::time::Duration;

/// How often memory is trimmed while layers fetch.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Most glibc malloc arenas (the default is 8 per CPU).
pub const ARENA_MAX: i32 = 2;
/// Allocations of this size or more get their own mapping.
pub const MMAP_THRESHOLD: i32 = 256 << 10;

/// Sets the allocator limits above (glibc only; a no-op elsewhere). Call once, early, before
/// threads start. Values set in the environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) are left alone.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |env: &str, param: libc::c_int, value: libc::c_int| {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only changes allocator parameters; it has no memory-safety
                // preconditions and is safe to call at any time.
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        };
        set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX);
        set(
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        );
    }
}

/// Returns free heap memory to the system (glibc only; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims while `activity` (a count of fetch work, e.g. bytes fetched + disk hits) moves;
/// ends when it answers `None` (its owner is gone).
pub(crate) async fn trim_while_fetching(activity: impl Fn() -> Option<u64>) {
    let mut last = u64::MAX;
    let mut quiet_ticks = 0u32;
    loop {
        tokio::time::sleep(TRIM_INTERVAL).await;
        let Some(now) = activity() else { return };
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
