//! RFC 3339 timestamps as used by the TOC `modtime` field: parsing (with fractional
//! seconds and numeric offsets, as Go's `time.RFC3339` layout accepts) and formatting in UTC.

/// Parses an RFC 3339 timestamp into Unix seconds and nanoseconds.
pub fn parse_rfc3339(s: &[u8]) -> Option<(i64, u32)> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        let mut v = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        for _ in digits.len()..9 {
            v *= 10;
        }
        nanos = v;
    }
    let offset_secs = match s.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let base = i + 1;
            let (oh, om) = (num(base..base + 2)?, num(base + 3..base + 5)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    Some((secs, nanos))
}

/// Formats Unix seconds + nanoseconds as RFC 3339 in UTC (`2006-01-02T15:04:05Z`, with a
/// trimmed fraction when `nanos` is non-zero). Returns `None` outside years 1..=9999.
pub fn format_rfc3339(secs: i64, nanos: u32) -> Option<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    Some(out)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_values() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339(b"2009-11-10T23:00:00Z"),
            Some((1_257_894_000, 0))
        );
        assert_eq!(
            parse_rfc3339(b"2009-11-10T23:00:00.5Z"),
            Some((1_257_894_000, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339(b"2009-11-11T01:00:00+02:00"),
            Some((1_257_894_000, 0))
        );
        assert_eq!(
            parse_rfc3339(b"0001-01-01T00:00:00Z"),
            Some((-62_135_596_800, 0))
        );
        assert_eq!(
            parse_rfc3339(b"2000-02-29T00:00:00Z"),
            Some((951_782_400, 0))
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            &b""[..],
            b"2009-11-10 23:00:00Z",
            b"2009-13-10T23:00:00Z",
            b"2009-02-30T23:00:00Z",
            b"2009-11-10T24:00:00Z",
            b"2009-11-10T23:00:00",
            b"2009-11-10T23:00:00.Z",
            b"2009-11-10T23:00:00.1234567890Z",
            b"2009-11-10T23:00:00+0200",
            b"2009-11-10T23:00:00Zjunk",
            b"20x9-11-10T23:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_257_894_000, 120_000_000).unwrap(),
            "2009-11-10T23:00:00.12Z"
        );
        for secs in [
            -62_135_596_800i64,
            -1,
            0,
            86_399,
            951_782_400,
            4_102_444_800,
            253_402_300_799,
        ] {
            let s = format_rfc3339(secs, 7).unwrap();
            assert_eq!(parse_rfc3339(s.as_bytes()), Some((secs, 7)), "{s}");
        }
        assert_eq!(format_rfc3339(253_402_300_800, 0), None);
    }
}
