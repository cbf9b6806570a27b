//! Image documents as JSON: reading descriptors, indexes and manifests (keeping every
//! field we do not rewrite), choosing a platform, and writing the converted config,
//! manifest and index with OCI media types.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;
use serde_json::{json, Map, Value};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer (eStargz output).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer (zstd:chunked output).
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Layer annotation: SHA-256 of the TOC JSON.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation: size of the uncompressed layer.
pub const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
/// Layer annotation (zstd:chunked): digest of the compressed TOC.
pub const ZSTD_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// Layer annotation (zstd:chunked): `offset:compressed:uncompressed:1` of the TOC.
pub const ZSTD_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// Annotations describing a specific blob, dropped when the blob changes.
const BLOB_ANNOTATIONS: [&str; 4] = [
    TOC_DIGEST,
    UNCOMPRESSED_SIZE,
    ZSTD_MANIFEST_CHECKSUM,
    ZSTD_MANIFEST_POSITION,
];

/// Largest manifest or index read.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG: u64 = 16 << 20;

/// A content descriptor (the fields we use, plus the JSON as it came).
#[derive(Debug, Clone)]
pub struct Desc {
    /// `mediaType` ("" when absent).
    pub media_type: String,
    /// `digest` (sha256 only).
    pub digest: Digest,
    /// `size`.
    pub size: u64,
    /// `annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `platform`, for index entries.
    pub platform: Option<Platform>,
    /// The descriptor's JSON object.
    pub raw: Value,
}

impl Desc {
    /// Reads a descriptor object; the error says what is wrong with it.
    pub fn parse(v: &Value) -> Result<Desc, String> {
        let obj = v.as_object().ok_or("descriptor is not a JSON object")?;
        let digest = obj
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("descriptor has no digest")?;
        let digest = parse_sha256(digest)?;
        let size = obj
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("descriptor {digest} has no valid size"))?;
        let annotations = match obj.get("annotations") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(a) => serde_json::from_value(a.clone())
                .map_err(|e| format!("descriptor {digest}: bad annotations: {e}"))?,
        };
        let platform = match obj.get("platform") {
            None | Some(Value::Null) => None,
            Some(p) => Some(Platform::from_json(p)),
        };
        Ok(Desc {
            media_type: obj
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            digest,
            size,
            annotations,
            platform,
            raw: v.clone(),
        })
    }
}

/// Parses a `sha256:<64 hex>` digest.
pub fn parse_sha256(s: &str) -> Result<Digest, String> {
    let d = Digest::from_str(s).map_err(|e| format!("invalid digest {s:?}: {e}"))?;
    if d.algorithm().as_ref() != "sha256" {
        return Err(format!("digest {s:?}: only sha256 digests are supported"));
    }
    Ok(d)
}

/// `sha256:` + hex of `data`'s SHA-256.
pub fn sha256_digest(data: &[u8]) -> Digest {
    use sha2::Digest as _;
    let hex = hex::encode(sha2::Sha256::digest(data));
    Digest::from_str(&format!("sha256:{hex}")).expect("a sha256 digest is valid")
}

/// An OS/architecture(/variant) triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... if given.
    pub variant: Option<String>,
}

impl Platform {
    /// This host's platform.
    pub fn host() -> Platform {
        let (os, arch) = registry::host_platform();
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    fn from_json(v: &Value) -> Platform {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Platform {
            os: s("os"),
            architecture: s("architecture"),
            variant: v
                .get("variant")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        }
    }

    /// True if an entry of platform `other` serves a request for `self` (a missing
    /// variant matches any; arm64's `v8` is its default).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| {
            p.variant
                .clone()
                .filter(|v| !(p.architecture == "arm64" && v == "v8"))
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || norm(self) == norm(other))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!("invalid platform {s:?} (write OS/ARCH[/VARIANT])")),
        }
    }
}

/// True if `media_type`/`body` is an image index (or docker manifest list).
pub fn is_index(media_type: &str, body: &Value) -> bool {
    match media_type {
        OCI_INDEX | DOCKER_LIST => true,
        "" => body.get("manifests").is_some_and(Value::is_array),
        _ => false,
    }
}

/// The media type of a manifest or index body, falling back to `header`.
pub fn body_media_type(body: &Value, header: &str) -> String {
    body.get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(header)
        .to_string()
}

/// The manifests an index lists.
pub fn index_entries(index: &Value) -> Result<Vec<Desc>, String> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("image index has no manifests array")?
        .iter()
        .map(Desc::parse)
        .collect()
}

/// True for index entries that are attestations or other non-image manifests
/// (`unknown/unknown` platform, as BuildKit writes them).
fn is_attestation(d: &Desc) -> bool {
    d.annotations.contains_key("vnd.docker.reference.type")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// Picks the entry for `wanted` (preferring one without variant, or arm64 `v8`).
pub fn pick_platform<'a>(entries: &'a [Desc], wanted: &Platform) -> Option<&'a Desc> {
    let matching: Vec<&Desc> = entries
        .iter()
        .filter(|d| !is_attestation(d))
        .filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    matching
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.variant.as_deref())
                .is_none_or(|v| v == "v8")
        })
        .or(matching.first())
        .copied()
}

