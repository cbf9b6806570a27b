//! Which layer provides a path of the merged image: the overlay rules applied to the
//! layers' indexes (bottom first). Used to check each layer's access log (a file is
//! prioritized only in the layer whose copy the container sees) and to size the lists.
//!
//! Walking down from the top layer: a layer that has the path (anything but a whiteout)
//! provides it. A whiteout of the path or of one of its parents, a non-directory where a
//! parent directory should be, or an opaque parent directory that lacks the rest of the
//! path hides every layer below: nobody provides it. A hardlink is provided under each of
//! its names (the writer moves its target along with it).

use estargz::{EntryId, EntryKind, LayerIndex, ROOT_ID};

/// Who provides a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The layer at this position (bottom first) has the path's entry.
    Layer(usize),
    /// A whiteout, opaque directory or non-directory parent hides it in every layer.
    Hidden,
    /// No layer has it (e.g. created by the workload).
    Missing,
}

/// What one layer says about a path.
enum Step {
    Found(EntryId),
    /// Not here; look in the layers below.
    Below,
    /// Not here, and the layers below are hidden.
    Hidden,
}

fn look(ix: &LayerIndex, path: &[u8]) -> Step {
    let mut dir = ROOT_ID;
    let mut parts = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .peekable();
    while let Some(name) = parts.next() {
        let here = ix.entry(dir).expect("walked ids exist");
        let Some(child) = ix.lookup(dir, name) else {
            return if here.is_opaque() {
                Step::Hidden
            } else {
                Step::Below
            };
        };
        let e = ix.entry(child).expect("looked-up ids exist");
        if e.is_whiteout() {
            return Step::Hidden;
        }
        if parts.peek().is_none() {
            return Step::Found(child);
        }
        if e.kind() != EntryKind::Dir {
            return Step::Hidden;
        }
        dir = child;
    }
    // The root itself: every layer has it; the topmost one provides it.
    Step::Found(ROOT_ID)
}

/// The provider of `path` (relative or absolute, `/`-separated) among `layers` (bottom
/// first).
pub fn provider(layers: &[&LayerIndex], path: &[u8]) -> Provider {
    for (i, ix) in layers.iter().enumerate().rev() {
        match look(ix, path) {
            Step::Found(_) => return Provider::Layer(i),
            Step::Hidden => return Provider::Hidden,
            Step::Below => {}
        }
    }
    Provider::Missing
}

/// The size in bytes of the regular file `path` in `layer` (0 for other kinds).
pub fn file_size(layer: &LayerIndex, path: &[u8]) -> u64 {
    match look(layer, path) {
        Step::Found(id) => {
            let e = layer.entry(id).expect("found ids exist");
            if e.kind() == EntryKind::Reg {
                e.size()
            } else {
                0
            }
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estargz::testutil::{Meta, TarBuilder};
    use estargz::{BuildOptions, Layer, OpenOptions};

    fn layer(build: impl FnOnce(&mut TarBuilder)) -> Layer {
        let mut t = TarBuilder::new();
        build(&mut t);
        let tar = t.finish();
        let mut blob = Vec::new();
        estargz::build(&tar[..], &mut blob, &BuildOptions::default()).unwrap();
        estargz::open(&blob, &OpenOptions::default()).unwrap()
    }

    fn stack() -> Vec<Layer> {
        let m = Meta::default();
        let d = Meta {
            mode: 0o755,
            ..Meta::default()
        };
        vec![
            layer(|t| {
                t.dir(b"usr", &d)
                    .dir(b"usr/bin", &d)
                    .file(b"usr/bin/python3", &m, b"low python")
                    .file(b"usr/bin/tool", &m, b"tool")
                    .dir(b"etc", &d)
                    .file(b"etc/gone", &m, b"x")
                    .dir(b"opt", &d)
                    .dir(b"opt/app", &d)
                    .file(b"opt/app/old", &m, b"old")
                    .file(b"opt/app/kept", &m, b"kept low")
                    .dir(b"var", &d)
                    .file(b"var/lib", &m, b"a file, later a dir")
                    .file(b"data", &m, b"0123456789")
                    .link(b"data-link", &m, b"data", true);
            }),
            layer(|t| {
                t.dir(b"usr", &d)
                    .dir(b"usr/bin", &d)
                    .file(b"usr/bin/python3", &m, b"new python")
                    .dir(b"etc", &d)
                    .file(b"etc/.wh.gone", &m, b"")
                    .dir(b"opt", &d)
                    .dir(b"opt/app", &d)
                    .file(b"opt/app/.wh..wh..opq", &m, b"")
                    .file(b"opt/app/kept", &m, b"kept high")
                    .file(b"new", &m, b"n")
                    .link(b"new-link", &m, b"new", true);
            }),
            // A top layer without directory entries (umoci style) replaces var/lib.
            layer(|t| {
                t.file(b"var/lib/x", &m, b"x");
            }),
        ]
    }

    #[test]
    fn topmost_layer_wins_and_lower_files_show_through() {
        let l = stack();
        let ix: Vec<&LayerIndex> = l.iter().map(|l| &l.index).collect();
        assert_eq!(provider(&ix, b"usr/bin/python3"), Provider::Layer(1));
        assert_eq!(provider(&ix, b"/usr/bin/tool"), Provider::Layer(0));
        assert_eq!(provider(&ix, b"var/lib/x"), Provider::Layer(2));
        assert_eq!(provider(&ix, b"nowhere"), Provider::Missing);
        assert_eq!(provider(&ix, b"usr/bin/nothing"), Provider::Missing);
        assert_eq!(file_size(ix[1], b"usr/bin/python3"), 10);
        assert_eq!(file_size(ix[1], b"usr/bin"), 0);
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers() {
        let l = stack();
        let ix: Vec<&LayerIndex> = l.iter().map(|l| &l.index).collect();
        assert_eq!(provider(&ix, b"etc/gone"), Provider::Hidden);
        assert_eq!(provider(&ix, b"opt/app/old"), Provider::Hidden);
        assert_eq!(provider(&ix, b"opt/app/kept"), Provider::Layer(1));
        // Below the opaque dir's own layer nothing shows, even with fewer layers on top.
        assert_eq!(provider(&ix[..2], b"opt/app/old"), Provider::Hidden);
        assert_eq!(provider(&ix[..1], b"opt/app/old"), Provider::Layer(0));
    }

    #[test]
    fn hardlinks_are_provided_under_their_own_name() {
        let l = stack();
        let ix: Vec<&LayerIndex> = l.iter().map(|l| &l.index).collect();
        assert_eq!(provider(&ix, b"data-link"), Provider::Layer(0));
        assert_eq!(provider(&ix, b"new-link"), Provider::Layer(1));
        assert_eq!(file_size(ix[0], b"data-link"), 10);
    }

    #[test]
    fn a_file_above_hides_a_lower_directory_path() {
        let m = Meta::default();
        let lower = layer(|t| {
            t.dir(b"a", &m).file(b"a/b", &m, b"x");
        });
        let upper = layer(|t| {
            t.file(b"a", &m, b"now a file");
        });
        assert_eq!(
            provider(&[&lower.index, &upper.index], b"a/b"),
            Provider::Hidden
        );
        assert_eq!(provider(&[&lower.index], b"a/b"), Provider::Layer(0));
    }
}
