//! Entry names: normalization of TOC paths and rejection of hostile ones.
//!
//! A TOC name is normalized by dropping empty and `.` components (which strips `./`,
//! leading and trailing `/` and collapses `//`). Names containing NUL, a `..` component or
//! a component longer than [`NAME_MAX`] bytes are rejected: they either escape the layer
//! root or cannot exist on Linux. Names are bytes; non-UTF-8 is allowed.

/// Longest allowed path component, as on Linux.
pub const NAME_MAX: usize = 255;
/// Prefix of an overlay whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the entry that marks its directory opaque.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// Why a name was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name contains a NUL byte.
    #[error("name {0:?} contains a NUL byte")]
    Nul(String),
    /// The name has a `..` component.
    #[error("name {0:?} has a '..' component (escapes the layer root)")]
    DotDot(String),
    /// A component is longer than [`NAME_MAX`].
    #[error("name {0:?} has a component longer than {NAME_MAX} bytes")]
    ComponentTooLong(String),
}

/// Normalizes `name` into `out` (cleared first): components joined by single `/`, no
/// leading or trailing `/`. The root is the empty string.
pub fn normalize_into(name: &[u8], out: &mut Vec<u8>) -> Result<(), NameError> {
    out.clear();
    let lossy = || String::from_utf8_lossy(name).into_owned();
    if name.contains(&0) {
        return Err(NameError::Nul(lossy()));
    }
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(NameError::DotDot(lossy())),
            c if c.len() > NAME_MAX => return Err(NameError::ComponentTooLong(lossy())),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(())
}

/// Normalizes `name` (see [`normalize_into`]).
pub fn normalize(name: &[u8]) -> Result<Vec<u8>, NameError> {
    let mut out = Vec::with_capacity(name.len());
    normalize_into(name, &mut out)?;
    Ok(out)
}

/// Splits a normalized path into (parent, base name). The root has no split.
pub fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        for (input, want) in [
            (&b"./a/b/"[..], &b"a/b"[..]),
            (b"/a//b", b"a/b"),
            (b"a/./b", b"a/b"),
            (b"./", b""),
            (b"/", b""),
            (b"", b""),
            (b"a", b"a"),
            (b"\xff\xfe/x", b"\xff\xfe/x"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input:?}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        assert!(matches!(
            normalize(b"../etc/passwd"),
            Err(NameError::DotDot(_))
        ));
        assert!(matches!(normalize(b"a/../../b"), Err(NameError::DotDot(_))));
        assert!(matches!(normalize(b"a/.."), Err(NameError::DotDot(_))));
        assert!(matches!(normalize(b"a\0b"), Err(NameError::Nul(_))));
        let long = vec![b'x'; NAME_MAX + 1];
        assert!(matches!(
            normalize(&long),
            Err(NameError::ComponentTooLong(_))
        ));
        assert!(normalize(&vec![b'x'; NAME_MAX]).is_ok());
        // ".." inside a component is just a name.
        assert_eq!(normalize(b"a..b/..c").unwrap(), b"a..b/..c");
    }

    #[test]
    fn splits_parent() {
        assert_eq!(split_parent(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split_parent(b"a"), Some((&b""[..], &b"a"[..])));
        assert_eq!(split_parent(b""), None);
    }
}
