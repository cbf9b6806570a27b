//! The registry's access log: `docker-registry` prints one combined-log-format line per
//! request (`IP - - [date] "GET /v2/... HTTP/1.1" 206 1024 "" "agent"`) to its log file;
//! this parses them so tests can count requests and response bytes.

/// One request as logged by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// HTTP method.
    pub method: String,
    /// Request URI (path and query).
    pub uri: String,
    /// Response status.
    pub status: u16,
    /// Response body bytes written.
    pub bytes: u64,
    /// Client's User-Agent.
    pub user_agent: String,
}

impl AccessEntry {
    /// True for blob GETs (`/v2/<repo>/blobs/sha256:...`).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.uri.contains("/blobs/sha256:")
    }
}

/// Totals over a set of entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessSummary {
    /// Number of requests.
    pub requests: usize,
    /// Response body bytes.
    pub bytes: u64,
    /// Blob GET requests.
    pub blob_gets: usize,
    /// Response body bytes of blob GETs.
    pub blob_bytes: u64,
}

/// Sums up `entries`.
pub fn summarize<'a>(entries: impl IntoIterator<Item = &'a AccessEntry>) -> AccessSummary {
    let mut s = AccessSummary::default();
    for e in entries {
        s.requests += 1;
        s.bytes += e.bytes;
        if e.is_blob_get() {
            s.blob_gets += 1;
            s.blob_bytes += e.bytes;
        }
    }
    s
}

/// Parses one combined-log-format line; `None` for other log lines.
pub fn parse_line(line: &str) -> Option<AccessEntry> {
    // 127.0.0.1 - - [22/Nov/2026:06:08:11 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
    let (_, rest) = line.split_once("] \"")?;
    let (req, rest) = rest.split_once("\" ")?;
    let mut rp = req.split(' ');
    let method = rp.next()?.to_string();
    let uri = rp.next()?.to_string();
    if !rp.next()?.starts_with("HTTP/") {
        return None;
    }
    let mut nums = rest.splitn(3, ' ');
    let status: u16 = nums.next()?.parse().ok()?;
    let bytes_field = nums.next()?;
    let bytes = if bytes_field == "-" {
        0
    } else {
        bytes_field.parse().ok()?
    };
    let tail = nums.next().unwrap_or("");
    // "referer" "agent"
    let user_agent = tail
        .rsplit_once(" \"")
        .map(|(_, a)| a.trim_end_matches('"').to_string())
        .unwrap_or_default();
    Some(AccessEntry {
        method,
        uri,
        status,
        bytes,
        user_agent,
    })
}

/// Parses every access line in a log text.
pub fn parse_log(text: &str) -> Vec<AccessEntry> {
    text.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_lines_only() {
        let text = "time=\"x\" level=info msg=\"response completed\" http.request.uri=/v2/\n\
            127.0.0.1 - - [22/Nov/2026:06:08:11 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n\
            127.0.0.1 - - [22/Nov/2026:06:08:11 +0000] \"GET /v2/foo/blobs/sha256:00 HTTP/1.1\" 206 157 \"\" \"containerd/1.6\"\n\
            127.0.0.1 - - [22/Nov/2026:06:08:11 +0000] \"HEAD /v2/foo/manifests/latest HTTP/1.1\" 200 - \"\" \"x y\"\n";
        let v = parse_log(text);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].uri, "/v2/");
        assert_eq!(v[0].user_agent, "curl/7.88.1");
        assert_eq!(v[1].status, 206);
        assert!(v[1].is_blob_get());
        assert_eq!(v[2].bytes, 0);
        assert_eq!(v[2].user_agent, "x y");
        let s = summarize(&v);
        assert_eq!(
            (s.requests, s.bytes, s.blob_gets, s.blob_bytes),
            (3, 159, 1, 157)
        );
    }
}
