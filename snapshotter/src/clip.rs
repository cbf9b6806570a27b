//! Client-supplied strings (snapshot keys and names, label values, filters, merge
//! inputs) as they appear in logs and in errors: cut to [`SHOWN`] bytes, with the full
//! length said, so a hostile or huge value (an 8 KB label) never fills a log line or an
//! error message.

use std::fmt;

/// Bytes of a client string shown in logs and errors; the rest is elided.
pub const SHOWN: usize = 200;

/// A client-supplied string for a log line or an error message: `Display` writes it,
/// `Debug` quotes it (like `{:?}` of a `str`), both cut to [`SHOWN`] bytes (on a character
/// boundary) followed by `…(N bytes)` when longer.
#[derive(Clone, Copy)]
pub struct Clip<'a>(pub &'a str);

/// [`Clip`] of `s`.
pub fn clip(s: &str) -> Clip<'_> {
    Clip(s)
}

impl Clip<'_> {
    /// The shown part and whether anything was cut.
    fn shown(&self) -> (&str, bool) {
        let s = self.0;
        if s.len() <= SHOWN {
            return (s, false);
        }
        let mut end = SHOWN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        (&s[..end], true)
    }
}

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = self.shown();
        f.write_str(shown)?;
        if cut {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = self.shown();
        fmt::Debug::fmt(shown, f)?;
        if cut {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// A client string shown around byte `pos` (e.g. where a parser stopped): whole when
/// short, else at most [`SHOWN`] bytes around `pos` with `…` where it was cut, and the
/// full length.
pub fn clip_around(s: &str, pos: usize) -> String {
    if s.len() <= SHOWN {
        return s.to_string();
    }
    let floor = |mut i: usize| {
        i = i.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(pos.min(s.len()).saturating_sub(SHOWN / 2));
    let end = floor(start + SHOWN);
    format!(
        "{}{}{}({} bytes)",
        if start > 0 { "…" } else { "" },
        &s[start..end],
        if end < s.len() { "…" } else { "" },
        s.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_shown_whole() {
        assert_eq!(clip("sha256:ab").to_string(), "sha256:ab");
        assert_eq!(format!("{:?}", clip("a\"b")), "\"a\\\"b\"");
        let exact = "x".repeat(SHOWN);
        assert_eq!(clip(&exact).to_string(), exact);
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let long = "v".repeat(8192);
        let shown = clip(&long).to_string();
        assert_eq!(shown, format!("{}…(8192 bytes)", "v".repeat(SHOWN)));
        let debug = format!("{:?}", clip(&long));
        assert_eq!(debug, format!("\"{}\"…(8192 bytes)", "v".repeat(SHOWN)));
        // A two-byte character across the cut is left out whole.
        let mixed = format!("{}é{}", "a".repeat(SHOWN - 1), "b".repeat(100));
        let shown = clip(&mixed).to_string();
        assert!(shown.starts_with(&"a".repeat(SHOWN - 1)), "{shown}");
        assert!(
            shown.ends_with(&format!("…({} bytes)", mixed.len())),
            "{shown}"
        );
        assert!(!shown.contains('é'));
    }

    #[test]
    fn around_a_position() {
        assert_eq!(clip_around("name==x", 6), "name==x");
        let long = format!("{}#{}", "a".repeat(5000), "b".repeat(5000));
        let shown = clip_around(&long, 5000);
        assert!(shown.starts_with('…') && shown.contains("a#b"), "{shown}");
        assert!(shown.ends_with("…(10001 bytes)"), "{shown}");
        assert!(shown.len() < SHOWN + 30, "{}", shown.len());
        let start = clip_around(&long, 3);
        assert!(start.starts_with("aaa") && start.ends_with("…(10001 bytes)"));
    }
}
