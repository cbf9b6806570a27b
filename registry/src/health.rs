//! Whether a registry host answers: when a request to it last succeeded, and when one
//! last failed without an answer (timed out, refused, reset). The fetch layer uses it to
//! tell "the registry is back" ([`crate::Blob::host_answered_since`]: a chunk whose fetch
//! just failed is answered with the same error at once until then); the snapshotter uses
//! it to decide later layers of a pull at once after a host did not answer
//! ([`crate::RegistryClient::unreachable_within`]).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A host's recent answers and failures to answer.
#[derive(Debug, Default)]
pub(crate) struct HostHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_ok: Option<Instant>,
    unreachable: Option<(Instant, String)>,
}

/// A host that did not answer, as [`crate::RegistryClient::unreachable_within`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// How long ago.
    pub ago: Duration,
    /// Why (the last error).
    pub cause: String,
}

impl HostHealth {
    /// A request succeeded.
    pub fn answered(&self) {
        let mut s = self.state.lock();
        s.last_ok = Some(Instant::now());
        s.unreachable = None;
    }

    /// A request got no answer (timeout, refused, reset).
    pub fn unreachable(&self, cause: impl Into<String>) {
        self.state.lock().unreachable = Some((Instant::now(), cause.into()));
    }

    /// True if a request succeeded after `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        self.state.lock().last_ok.is_some_and(|ok| ok > t)
    }

    /// The last failure to answer, if it was less than `hold` ago and nothing succeeded
    /// since.
    pub fn unreachable_within(&self, hold: Duration) -> Option<Unreachable> {
        let s = self.state.lock();
        let (at, cause) = s.unreachable.as_ref()?;
        let ago = at.elapsed();
        (ago < hold).then(|| Unreachable {
            ago,
            cause: cause.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_clears_a_failure() {
        let h = HostHealth::default();
        let before = Instant::now();
        assert!(h.unreachable_within(Duration::from_secs(60)).is_none());
        h.unreachable("connect timed out");
        let u = h.unreachable_within(Duration::from_secs(60)).unwrap();
        assert_eq!(u.cause, "connect timed out");
        assert!(
            h.unreachable_within(Duration::ZERO).is_none(),
            "hold passed"
        );
        assert!(!h.answered_since(before));
        h.answered();
        assert!(h.answered_since(before));
        assert!(h.unreachable_within(Duration::from_secs(60)).is_none());
    }
}
