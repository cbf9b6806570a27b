//! Facts about the host a benchmark runs on: the time stamp of a run, the load average.

use std::time::Duration;

use crate::process::run_ok;

/// UTC time as `YYYYMMDD-HHMMSS` (from `date`).
pub fn timestamp() -> String {
    run_ok("date", ["-u", "+%Y%m%d-%H%M%S"], Duration::from_secs(5))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("run-{}", std::process::id()))
}

/// The three load averages.
pub fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect()
}
