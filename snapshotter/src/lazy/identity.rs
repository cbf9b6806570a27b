//! Which layer a Prepare asks for: the image reference, the layer blob digest and the
//! TOC digest, read from the labels a lazy-pull client sends (the CRI family
//! `containerd.io/snapshot/cri.*` or the stargz family
//! `containerd.io/snapshot/remote/stargz.*`, plus `containerd.io/snapshot/stargz/toc.digest`).
//!
//! A layer without a TOC digest label is not mounted lazily: its TOC could not be
//! verified, so anything in the blob would be trusted. Values longer than any reference
//! or digest can be ([`MAX_REFERENCE`], [`MAX_DIGEST`]) are refused here, so what is
//! logged and passed on downstream stays bounded; errors show label values clipped.

use crate::clip::clip;
use crate::labels;
use crate::store::Labels;

/// Longest image reference accepted (a repository name is at most 255 bytes, a tag 128,
/// a digest 135, plus the host).
pub const MAX_REFERENCE: usize = 1024;
/// Longest digest accepted (`sha512:` and 128 hex digits is 135).
pub const MAX_DIGEST: usize = 256;

/// The identity of a layer to mount lazily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIdentity {
    /// The image reference (`host/repo:tag[@digest]`); its repository holds the blob.
    pub reference: String,
    /// The layer blob's digest.
    pub digest: String,
    /// The digest the layer's TOC must have.
    pub toc_digest: String,
}

/// Why labels do not identify a lazily mountable layer (the text is the Declined reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Neither label family names both a reference and a digest.
    #[error(
        "the labels name no layer (need {} + {} or {} + {})",
        labels::CRI_IMAGE_REF,
        labels::CRI_LAYER_DIGEST,
        labels::STARGZ_REFERENCE,
        labels::STARGZ_DIGEST
    )]
    NoLayer,
    /// The two label families name different layers.
    #[error(
        "the labels disagree on the layer: {} ({}) vs {} ({})",
        clip(.cri),
        labels::CRI_LAYER_DIGEST,
        clip(.stargz),
        labels::STARGZ_DIGEST
    )]
    Conflict {
        /// The CRI label's digest.
        cri: String,
        /// The stargz label's digest.
        stargz: String,
    },
    /// No TOC digest: the layer is not eStargz, or the client did not pass the annotation.
    #[error(
        "layer {} has no {} label (not an eStargz layer, or the client did not pass \
         the layer's annotation): its TOC cannot be verified",
        clip(.digest),
        labels::TOC_DIGEST
    )]
    NoTocDigest {
        /// The layer.
        digest: String,
    },
    /// A label value is longer than what it names can be.
    #[error("label {label} is {len} bytes long, more than a {what} can be: {}", clip(.value))]
    TooLong {
        /// The label key.
        label: &'static str,
        /// What the label names ("digest", "image reference").
        what: &'static str,
        /// The value's length.
        len: usize,
        /// The value (shown clipped).
        value: String,
    },
}

fn get<'a>(l: &'a Labels, key: &str) -> Option<&'a str> {
    l.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Refuses a label value longer than `max`.
fn bounded(
    l: &Labels,
    key: &'static str,
    what: &'static str,
    max: usize,
) -> Result<(), IdentityError> {
    match get(l, key) {
        Some(v) if v.len() > max => Err(IdentityError::TooLong {
            label: key,
            what,
            len: v.len(),
            value: v.to_string(),
        }),
        _ => Ok(()),
    }
}

