//! Which layer prioritizes which path, for `--prioritize FILE`.
//!
//! Rule: a path is prioritized in the **topmost layer that has an entry for it** (the
//! layer whose copy a container sees). Walking down from the top layer, a whiteout of the
//! path or of one of its parent directories, or an opaque marker in one of its parent
//! directories, hides the lower layers: the path is then prioritized nowhere. A path no
//! layer has is reported as missing. Each layer gets its paths in the order of the list.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use estargz::name::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// Reads a prioritize list: one path per line (`/usr/bin/python3`, `./etc/x` or
/// `etc/x`), blank lines skipped, duplicates dropped; names are normalized like TOC names.
pub fn parse_list(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let p = estargz::name::normalize(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if p.is_empty() {
            return Err(format!("line {}: names the root directory", i + 1));
        }
        if seen.insert(p.clone()) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Assigns prioritized paths to layers.
#[derive(Debug, Clone)]
pub struct Assigner {
    paths: Vec<Vec<u8>>,
    interesting: HashSet<Vec<u8>>,
}

fn join(dir: &[u8], base: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        base.to_vec()
    } else {
        [dir, b"/", base].concat()
    }
}

/// `path` and each of its parent directories (not the root), shortest first.
fn self_and_ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

/// The names whose presence in a layer hides `path` in the layers below: whiteouts of it
/// and of its parents, opaque markers of its parents (the root included).
fn hiders(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![OPAQUE_WHITEOUT.to_vec()];
    for a in self_and_ancestors(path) {
        let (dir, base) = match a.iter().rposition(|&b| b == b'/') {
            Some(i) => (&a[..i], &a[i + 1..]),
            None => (&a[..0], a),
        };
        out.push(join(dir, &[WHITEOUT_PREFIX, base].concat()));
        if a.len() < path.len() {
            out.push(join(a, OPAQUE_WHITEOUT));
        }
    }
    out
}

/// A tar entry name cleaned like the writer does (`./`, `//` dropped, `..` pops).
fn clean(name: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

impl Assigner {
    /// An assigner for `paths` (normalized, see [`parse_list`]).
    pub fn new(paths: Vec<Vec<u8>>) -> Assigner {
        let mut interesting = HashSet::new();
        for p in &paths {
            interesting.insert(p.clone());
            interesting.extend(hiders(p));
        }
        Assigner { paths, interesting }
    }

    /// The names of a layer's tar (plain, seekable) that matter for the assignment.
    pub fn scan(&self, tar_file: &File) -> std::io::Result<HashSet<Vec<u8>>> {
        let mut f = tar_file;
        f.seek(SeekFrom::Start(0))?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(256 * 1024, f));
        let mut found = HashSet::new();
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            let name = clean(&entry.path_bytes());
            if self.interesting.contains(&name) {
                found.insert(name);
            }
        }
        Ok(found)
    }

    /// Per layer (bottom first, as `present` is), the paths it prioritizes; and the paths
    /// no layer has.
    pub fn assign(&self, present: &[HashSet<Vec<u8>>]) -> (Vec<Vec<Vec<u8>>>, Vec<Vec<u8>>) {
        let mut per_layer = vec![Vec::new(); present.len()];
        let mut missing = Vec::new();
        'paths: for p in &self.paths {
            let hide = hiders(p);
            for (i, names) in present.iter().enumerate().rev() {
                if names.contains(p) {
                    per_layer[i].push(p.clone());
                    continue 'paths;
                }
                if hide.iter().any(|h| names.contains(h)) {
                    continue 'paths;
                }
            }
            missing.push(p.clone());
        }
        (per_layer, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    fn strs(v: &[Vec<u8>]) -> Vec<&str> {
        v.iter().map(|p| std::str::from_utf8(p).unwrap()).collect()
    }

    #[test]
    fn list_is_normalized_and_deduplicated() {
        let l = parse_list(b"/usr/bin/python3\n\n./etc//x\r\nusr/bin/python3\n  \n").unwrap();
        assert_eq!(strs(&l), ["usr/bin/python3", "etc/x"]);
        assert!(parse_list(b"a/../../b\n").unwrap_err().contains("line 1"));
        assert!(parse_list(b"ok\n/\n").unwrap_err().contains("line 2"));
    }

    #[test]
    fn hiders_cover_whiteouts_and_opaque_parents() {
        let h: Vec<String> = hiders(b"a/b/c")
            .iter()
            .map(|v| String::from_utf8(v.clone()).unwrap())
            .collect();
        for want in [
            ".wh..wh..opq",
            ".wh.a",
            "a/.wh..wh..opq",
            "a/.wh.b",
            "a/b/.wh..wh..opq",
            "a/b/.wh.c",
        ] {
            assert!(h.contains(&want.to_string()), "{want} not in {h:?}");
        }
        assert!(!h.contains(&"a/b/c/.wh..wh..opq".to_string()));
    }

    #[test]
    fn topmost_layer_with_the_path_wins_and_whiteouts_hide() {
        let a =
            Assigner::new(parse_list(b"bin/sh\nusr/lib/x\netc/gone\nopt/d/f\nnowhere\n").unwrap());
        let layers = [
            set(&["bin/sh", "usr/lib/x", "etc/gone", "opt/d/f"]),
            set(&["usr/lib/x", "etc/.wh.gone"]),
            set(&["opt/d/.wh..wh..opq", "bin/unrelated"]),
        ];
        let (per, missing) = a.assign(&layers);
        assert_eq!(strs(&per[0]), ["bin/sh"]);
        assert_eq!(strs(&per[1]), ["usr/lib/x"]);
        assert!(per[2].is_empty());
        assert_eq!(strs(&missing), ["nowhere"]);
    }

    #[test]
    fn scans_names_of_a_tar() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("./bin/sh", &b"x"[..]),
            ("etc/.wh.gone", b""),
            ("other", b"y"),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let a = Assigner::new(parse_list(b"bin/sh\netc/gone\n").unwrap());
        assert_eq!(a.scan(&f).unwrap(), set(&["bin/sh", "etc/.wh.gone"]));
        let mut g = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut g, &[7u8; 1024]).unwrap();
        assert!(a.scan(&g).is_err());
    }
}
