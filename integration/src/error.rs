//! The harness's error type: every failure names what was being done and, for processes
//! and commands, carries the tail of their output so a failing test explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while setting up or driving the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (includes the path).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call made through `nix` failed.
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A command could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// Captured standard output (tail).
        stdout: String,
        /// Captured standard error (tail).
        stderr: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}{detail}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        after: Duration,
        /// Extra context (e.g. a log tail), starting with a newline when present.
        detail: String,
    },
    /// A long-running process exited while we waited for it.
    #[error("{name} exited early ({status}); log {log}:\n{tail}")]
    Exited {
        /// Process name.
        name: String,
        /// Exit status as text.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// Last lines of the log.
        tail: String,
    },
    /// An HTTP request failed.
    #[error("HTTP {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Data we read or were given does not have the expected shape.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed or checked.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A prerequisite (binary, privilege, kernel feature) is missing.
    #[error("prerequisite missing: {0}")]
    Missing(String),
}

impl Error {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a `nix` error with context.
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    /// An "invalid data" error.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`Error::Io`] with a lazily built context string.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
