//! What a pull reports while it runs ([`Event`]s to a [`Progress`] sink) and when it is done
//! ([`PullReport`]). Rendering (bars on a terminal, plain lines otherwise) is the binary's.

use std::fmt;
use std::time::Duration;

/// How one layer got into the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// The snapshotter mounted it lazily (a remote snapshot: Prepare answered AlreadyExists
    /// and the snapshot carries `containerd.io/snapshot/remote`).
    Lazy,
    /// The snapshotter prepared a normal snapshot: the blob was put into the content store
    /// (`downloaded` bytes; 0 if it was there already) and applied by containerd.
    Applied {
        /// Bytes fetched from the registry for it.
        downloaded: u64,
    },
    /// The layer's snapshot (its chain ID) existed already; nothing was done.
    Present {
        /// Whether that snapshot is a remote (lazy) one.
        remote: bool,
    },
}

impl fmt::Display for LayerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerOutcome::Lazy => write!(f, "lazy (mounted remotely)"),
            LayerOutcome::Applied { downloaded: 0 } => {
                write!(f, "applied (blob already in the content store)")
            }
            LayerOutcome::Applied { downloaded } => {
                write!(f, "fetched {} and applied", human_bytes(*downloaded))
            }
            LayerOutcome::Present { remote: true } => write!(f, "already present (lazy)"),
            LayerOutcome::Present { remote: false } => write!(f, "already present"),
        }
    }
}

/// A layer as the pull sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Compressed digest.
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// The chain ID it is committed as.
    pub chain_id: String,
    /// Whether its descriptor carries an eStargz TOC digest annotation.
    pub estargz: bool,
}

/// Something that happened during a pull. Layer indexes are 0-based.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The image was resolved.
    Resolved {
        /// The image name.
        image: &'a str,
        /// The platform manifest's digest.
        manifest: &'a str,
        /// Its layers, bottom first.
        layers: &'a [LayerSummary],
    },
    /// Bytes of a layer blob were written to the content store (also from downloads that
    /// run ahead of the layer's turn).
    Download {
        /// Which layer.
        index: usize,
        /// Bytes acknowledged so far.
        done: u64,
        /// Blob size.
        total: u64,
    },
    /// containerd is applying the layer.
    Applying {
        /// Which layer.
        index: usize,
    },
    /// The layer is done.
    LayerDone {
        /// Which layer.
        index: usize,
        /// How.
        outcome: LayerOutcome,
    },
}

/// Receives [`Event`]s (from several tasks: must be thread-safe).
pub trait Progress: Send + Sync + 'static {
    /// Called for each event.
    fn event(&self, event: Event<'_>);
}

/// A sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: Event<'_>) {}
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image name (as given).
    pub image: String,
    /// Digest the image record points at (index or manifest).
    pub target: String,
    /// The platform manifest's digest.
    pub manifest: String,
    /// The layers, bottom first, with what happened to each.
    pub layers: Vec<(LayerSummary, LayerOutcome)>,
    /// Wall time of the pull.
    pub elapsed: Duration,
}

impl PullReport {
    /// The top layer's chain ID (the snapshot a container is prepared on).
    pub fn chain_id(&self) -> &str {
        self.layers
            .last()
            .map(|(l, _)| l.chain_id.as_str())
            .unwrap_or("")
    }

    /// Layers mounted lazily by this pull.
    pub fn lazy(&self) -> usize {
        self.count(|o| matches!(o, LayerOutcome::Lazy))
    }

    /// Layers applied by this pull.
    pub fn applied(&self) -> usize {
        self.count(|o| matches!(o, LayerOutcome::Applied { .. }))
    }

    /// Layers that were there already.
    pub fn present(&self) -> usize {
        self.count(|o| matches!(o, LayerOutcome::Present { .. }))
    }

    /// Bytes fetched for applied layers.
    pub fn downloaded(&self) -> u64 {
        self.layers
            .iter()
            .map(|(_, o)| match o {
                LayerOutcome::Applied { downloaded } => *downloaded,
                _ => 0,
            })
            .sum()
    }

    fn count(&self, f: impl Fn(&LayerOutcome) -> bool) -> usize {
        self.layers.iter().filter(|(_, o)| f(o)).count()
    }
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} layer{}: {} lazy, {} applied",
            self.image,
            short(&self.target),
            self.layers.len(),
            if self.layers.len() == 1 { "" } else { "s" },
            self.lazy(),
            self.applied(),
        )?;
        if self.downloaded() > 0 {
            write!(f, " ({} fetched)", human_bytes(self.downloaded()))?;
        }
        write!(
            f,
            ", {} already present; {:.2}s",
            self.present(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// `sha256:0123456789ab` (12 hex digits) for display.
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map(|i| i + 13).unwrap_or(12);
    digest.get(..end).unwrap_or(digest)
}

/// `1.5 MiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(c: char) -> LayerSummary {
        LayerSummary {
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size: 10,
            chain_id: format!("sha256:{}", "9".repeat(64)),
            estargz: true,
        }
    }

    #[test]
    fn summary_counts_outcomes() {
        let r = PullReport {
            image: "reg/app:1".into(),
            target: format!("sha256:{}", "f".repeat(64)),
            manifest: String::new(),
            layers: vec![
                (layer('a'), LayerOutcome::Lazy),
                (
                    layer('b'),
                    LayerOutcome::Applied {
                        downloaded: 3 << 20,
                    },
                ),
                (layer('c'), LayerOutcome::Present { remote: true }),
            ],
            elapsed: Duration::from_millis(1500),
        };
        assert_eq!((r.lazy(), r.applied(), r.present()), (1, 1, 1));
        assert_eq!(r.chain_id(), layer('c').chain_id);
        assert_eq!(
            r.to_string(),
            "reg/app:1 (sha256:ffffffffffff): 3 layers: 1 lazy, 1 applied (3.0 MiB fetched), \
             1 already present; 1.50s"
        );
    }

    #[test]
    fn sizes_and_digests_for_humans() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
