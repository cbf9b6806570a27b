//! Fixtures of the fusefs tests: the registry crate's (`registry::testutil`: a real
//! docker-registry process, the fault proxy, clients and test data).

#![allow(dead_code, unused_imports)]

pub use registry::require_registry;
pub use registry::testutil::*;
