//! One check of `starling doctor`: what was checked, how it came out, what fixes it.

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Lazy pulls work, but not everywhere (a client, Kubernetes, crash recovery).
    Warn,
    /// Lazy pulls do not work (or containerd cannot use starling at all).
    Fail,
}

impl Level {
    pub(super) fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// How it came out.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to change (problems only).
    pub fix: Option<String>,
}

impl Check {
    pub(super) fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            level: Level::Ok,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    pub(super) fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            level: Level::Warn,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub(super) fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            level: Level::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}
