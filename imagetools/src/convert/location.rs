//! Where an image is: a registry reference (`HOST[:PORT]/REPO[:TAG|@DIGEST]`) or an OCI
//! image layout on disk (`oci:DIR[:TAG]`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use registry::Reference;

use super::ConvertError;

/// Prefix of an OCI layout location.
pub const OCI_PREFIX: &str = "oci:";

/// An image's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLocation {
    /// An image on a registry.
    Registry(Reference),
    /// An image in an OCI layout, named by its `org.opencontainers.image.ref.name`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The ref name; `None` means "the only image" when reading and `latest` when
        /// writing.
        tag: Option<String>,
    },
}

impl ImageLocation {
    /// The registry host, for a registry location.
    pub fn host(&self) -> Option<&str> {
        match self {
            ImageLocation::Registry(r) => Some(&r.repository.host),
            ImageLocation::Layout { .. } => None,
        }
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "{r}"),
            ImageLocation::Layout { dir, tag } => {
                write!(f, "{OCI_PREFIX}{}", dir.display())?;
                match tag {
                    Some(t) => write!(f, ":{t}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// True for a tag as the OCI distribution spec allows it (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub(crate) fn is_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !t.starts_with(['.', '-'])
}

impl FromStr for ImageLocation {
    type Err = ConvertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConvertError::Location {
            location: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix(OCI_PREFIX) {
            // The last `:` starts a tag when what follows looks like one (a directory
            // whose name contains `:` can be written with a trailing `/`).
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if is_tag(t) => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad(
                    "the OCI layout directory is empty (write oci:DIR[:TAG])",
                ));
            }
            return Ok(ImageLocation::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        let r = Reference::from_str(s).map_err(|e| bad(&e.to_string()))?;
        Ok(ImageLocation::Registry(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layouts_and_references() {
        let l: ImageLocation = "oci:/tmp/x:v1".parse().unwrap();
        assert_eq!(
            l,
            ImageLocation::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        let l: ImageLocation = "oci:rel/dir".parse().unwrap();
        assert_eq!(
            l,
            ImageLocation::Layout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(l.to_string(), "oci:rel/dir");
        let l: ImageLocation = "oci:/a:b/c".parse().unwrap();
        assert!(matches!(l, ImageLocation::Layout { ref tag, .. } if tag.is_none()));
        let r: ImageLocation = "127.0.0.1:5000/a/b:t".parse().unwrap();
        assert_eq!(r.host(), Some("127.0.0.1:5000"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:t");
    }

    #[test]
    fn rejects_bad_locations() {
        for s in ["oci:", "oci::tag", "http://x/y", "Reg.io/UPPER", ""] {
            let e = s.parse::<ImageLocation>().unwrap_err();
            assert!(matches!(e, ConvertError::Location { .. }), "{s}: {e}");
        }
    }
}