impl LayerIdentity {
    /// Reads the identity from Prepare labels. The stargz family wins over the CRI family
    /// for the reference (both name the same image when both are present); the digests
    /// must agree.
    pub fn from_labels(l: &Labels) -> Result<Self, IdentityError> {
        for key in [labels::CRI_IMAGE_REF, labels::STARGZ_REFERENCE] {
            bounded(l, key, "image reference", MAX_REFERENCE)?;
        }
        for key in [
            labels::CRI_LAYER_DIGEST,
            labels::STARGZ_DIGEST,
            labels::TOC_DIGEST,
        ] {
            bounded(l, key, "digest", MAX_DIGEST)?;
        }
        let cri = get(l, labels::CRI_IMAGE_REF).zip(get(l, labels::CRI_LAYER_DIGEST));
        let stargz = get(l, labels::STARGZ_REFERENCE).zip(get(l, labels::STARGZ_DIGEST));
        let (reference, digest) = match (stargz, cri) {
            (Some((_, sd)), Some((_, cd))) if sd != cd => {
                return Err(IdentityError::Conflict {
                    cri: cd.to_string(),
                    stargz: sd.to_string(),
                })
            }
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return Err(IdentityError::NoLayer),
        };
        let toc_digest = get(l, labels::TOC_DIGEST).ok_or_else(|| IdentityError::NoTocDigest {
            digest: digest.to_string(),
        })?;
        Ok(LayerIdentity {
            reference: reference.to_string(),
            digest: digest.to_string(),
            toc_digest: toc_digest.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::test_labels::labels as l;

    #[test]
    fn cri_labels_name_the_layer() {
        let id = LayerIdentity::from_labels(&l(&[
            (labels::CRI_IMAGE_REF, "r:1/a:t"),
            (labels::CRI_LAYER_DIGEST, "sha256:aa"),
            (labels::TOC_DIGEST, "sha256:bb"),
        ]))
        .unwrap();
        assert_eq!(
            id,
            LayerIdentity {
                reference: "r:1/a:t".into(),
                digest: "sha256:aa".into(),
                toc_digest: "sha256:bb".into()
            }
        );
    }

    #[test]
    fn stargz_labels_name_the_layer_and_win_on_the_reference() {
        let id = LayerIdentity::from_labels(&l(&[
            (labels::STARGZ_REFERENCE, "r/b:t"),
            (labels::STARGZ_DIGEST, "sha256:aa"),
            (labels::CRI_IMAGE_REF, "r/c:t"),
            (labels::CRI_LAYER_DIGEST, "sha256:aa"),
            (labels::TOC_DIGEST, "sha256:bb"),
        ]))
        .unwrap();
        assert_eq!(id.reference, "r/b:t");
    }

    #[test]
    fn missing_or_conflicting_labels_are_named() {
        let e = LayerIdentity::from_labels(&l(&[
            (labels::CRI_IMAGE_REF, "r/a:t"),
            (labels::CRI_LAYER_DIGEST, "sha256:aa"),
        ]))
        .unwrap_err();
        assert_eq!(
            e,
            IdentityError::NoTocDigest {
                digest: "sha256:aa".into()
            }
        );
        assert!(e.to_string().contains("sha256:aa"), "{e}");
        assert!(e.to_string().contains(labels::TOC_DIGEST), "{e}");
        let e = LayerIdentity::from_labels(&l(&[
            (labels::STARGZ_REFERENCE, "r/b:t"),
            (labels::STARGZ_DIGEST, "sha256:aa"),
            (labels::CRI_IMAGE_REF, "r/b:t"),
            (labels::CRI_LAYER_DIGEST, "sha256:cc"),
            (labels::TOC_DIGEST, "sha256:bb"),
        ]))
        .unwrap_err();
        assert!(matches!(e, IdentityError::Conflict { .. }), "{e}");
        let e = LayerIdentity::from_labels(&l(&[
            (labels::CRI_LAYER_DIGEST, "sha256:aa"),
            (labels::TOC_DIGEST, "  "),
        ]))
        .unwrap_err();
        assert_eq!(e, IdentityError::NoLayer);
    }

    #[test]
    fn huge_values_are_refused_and_shown_clipped() {
        let huge = "v".repeat(8192);
        let e = LayerIdentity::from_labels(&l(&[
            (labels::STARGZ_REFERENCE, "r/b:t"),
            (labels::STARGZ_DIGEST, &huge),
            (labels::TOC_DIGEST, "sha256:bb"),
        ]))
        .unwrap_err();
        assert!(
            matches!(e, IdentityError::TooLong { len: 8192, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains(labels::STARGZ_DIGEST), "{text}");
        assert!(text.contains("(8192 bytes)"), "{text}");
        assert!(text.len() < 600, "{} bytes: {text}", text.len());
        let e = LayerIdentity::from_labels(&l(&[
            (labels::CRI_IMAGE_REF, &huge),
            (labels::CRI_LAYER_DIGEST, "sha256:aa"),
            (labels::TOC_DIGEST, "sha256:bb"),
        ]))
        .unwrap_err();
        assert!(e.to_string().len() < 600, "{e}");
        // Values that are long but not impossibly long are still clipped in errors.
        let long = format!("sha256:{}", "a".repeat(240));
        let e = LayerIdentity::from_labels(&l(&[
            (labels::CRI_IMAGE_REF, "r/a:t"),
            (labels::CRI_LAYER_DIGEST, &long),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("…(247 bytes)"), "{e}");
    }
}