/// Every image manifest of an index (attestations skipped).
pub fn all_platforms(entries: &[Desc]) -> Vec<&Desc> {
    entries.iter().filter(|d| !is_attestation(d)).collect()
}

/// The platforms an index lists, for error messages.
pub fn platform_list(entries: &[Desc]) -> String {
    let v: Vec<String> = entries
        .iter()
        .filter(|d| !is_attestation(d))
        .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// An image manifest: its config and layers.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The config descriptor.
    pub config: Desc,
    /// The layer descriptors, bottom first.
    pub layers: Vec<Desc>,
    /// The manifest JSON.
    pub raw: Value,
}

impl Manifest {
    /// Reads an image manifest (OCI or docker schema 2).
    pub fn parse(media_type: &str, body: &Value) -> Result<Manifest, String> {
        if !matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST | "") {
            return Err(format!("unsupported manifest media type {media_type:?}"));
        }
        if body.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err("manifest schemaVersion is not 2".into());
        }
        let config = Desc::parse(body.get("config").ok_or("manifest has no config")?)
            .map_err(|e| format!("manifest config: {e}"))?;
        if !matches!(config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
            return Err(format!(
                "config media type {:?} is not a container image config",
                config.media_type
            ));
        }
        let layers = body
            .get("layers")
            .and_then(Value::as_array)
            .ok_or("manifest has no layers array")?
            .iter()
            .map(Desc::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("manifest layer: {e}"))?;
        Ok(Manifest {
            config,
            layers,
            raw: body.clone(),
        })
    }
}

/// How a source layer is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar.
    None,
    /// gzip (and eStargz).
    Gzip,
    /// zstd (and zstd:chunked).
    Zstd,
}

/// The compression a layer media type says, or why it is not a layer we convert.
pub fn layer_compression(media_type: &str) -> Result<LayerCompression, String> {
    match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Ok(LayerCompression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(LayerCompression::Gzip),
        OCI_LAYER_ZSTD => Ok(LayerCompression::Zstd),
        m if m.contains("nondistributable") || m.contains("foreign") => Err(format!(
            "{m:?} is a non-distributable (foreign) layer; those are not converted"
        )),
        m => Err(format!("{m:?} is not an image layer media type")),
    }
}

/// The descriptor of a converted (or kept) layer: the source descriptor with new media
/// type, digest and size, blob-specific annotations replaced by `annotations`, and
/// `urls`/`data` (which describe the old blob) dropped.
pub fn layer_descriptor(
    source: &Desc,
    media_type: &str,
    digest: &Digest,
    size: u64,
    annotations: &BTreeMap<String, String>,
) -> Value {
    let mut obj = source.raw.as_object().cloned().unwrap_or_default();
    obj.remove("urls");
    obj.remove("data");
    obj.insert("mediaType".into(), media_type.into());
    obj.insert("digest".into(), digest.to_string().into());
    obj.insert("size".into(), size.into());
    let mut ann = source.annotations.clone();
    ann.retain(|k, _| !BLOB_ANNOTATIONS.contains(&k.as_str()));
    ann.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    obj.insert("annotations".into(), json!(ann));
    Value::Object(obj)
}

/// A descriptor object.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("mediaType".into(), media_type.into());
    m.insert("digest".into(), digest.to_string().into());
    m.insert("size".into(), size.into());
    m
}

/// The number of layers an image config lists, and its diff IDs.
pub fn config_diff_ids(config: &Value) -> Result<Vec<String>, String> {
    let ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or("image config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| "image config has a non-string diff ID".to_string())
        })
        .collect()
}

/// The config with `rootfs.diff_ids` replaced (everything else, history included, kept).
pub fn new_config(config: &Value, diff_ids: &[String]) -> Result<Vec<u8>, String> {
    let mut c = config.clone();
    let rootfs = c
        .get_mut("rootfs")
        .and_then(Value::as_object_mut)
        .ok_or("image config has no rootfs object")?;
    rootfs.insert("type".into(), "layers".into());
    rootfs.insert("diff_ids".into(), json!(diff_ids));
    serde_json::to_vec(&c).map_err(|e| e.to_string())
}

/// The converted manifest: OCI media types, new config and layers, other fields kept.
pub fn new_manifest(source: &Value, config: Map<String, Value>, layers: Vec<Value>) -> Vec<u8> {
    let mut m = source.as_object().cloned().unwrap_or_default();
    m.insert("schemaVersion".into(), 2.into());
    m.insert("mediaType".into(), OCI_MANIFEST.into());
    m.insert("config".into(), Value::Object(config));
    m.insert("layers".into(), Value::Array(layers));
    serde_json::to_vec(&Value::Object(m)).expect("JSON values serialize")
}

