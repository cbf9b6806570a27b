//! Extended attributes as the extracted layer answers them: the values come from the TOC
//! (borrowed from the in-memory index, no copy for a missing attribute), an opaque
//! directory carries the configured `*.overlay.opaque = y`, a missing attribute is
//! ENODATA, an entry without any lists none, a size-0 call gets the size and a too small
//! buffer ERANGE. A caller other than root does not see `trusted.*` names in a list, as
//! on a local filesystem (the kernel already answers its `trusted.*` reads with ENODATA).

use estargz::Entry;

use crate::layer::OpaqueXattr;

/// The value of `name` on `e`, if it has one.
pub(crate) fn value<'a>(e: &Entry<'a>, name: &[u8], opaque: OpaqueXattr) -> Option<&'a [u8]> {
    if e.is_opaque() && name == opaque.name().as_bytes() {
        return Some(b"y");
    }
    e.xattr(name)
}

/// The NUL-separated names of `e`'s attributes as `uid` may list them (`trusted.*` only
/// for root: local filesystems list them to CAP_SYS_ADMIN only, and the request carries
/// no capabilities; overlayfs' own calls come with its mounter's uid, root).
pub(crate) fn list(e: &Entry<'_>, opaque: OpaqueXattr, uid: u32) -> Vec<u8> {
    let opaque = opaque.name().as_bytes();
    let shown = |n: &[u8]| uid == 0 || !n.starts_with(b"trusted.");
    let mut list = Vec::new();
    for (n, _) in e.xattrs() {
        if n != opaque && shown(n) {
            list.extend_from_slice(n);
            list.push(0);
        }
    }
    if (e.is_opaque() || e.xattr(opaque).is_some()) && shown(opaque) {
        list.extend_from_slice(opaque);
        list.push(0);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use estargz::{Footer, Format, IndexOptions, LayerIndex};

    fn index(entries: &str) -> LayerIndex {
        let json = format!("{{\"version\":1,\"entries\":[{entries}]}}");
        let footer = Footer {
            format: Format::Estargz,
            toc_offset: 1 << 20,
            toc_compressed_size: 100,
            toc_uncompressed_size: None,
            blob_size: (1 << 20) + 151,
        };
        LayerIndex::from_toc_json(json.as_bytes(), &footer, &IndexOptions::default()).unwrap()
    }

    #[test]
    fn values_and_lists_as_an_extracted_layer_has_them() {
        // user.a = "1", trusted.t = "2" (base64 in the TOC).
        let ix = index(
            r#"{"name":"f","type":"reg","xattrs":{"user.a":"MQ==","trusted.t":"Mg=="}},
            {"name":"plain","type":"reg"},
            {"name":"o/","type":"dir"},
            {"name":"o/.wh..wh..opq","type":"reg"}"#,
        );
        let get = |p: &str| ix.entry(ix.resolve(p.as_bytes()).unwrap()).unwrap();
        let t = OpaqueXattr::Trusted;
        assert_eq!(value(&get("plain"), b"security.capability", t), None);
        assert_eq!(list(&get("plain"), t, 0), b"");
        assert_eq!(value(&get("f"), b"user.a", t), Some(&b"1"[..]));
        let mut names: Vec<&[u8]> = Vec::new();
        let l = list(&get("f"), t, 0);
        names.extend(l.split(|b| *b == 0).filter(|n| !n.is_empty()));
        names.sort();
        assert_eq!(names, [&b"trusted.t"[..], b"user.a"]);
        assert_eq!(list(&get("f"), t, 1000), b"user.a\0");
        assert_eq!(
            value(&get("o"), b"trusted.overlay.opaque", t),
            Some(&b"y"[..])
        );
        assert_eq!(value(&get("o"), b"user.overlay.opaque", t), None);
        assert_eq!(list(&get("o"), t, 0), b"trusted.overlay.opaque\0");
        assert_eq!(list(&get("o"), t, 1000), b"");
        assert_eq!(
            list(&get("o"), OpaqueXattr::User, 1000),
            b"user.overlay.opaque\0"
        );
    }
}
