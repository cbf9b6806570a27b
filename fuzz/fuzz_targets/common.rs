//! Shared by the fuzz targets: small limits (so runs stay fast) and a walk over
//! everything an index exposes.

use estargz::{IndexOptions, LayerIndex, TocLimits, ROOT_ID};

pub fn options() -> IndexOptions {
    IndexOptions {
        limits: TocLimits {
            max_compressed_size: 1 << 20,
            max_uncompressed_size: 4 << 20,
            max_entries: 20_000,
        },
        allow_missing_digests: false,
    }
}

/// Touches every accessor; must never panic or loop.
pub fn walk(ix: &LayerIndex) {
    assert!(!ix.is_empty());
    let mut seen = 0usize;
    let mut stack = vec![ROOT_ID];
    while let Some(id) = stack.pop() {
        seen += 1;
        assert!(seen <= 4 * ix.len() + 4, "tree walk does not terminate");
        let e = ix.entry(id).expect("listed ids exist");
        let _ = (e.kind(), e.st_mode(), e.nlink(), e.rdev(), e.mtime(), e.digest(), e.name(), e.parent());
        let _ = e.symlink_target();
        for (k, v) in e.xattrs() {
            assert_eq!(e.xattr(k).map(|x| x.len()).is_some(), true);
            let _ = v;
        }
        let path = ix.path_of(id);
        if id != ROOT_ID && !e.is_whiteout() {
            // Every entry is reachable again by its path.
            assert!(ix.resolve(&path).is_some());
        }
        let mut prev: Option<&[u8]> = None;
        for (name, child) in ix.children(id) {
            if let Some(p) = prev {
                assert!(p < name, "children sorted and unique");
            }
            prev = Some(name);
            assert_eq!(ix.lookup(id, name), Some(child));
            if ix.entry(child).map(|c| c.kind()) == Some(estargz::EntryKind::Dir) {
                stack.push(child);
            }
        }
        let mut covered = 0u64;
        for c in ix.chunks_of(id) {
            assert_eq!(c.file_offset, covered);
            covered += c.size;
            assert_eq!(ix.chunk_at(id, c.file_offset).map(|x| x.id), Some(c.id));
        }
        if e.kind() == estargz::EntryKind::Reg {
            assert_eq!(covered, e.size());
        }
    }
    let mut last = 0u64;
    for c in ix.chunks_in_blob_order() {
        assert!(c.compressed_offset >= last);
        last = c.compressed_offset;
    }
}
