//! Fixtures of the registry tests: the shared ones (`registry::testutil`: docker-registry
//! process, fault proxy, clients, data) plus a minimal HTTP server and a token server.

#![allow(dead_code, unused_imports)]

pub mod http;
pub mod token;

pub use registry::require_registry;
pub use registry::testutil::*;