/// The converted index: OCI media type, the converted manifests, other fields kept.
pub fn new_index(source: &Value, manifests: Vec<Value>) -> Vec<u8> {
    let mut m = source.as_object().cloned().unwrap_or_default();
    m.insert("schemaVersion".into(), 2.into());
    m.insert("mediaType".into(), OCI_INDEX.into());
    m.insert("manifests".into(), Value::Array(manifests));
    serde_json::to_vec(&Value::Object(m)).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn platforms_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let v8 = Platform {
            variant: Some("v8".into()),
            ..p.clone()
        };
        assert!(p.matches(&v8));
        let want_v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(want_v8.matches(&p));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert_eq!(v7.to_string(), "linux/arm/v7");
    }

    #[test]
    fn index_picks_platform_and_skips_attestations() {
        let index = json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d('a'), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": OCI_MANIFEST, "digest": d('b'), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": d('c'), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ]});
        assert!(is_index("", &index));
        let e = index_entries(&index).unwrap();
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(pick_platform(&e, &arm).unwrap().digest.to_string(), d('b'));
        assert!(pick_platform(&e, &"linux/riscv64".parse().unwrap()).is_none());
        assert_eq!(all_platforms(&e).len(), 2);
        assert_eq!(platform_list(&e), "linux/s390x, linux/arm64/v8");
    }

    #[test]
    fn descriptors_reject_bad_digests() {
        assert!(Desc::parse(&json!({"digest": "sha512:ab", "size": 1})).is_err());
        assert!(Desc::parse(&json!({"digest": d('a')})).is_err());
        assert!(Desc::parse(&json!("x")).is_err());
        let ok =
            Desc::parse(&json!({"digest": d('a'), "size": 3, "annotations": {"k": "v"}})).unwrap();
        assert_eq!(ok.size, 3);
        assert_eq!(ok.annotations["k"], "v");
    }

    #[test]
    fn layer_descriptor_replaces_blob_annotations() {
        let src = Desc::parse(&json!({
            "mediaType": DOCKER_LAYER_GZIP, "digest": d('a'), "size": 10,
            "urls": ["http://x"],
            "annotations": {"keep": "1", TOC_DIGEST: "stale", ZSTD_MANIFEST_POSITION: "1:2:3:1"}
        }))
        .unwrap();
        let mut ann = BTreeMap::new();
        ann.insert(TOC_DIGEST.to_string(), d('t'));
        let v = layer_descriptor(
            &src,
            OCI_LAYER_GZIP,
            &parse_sha256(&d('b')).unwrap(),
            20,
            &ann,
        );
        assert_eq!(v["mediaType"], OCI_LAYER_GZIP);
        assert_eq!(v["digest"], d('b'));
        assert_eq!(v["size"], 20);
        assert_eq!(v["annotations"], json!({"keep": "1", TOC_DIGEST: d('t')}));
        assert!(v.get("urls").is_none());
    }

    #[test]
    fn config_keeps_history_and_replaces_diff_ids() {
        let c = json!({"architecture": "amd64", "os": "linux", "history": [{"created_by": "x"}],
                       "rootfs": {"type": "layers", "diff_ids": [d('a')]}, "config": {"Cmd": ["sh"]}});
        assert_eq!(config_diff_ids(&c).unwrap(), vec![d('a')]);
        let out: Value = serde_json::from_slice(&new_config(&c, &[d('b')]).unwrap()).unwrap();
        assert_eq!(out["rootfs"]["diff_ids"], json!([d('b')]));
        assert_eq!(out["history"], c["history"]);
        assert_eq!(out["config"], c["config"]);
        assert!(new_config(&json!({}), &[]).is_err());
    }

    #[test]
    fn manifests_parse_and_convert_to_oci() {
        let src = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": d('c'), "size": 5},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": d('a'), "size": 7}],
            "annotations": {"org.opencontainers.image.title": "t"}});
        let m = Manifest::parse(DOCKER_MANIFEST, &src).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(
            layer_compression(&m.layers[0].media_type).unwrap(),
            LayerCompression::Gzip
        );
        let out: Value = serde_json::from_slice(&new_manifest(
            &src,
            descriptor(OCI_CONFIG, &parse_sha256(&d('e')).unwrap(), 9),
            vec![json!({"x": 1})],
        ))
        .unwrap();
        assert_eq!(out["mediaType"], OCI_MANIFEST);
        assert_eq!(out["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(out["annotations"], src["annotations"]);
        let bad = json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": d('c'), "size": 1}, "layers": []});
        assert!(Manifest::parse(OCI_MANIFEST, &bad)
            .unwrap_err()
            .contains("not a container image"));
        assert!(
            layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").is_err()
        );
        assert!(layer_compression("text/plain").is_err());
    }
}
