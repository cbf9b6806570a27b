//! Prerequisite checks for integration tests. A test calls `require!(check)`; when the
//! check fails it prints `SKIP <test>: <reason>` and returns, or panics when
//! `STARLING_REQUIRE_INTEGRATION=1` (CI), so missing parts never pass silently there.

use crate::process::which;

/// True when missing prerequisites must fail tests (`STARLING_REQUIRE_INTEGRATION=1`).
pub fn integration_required() -> bool {
    std::env::var("STARLING_REQUIRE_INTEGRATION").is_ok_and(|v| v == "1")
}

/// Skips (prints the reason) or panics, depending on [`integration_required`].
pub fn skip_or_fail(test: &str, reason: &str) {
    if integration_required() {
        panic!("{test}: prerequisite missing and STARLING_REQUIRE_INTEGRATION=1: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// For optional parts (the reference peer): skips with the reason unless
/// `STARLING_REQUIRE_PEER=1`, in which case it panics.
pub fn skip_optional(test: &str, reason: &str) {
    if std::env::var("STARLING_REQUIRE_PEER").is_ok_and(|v| v == "1") {
        panic!("{test}: optional part required by STARLING_REQUIRE_PEER=1 is missing: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// Returns from the calling test (after printing why) unless every check is `Ok`; panics
/// instead when `STARLING_REQUIRE_INTEGRATION=1`. Each argument is a
/// `Result<_, String>`-like expression, e.g. `require!(prereq::root(), prereq::containerd_stack())`.
/// Works in functions returning `()`; use [`require_or!`](crate::require_or) to return a value.
#[macro_export]
macro_rules! require {
    ($($check:expr),+ $(,)?) => {
        $(
            if let Err(reason) = $check {
                $crate::prereq::skip_or_fail(module_path!(), &reason.to_string());
                return;
            }
        )+
    };
}

/// Like [`require!`] for functions that must return a value: `require_or!(ret; checks...)`.
#[macro_export]
macro_rules! require_or {
    ($ret:expr; $($check:expr),+ $(,)?) => {
        $(
            if let Err(reason) = $check {
                $crate::prereq::skip_or_fail(module_path!(), &reason.to_string());
                return $ret;
            }
        )+
    };
}

/// Outcome of a prerequisite check: `Err` carries the human-readable reason.
pub type Check = Result<(), String>;

/// We run as root (real mounts, containerd, netns).
pub fn root() -> Check {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("needs root".into())
    }
}

/// Every named program is in `$PATH`.
pub fn binaries(names: &[&str]) -> Check {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| which(n).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing programs: {} (run scripts/setup)",
            missing.join(", ")
        ))
    }
}

/// `/dev/fuse` can be opened.
pub fn fuse() -> Check {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Registry tests: root is not needed, `docker-registry` and `skopeo` are.
pub fn registry() -> Check {
    binaries(&["docker-registry", "skopeo"])
}

/// Everything an end-to-end test with containerd needs.
pub fn containerd_stack() -> Check {
    root()?;
    binaries(&["containerd", "ctr", "runc", "docker-registry", "skopeo"])
}

/// Network namespaces, veth and tbf (shaped link).
pub fn netns() -> Check {
    root()?;
    binaries(&["ip", "tc"])
}

/// Realistic Debian images can be built (or are cached already).
pub fn debian_images() -> Check {
    root()?;
    binaries(&["debootstrap", "umoci", "unshare", "chroot"])
}

/// `ctr-remote` (reference converter and lazy-pull client).
pub fn ctr_remote() -> Check {
    binaries(&["ctr-remote"])
}

/// The `starling` binary is built ([`crate::starling::starling_bin`]).
pub fn starling_binary() -> Check {
    crate::starling::starling_bin()
        .map(drop)
        .map_err(|e| e.to_string())
}
