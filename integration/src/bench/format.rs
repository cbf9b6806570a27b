//! How the benchmark reports write numbers: seconds, ratios, `median [min–max]`.

use super::stats::Summary;

/// Formats seconds: 2 decimals below 10 s, 1 below 100 s, none above.
pub fn secs(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// `median [min–max]` with `f` for each number; `–` when there is nothing.
pub fn fmt_summary(s: Option<Summary>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) => {
            let (lo, hi) = (f(s.min), f(s.max));
            if lo == hi {
                lo
            } else {
                format!("{} [{lo}–{hi}]", f(s.median))
            }
        }
    }
}

/// Ratio formatting (`0.43×`).
pub fn ratio(x: f64) -> String {
    format!("{x:.2}×")
}
