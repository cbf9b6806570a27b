//! Writes TOC JSON laid out like the reference writer's (`json.MarshalIndent` with a tab:
//! struct field order, `omitempty` fields left out, sorted xattr keys, HTML-safe escapes),
//! except that invalid UTF-8 in names is written as is instead of being replaced by
//! U+FFFD, so that non-UTF-8 names survive.

use std::io::Write as _;

use base64::Engine as _;

use super::TocEntry;

/// Appends the TOC JSON for `entries` to `out`.
pub fn write_toc_json(entries: &[TocEntry], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\n\t\"version\": 1,\n\t\"entries\": [");
    for (i, e) in entries.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n\t\t{" } else { b",\n\t\t{" });
        write_entry(e, out);
        out.extend_from_slice(b"\n\t\t}");
    }
    if !entries.is_empty() {
        out.extend_from_slice(b"\n\t");
    }
    out.extend_from_slice(b"]\n}");
}

fn write_entry(e: &TocEntry, out: &mut Vec<u8>) {
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(if first { b"\n\t\t\t\"" } else { b",\n\t\t\t\"" });
        first = false;
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\": ");
    };
    let num = |out: &mut Vec<u8>, v: i64| {
        let _ = write!(out, "{v}");
    };
    key(out, "name");
    write_str(e.name.as_slice(), out);
    key(out, "type");
    write_str(e.kind.as_bytes(), out);
    if e.size != 0 {
        key(out, "size");
        num(out, e.size);
    }
    if !e.modtime.is_empty() {
        key(out, "modtime");
        write_str(e.modtime.as_bytes(), out);
    }
    if !e.link_name.is_empty() {
        key(out, "linkName");
        write_str(&e.link_name, out);
    }
    for (k, v) in [("mode", e.mode), ("uid", e.uid), ("gid", e.gid)] {
        if v != 0 {
            key(out, k);
            num(out, v);
        }
    }
    for (k, v) in [("userName", &e.user_name), ("groupName", &e.group_name)] {
        if !v.is_empty() {
            key(out, k);
            write_str(v, out);
        }
    }
    for (k, v) in [
        ("offset", e.offset),
        ("innerOffset", e.inner_offset),
        ("devMajor", e.dev_major),
        ("devMinor", e.dev_minor),
    ] {
        if v != 0 {
            key(out, k);
            num(out, v);
        }
    }
    if !e.xattrs.is_empty() {
        key(out, "xattrs");
        let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = e.xattrs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        for (i, (name, value)) in sorted.into_iter().enumerate() {
            out.extend_from_slice(if i == 0 {
                b"\n\t\t\t\t"
            } else {
                b",\n\t\t\t\t"
            });
            write_str(name, out);
            out.extend_from_slice(b": \"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .as_bytes(),
            );
            out.push(b'"');
        }
        out.extend_from_slice(b"\n\t\t\t}");
    }
    if !e.digest.is_empty() {
        key(out, "digest");
        write_str(e.digest.as_bytes(), out);
    }
    for (k, v) in [("chunkOffset", e.chunk_offset), ("chunkSize", e.chunk_size)] {
        if v != 0 {
            key(out, k);
            num(out, v);
        }
    }
    if !e.chunk_digest.is_empty() {
        key(out, "chunkDigest");
        write_str(e.chunk_digest.as_bytes(), out);
    }
}

/// Writes `s` as a JSON string with Go's escapes; other bytes (including invalid UTF-8)
/// are copied.
fn write_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'<' | b'>' | b'&' | 0..=0x1f => {
                let _ = write!(out, "\\u{:04x}", b);
            }
            // U+2028 and U+2029 (E2 80 A8 / E2 80 A9) are escaped by Go.
            0xe2 if s.get(i + 1) == Some(&0x80) && matches!(s.get(i + 2), Some(0xa8 | 0xa9)) => {
                let _ = write!(
                    out,
                    "\\u20{:02x}",
                    if s[i + 2] == 0xa8 { 0x28 } else { 0x29 }
                );
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::Toc;
    use super::*;

    #[test]
    fn layout_matches_reference_style() {
        let entries = vec![TocEntry {
            name: b"a<b".to_vec(),
            kind: "reg".into(),
            size: 3,
            mode: 420,
            xattrs: vec![
                (b"user.z".to_vec(), b"1".to_vec()),
                (b"user.a".to_vec(), b"2".to_vec()),
            ],
            digest: "sha256:x".into(),
            ..Default::default()
        }];
        let mut out = Vec::new();
        write_toc_json(&entries, &mut out);
        let want = "{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{\n\t\t\t\"name\": \"a\\u003cb\",\n\t\t\t\"type\": \"reg\",\n\t\t\t\"size\": 3,\n\t\t\t\"mode\": 420,\n\t\t\t\"xattrs\": {\n\t\t\t\t\"user.a\": \"Mg==\",\n\t\t\t\t\"user.z\": \"MQ==\"\n\t\t\t},\n\t\t\t\"digest\": \"sha256:x\"\n\t\t}\n\t]\n}";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn round_trips_through_the_parser() {
        let entries = vec![
            TocEntry {
                name: b"dir/\xff\"\\\n\x01\xe2\x80\xa8".to_vec(),
                kind: "dir".into(),
                modtime: "2020-01-01T00:00:00Z".into(),
                uid: 5,
                gid: 6,
                user_name: b"me".to_vec(),
                group_name: b"us".to_vec(),
                ..Default::default()
            },
            TocEntry {
                name: b"dev".to_vec(),
                kind: "block".into(),
                dev_major: 8,
                dev_minor: 1,
                ..Default::default()
            },
            TocEntry {
                name: b"f".to_vec(),
                kind: "chunk".into(),
                offset: 99,
                inner_offset: 4,
                chunk_offset: 10,
                chunk_size: 20,
                chunk_digest: "sha256:y".into(),
                ..Default::default()
            },
        ];
        let mut out = Vec::new();
        write_toc_json(&entries, &mut out);
        let toc = Toc::parse(&out).unwrap();
        assert_eq!(toc.entries, entries);
        let mut empty = Vec::new();
        write_toc_json(&[], &mut empty);
        assert_eq!(Toc::parse(&empty).unwrap().entries.len(), 0);
    }
}
