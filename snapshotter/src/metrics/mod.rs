//! The daemon's Prometheus metrics: latencies of the snapshot gRPC calls
//! ([`OpMetrics`], observed by the service), and, read at each scrape, the counters of
//! the registry client and chunk cache and the progress of every mounted lazy layer
//! ([`LazyCollector`]). [`http`] serves them at `metrics_address`.
//!
//! Names (all prefixed `starling_`; counters end in `_total`):
//! - `snapshot_operation_duration_seconds{op,code}` (histogram)
//! - `fetch_requests_total`, `fetch_range_requests_total`, `fetch_bytes_total`,
//!   `fetch_retries_total`, `fetch_digest_mismatches_total`
//! - `cache_hits_total{tier="memory"|"disk"}`, `cache_misses_total`,
//!   `cache_evictions_total`, `cache_evicted_bytes_total`, `cache_corrupt_entries_total`,
//!   `cache_size_bytes{tier}`
//! - `lazy_prepares_total{outcome="mounted"|"labels"|"not_estargz"|"registry"|"local"}`,
//!   `lazy_restores_total{result="ok"|"failed"}`, `lazy_layers_mounted`
//! - `layer_fetched_bytes{layer,mountpoint}`, `layer_total_bytes{layer,mountpoint}`,
//!   `layer_state{layer,mountpoint,state}` (1 for the layer's current state)

pub mod http;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::lazy::{Decline, LazyLayers};

/// Labels of one snapshot operation sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The gRPC method (`prepare`, `mounts`, ...).
    pub op: &'static str,
    /// `ok` or the error kind (`not_found`, `already_exists`, ...).
    pub code: &'static str,
}

type OpFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn op_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Latencies of the snapshot gRPC calls.
#[derive(Debug, Clone)]
pub struct OpMetrics {
    ops: OpFamily,
}

impl Default for OpMetrics {
    fn default() -> Self {
        OpMetrics {
            ops: Family::new_with_constructor(op_histogram),
        }
    }
}

impl OpMetrics {
    /// Records one call of `op` that took `elapsed` and ended with `code`.
    pub fn observe(&self, op: &'static str, code: &'static str, elapsed: Duration) {
        self.ops
            .get_or_create(&OpLabels { op, code })
            .observe(elapsed.as_secs_f64());
    }
}

/// Everything the daemon exports.
#[derive(Debug)]
pub struct DaemonMetrics {
    registry: Registry,
    ops: OpMetrics,
}

impl DaemonMetrics {
    /// The operation histogram, plus the lazy layers' counters when there is a hook.
    pub fn new(lazy: Option<Arc<LazyLayers>>) -> Self {
        let mut registry = Registry::with_prefix("starling");
        let ops = OpMetrics::default();
        registry.register(
            "snapshot_operation_duration_seconds",
            "Latency of snapshot gRPC calls by method and outcome",
            ops.ops.clone(),
        );
        if let Some(lazy) = lazy {
            registry.register_collector(Box::new(LazyCollector { lazy }));
        }
        DaemonMetrics { registry, ops }
    }

    /// The operation histogram, for the service.
    pub fn ops(&self) -> &OpMetrics {
        &self.ops
    }

    /// The exposition text (OpenMetrics text format, ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the fusefs counters and per-layer progress at scrape time.
#[derive(Debug)]
pub struct LazyCollector {
    lazy: Arc<LazyLayers>,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v as i64).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

const STATES: [&str; 5] = [
    "prefetching",
    "background",
    "streaming",
    "on-demand",
    "complete",
];

impl Collector for LazyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = self.lazy.metrics().snapshot();
        let e = &mut e;
        counter(
            e,
            "fetch_requests",
            "HTTP requests sent to registries (blobs, manifests, tokens)",
            m.registry.requests,
        )?;
        counter(
            e,
            "fetch_range_requests",
            "Blob range requests",
            m.registry.range_requests,
        )?;
        counter(
            e,
            "fetch_bytes",
            "Bytes received from registries",
            m.registry.bytes_fetched,
        )?;
        counter(e, "fetch_retries", "Retried requests", m.registry.retries)?;
        counter(
            e,
            "fetch_digest_mismatches",
            "Fetched chunks that failed verification",
            m.digest_mismatches,
        )?;
        counter_family(
            e,
            "cache_hits",
            "Chunk lookups served from the cache",
            &[
                (vec![("tier", "memory")], m.memory_hits),
                (vec![("tier", "disk")], m.disk_hits),
            ],
        )?;
        counter(
            e,
            "cache_misses",
            "Chunk lookups not in the cache",
            m.misses,
        )?;
        counter(
            e,
            "cache_evictions",
            "Chunk cache entries evicted",
            m.evictions,
        )?;
        counter(
            e,
            "cache_evicted_bytes",
            "Chunk cache bytes evicted",
            m.bytes_evicted,
        )?;
        counter(
            e,
            "cache_corrupt_entries",
            "Torn or corrupted cache entries found (refetched)",
            m.corrupt_entries,
        )?;
        gauge_family(
            e,
            "cache_size_bytes",
            "Bytes in the chunk cache",
            &[
                (vec![("tier", "memory")], m.memory_bytes),
                (vec![("tier", "disk")], m.disk_bytes),
            ],
        )?;

