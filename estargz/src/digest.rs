//! SHA-256 digests in the OCI form `sha256:<64 lowercase hex>`, as used for TOC digests,
//! file and chunk digests, diffIDs and blob digests.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors parsing a digest string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The algorithm prefix is not `sha256:`.
    #[error("unsupported digest algorithm in {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    /// The hex part is not 64 lowercase hex digits.
    #[error("malformed sha256 digest {0:?}")]
    Malformed(String),
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Finishes a running hasher.
    pub fn from_hasher(h: Sha256) -> Self {
        Self(h.finalize().into())
    }

    /// Parses `sha256:<hex>` from raw bytes (as found in a TOC).
    pub fn parse_bytes(s: &[u8]) -> Result<Self, DigestError> {
        let lossy = || String::from_utf8_lossy(s).into_owned();
        let Some(hexpart) = s.strip_prefix(b"sha256:") else {
            return Err(DigestError::UnsupportedAlgorithm(lossy()));
        };
        if hexpart.len() != 64 || hexpart.iter().any(|c| c.is_ascii_uppercase()) {
            return Err(DigestError::Malformed(lossy()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|_| DigestError::Malformed(lossy()))?;
        Ok(Self(out))
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_bytes(s.as_bytes())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let d = Sha256Digest::of(b"");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(s.parse::<Sha256Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            "sha512:00".parse::<Sha256Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Sha256Digest>(),
            Err(DigestError::Malformed(_))
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(matches!(
            upper.parse::<Sha256Digest>(),
            Err(DigestError::Malformed(_))
        ));
        let nonhex = format!("sha256:{}", "g".repeat(64));
        assert!(matches!(
            nonhex.parse::<Sha256Digest>(),
            Err(DigestError::Malformed(_))
        ));
    }
}
