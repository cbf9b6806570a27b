//! Names the TOC lost (bytes that are not UTF-8 written as U+FFFD by the reference
//! converter, see [`estargz::lost_names`]): when a layer is opened, the tar headers of
//! those entries are fetched (a few ranges, only for such layers) and their raw names
//! replace the TOC's, so the lazy tree equals a full pull. The fixes are saved with the
//! layer's state: a restore needs no registry.

use estargz::lost_names::{HeaderPlan, NameFixes};
use estargz::Footer;

use registry::Priority;

use super::LayerError;
use crate::fetch::BlobSource;

/// The name fixes of a layer whose verified TOC JSON is `json`. A registry failure is an
/// error (the layer is then not mounted lazily; a full pull gets the true names); headers
/// that do not line up with the TOC keep the TOC's names, with a warning.
pub(super) async fn recover(
    blob: &dyn BlobSource,
    footer: &Footer,
    json: &[u8],
    digest: &str,
) -> Result<NameFixes, LayerError> {
    let plan = match HeaderPlan::from_json(json, footer) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(NameFixes::new()),
        Err(e) => {
            return Err(LayerError::Format {
                digest: digest.to_string(),
                source: e.into(),
            })
        }
    };
    let ranges: Vec<_> = plan.spans().iter().map(|s| s.range.clone()).collect();
    let fetched = blob
        .read_ranges(&ranges, Priority::OnDemand)
        .await
        .map_err(|source| LayerError::Registry {
            digest: digest.to_string(),
            source,
        })?;
    let work = tokio::task::spawn_blocking(move || {
        let mut fixes = NameFixes::new();
        let mut errors = Vec::new();
        for (span, bytes) in plan.spans().iter().zip(&fetched) {
            match plan.recover(span, bytes) {
                Ok(found) => fixes.extend(found),
                Err(e) => errors.push(e),
            }
        }
        (fixes, errors, plan.lost(), plan.total_bytes())
    });
    let (fixes, errors, lost, bytes) = work.await.map_err(|e| LayerError::State {
        dir: Default::default(),
        reason: format!("name recovery task failed: {e}"),
    })?;
    for e in &errors {
        tracing::warn!(layer = digest, error = %e, "names the TOC lost are kept as the TOC has them");
    }
    tracing::info!(
        layer = digest,
        lost,
        recovered = fixes.len(),
        bytes,
        "names the TOC lost read from their tar headers"
    );
    Ok(fixes)
}
