//! The starling daemon's Prometheus metrics as tests read them: the scrape of the address
//! the daemon writes to `<root>/metrics.addr` (it is started with `metrics_address =
//! "127.0.0.1:0"`), and sums of samples by metric name and labels.

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The counter of compressed bytes fetched from registries.
pub const FETCH_BYTES_TOTAL: &str = "starling_fetch_bytes_total";

/// The metrics text of the daemon whose `--root` is `root`.
pub fn scrape(root: &Path) -> Result<String> {
    let file = root.join("metrics.addr");
    let addr = std::fs::read_to_string(&file).ctx(|| file.display().to_string())?;
    let url = format!("http://{}/metrics", addr.trim());
    let r = crate::http::get(&url, &[])?;
    if r.status != 200 {
        return Err(Error::Http {
            url,
            reason: format!("status {}", r.status),
        });
    }
    String::from_utf8(r.body).map_err(|e| Error::invalid("metrics text", e.to_string()))
}

/// Sum of the samples of `name` in `text` whose labels contain every one of `labels`
/// (`key="value"` strings; none: every sample of `name`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, ls) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|x| ls.contains(x)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP starling_fetch_bytes_total Bytes fetched.\n\
        # TYPE starling_fetch_bytes_total counter\n\
        starling_fetch_bytes_total{layer=\"sha256:a\"} 100\n\
        starling_fetch_bytes_total{layer=\"sha256:b\"} 20.5\n\
        starling_fetch_bytes_total_other 7\n\
        starling_layer_state{layer=\"sha256:a\",state=\"on-demand\"} 1\n\
        starling_layer_state{layer=\"sha256:a\",state=\"complete\"} 0\n\
        starling_lazy_layers_mounted 2\n";

    #[test]
    fn metric_sums_the_samples_of_a_name_with_the_labels_asked_for() {
        assert_eq!(metric(TEXT, FETCH_BYTES_TOTAL, &[]), 120.5);
        assert_eq!(
            metric(TEXT, FETCH_BYTES_TOTAL, &["layer=\"sha256:b\""]),
            20.5
        );
        assert_eq!(metric(TEXT, "starling_lazy_layers_mounted", &[]), 2.0);
        assert_eq!(
            metric(
                TEXT,
                "starling_layer_state",
                &["layer=\"sha256:a\"", "state=\"on-demand\""]
            ),
            1.0
        );
        assert_eq!(metric(TEXT, "starling_missing", &[]), 0.0);
    }

    #[test]
    fn scrape_names_a_missing_address_file() {
        let dir = std::env::temp_dir().join(format!("stl-dedup-metrics-{}", std::process::id()));
        let err = scrape(&dir).unwrap_err().to_string();
        assert!(err.contains("metrics.addr"), "{err}");
    }
}
