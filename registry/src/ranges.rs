//! Byte-range planning and parsing: merging nearby ranges into spans, grouping spans into
//! (multi-)range requests, the `Range` header, `Content-Range`, and `multipart/byteranges`
//! bodies.

use std::ops::Range;

use bytes::Bytes;

/// A contiguous byte range fetched in one piece, covering one or more requested ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) range: Range<u64>,
    /// Indexes of the requested ranges this span covers.
    pub(crate) members: Vec<usize>,
}

/// Merges `ranges` (any order, may overlap) into sorted spans: ranges overlapping or closer
/// than `gap` join one span, as long as the span stays within `max_span` bytes.
pub(crate) fn plan_spans(ranges: &[Range<u64>], gap: u64, max_span: u64) -> Vec<Span> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
    let mut spans: Vec<Span> = Vec::new();
    for i in order {
        let r = &ranges[i];
        if let Some(last) = spans.last_mut() {
            let joined_end = last.range.end.max(r.end);
            if r.start <= last.range.end.saturating_add(gap)
                && joined_end - last.range.start <= max_span.max(r.end - r.start)
            {
                last.range.end = joined_end;
                last.members.push(i);
                continue;
            }
        }
        spans.push(Span {
            range: r.clone(),
            members: vec![i],
        });
    }
    spans
}

/// Groups spans into requests of at most `max_ranges` spans and `max_bytes` bytes each.
pub(crate) fn batch(spans: Vec<Span>, max_ranges: usize, max_bytes: u64) -> Vec<Vec<Span>> {
    let mut out: Vec<Vec<Span>> = Vec::new();
    let mut bytes = 0u64;
    for s in spans {
        let len = s.range.end - s.range.start;
        match out.last_mut() {
            Some(cur) if cur.len() < max_ranges && bytes + len <= max_bytes => {
                bytes += len;
                cur.push(s);
            }
            _ => {
                bytes = len;
                out.push(vec![s]);
            }
        }
    }
    out
}

/// `bytes=a-b,c-d` (inclusive ends) for the given spans.
pub(crate) fn range_header(spans: &[Range<u64>]) -> String {
    let parts: Vec<String> = spans
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end - 1))
        .collect();
    format!("bytes={}", parts.join(","))
}

/// Parses `bytes START-END/TOTAL` (or `/*`) into an exclusive range and the total size.
pub(crate) fn parse_content_range(v: &str) -> Option<(Range<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a..b.checked_add(1)?, total))
}

/// The boundary of a `multipart/byteranges` content type, if it is one.
pub(crate) fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// Splits a `multipart/byteranges` body into (range, bytes) parts (zero-copy slices). Each
/// part's length comes from its `Content-Range`, so binary data containing the boundary
/// string is handled.
pub(crate) fn parse_multipart(
    body: &Bytes,
    boundary: &str,
) -> Result<Vec<(Range<u64>, Bytes)>, String> {
    let delim = format!("--{boundary}");
    let find = |from: usize, needle: &[u8]| -> Option<usize> {
        body.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = find(0, delim.as_bytes()).ok_or("no multipart boundary in body")?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        // Skip optional whitespace and the CRLF ending the delimiter line.
        let line_end = find(pos, b"\r\n").ok_or("truncated part delimiter")?;
        let headers_end = find(line_end, b"\r\n\r\n").ok_or("truncated part headers")?;
        let headers = std::str::from_utf8(&body[line_end + 2..headers_end])
            .map_err(|_| "part headers are not UTF-8")?;
        let range = headers
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| parse_content_range(v))
                    .flatten()
            })
            .ok_or("part without a valid Content-Range")?
            .0;
        let start = headers_end + 4;
        let end = usize::try_from(range.end - range.start)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= body.len())
            .ok_or("truncated part body")?;
        parts.push((range, body.slice(start..end)));
        if body.get(end..end + 2) != Some(b"\r\n") {
            return Err("part body not followed by CRLF".into());
        }
        pos = find(end, delim.as_bytes()).ok_or("missing closing boundary")?;
        if pos != end + 2 {
            return Err("unexpected bytes between parts".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_ranges_merge_into_spans() {
        let ranges = vec![100..200, 0..10, 205..300, 1000..1100, 150..160, 2000..2001];
        let spans = plan_spans(&ranges, 10, 1 << 20);
        let got: Vec<_> = spans.iter().map(|s| s.range.clone()).collect();
        assert_eq!(got, vec![0..10, 100..300, 1000..1100, 2000..2001]);
        assert_eq!(spans[1].members, vec![0, 4, 2]);
        // A span limit splits long runs.
        let spans = plan_spans(&[0..100, 100..200, 200..300], 0, 200);
        assert_eq!(spans.len(), 2);
        // No gap: adjacent ranges still merge, separated ones do not.
        assert_eq!(plan_spans(&[0..10, 10..20, 21..30], 0, 100).len(), 2);
    }

    #[test]
    fn spans_batch_by_count_and_bytes() {
        let spans = plan_spans(&[0..10, 20..30, 40..50, 60..1060], 0, 1 << 20);
        let b = batch(spans, 2, 1000);
        let sizes: Vec<_> = b.iter().map(|v| v.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        assert_eq!(range_header(&[0..10, 20..30]), "bytes=0-9,20-29");
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0..100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5..6, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn multipart_bodies_parse_with_binary_data() {
        let b = "XYZ";
        let mut body = Vec::new();
        body.extend_from_slice(b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-4/100\r\n\r\n");
        body.extend_from_slice(b"--XYZ"); // data that looks like a boundary
        body.extend_from_slice(
            b"\r\n--XYZ\r\ncontent-range: bytes 50-52/100\r\n\r\nabc\r\n--XYZ--\r\n",
        );
        let parts = parse_multipart(&Bytes::from(body), b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], (0..5, Bytes::from_static(b"--XYZ")));
        assert_eq!(parts[1], (50..53, Bytes::from_static(b"abc")));
        assert_eq!(
            multipart_boundary("multipart/byteranges; boundary=\"XYZ\""),
            Some("XYZ".into())
        );
        assert_eq!(multipart_boundary("application/octet-stream"), None);
    }

    #[test]
    fn truncated_multipart_is_an_error() {
        let body = Bytes::from_static(b"--B\r\nContent-Range: bytes 0-9/10\r\n\r\nshort");
        assert!(parse_multipart(&body, "B").is_err());
        assert!(parse_multipart(&Bytes::from_static(b"nothing"), "B").is_err());
    }
}