        let c = self.lazy.counters();
        let mut prepares = vec![(
            vec![("outcome", "mounted")],
            c.mounted.load(Ordering::Relaxed),
        )];
        for (i, kind) in Decline::ALL.iter().enumerate() {
            prepares.push((
                vec![("outcome", kind.name())],
                c.declined[i].load(Ordering::Relaxed),
            ));
        }
        counter_family(
            e,
            "lazy_prepares",
            "Layer Prepares offered to the lazy file system, by outcome",
            &prepares,
        )?;
        counter_family(
            e,
            "lazy_restores",
            "Lazy layers mounted again at start",
            &[
                (vec![("result", "ok")], c.restored.load(Ordering::Relaxed)),
                (
                    vec![("result", "failed")],
                    c.restore_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;

        let layers = self.lazy.mounted();
        gauge(
            e,
            "lazy_layers_mounted",
            "Lazy layers mounted now",
            layers.len() as u64,
        )?;
        let paths: Vec<String> = layers
            .iter()
            .map(|l| l.mountpoint.display().to_string())
            .collect();
        let per = |f: &dyn Fn(&crate::lazy::MountedStatus) -> u64| -> Vec<(Labels<'_>, u64)> {
            layers
                .iter()
                .zip(&paths)
                .map(|(l, p)| {
                    (
                        vec![
                            ("layer", l.status.digest.as_str()),
                            ("mountpoint", p.as_str()),
                        ],
                        f(l),
                    )
                })
                .collect()
        };
        gauge_family(
            e,
            "layer_fetched_bytes",
            "Compressed bytes of a mounted layer that are local",
            &per(&|l| l.status.fetched_bytes),
        )?;
        gauge_family(
            e,
            "layer_total_bytes",
            "Compressed bytes of a mounted layer's chunks",
            &per(&|l| l.status.total_bytes),
        )?;
        let mut states = Vec::new();
        for (l, p) in layers.iter().zip(&paths) {
            let now = l.status.state.name();
            for s in STATES {
                states.push((
                    vec![
                        ("layer", l.status.digest.as_str()),
                        ("mountpoint", p.as_str()),
                        ("state", s),
                    ],
                    u64::from(s == now),
                ));
            }
        }
        gauge_family(
            e,
            "layer_state",
            "Fetch state of a mounted layer (1 for the current state)",
            &states,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_latencies_are_exported() {
        let m = DaemonMetrics::new(None);
        m.ops().observe("prepare", "ok", Duration::from_millis(3));
        m.ops().observe("prepare", "ok", Duration::from_millis(5));
        m.ops()
            .observe("stat", "not_found", Duration::from_micros(50));
        let text = m.encode();
        assert!(
            text.contains("# TYPE starling_snapshot_operation_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "starling_snapshot_operation_duration_seconds_count{op=\"prepare\",code=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "starling_snapshot_operation_duration_seconds_bucket{le=\"0.0001\",op=\"stat\",code=\"not_found\"} 1"
            ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn lazy_layer_counters_are_exported() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cfg = config::Config {
            root: tmp.path().to_path_buf(),
            ..Default::default()
        };
        let fuse_metrics = Arc::new(fusefs::metrics::Metrics::default());
        let lazy = Arc::new(
            LazyLayers::new(
                &cfg,
                &crate::overlay::OverlayFeatures::default(),
                rt.handle().clone(),
                fuse_metrics.clone(),
            )
            .unwrap(),
        );
        fuse_metrics
            .registry
            .bytes_fetched
            .fetch_add(12345, Ordering::Relaxed);
        fuse_metrics.disk_hits.fetch_add(3, Ordering::Relaxed);
        fuse_metrics.evictions.fetch_add(2, Ordering::Relaxed);
        lazy.counters().mounted.fetch_add(4, Ordering::Relaxed);
        let text = DaemonMetrics::new(Some(lazy)).encode();
        for line in [
            "starling_fetch_bytes_total 12345",
            "starling_cache_hits_total{tier=\"disk\"} 3",
            "starling_cache_hits_total{tier=\"memory\"} 0",
            "starling_cache_evictions_total 2",
            "starling_lazy_prepares_total{outcome=\"mounted\"} 4",
            "starling_lazy_prepares_total{outcome=\"not_estargz\"} 0",
            "starling_lazy_layers_mounted 0",
            "# TYPE starling_layer_state gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
