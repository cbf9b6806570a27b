//! Test harness for end-to-end tests: starts real `docker-registry`, `containerd` (with
//! starling as a proxy plugin) and `starling` processes under a private temp dir, builds
//! test images offline, and tears everything down by PID. Tests live in `tests/`; see
//! `README.md` for a usage example.
//!
//! Layers, bottom up: [`workdir`], [`process`], [`mounts`], [`poll`] and [`http`] are the
//! plumbing; [`registry`], [`containerd`], [`starling`], [`mirror`] (`starling mirror`),
//! [`peer`], [`proxy`] and [`shaped`] run the real parts; [`cri`] drives containerd's CRI plugin as the kubelet does;
//! [`client`] runs starling's client subcommands and [`metrics`] reads the daemon's
//! metrics; [`oci`] and [`images`] make images; [`extract`], [`overlay`] and [`treecmp`]
//! compute and compare expected trees, [`fscompat`] compares two trees call by call;
//! [`loopfs`] gives a filesystem whose page reads can be counted; [`stack`] wires a whole
//! environment; [`prereq`] decides whether a test can run here. [`bench`] is the
//! side-by-side benchmark suite built on all of it (`scripts/bench`).
//!
//! ```no_run
//! use integration::{prereq, require, stack::{Stack, StackOptions}, starling::StarlingOptions};
//!
//! fn lazy_pull_runs() {
//!     require!(prereq::containerd_stack(), prereq::fuse(), prereq::starling_binary());
//!     let opts = StackOptions { starling: Some(StarlingOptions::default()), ..Default::default() };
//!     let s = Stack::start("lazy", opts).unwrap();
//!     integration::images::busybox().unwrap().push(&s.registry, "bb:latest").unwrap();
//!     let r = s.registry.reference("bb:latest");
//!     s.ctr().rpull(&r, "starling").unwrap();
//!     assert_eq!(s.ctr().run_ok(&r, "starling", &["echo", "hi"]).unwrap(), "hi\n");
//! } // drop: tasks killed, daemons stopped by PID, mounts detached, workdir removed
//! ```

pub mod bench;
pub mod client;
pub mod containerd;
pub mod contrib;
pub mod cri;
pub mod docker;
pub mod engines;
pub mod error;
pub mod extract;
pub mod faults;
pub mod fscompat;
pub mod http;
pub mod images;
pub mod loopfs;
pub mod metrics;
pub mod mirror;
pub mod mounts;
pub mod oci;
pub mod overlay;
pub mod peer;
pub mod poll;
pub mod prereq;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod shaped;
pub mod stack;
pub mod starling;
pub mod treecmp;
pub mod workdir;

pub use error::{Error, Result};
