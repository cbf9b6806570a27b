//! Configuration errors. Every error about a value names its key as a TOML path
//! (`fetch.request_timeout`, `registry.hosts."reg:5000".mirrors[0].host`) and, when the
//! configuration came from text, the line and column of that key.

use std::fmt;
use std::path::PathBuf;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySegment {
    /// A table key.
    Key(String),
    /// An index into an array.
    Index(usize),
}

/// A key path into the TOML document, displayed the way one would write it in TOML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<KeySegment>);

impl KeyPath {
    /// A path from dotted plain keys (`KeyPath::of(&["fetch", "request_timeout"])`).
    pub fn of(keys: &[&str]) -> Self {
        KeyPath(
            keys.iter()
                .map(|k| KeySegment::Key(k.to_string()))
                .collect(),
        )
    }

    /// This path extended by one key.
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(KeySegment::Key(k.to_string()));
        p
    }

    /// This path extended by one array index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(KeySegment::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<top level>");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                KeySegment::Index(n) => write!(f, "[{n}]")?,
                KeySegment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Line and column (both 1-based) in the configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Location {
    /// The location of byte offset `offset` in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { line, column }
    }
}

/// Errors of loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{origin}{}: TOML syntax error: {message}", at(location))]
    Syntax {
        /// File name (or `<config>` for text without a file).
        origin: String,
        /// Where the parser stopped.
        location: Option<Location>,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown or its value is invalid.
    #[error("{origin}{}: `{key}`: {message}", at(location))]
    Invalid {
        /// File name (or `<config>` for text without a file).
        origin: String,
        /// Where the key is, when known.
        location: Option<Location>,
        /// The offending key.
        key: KeyPath,
        /// What is wrong with it.
        message: String,
    },
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(":{}:{}", l.line, l.column),
        None => String::new(),
    }
}

impl ConfigError {
    /// The key this error is about, if it is about one.
    pub fn key(&self) -> Option<&KeyPath> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The location this error points at, if known.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Syntax { location, .. } | ConfigError::Invalid { location, .. } => {
                *location
            }
            ConfigError::Read { .. } => None,
        }
    }
}

/// A validation failure found by a section's `validate`, before it gets a file location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The offending key.
    pub key: KeyPath,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// A failure of `key`.
    pub fn new(key: KeyPath, message: impl Into<String>) -> Self {
        Invalid {
            key,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_display_like_toml() {
        let p = KeyPath::of(&["registry", "hosts", "reg.local:5000"])
            .key("mirrors")
            .index(0)
            .key("host");
        assert_eq!(
            p.to_string(),
            "registry.hosts.\"reg.local:5000\".mirrors[0].host"
        );
        assert_eq!(
            KeyPath::of(&["fetch", "max_retries"]).to_string(),
            "fetch.max_retries"
        );
    }

    #[test]
    fn offsets_map_to_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 9),
            Location { line: 2, column: 4 }
        );
    }
}
