//! OCI images as layouts on disk: [`ImageBuilder`] writes layers, config (with correct
//! diff_ids), manifest and `index.json` (tagged via `org.opencontainers.image.ref.name`);
//! [`OciImage`] describes an image in a layout (also one built by umoci) and computes
//! chain IDs; pushing goes through [`Registry::push_layout`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::layer::{BuiltLayer, LayerBuilder};
use crate::error::{Error, IoContext, Result};
use crate::registry::Registry;

/// Annotation naming a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// OCI manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI config media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The runtime part of an image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// Builds an image from layers.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerBuilder>,
    config: ImageConfig,
    annotations: BTreeMap<String, String>,
    layer_annotations: Vec<BTreeMap<String, String>>,
    created: String,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The OCI platform architecture of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

impl ImageBuilder {
    /// An image without layers, `PATH` set to the usual directories.
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            config: ImageConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                ..Default::default()
            },
            annotations: BTreeMap::new(),
            layer_annotations: Vec::new(),
            created: "2023-11-14T22:13:20Z".into(),
        }
    }

    /// Appends a layer (bottom first).
    pub fn layer(mut self, l: LayerBuilder) -> Self {
        self.layers.push(l);
        self.layer_annotations.push(BTreeMap::new());
        self
    }

    /// Appends a layer with descriptor annotations.
    pub fn layer_annotated(
        mut self,
        l: LayerBuilder,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        self.layers.push(l);
        self.layer_annotations.push(annotations);
        self
    }

    /// Sets `Cmd`.
    pub fn cmd<S: Into<String>>(mut self, cmd: impl IntoIterator<Item = S>) -> Self {
        self.config.cmd = cmd.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint<S: Into<String>>(mut self, ep: impl IntoIterator<Item = S>) -> Self {
        self.config.entrypoint = ep.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces `Env`.
    pub fn env<S: Into<String>>(mut self, env: impl IntoIterator<Item = S>) -> Self {
        self.config.env = env.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a manifest annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }

    /// Mutable access to the config.
    pub fn config_mut(&mut self) -> &mut ImageConfig {
        &mut self.config
    }

    /// The layers.
    pub fn layers(&self) -> &[LayerBuilder] {
        &self.layers
    }

    /// Writes the image into the OCI layout `layout` (created if missing; other tags kept)
    /// under `tag`.
    pub fn write_layout(&self, layout: &Path, tag: &str) -> Result<OciImage> {
        init_layout(layout)?;
        let blobs = layout.join("blobs/sha256");
        let mut built = Vec::new();
        for l in &self.layers {
            built.push(l.build(&blobs)?);
        }
        let c = &self.config;
        let mut cfg = json!({"Env": c.env});
        if !c.entrypoint.is_empty() {
            cfg["Entrypoint"] = json!(c.entrypoint);
        }
        if !c.cmd.is_empty() {
            cfg["Cmd"] = json!(c.cmd);
        }
        if let Some(w) = &c.working_dir {
            cfg["WorkingDir"] = json!(w);
        }
        if let Some(u) = &c.user {
            cfg["User"] = json!(u);
        }
        if !c.labels.is_empty() {
            cfg["Labels"] = json!(c.labels);
        }
        let config = json!({
            "created": self.created,
            "architecture": host_arch(),
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": built.iter().map(|b| b.diff_id.clone()).collect::<Vec<_>>()},
            "history": built.iter().map(|_| json!({"created": self.created, "created_by": "starling integration harness"})).collect::<Vec<_>>(),
        });
        let config_bytes = serde_json::to_vec(&config).expect("json");
        let config_digest = write_blob(&blobs, &config_bytes)?;
        let layers_json: Vec<Value> = built
            .iter()
            .zip(&self.layer_annotations)
            .map(|(b, a)| {
                let mut d = json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
                if !a.is_empty() {
                    d["annotations"] = json!(a);
                }
                d
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_bytes.len()},
            "layers": layers_json,
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
        let manifest_digest = write_blob(&blobs, &manifest_bytes)?;
        tag_manifest(layout, tag, &manifest_digest, manifest_bytes.len() as u64)?;
        Ok(OciImage {
            layout: layout.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest,
            config_digest,
            layers: built,
            diff_ids: config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            manifest: manifest_bytes,
            config: config_bytes,
        })
    }

    /// Writes the image into a fresh layout under the registry's directory and pushes it as
    /// `name` (`repo:tag`).
    pub fn push(&self, registry: &Registry, name: &str) -> Result<OciImage> {
        let layout = registry
            .dir()
            .join("layouts")
            .join(crate::workdir::unique_token(8));
        let img = self.write_layout(&layout, "latest")?;
        let pushed = registry.push_layout(&layout, "latest", name)?;
        if pushed != img.manifest_digest {
            return Err(Error::invalid(
                "push",
                format!(
                    "registry stored manifest {pushed}, built {}",
                    img.manifest_digest
                ),
            ));
        }
        Ok(img)
    }
}

/// Creates `oci-layout` and an empty `index.json` if missing.
pub fn init_layout(layout: &Path) -> Result<()> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .ctx(|| format!("create {}", layout.display()))?;
    let ol = layout.join("oci-layout");
    if !ol.exists() {
        std::fs::write(&ol, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .ctx(|| format!("write {}", ol.display()))?;
    }
    let idx = layout.join("index.json");
    if !idx.exists() {
        std::fs::write(&idx, br#"{"schemaVersion":2,"manifests":[]}"#)
            .ctx(|| format!("write {}", idx.display()))?;
    }
    Ok(())
}

/// Writes `data` as a blob; returns its digest.
pub fn write_blob(blobs: &Path, data: &[u8]) -> Result<String> {
    let hex = hex::encode(Sha256::digest(data));
    let p = blobs.join(&hex);
    std::fs::write(&p, data).ctx(|| format!("write {}", p.display()))?;
    Ok(format!("sha256:{hex}"))
}

fn tag_manifest(layout: &Path, tag: &str, digest: &str, size: u64) -> Result<()> {
    let idx_path = layout.join("index.json");
    let text = std::fs::read(&idx_path).ctx(|| format!("read {}", idx_path.display()))?;
    let mut idx: Value =
        serde_json::from_slice(&text).map_err(|e| Error::invalid("index.json", e.to_string()))?;
    let list = idx["manifests"]
        .as_array_mut()
        .ok_or_else(|| Error::invalid("index.json", "no manifests array"))?;
    list.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
    list.push(json!({"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}));
    std::fs::write(&idx_path, serde_json::to_vec(&idx).expect("json"))
        .ctx(|| format!("write {}", idx_path.display()))
}

/// An image in an OCI layout.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// Its tag there.
    pub tag: String,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Config digest.
    pub config_digest: String,
    /// Layer blobs, bottom first.
    pub layers: Vec<BuiltLayer>,
    /// diff_ids from the config, bottom first.
    pub diff_ids: Vec<String>,
    /// Manifest JSON bytes.
    pub manifest: Vec<u8>,
    /// Config JSON bytes.
    pub config: Vec<u8>,
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| Error::invalid("digest", digest.to_string()))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

impl OciImage {
    /// Reads tag `tag` of the layout at `layout` (e.g. one built by umoci).
    pub fn open(layout: &Path, tag: &str) -> Result<OciImage> {
        let idx_path = layout.join("index.json");
        let idx: Value = serde_json::from_slice(
            &std::fs::read(&idx_path).ctx(|| format!("read {}", idx_path.display()))?,
        )
        .map_err(|e| Error::invalid("index.json", e.to_string()))?;
        let desc = idx["manifests"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|m| m["annotations"][REF_NAME].as_str() == Some(tag))
            })
            .ok_or_else(|| {
                Error::invalid(
                    "OCI layout",
                    format!("{} has no tag {tag}", layout.display()),
                )
            })?;
        let manifest_digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let manifest = std::fs::read(blob_path(layout, &manifest_digest)?)
            .ctx(|| format!("read manifest {manifest_digest}"))?;
        let m: Value = serde_json::from_slice(&manifest)
            .map_err(|e| Error::invalid("manifest", e.to_string()))?;
        let config_digest = m["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let config = std::fs::read(blob_path(layout, &config_digest)?)
            .ctx(|| format!("read config {config_digest}"))?;
        let c: Value =
            serde_json::from_slice(&config).map_err(|e| Error::invalid("config", e.to_string()))?;
        let diff_ids: Vec<String> = c["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut layers = Vec::new();
        for (i, l) in m["layers"].as_array().into_iter().flatten().enumerate() {
            let digest = l["digest"].as_str().unwrap_or_default().to_string();
            layers.push(BuiltLayer {
                path: blob_path(layout, &digest)?,
                digest,
                diff_id: diff_ids.get(i).cloned().unwrap_or_default(),
                size: l["size"].as_u64().unwrap_or(0),
                uncompressed_size: 0,
                media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(OciImage {
            layout: layout.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest,
            config_digest,
            layers,
            diff_ids,
            manifest,
            config,
        })
    }

    /// Chain IDs of the layers (`chainID(n) = sha256(chainID(n-1) + " " + diffID(n))`).
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids)
    }

    /// Extracts every layer into `<root>/<i>` (bottom first) with the harness's reference
    /// extractor; returns the layer dirs (stack them with [`crate::overlay::OverlayStack`]).
    pub fn extract_layers(
        &self,
        root: &Path,
        opts: &crate::extract::ExtractOptions,
    ) -> Result<Vec<PathBuf>> {
        let blobs: Vec<PathBuf> = self.layers.iter().map(|l| l.path.clone()).collect();
        crate::extract::extract_layers(&blobs, root, opts)
    }

    /// Pushes this image as `name` (`repo:tag`).
    pub fn push(&self, registry: &Registry, name: &str) -> Result<String> {
        registry.push_layout(&self.layout, &self.tag, name)
    }
}

/// Chain IDs for a list of diff IDs.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reopens_layout_with_two_tags() {
        let wd = crate::workdir::Workdir::new("img").unwrap();
        let l1 = LayerBuilder::new().file("a", "1");
        let l2 = LayerBuilder::new().file("b", "2");
        let img = ImageBuilder::new()
            .layer(l1.clone())
            .layer(l2)
            .cmd(["/a"])
            .write_layout(&wd.join("lay"), "t1")
            .unwrap();
        let img2 = ImageBuilder::new()
            .layer(l1)
            .write_layout(&wd.join("lay"), "t2")
            .unwrap();
        let back = OciImage::open(&wd.join("lay"), "t1").unwrap();
        assert_eq!(back.manifest_digest, img.manifest_digest);
        assert_eq!(back.diff_ids, img.diff_ids);
        assert_eq!(back.layers[1].digest, img.layers[1].digest);
        assert_eq!(
            OciImage::open(&wd.join("lay"), "t2").unwrap().layers.len(),
            1
        );
        assert_eq!(
            img2.layers[0].digest, img.layers[0].digest,
            "deterministic layer"
        );
        let cfg: Value = serde_json::from_slice(&back.config).unwrap();
        assert_eq!(cfg["config"]["Cmd"][0], "/a");
        let ids = back.chain_ids();
        assert_eq!(ids[0], img.diff_ids[0]);
        assert_ne!(ids[1], img.diff_ids[1]);
        assert!(OciImage::open(&wd.join("lay"), "nope").is_err());
    }

    #[test]
    fn chain_id_matches_known_value() {
        // chain of two identical diff ids, computed with sha256sum by hand
        let d = "sha256:aaaa".to_string();
        let ids = chain_ids(&[d.clone(), d.clone()]);
        let expect = hex::encode(Sha256::digest(b"sha256:aaaa sha256:aaaa"));
        assert_eq!(ids[1], format!("sha256:{expect}"));
    }
}
