//! The labels a pull writes, built the way containerd 1.6 and stargz's `ctr-remote` build
//! them: the snapshot labels of each layer's Prepare (target chain ID, the CRI and stargz
//! layer identity, the layer's inherited `containerd.io/snapshot/` annotations), the GC
//! references between content blobs (index → manifests, manifest → config and layers,
//! config → snapshot), the `containerd.io/distribution.source.<host>` label and the rule
//! every label obeys (key + value ≤ 4096 bytes).

use std::collections::HashMap;

use oci_spec::image::Descriptor;

use snapshotter::labels as snap;

/// containerd's limit on a label: key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;

/// Prefix of layer annotations containerd hands to the snapshotter as labels.
pub const INHERITED_PREFIX: &str = "containerd.io/snapshot/";
/// Content label: the diff ID of a compressed layer blob (set after applying it).
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Content label prefix: which repositories on a host a blob came from.
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";
/// Content label prefix: a GC reference to a snapshot on the named snapshotter.
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";

/// Whether a label fits containerd's size limit.
pub fn fits(key: &str, value: &str) -> bool {
    key.len() + value.len() <= MAX_LABEL_BYTES
}

/// Comma list of `digests` under label `key`, cut before the first digest that would make
/// the label too long (containerd's `getLayers`; skipping digests only costs speed).
pub fn digest_list<'a>(key: &str, digests: impl IntoIterator<Item = &'a str>) -> String {
    let mut list = String::new();
    for d in digests {
        let extra = if list.is_empty() { 0 } else { 1 } + d.len();
        if key.len() + list.len() + extra > MAX_LABEL_BYTES {
            break;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(d);
    }
    list
}

/// What one layer's Prepare says about the layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerIdentity<'a> {
    /// The image reference (normalised: `host/repo:tag[@digest]`).
    pub image: &'a str,
    /// The manifest's digest.
    pub manifest_digest: &'a str,
    /// The image's layers, bottom first.
    pub layers: &'a [Descriptor],
    /// Which layer (0-based).
    pub index: usize,
    /// The chain ID the layer is committed as.
    pub chain_id: &'a str,
}

/// The labels of the Prepare (and Commit) of a layer's snapshot: the layer descriptor's
/// `containerd.io/snapshot/*` annotations (e.g. `containerd.io/snapshot/stargz/toc.digest`),
/// `containerd.io/snapshot.ref`, and the CRI and stargz identity labels that let a remote
/// snapshotter find the layer.
pub fn snapshot_labels(id: &LayerIdentity<'_>) -> HashMap<String, String> {
    let layer = &id.layers[id.index];
    let mut labels: HashMap<String, String> = layer
        .annotations()
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(INHERITED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let digest = layer.digest().to_string();
    let later: Vec<String> = id.layers[id.index..]
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let list = |key: &str| digest_list(key, later.iter().map(String::as_str));
    let mut put = |k: &str, v: String| {
        labels.insert(k.to_string(), v);
    };
    put(snap::TARGET_REF, id.chain_id.to_string());
    put(snap::CRI_IMAGE_REF, id.image.to_string());
    put(snap::CRI_LAYER_DIGEST, digest.clone());
    put(snap::CRI_IMAGE_LAYERS, list(snap::CRI_IMAGE_LAYERS));
    put(snap::CRI_MANIFEST_DIGEST, id.manifest_digest.to_string());
    put(snap::STARGZ_REFERENCE, id.image.to_string());
    put(snap::STARGZ_DIGEST, digest);
    put(snap::STARGZ_LAYERS, list(snap::STARGZ_LAYERS));
    if let Some(urls) = layer.urls().as_ref().filter(|u| !u.is_empty()) {
        put(
            snap::REMOTE_URLS,
            digest_list(snap::REMOTE_URLS, urls.iter().map(String::as_str)),
        );
    }
    labels
}

/// The GC reference label names containerd gives a parent's children, in order
/// (`images.ChildGCLabels` + `SetChildrenMappedLabels`): `…content.config` for a config,
/// `…content.m.<n>` for manifests, `…content.l.<n>` for layers, `…content.<n>` otherwise.
pub fn children_gc_labels<'a>(
    children: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HashMap<String, String> {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut labels = HashMap::new();
    for (media_type, digest) in children {
        let key: &'static str = match kind_of(media_type) {
            Kind::Config => "containerd.io/gc.ref.content.config",
            Kind::Manifest => "containerd.io/gc.ref.content.m.",
            Kind::Layer => "containerd.io/gc.ref.content.l.",
            Kind::Other => "containerd.io/gc.ref.content.",
        };
        let n = counts.entry(key).or_insert(0);
        let name = if *n > 0 || key.ends_with('.') {
            format!("{key}{n}")
        } else {
            key.to_string()
        };
        *n += 1;
        labels.insert(name, digest.to_string());
    }
    labels
}

