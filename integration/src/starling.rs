//! placeholder
use std::path::PathBuf;
/// x
pub fn starling_bin() -> crate::Result<PathBuf> { Err(crate::Error::Missing("x".into())) }
