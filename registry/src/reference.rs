//! Image references: `[HOST[:PORT]/]REPO[:TAG][@DIGEST]`, normalised like docker does
//! (`ubuntu` → `docker.io/library/ubuntu:latest`).

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

use super::RegistryError;

/// The registry name docker uses for Docker Hub references.
pub const DOCKER_HUB: &str = "docker.io";

/// A repository on a registry: `host/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// Registry host as written in references (`docker.io`, `10.0.0.5:5000`).
    pub host: String,
    /// Repository path (`library/ubuntu`).
    pub name: String,
}

impl Repository {
    /// A repository from its parts (not validated).
    pub fn new(host: impl Into<String>, name: impl Into<String>) -> Self {
        Repository {
            host: host.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.name)
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The repository.
    pub repository: Repository,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// The manifest digest, if pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// This reference pinned to `digest` (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() || s.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        if s.contains("://") {
            return Err(bad("must not have a scheme (write HOST[:PORT]/REPO[:TAG])"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d = Digest::from_str(d).map_err(|e| bad(&format!("bad digest: {e}")))?;
                (r, Some(d))
            }
            None => (s, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), rest.to_string()),
        };
        let (name, tag) = match path.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), Some(t.to_string())),
            _ => (path.clone(), None),
        };
        config::check_host(&host).map_err(|m| bad(&m))?;
        let name = if host == DOCKER_HUB && !name.contains('/') {
            format!("library/{name}")
        } else {
            name
        };
        check_repository(&name).map_err(|m| bad(&m))?;
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            repository: Repository { host, name },
            tag,
            digest,
        })
    }
}

/// Checks a repository path: lowercase components separated by `/`, each made of
/// alphanumerics joined by `.`, `_`, `__` or `-` runs.
fn check_repository(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("repository name is empty or too long".into());
    }
    for comp in name.split('/') {
        let ok = !comp.is_empty()
            && comp
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && comp.starts_with(|c: char| c.is_ascii_alphanumeric())
            && comp.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!("invalid repository component {comp:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("ubuntu");
        assert_eq!(r.repository, Repository::new("docker.io", "library/ubuntu"));
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/ubuntu:latest");
        assert_eq!(parse("foo/bar:1.0").repository.name, "foo/bar");
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let r = parse(&format!("127.0.0.1:5000/a/b:v1@{d}"));
        assert_eq!(r.repository.host, "127.0.0.1:5000");
        assert_eq!(r.repository.name, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), d);
        let r = parse("localhost/x");
        assert_eq!(r.repository.host, "localhost");
        let r = parse(&format!("reg.io/x@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), d);
    }

    #[test]
    fn bad_references_are_rejected() {
        for bad in [
            "",
            "http://reg/x",
            "reg.io/UPPER",
            "reg.io/x:bad tag",
            "reg.io/x@sha256:zz",
            "reg.io:99999/x",
            "reg.io//x",
        ] {
            let e = bad.parse::<Reference>().unwrap_err();
            assert!(
                matches!(e, RegistryError::InvalidReference { .. }),
                "{bad}: {e}"
            );
        }
    }
}
