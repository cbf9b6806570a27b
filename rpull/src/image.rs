//! What a pull needs from the registry before touching containerd: the image's index (if
//! the reference names one) and the manifest for the wanted platform, both as the exact
//! bytes the registry served (they go into containerd's content store under their digests),
//! the config blob and its diff IDs, and the layers' chain IDs.

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
pub use registry::Platform;
use registry::{
    is_index, platforms, select_manifest, FetchedManifest, Reference, RegistryClient,
    DOCKER_MANIFEST,
};
use sha2::{Digest as _, Sha256};

use super::RpullError;

/// Largest image config accepted.
const MAX_CONFIG: u64 = 16 << 20;

pub use registry::{OCI_INDEX, OCI_MANIFEST};
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A blob with the media type and bytes the registry served.
#[derive(Debug, Clone)]
pub struct RawBlob {
    /// Media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// The exact bytes.
    pub bytes: Bytes,
}

impl RawBlob {
    fn from_manifest(m: FetchedManifest, fallback_type: &str) -> Self {
        RawBlob {
            media_type: if m.media_type.is_empty() {
                fallback_type.to_string()
            } else {
                m.media_type
            },
            digest: m.digest.to_string(),
            bytes: m.body,
        }
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// An image resolved for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference, normalised (`host/repo:tag`), as snapshot labels carry it.
    pub reference: Reference,
    /// The index the reference names, if it names one.
    pub index: Option<RawBlob>,
    /// The platform's manifest.
    pub manifest: RawBlob,
    /// The manifest's layers, bottom first (with annotations).
    pub layers: Vec<Descriptor>,
    /// The config blob.
    pub config: RawBlob,
    /// The config's diff IDs, one per layer.
    pub diff_ids: Vec<String>,
    /// The chain ID of each layer (the last one is the image's top snapshot).
    pub chain_ids: Vec<String>,
}

impl ResolvedImage {
    /// The blob the image record points at: the index if there is one, else the manifest.
    pub fn target(&self) -> &RawBlob {
        self.index.as_ref().unwrap_or(&self.manifest)
    }
}

/// Resolves `reference` to `platform`'s manifest and fetches the config.
pub async fn resolve(
    registry: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
) -> Result<ResolvedImage, RpullError> {
    let image = reference.to_string();
    let reg_err = |source| RpullError::Registry {
        what: "resolve image".into(),
        source,
    };
    let bad = |reason: String| RpullError::BadImage {
        image: image.clone(),
        reason,
    };
    let repo = &reference.repository;
    let first = registry
        .fetch_manifest(repo, &reference.object())
        .await
        .map_err(reg_err)?;
    let (index, manifest) = if is_index(&first) {
        let index_json: ImageIndex = serde_json::from_slice(&first.body)
            .map_err(|e| bad(format!("image index {} is not valid: {e}", first.digest)))?;
        let chosen =
            select_manifest(&index_json, platform).ok_or_else(|| RpullError::NoPlatform {
                image: image.clone(),
                wanted: platform.to_string(),
                available: platforms(&index_json),
            })?;
        let m = registry
            .fetch_manifest(repo, chosen.digest().as_ref())
            .await
            .map_err(reg_err)?;
        (Some(RawBlob::from_manifest(first, OCI_INDEX)), m)
    } else {
        (None, first)
    };
    if !manifest.media_type.is_empty()
        && ![OCI_MANIFEST, DOCKER_MANIFEST].contains(&manifest.media_type.as_str())
    {
        return Err(bad(format!(
            "manifest {} has unsupported media type {:?}",
            manifest.digest, manifest.media_type
        )));
    }
    let parsed: ImageManifest = serde_json::from_slice(&manifest.body).map_err(|e| {
        bad(format!(
            "image manifest {} is not valid: {e}",
            manifest.digest
        ))
    })?;
    let manifest = RawBlob::from_manifest(manifest, OCI_MANIFEST);
    let cd = parsed.config();
    let config_bytes = registry
        .blob(repo, cd.digest(), Some(cd.size()))
        .await
        .map_err(reg_err)?
        .read_all(MAX_CONFIG)
        .await
        .map_err(reg_err)?;
    let diff_ids =
        diff_ids(&config_bytes).map_err(|r| bad(format!("image config {}: {r}", cd.digest())))?;
    let layers = parsed.layers().clone();
    if layers.len() != diff_ids.len() {
        return Err(bad(format!(
            "manifest {} has {} layers but its config lists {} diff IDs",
            manifest.digest,
            layers.len(),
            diff_ids.len()
        )));
    }
    if layers.is_empty() {
        return Err(bad(format!("manifest {} has no layers", manifest.digest)));
    }
    let config = RawBlob {
        media_type: match cd.media_type().to_string() {
            t if t.is_empty() => OCI_CONFIG.to_string(),
            t => t,
        },
        digest: cd.digest().to_string(),
        bytes: config_bytes,
    };
    Ok(ResolvedImage {
        reference: reference.clone(),
        index,
        manifest,
        layers,
        config,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
    })
}

/// `(media type, digest)` of every entry of an index, in order (for its GC labels: all
/// platforms, as containerd labels them).
pub fn index_children(index: &[u8]) -> Vec<(String, String)> {
    serde_json::from_slice::<ImageIndex>(index)
        .map(|i| {
            i.manifests()
                .iter()
                .map(|d| (d.media_type().to_string(), d.digest().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `rootfs.diff_ids` of an image config, checked to be sha256 digests.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("not valid JSON: {e}"))?;
    let ids = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or("no rootfs.diff_ids")?;
    ids.iter()
        .map(|d| {
            let s = d.as_str().ok_or("a diff ID is not a string")?;
            if is_sha256(s) {
                Ok(s.to_string())
            } else {
                Err(format!("diff ID {s:?} is not a sha256 digest"))
            }
        })
        .collect()
}

fn is_sha256(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// OCI chain IDs: the first is the first diff ID, each next is
/// `sha256(previous chain ID + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
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
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(ids[1], format!("sha256:{want}"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn diff_ids_are_checked() {
        let d = format!("sha256:{}", "0f".repeat(32));
        let ok = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#);
        assert_eq!(diff_ids(ok.as_bytes()).unwrap(), vec![d]);
        for bad in [
            "nope",
            "{}",
            r#"{"rootfs":{"diff_ids":[1]}}"#,
            r#"{"rootfs":{"diff_ids":["sha256:XYZ"]}}"#,
            r#"{"rootfs":{"diff_ids":["md5:00"]}}"#,
        ] {
            assert!(diff_ids(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_parse_and_select() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        let d = |n: char| format!("sha256:{}", n.to_string().repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"application/vnd.in-toto+json","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        let pick =
            |p: &str| select_manifest(&index, &p.parse().unwrap()).map(|d| d.digest().to_string());
        assert_eq!(pick("linux/amd64"), Some(d('c')));
        assert_eq!(pick("linux/arm64"), Some(d('b')));
        assert_eq!(pick("linux/arm64/v8"), Some(d('b')));
        assert_eq!(pick("linux/arm/v7"), Some(d('a')));
        assert_eq!(pick("linux/arm/v6"), None);
        assert_eq!(pick("windows/amd64"), None);
        assert!(platforms(&index).contains("linux/arm/v7"));
    }
}
