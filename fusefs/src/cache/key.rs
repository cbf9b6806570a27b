//! Cache keys: chunks are addressed by the sha256 of their uncompressed content, so identical
//! chunks are stored once across layers and images. Legacy layers without chunk digests use a
//! separate, unverifiable keyspace keyed by (layer digest, offset, size).

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The identity of a cached chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkKey {
    /// A chunk with a known content digest (sha256 of its uncompressed bytes). Verified
    /// before it is cached and again when first read from disk in a process lifetime.
    Digest([u8; 32]),
    /// A chunk of a layer that has no chunk digests (legacy stargz). It cannot be verified:
    /// only its length is checked. Keyed by the layer's blob digest and the chunk's
    /// uncompressed offset and size within the layer.
    Unverified {
        /// sha256 of the layer blob.
        layer: [u8; 32],
        /// Offset of the chunk in the layer's uncompressed content.
        offset: u64,
        /// Uncompressed size of the chunk.
        size: u64,
    },
}

impl ChunkKey {
    /// The key of `data` (its sha256).
    pub fn of(data: &[u8]) -> Self {
        ChunkKey::Digest(Sha256::digest(data).into())
    }

    /// Parses `"sha256:<64 hex>"`.
    pub fn parse(digest: &str) -> Option<Self> {
        let hex_part = digest.strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(ChunkKey::Digest(out))
    }

    /// True for keys whose content can be verified by digest.
    pub fn is_verifiable(&self) -> bool {
        matches!(self, ChunkKey::Digest(_))
    }

    /// The size implied by the key, if the key carries one.
    pub fn size(&self) -> Option<u64> {
        match self {
            ChunkKey::Digest(_) => None,
            ChunkKey::Unverified { size, .. } => Some(*size),
        }
    }

    /// Checks `data` against the key: digest for verifiable keys, length for the others.
    pub fn matches(&self, data: &[u8]) -> bool {
        match self {
            ChunkKey::Digest(d) => Sha256::digest(data).as_slice() == d,
            ChunkKey::Unverified { size, .. } => data.len() as u64 == *size,
        }
    }

    /// Path of the entry relative to the cache directory.
    pub(crate) fn relative_path(&self) -> String {
        match self {
            ChunkKey::Digest(d) => {
                let h = hex::encode(d);
                format!("sha256/{}/{h}", &h[..2])
            }
            ChunkKey::Unverified {
                layer,
                offset,
                size,
            } => format!("unverified/{}/{offset}-{size}", hex::encode(layer)),
        }
    }

    /// The key stored at `relative` (inverse of [`ChunkKey::relative_path`]).
    pub(crate) fn from_relative_path(relative: &str) -> Option<Self> {
        let parts: Vec<&str> = relative.split('/').collect();
        match parts.as_slice() {
            ["sha256", prefix, h] if h.len() == 64 && h.starts_with(prefix) => {
                ChunkKey::parse(&format!("sha256:{h}"))
            }
            ["unverified", layer, name] => {
                let mut l = [0u8; 32];
                hex::decode_to_slice(layer, &mut l).ok()?;
                let (off, size) = name.split_once('-')?;
                Some(ChunkKey::Unverified {
                    layer: l,
                    offset: off.parse().ok()?,
                    size: size.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkKey::Digest(d) => write!(f, "sha256:{}", hex::encode(d)),
            ChunkKey::Unverified {
                layer,
                offset,
                size,
            } => write!(
                f,
                "unverified(layer sha256:{}, offset {offset}, size {size})",
                hex::encode(layer)
            ),
        }
    }
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_paths_and_strings() {
        let k = ChunkKey::of(b"hello");
        let s = k.to_string();
        assert_eq!(ChunkKey::parse(&s), Some(k));
        assert_eq!(ChunkKey::from_relative_path(&k.relative_path()), Some(k));
        let u = ChunkKey::Unverified {
            layer: [7; 32],
            offset: 4096,
            size: 10,
        };
        assert_eq!(ChunkKey::from_relative_path(&u.relative_path()), Some(u));
        assert!(ChunkKey::parse("sha256:XYZ").is_none());
        assert!(ChunkKey::parse(&s.to_uppercase()).is_none());
        assert!(ChunkKey::from_relative_path("sha256/zz/abc").is_none());
    }

    #[test]
    fn matching_checks_digest_or_length() {
        let k = ChunkKey::of(b"abc");
        assert!(k.matches(b"abc"));
        assert!(!k.matches(b"abd"));
        let u = ChunkKey::Unverified {
            layer: [0; 32],
            offset: 0,
            size: 3,
        };
        assert!(u.matches(b"xyz") && !u.matches(b"xy"));
    }
}
