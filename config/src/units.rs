//! Human-readable units used in the TOML file: durations (`"30s"`, `"500ms"`, `"1m 30s"`, parsed
//! by `humantime`) and byte sizes (`"64MiB"`, `"20GiB"`, `"1.5GB"` parsed by `bytesize`, or a
//! non-negative integer number of bytes). Fields keep plain `std::time::Duration` / `u64`
//! types; the modules here are used with `#[serde(with = ...)]`.

use std::fmt;
use std::time::Duration;

/// Parses a duration such as `"30s"`, `"500ms"` or `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); expected e.g. \"30s\" or \"500ms\""))
}

/// Formats a duration the way [`parse_duration`] reads it (`"30s"`, `"1m 30s"`, `"0s"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a byte size: an integer number of bytes or a number with a unit (`"64MiB"`, `"20GB"`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("invalid size {text:?}: sizes cannot be negative"));
    }
    let n: bytesize::ByteSize = t.parse().map_err(|e| {
        format!("invalid size {text:?} ({e}); expected e.g. \"64MiB\" or \"20GiB\"")
    })?;
    if n.as_u64() == u64::MAX {
        return Err(format!("invalid size {text:?}: too large"));
    }
    Ok(n.as_u64())
}

/// Formats a size exactly, with the largest binary unit that divides it (`"64MiB"`, `"1000"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    if bytes == 0 {
        return "0".to_string();
    }
    for (name, factor) in UNITS {
        if bytes % factor == 0 {
            return format!("{}{name}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// `#[serde(with = "crate::units::duration")]` for `Duration` fields.
pub mod duration {
    use super::*;
    use serde::{de, Deserializer, Serializer};

    /// Writes the duration as a string such as `"30s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"30s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// `#[serde(with = "crate::units::opt_duration")]` for `Option<Duration>` fields (absent = None).
pub mod opt_duration {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Writes `Some` as a duration string (callers skip `None` with `skip_serializing_if`).
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration string into `Some`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// `#[serde(with = "crate::units::size")]` for byte-size `u64` fields.
pub mod size {
    use super::*;
    use serde::{de, Deserializer, Serializer};

    /// Writes the size as `"64MiB"` (or an integer string when no binary unit divides it).
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*n))
    }

    /// Reads a size string or a non-negative integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a non-negative integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                parse_size(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("invalid size {v}: sizes cannot be negative")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, d) in [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1m 30s", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text).unwrap(), d, "{text}");
            assert_eq!(format_duration(d), text);
        }
        assert!(parse_duration("abc").unwrap_err().contains("\"abc\""));
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn sizes_parse_and_format_exactly() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("20 GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert!(parse_size("-1GiB").unwrap_err().contains("negative"));
        assert!(parse_size("lots").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(parse_size(&format_size(3 << 40)).unwrap(), 3 << 40);
    }
}
