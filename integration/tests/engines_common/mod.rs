//! Shared by the engine tests (`engines_containerd`, `engines_docker`): the stack on a
//! given containerd version, the eStargz test image (busybox + a data layer, converted by
//! `starling convert`) and the checks that its layers are lazy: no layer blob in
//! containerd's content store, the chain's snapshots are remote snapshots, every layer is
//! a FUSE mount of the daemon, and the data layer's unread 6 MiB were not fetched.

#![allow(dead_code)]

use integration::client;
use integration::containerd::{ContainerdOptions, ContainerdVersion, Ctr};
use integration::images::busybox;
use integration::metrics::metric;
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::registry::Registry;
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use serde_json::Value;

/// What `/data/hello` holds.
pub const HELLO: &str = "hello from the data layer\n";

/// Label a remote (lazy) snapshot carries.
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// Metrics on a free port, no background fetch (what is fetched is what was read).
pub fn config() -> StarlingConfig {
    StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.background_fetch", false)
}

/// Registry + starling (registered under `names`) + containerd `version`.
pub fn stack(name: &str, version: ContainerdVersion, names: &[&str]) -> Stack {
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(config()),
                ..Default::default()
            }),
            starling_names: names.iter().map(|s| s.to_string()).collect(),
            containerd: ContainerdOptions::default().version(version),
            ..Default::default()
        },
    )
    .unwrap()
}

/// busybox + a layer with `data/hello`, `data/a.bin` (1 MiB) and `data/b.bin` (6 MiB,
/// incompressible: two eStargz chunks).
pub fn data_image() -> ImageBuilder {
    busybox().unwrap().layer(
        LayerBuilder::new()
            .dir("data")
            .file("data/hello", HELLO)
            .file(
                "data/a.bin",
                Content::Pattern {
                    len: 1 << 20,
                    seed: 21,
                },
            )
            .file(
                "data/b.bin",
                Content::Pattern {
                    len: 6 << 20,
                    seed: 22,
                },
            ),
    )
}

/// Layer digests and sizes of `repo:tag` in the registry (an index resolved to its
/// first image manifest: BuildKit pushes indexes).
pub fn layers(reg: &Registry, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let mut m: Value = serde_json::from_slice(&reg.manifest(repo, tag).unwrap().body).unwrap();
    if let Some(d) = m["manifests"].as_array().and_then(|a| {
        a.iter()
            .find(|d| d["platform"]["architecture"].is_string())
            .and_then(|d| d["digest"].as_str())
    }) {
        m = serde_json::from_slice(&reg.manifest(repo, d).unwrap().body).unwrap();
    }
    m["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{repo}:{tag} is not an image manifest: {m}"))
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Pushes [`data_image`] as `data:plain`, converts it with `starling convert` to
/// `data:esgz`; returns the eStargz reference and its layers.
pub fn esgz_image(s: &Stack) -> (String, Vec<(String, u64)>) {
    data_image().push(&s.registry, "data:plain").unwrap();
    let plain = s.registry.reference("data:plain");
    let esgz = s.registry.reference("data:esgz");
    let out = client::run(["convert", "--plain-http", &plain, &esgz], client::TIMEOUT).unwrap();
    assert!(out.success(), "convert {plain}: {}", out.stderr);
    let blobs = layers(&s.registry, "data", "esgz");
    assert_eq!(blobs.len(), 2, "busybox + data layer");
    (esgz, blobs)
}

/// Digests in `ctr`'s content store (its namespace).
pub fn content_digests(ctr: &Ctr) -> Vec<String> {
    ctr.ctr_ok(["content", "ls", "-q"])
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Labels of snapshot `key`.
pub fn snapshot_labels(ctr: &Ctr, snapshotter: &str, key: &str) -> Value {
    let out = ctr
        .ctr_ok(["snapshots", "--snapshotter", snapshotter, "info", key])
        .unwrap();
    serde_json::from_str::<Value>(&out).unwrap()["Labels"].clone()
}

/// `reference` (pulled into `ctr`'s namespace for `snapshotter`) is lazy: none of `blobs`
/// is in the content store, the top snapshot of its chain is a remote snapshot, and the
/// daemon serves every one of `blobs` from a FUSE mount without having fetched more than
/// half of the data layer (`blobs[1]`; only `data/hello` may have been read).
pub fn assert_lazy(
    s: &Stack,
    ctr: &Ctr,
    snapshotter: &str,
    reference: &str,
    blobs: &[(String, u64)],
) {
    let content = content_digests(ctr);
    for (d, _) in blobs {
        assert!(
            !content.contains(d),
            "layer blob {d} of {reference} is in containerd's content store (namespace {}): \
             it was downloaded, not mounted lazily\n{content:?}",
            ctr.namespace
        );
    }
    let chain = ctr.image_chain_id(reference).unwrap();
    let labels = snapshot_labels(ctr, snapshotter, &chain);
    assert!(
        labels.get(REMOTE_LABEL).is_some(),
        "top snapshot {chain} of {reference} is not a remote snapshot: {labels}"
    );
    let m = s.starling().unwrap().metrics().unwrap();
    for (d, size) in blobs {
        let layer = format!("layer=\"{d}\"");
        let fetched = metric(&m, "starling_layer_fetched_bytes", &[&layer]);
        assert!(
            metric(&m, "starling_layer_state", &[&layer]) == 1.0,
            "layer {d} is not served by starling\n{m}"
        );
        eprintln!("{reference}: layer {d}: {fetched} of {size} bytes fetched");
    }
    let (data, size) = &blobs[1];
    let fetched = metric(
        &m,
        "starling_layer_fetched_bytes",
        &[&format!("layer=\"{data}\"")],
    );
    assert!(
        fetched < (*size as f64) / 2.0,
        "data layer {data}: {fetched} of {size} bytes fetched (only data/hello was read)\n{m}"
    );
}
