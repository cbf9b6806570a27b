//! The `Range` header of a blob request (RFC 9110 byte ranges) resolved against the blob's
//! size: `bytes=A-B`, `bytes=A-`, `bytes=-N`. A request for several ranges is answered
//! with its first range (a single-part 206, which clients such as starling's take as "no
//! multi-range support" and then ask range by range).

use std::ops::Range;

/// What a blob request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The bytes to send.
    pub range: Range<u64>,
    /// True for a 206 (a `Range` header was given), false for a 200 of the whole blob.
    pub partial: bool,
}

/// A `Range` header that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not a byte range this server understands (answered 400).
    #[error("invalid Range header {header:?}: {reason}; expected bytes=START-END, bytes=START- or bytes=-LENGTH")]
    Malformed {
        /// The header as sent.
        header: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A well-formed range outside the blob (answered 416).
    #[error("Range {header:?} is outside the blob ({size} bytes)")]
    Unsatisfiable {
        /// The header as sent.
        header: String,
        /// The blob's size.
        size: u64,
    },
}

/// Resolves the `Range` header (if any) of a request for a blob of `size` bytes.
pub fn wanted(header: Option<&str>, size: u64) -> Result<Wanted, RangeError> {
    let Some(header) = header else {
        return Ok(Wanted {
            range: 0..size,
            partial: false,
        });
    };
    let malformed = |reason| RangeError::Malformed {
        header: header.to_string(),
        reason,
    };
    let unsatisfiable = || RangeError::Unsatisfiable {
        header: header.to_string(),
        size,
    };
    let specs = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| malformed("the unit is not bytes"))?;
    let first = specs.split(',').next().unwrap_or("").trim();
    let (start, end) = first
        .split_once('-')
        .ok_or_else(|| malformed("no '-' in the range"))?;
    let number = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("a bound is not a number"));
        }
        s.parse().map_err(|_| malformed("a bound is too large"))
    };
    let range = match (start.trim(), end.trim()) {
        ("", "") => return Err(malformed("both bounds are missing")),
        ("", n) => {
            let n = number(n)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            size.saturating_sub(n)..size
        }
        (a, "") => {
            let a = number(a)?;
            if a >= size {
                return Err(unsatisfiable());
            }
            a..size
        }
        (a, b) => {
            let (a, b) = (number(a)?, number(b)?);
            if b < a {
                return Err(malformed("the end is before the start"));
            }
            if a >= size {
                return Err(unsatisfiable());
            }
            a..b.saturating_add(1).min(size)
        }
    };
    Ok(Wanted {
        range,
        partial: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(h: &str, size: u64) -> Range<u64> {
        let w = wanted(Some(h), size).unwrap();
        assert!(w.partial);
        w.range
    }

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(
            wanted(None, 10).unwrap(),
            Wanted {
                range: 0..10,
                partial: false
            }
        );
        assert_eq!(part("bytes=0-0", 10), 0..1);
        assert_eq!(part("bytes=2-5", 10), 2..6);
        assert_eq!(part("bytes=2-", 10), 2..10);
        assert_eq!(part("bytes=-3", 10), 7..10);
        assert_eq!(part("bytes=-30", 10), 0..10);
        assert_eq!(part("bytes=5-1000000", 10), 5..10);
        assert_eq!(part(" bytes=1-2, 5-6", 10), 1..3);
        assert_eq!(part("bytes=0-18446744073709551615", 10), 0..10);
    }

    #[test]
    fn bad_ranges_are_named() {
        for (h, size) in [
            ("bytes=10-", 10),
            ("bytes=10-20", 10),
            ("bytes=-0", 10),
            ("bytes=-5", 0),
        ] {
            assert!(
                matches!(wanted(Some(h), size), Err(RangeError::Unsatisfiable { .. })),
                "{h}"
            );
        }
        for h in [
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=1",
            "bytes=99999999999999999999999-",
            "bytes=+1-2",
        ] {
            let e = wanted(Some(h), 10).unwrap_err();
            assert!(matches!(e, RangeError::Malformed { .. }), "{h}: {e}");
            assert!(e.to_string().contains("expected bytes="), "{e}");
        }
    }
}
