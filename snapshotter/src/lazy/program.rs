//! The program an image runs by default, read ahead while it is pulled: at the first
//! lazy Prepare of an image, its config is fetched (manifest and config, two requests next
//! to the layers' own), `argv[0]` of its Entrypoint (else Cmd) and its `PATH` are handed to
//! the layers (`LayerContext::note_image_program`), which fetch that program and what the
//! loader needs for it once every layer of the image is open — the upper ones opened ahead
//! of their Prepare ([`super::ahead`]) — or else once the image's top layer is mounted
//! (`fetch.program_read_ahead`).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use fusefs::layer::LayerContext;
use fusefs::layer::{Program, DEFAULT_PATH};
use oci_spec::image::{Digest, ImageConfiguration};
use registry::Reference;
use tokio::sync::watch;

use super::ahead::Tocs;
use crate::labels;
use crate::store::Labels;

/// Images whose program was already looked up (by reference and top layer).
#[derive(Default)]
pub struct Programs {
    seen: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs")
            .field(
                "seen",
                &self
                    .seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .finish()
    }
}

/// `argv[0]`, `PATH` and working directory of an image config; `None` without a program.
pub fn program_of(config: &ImageConfiguration) -> Option<Program> {
    let c = config.config().as_ref()?;
    let argv0 = c
        .entrypoint()
        .as_ref()
        .and_then(|e| e.first())
        .or_else(|| c.cmd().as_ref().and_then(|e| e.first()))
        .filter(|a| !a.is_empty())?;
    let path = c
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let cwd = c
        .working_dir()
        .clone()
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    Some(Program {
        argv0: argv0.clone(),
        path: path.to_string(),
        cwd,
    })
}

impl Programs {
    /// Starts looking up the program of the image a Prepare with `labels` belongs to
    /// (once per image), if program read-ahead is on; returns its layers' TOC digests to
    /// come (the same manifest).
    pub fn start(
        &self,
        ctx: &Arc<LayerContext>,
        labels: &Labels,
        reference: &str,
        digest: &str,
    ) -> Option<Tocs> {
        if !ctx.settings().fetch.program_read_ahead {
            return None;
        }
        let top = super::ahead::image_layers(labels, digest)
            .and_then(|l| l.last().map(|d| d.to_string()))?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.len() > 4096 {
                seen.clear();
            }
            if !seen.insert((reference.to_string(), top.clone())) {
                return None;
            }
        }
        let mut parsed = Reference::from_str(reference).ok()?;
        if let Some(d) = labels
            .get(labels::CRI_MANIFEST_DIGEST)
            .and_then(|d| Digest::from_str(d.trim()).ok())
        {
            parsed.digest = Some(d);
        }
        let ctx2 = ctx.clone();
        let (tx, tocs) = watch::channel(None);
        ctx.runtime().spawn(async move {
            let (program, layers) = match ctx2.client().resolve(&parsed).await {
                Ok(image) => (
                    image.config().ok().as_ref().and_then(program_of),
                    toc_digests(image.layers()),
                ),
                Err(e) => {
                    tracing::debug!(image = %parsed, error = %e, "no image config for program read-ahead");
                    (None, HashMap::new())
                }
            };
            tx.send_replace(Some(Arc::new(layers)));
            if let Some(p) = program {
                ctx2.note_image_program(&top, p);
            }
        });
        Some(tocs)
    }
}

/// Layer digest → TOC digest annotation of the layers that have one.
fn toc_digests(layers: &[oci_spec::image::Descriptor]) -> HashMap<String, String> {
    layers
        .iter()
        .filter_map(|d| {
            let toc = d
                .annotations()
                .as_ref()?
                .get(estargz::toc::TOC_DIGEST_ANNOTATION)?;
            Some((d.digest().to_string(), toc.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn entrypoint_wins_over_cmd_and_path_comes_from_env() {
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx"],
            "Env":["A=1","PATH=/opt/bin:/usr/bin"],"WorkingDir":"/srv"}}"#,
        );
        let p = program_of(&c).unwrap();
        assert_eq!(p.argv0, "/docker-entrypoint.sh");
        assert_eq!(p.path, "/opt/bin:/usr/bin");
        assert_eq!(p.cwd, "/srv");
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Cmd":["python3","-c","print(1)"]}}"#,
        );
        let p = program_of(&c).unwrap();
        assert_eq!(p.argv0, "python3");
        assert_eq!(p.path, DEFAULT_PATH);
        assert_eq!(p.cwd, "/");
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        assert_eq!(program_of(&c), None);
    }
}
