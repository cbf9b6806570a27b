//! A layer's saved state, so that a restart can mount it again without the registry: the
//! blob's identity and size, the footer bytes and the compressed TOC, in the layer's state
//! directory. Files:
//!
//! - `toc`: the compressed TOC bytes exactly as in the blob (written first);
//! - `layer.json`: identity, size, footer bytes, the verified TOC digest and the names
//!   read from tar headers for entries whose TOC name was lost (see [`super::names`])
//!   (written last; its presence means the state is complete).
//!
//! Both are written to temporary files, fsynced and renamed into place. Loading checks the
//! TOC against the saved digest again, so a damaged state file is an error, never a wrong
//! tree.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use estargz::lost_names::{NameFix, NameFixes};
use estargz::{Footer, Sha256Digest};
use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use super::{LayerError, LayerSource};
use registry::Repository;

const LAYER_FILE: &str = "layer.json";
const TOC_FILE: &str = "toc";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    host: String,
    repository: String,
    digest: String,
    size: u64,
    toc_digest: String,
    /// The blob's last bytes holding the footer (base64).
    footer: String,
    /// Names from tar headers of entries whose TOC name was lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    names: Vec<SavedName>,
}

/// One [`NameFix`], names in base64 (they are not UTF-8).
#[derive(Debug, Serialize, Deserialize)]
struct SavedName {
    /// Position of the entry in the TOC.
    entry: usize,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
}

/// What a state directory holds.
pub(crate) struct SavedLayer {
    pub(crate) source: LayerSource,
    pub(crate) size: u64,
    pub(crate) footer: Footer,
    pub(crate) toc: Vec<u8>,
    pub(crate) names: NameFixes,
}

/// True if `dir` holds a complete saved layer.
pub fn has_saved_state(dir: &Path) -> bool {
    dir.join(LAYER_FILE).is_file()
}

pub(crate) fn save(
    dir: &Path,
    source: &LayerSource,
    size: u64,
    tail: &[u8],
    toc: &[u8],
    toc_digest: &Sha256Digest,
    names: &NameFixes,
) -> Result<(), LayerError> {
    let io = |what: &str, p: &Path, e: std::io::Error| LayerError::State {
        dir: dir.to_path_buf(),
        reason: format!("{what} {}: {e}", p.display()),
    };
    fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    write_atomic(dir, TOC_FILE, toc).map_err(|(p, e)| io("write", &p, e))?;
    let saved = Saved {
        version: VERSION,
        host: source.repository.host.clone(),
        repository: source.repository.name.clone(),
        digest: source.digest.to_string(),
        size,
        toc_digest: toc_digest.to_string(),
        footer: base64::engine::general_purpose::STANDARD.encode(tail),
        names: {
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let mut v: Vec<SavedName> = names
                .iter()
                .map(|(&entry, fix)| SavedName {
                    entry,
                    name: b64(&fix.name),
                    link: fix.link_name.as_deref().map(b64),
                })
                .collect();
            v.sort_by_key(|n| n.entry);
            v
        },
    };
    let json = serde_json::to_vec_pretty(&saved).expect("plain struct serializes");
    write_atomic(dir, LAYER_FILE, &json).map_err(|(p, e)| io("write", &p, e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn load(dir: &Path) -> Result<SavedLayer, LayerError> {
    let bad = |reason: String| LayerError::State {
        dir: dir.to_path_buf(),
        reason,
    };
    let path = dir.join(LAYER_FILE);
    let text = fs::read(&path).map_err(|e| bad(format!("read {}: {e}", path.display())))?;
    let saved: Saved =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if saved.version != VERSION {
        return Err(bad(format!("unknown state version {}", saved.version)));
    }
    let digest = Digest::from_str(&saved.digest).map_err(|e| bad(format!("digest: {e}")))?;
    let toc_digest =
        Sha256Digest::from_str(&saved.toc_digest).map_err(|e| bad(format!("toc_digest: {e}")))?;
    let tail = base64::engine::general_purpose::STANDARD
        .decode(&saved.footer)
        .map_err(|e| bad(format!("footer: {e}")))?;
    if tail.len() > estargz::MAX_FOOTER_SIZE || tail.len() as u64 > saved.size {
        return Err(bad(format!("footer of {} bytes", tail.len())));
    }
    let footer = estargz::parse_footer(&tail, saved.size).map_err(|e| bad(e.to_string()))?;
    let toc_path = dir.join(TOC_FILE);
    let toc = fs::read(&toc_path).map_err(|e| bad(format!("read {}: {e}", toc_path.display())))?;
    if toc.len() as u64 != footer.toc_compressed_size {
        return Err(bad(format!(
            "{} has {} bytes, the footer says {}",
            toc_path.display(),
            toc.len(),
            footer.toc_compressed_size
        )));
    }
    let mut names = NameFixes::new();
    for n in &saved.names {
        let b64 = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(format!("names: {e}")))
        };
        let link_name = n.link.as_deref().map(b64).transpose()?;
        names.insert(
            n.entry,
            NameFix {
                name: b64(&n.name)?,
                link_name,
            },
        );
    }
    Ok(SavedLayer {
        names,
        source: LayerSource {
            repository: Repository::new(saved.host, saved.repository),
            digest,
            size: Some(saved.size),
            toc_digest: Some(toc_digest),
        },
        size: saved.size,
        footer,
        toc,
    })
}

/// Writes `name` in `dir` through a fsynced temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        (tmp.clone(), e)
    })
}
