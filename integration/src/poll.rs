//! Polling without fixed sleeps: check a condition often (starting at 5 ms, backing off to
//! 100 ms) until it holds or a deadline passes.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Calls `check` until it returns `Some`, or fails with [`Error::Timeout`] after `timeout`.
/// `check` may itself return an error to abort the wait early (e.g. the process died).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                detail: String::new(),
            });
        }
        std::thread::sleep(delay.min(timeout - elapsed));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Like [`poll_until`] for a plain boolean condition.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    poll_until(what, timeout, || Ok(check().then_some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_value_once_ready() {
        let mut n = 0;
        let v = poll_until("counter", Duration::from_secs(5), || {
            n += 1;
            Ok((n == 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out() {
        let err = wait_for("never", Duration::from_millis(30), || false).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("never"));
    }
}