enum Kind {
    Config,
    Manifest,
    Layer,
    Other,
}

fn kind_of(media_type: &str) -> Kind {
    match media_type {
        "application/vnd.oci.image.config.v1+json"
        | "application/vnd.docker.container.image.v1+json" => Kind::Config,
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json" => Kind::Manifest,
        m if is_layer(m) => Kind::Layer,
        _ => Kind::Other,
    }
}

/// containerd's `images.IsLayerType`.
fn is_layer(media_type: &str) -> bool {
    let base = media_type.split('+').next().unwrap_or(media_type);
    base.starts_with("application/vnd.oci.image.layer.")
        || base.starts_with("application/vnd.docker.image.rootfs.")
}

/// The `containerd.io/distribution.source.<host>` key: the host without its port, as
/// containerd's `url.Hostname()` gives it.
pub fn distribution_source_key(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    format!("{DISTRIBUTION_SOURCE}.{name}")
}

/// `repo` added to a distribution-source value (a sorted comma list without duplicates).
pub fn distribution_source_value(existing: Option<&str>, repo: &str) -> String {
    let mut repos: Vec<&str> = existing
        .unwrap_or("")
        .split(',')
        .filter(|r| !r.is_empty())
        .chain([repo])
        .collect();
    repos.sort_unstable();
    repos.dedup();
    repos.join(",")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use oci_spec::image::{DescriptorBuilder, Digest, MediaType};

    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn layer(c: char, toc: Option<&str>) -> Descriptor {
        let mut b = DescriptorBuilder::default()
            .media_type(MediaType::ImageLayerGzip)
            .digest(Digest::from_str(&digest(c)).unwrap())
            .size(10u64);
        if let Some(t) = toc {
            b = b.annotations(HashMap::from([
                (snapshotter::labels::TOC_DIGEST.to_string(), t.to_string()),
                ("org.example.other".to_string(), "x".to_string()),
            ]));
        }
        b.build().unwrap()
    }

    #[test]
    fn layer_labels_name_the_layer_for_both_label_families() {
        let layers = [
            layer('a', None),
            layer('b', Some("sha256:toc")),
            layer('c', None),
        ];
        let id = LayerIdentity {
            image: "reg.io/app:1",
            manifest_digest: "sha256:m",
            layers: &layers,
            index: 1,
            chain_id: "sha256:chain",
        };
        let l = snapshot_labels(&id);
        let want = [
            (snap::TARGET_REF, "sha256:chain".to_string()),
            (snap::CRI_IMAGE_REF, "reg.io/app:1".into()),
            (snap::CRI_LAYER_DIGEST, digest('b')),
            (
                snap::CRI_IMAGE_LAYERS,
                format!("{},{}", digest('b'), digest('c')),
            ),
            (snap::CRI_MANIFEST_DIGEST, "sha256:m".into()),
            (snap::STARGZ_REFERENCE, "reg.io/app:1".into()),
            (snap::STARGZ_DIGEST, digest('b')),
            (
                snap::STARGZ_LAYERS,
                format!("{},{}", digest('b'), digest('c')),
            ),
            (snap::TOC_DIGEST, "sha256:toc".into()),
        ];
        for (k, v) in &want {
            assert_eq!(l.get(*k), Some(v), "{k}");
        }
        assert_eq!(l.len(), want.len(), "no other labels: {l:?}");
        assert!(snapshotter::labels::names_layer(
            &l.clone().into_iter().collect()
        ));
        // The bottom layer has no TOC annotation: no toc label.
        let l0 = snapshot_labels(&LayerIdentity { index: 0, ..id });
        assert!(!l0.contains_key(snap::TOC_DIGEST));
        assert_eq!(l0[snap::CRI_IMAGE_LAYERS].split(',').count(), 3);
    }

    #[test]
    fn the_labels_ctr_remote_sends_name_a_layer() {
        // `ctr-remote image rpull` (stargz-snapshotter 0.12) through containerd 1.6's
        // unpacker, as the rpull integration test records them: the stargz family only (no
        // CRI labels); empty URL labels for layers without URLs.
        let l: snapshotter::store::Labels = [
            (snap::TARGET_REF, digest('c')),
            (snap::STARGZ_REFERENCE, "127.0.0.1:5000/app:esgz".into()),
            (snap::STARGZ_DIGEST, digest('a')),
            (
                snap::STARGZ_LAYERS,
                format!("{},{}", digest('a'), digest('b')),
            ),
            (snap::STARGZ_PREFETCH, "10485760".into()),
            (snap::TOC_DIGEST, digest('t')),
            (snap::REMOTE_URLS, String::new()),
            ("containerd.io/snapshot/remote/urls.0", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert!(snapshotter::labels::names_layer(&l));
    }

    #[test]
    fn digest_lists_stop_below_the_label_limit() {
        let key = snap::CRI_IMAGE_LAYERS;
        let many: Vec<String> = (0..200).map(|i| format!("sha256:{i:064x}")).collect();
        let list = digest_list(key, many.iter().map(String::as_str));
        assert!(fits(key, &list));
        let n = list.split(',').count();
        // 71 bytes per digest plus a comma: as many as fit, and no partial digest.
        assert_eq!(n, (MAX_LABEL_BYTES - key.len() + 1) / 72);
        assert!(list.split(',').all(|d| d.len() == 71));
        assert!(!fits(key, &format!("{list},{}", many[n])));
        assert_eq!(digest_list(key, []), "");
    }

    #[test]
    fn gc_labels_number_children_like_containerd() {
        let l = children_gc_labels([
            ("application/vnd.oci.image.config.v1+json", "c"),
            ("application/vnd.oci.image.layer.v1.tar+gzip", "l0"),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", "l1"),
            ("application/vnd.oci.image.manifest.v1+json", "m0"),
            ("application/vnd.oci.image.manifest.v1+json", "m1"),
            ("application/vnd.oci.image.index.v1+json", "i0"),
        ]);
        let get = |k: &str| l.get(k).map(String::as_str);
        assert_eq!(get("containerd.io/gc.ref.content.config"), Some("c"));
        assert_eq!(get("containerd.io/gc.ref.content.l.0"), Some("l0"));
        assert_eq!(get("containerd.io/gc.ref.content.l.1"), Some("l1"));
        assert_eq!(get("containerd.io/gc.ref.content.m.0"), Some("m0"));
        assert_eq!(get("containerd.io/gc.ref.content.m.1"), Some("m1"));
        assert_eq!(get("containerd.io/gc.ref.content.0"), Some("i0"));
        assert_eq!(l.len(), 6);
    }

    #[test]
    fn distribution_source_like_containerd() {
        assert_eq!(
            distribution_source_key("127.0.0.1:5000"),
            "containerd.io/distribution.source.127.0.0.1"
        );
        assert_eq!(
            distribution_source_key("[::1]:5000"),
            "containerd.io/distribution.source.::1"
        );
        assert_eq!(
            distribution_source_key("docker.io"),
            "containerd.io/distribution.source.docker.io"
        );
        assert_eq!(distribution_source_value(None, "a/b"), "a/b");
        assert_eq!(distribution_source_value(Some("x,c"), "a"), "a,c,x");
        assert_eq!(distribution_source_value(Some("a,c"), "c"), "a,c");
    }
}
