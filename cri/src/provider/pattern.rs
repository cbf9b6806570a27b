//! Image patterns of credential provider plugins, matched with the kubelet's rules: a
//! pattern `HOST[:PORT][/PATH]` matches an image when both host names have the same number
//! of dot-separated parts and each image part matches the pattern's part as a glob
//! (`*`, `?`, `[...]`), the ports are equal (both absent, or the same), and the pattern's
//! path is a prefix of the image's path. The same rules select the keys of a plugin's
//! `auth` answer.

/// A pattern that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

/// One `matchImages` entry (or `auth` key).
#[derive(Debug, Clone)]
pub struct ImagePattern {
    text: String,
    host_parts: Vec<glob::Pattern>,
    port: String,
    path: String,
}

/// `HOST[:PORT][/PATH]` split into (host, port, path); the path keeps its leading `/`.
fn split(text: &str) -> (&str, &str, &str) {
    let (authority, path) = match text.find('/') {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, p, path),
        _ => (authority, "", path),
    }
}

impl ImagePattern {
    /// Reads a pattern (an optional `https://` is dropped, as the kubelet does).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let fail = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        let t = t.strip_prefix("https://").unwrap_or(t);
        let (host, port, path) = split(t);
        if host.is_empty() {
            return Err(fail("no host"));
        }
        let host_parts = host
            .split('.')
            .map(glob::Pattern::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&format!("bad glob in the host: {}", e.msg)))?;
        Ok(ImagePattern {
            text: text.to_string(),
            host_parts,
            port: port.to_string(),
            path: path.to_string(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `image` (`HOST[:PORT]/REPOSITORY`, tag or digest ignored) matches.
    pub fn matches(&self, image: &str) -> bool {
        let (host, port, path) = split(image);
        if port != self.port || !path.starts_with(&self.path) {
            return false;
        }
        let parts: Vec<&str> = host.split('.').collect();
        parts.len() == self.host_parts.len()
            && self
                .host_parts
                .iter()
                .zip(&parts)
                .all(|(p, h)| p.matches(h))
    }

    /// True if the host has a glob (exact patterns are preferred among matching keys).
    pub fn has_glob(&self) -> bool {
        self.host_parts
            .iter()
            .any(|p| p.as_str().contains(['*', '?', '[']))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, image: &str) -> bool {
        ImagePattern::parse(p).unwrap().matches(image)
    }

    #[test]
    fn the_kubelets_rules() {
        // Globs match one host part each.
        assert!(m("*.kubernetes.io", "prefix.kubernetes.io/app"));
        assert!(m("prefix.*.io", "prefix.kubernetes.io/app"));
        assert!(m("prefix.kubernetes.*", "prefix.kubernetes.io/app"));
        assert!(m("*-good.kubernetes.io", "prefix-good.kubernetes.io/app"));
        assert!(!m("*.io", "prefix.kubernetes.io/app"));
        assert!(m("*.*.io", "prefix.kubernetes.io/app"));
        assert!(m(
            "*.dkr.ecr.*.amazonaws.com",
            "1234.dkr.ecr.us-east-1.amazonaws.com/x"
        ));
        // Ports must be equal.
        assert!(m("reg.io:5000", "reg.io:5000/app"));
        assert!(!m("reg.io", "reg.io:5000/app"));
        assert!(!m("reg.io:5000", "reg.io/app"));
        assert!(!m("reg.io:5000", "reg.io:5001/app"));
        assert!(m("127.0.0.1:5000", "127.0.0.1:5000/team/app"));
        // The path is a prefix.
        assert!(m("reg.io/team", "reg.io/team/app"));
        assert!(!m("reg.io/team", "reg.io/other/app"));
        assert!(m("reg.io", "reg.io"));
        assert!(m("https://reg.io", "reg.io/a"));
        assert!(ImagePattern::parse("*.io").unwrap().has_glob());
        assert!(!ImagePattern::parse("reg.io").unwrap().has_glob());
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(ImagePattern::parse("").is_err());
        assert!(ImagePattern::parse("[.io").is_err());
        assert!(ImagePattern::parse(":5000/x").is_err());
    }
}
