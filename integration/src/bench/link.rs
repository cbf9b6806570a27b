//! The shaped link under each [`LinkProfile`]: its harness options, switching a running
//! link from one profile to the next, and a check of what the link really delivers (request
//! round trip and single-stream throughput through the delay proxy and `tbf`), reported
//! next to the profile's nominal figures.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::plan::{shaped_options, LinkProfile};
use super::setup::BenchEnv;
use super::BenchError;

/// What the link delivered when checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkCheck {
    /// Fastest of five `GET /v2/` on fresh connections (RTT + registry time), ms.
    pub request_ms: f64,
    /// Single-stream GET of `blob_bytes`, Mbit/s of payload (median of three).
    pub mbit: f64,
    /// Size of the blob fetched for the throughput figure.
    pub blob_bytes: u64,
}

impl BenchEnv {
    /// Switches the running link to `p` (tbf on both ends, proxy delay).
    pub fn set_profile(&mut self, p: &LinkProfile) -> Result<(), BenchError> {
        self.shaped().reshape(&shaped_options(p))?;
        Ok(())
    }

    /// Measures the link: request round trips and the throughput of one stream fetching
    /// the largest layer (up to 128 MB) of the prepared images.
    pub fn check_link(&self) -> Result<LinkCheck, BenchError> {
        let base = self.shaped().url();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            crate::http::get(&format!("{base}/v2/"), &[])?;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let blob = self
            .images
            .iter()
            .flat_map(|(image, vs)| {
                vs.values().flat_map(move |v| {
                    let repo = image.clone();
                    v.layers.iter().map(move |l| (repo.clone(), l.clone()))
                })
            })
            .filter(|(_, (_, size))| *size <= 128_000_000)
            .max_by_key(|(_, (_, size))| *size);
        let Some((repo, (digest, size))) = blob else {
            return Err(BenchError::Setup(
                "link check: no layer to fetch (no image prepared)".into(),
            ));
        };
        let url = format!("{base}/v2/{repo}/blobs/{digest}");
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let (status, n) = crate::http::get_discard(&url, &[])?;
            let secs = t.elapsed().as_secs_f64();
            if status != 200 || n != size {
                return Err(BenchError::Setup(format!(
                    "link check: GET {url} answered {status} with {n} of {size} bytes"
                )));
            }
            rates.push(n as f64 * 8.0 / secs / 1e6);
        }
        rates.sort_by(f64::total_cmp);
        Ok(LinkCheck {
            request_ms: best,
            mbit: rates[1],
            blob_bytes: size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaped::ShapedOptions;
    use std::time::Duration;

    #[test]
    fn profiles_map_to_link_options() {
        let o = shaped_options(&LinkProfile::dc());
        assert_eq!(o.rtt, Duration::from_millis(2));
        assert_eq!((o.rate_mbit, o.burst.as_str()), (1000, "1mb"));
        let o = shaped_options(&LinkProfile::wan());
        assert_eq!(o.tbf_latency, ShapedOptions::default().tbf_latency);
    }
}
