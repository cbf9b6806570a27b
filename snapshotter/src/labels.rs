//! Snapshot label keys of the remote-snapshot protocol between containerd (or a lazy-pull
//! client such as `starling rpull` / `ctr-remote image rpull`) and a remote snapshotter.
//! containerd passes on only `containerd.io/snapshot.ref` and `containerd.io/snapshot/*`.

use crate::store::Labels;

/// Set by containerd's unpacker on Prepare: the ChainID the layer will be committed as.
/// A remote snapshotter commits the snapshot under this name and answers AlreadyExists.
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Marks a committed snapshot whose `fs` is a remote (lazily fetched) mount.
pub const REMOTE: &str = "containerd.io/snapshot/remote";
/// Value stored under [`REMOTE`].
pub const REMOTE_VALUE: &str = "remote snapshot";

/// CRI / nerdctl / transfer service: the image reference.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI: the layer's (compressed) digest.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI: digests of this and the later layers, comma separated (truncated to 4096 bytes).
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// CRI: the manifest digest.
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

/// stargz (ctr-remote): the image reference.
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
/// stargz: the layer digest.
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// stargz: the image's layer digests, comma separated.
pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// stargz: prefetch size hint.
pub const STARGZ_PREFETCH: &str = "containerd.io/snapshot/remote/stargz.prefetch";
/// stargz: skip TOC verification (only honoured when the configuration allows it).
pub const STARGZ_SKIPVERIFY: &str = "containerd.io/snapshot/remote/stargz.skipverify";
/// The layer's TOC digest, from the layer descriptor's annotation.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Extra blob URLs of the layer.
pub const REMOTE_URLS: &str = "containerd.io/snapshot/remote/urls";

/// Whether `labels` name a layer (a digest and an image reference), which a remote-layer
/// hook needs to find its blob. Plain `ctr images pull` sends none of these.
pub fn names_layer(labels: &Labels) -> bool {
    let has = |k: &str| labels.get(k).is_some_and(|v| !v.is_empty());
    (has(CRI_LAYER_DIGEST) && has(CRI_IMAGE_REF)) || (has(STARGZ_DIGEST) && has(STARGZ_REFERENCE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_identity_from_either_label_family() {
        let l = |kv: &[(&str, &str)]| -> Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(names_layer(&l(&[
            (CRI_LAYER_DIGEST, "sha256:a"),
            (CRI_IMAGE_REF, "r/i:t")
        ])));
        assert!(names_layer(&l(&[
            (STARGZ_DIGEST, "sha256:a"),
            (STARGZ_REFERENCE, "r/i:t")
        ])));
        assert!(!names_layer(&l(&[(TARGET_REF, "sha256:c")])));
        assert!(!names_layer(&l(&[(CRI_LAYER_DIGEST, "sha256:a")])));
        assert!(!names_layer(&l(&[
            (STARGZ_DIGEST, ""),
            (STARGZ_REFERENCE, "r")
        ])));
    }
}
