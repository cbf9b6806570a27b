//! `starling prefetch REF`: warm the node's chunk cache for an image without a container —
//! the prioritized files (every chunk before each layer's `.prefetch.landmark`, the
//! default), the files of a recorded access profile (`--profile`), or everything
//! (`--all`) — within a byte budget, with a progress bar. Chunks go through the fetch
//! layer (verified, cached as a container's reads would cache them), so a container started
//! afterwards finds them local; the command runs next to a running daemon (see `image`).
//!
//! A profile is either a file of lines `N PATH` (`starling optimize --record-out`: layer N,
//! 1 = bottom), `sha256:<layer digest> PATH`, or `PATH` (looked up in every layer); or a
//! directory holding layer state with access logs: a daemon root (or a snapshot's `layer`
//! directory) after a lazy run with `[fuse] access_log = true`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fusefs::layer::{WarmPlan, WarmSelection};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::image::{self, human, NodeArgs};

/// Arguments of `starling prefetch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Warm the files of an access profile: a file (`N PATH`, `sha256:<layer> PATH` or
    /// `PATH` lines; `starling optimize --record-out` writes the first form) or a
    /// directory of layer state with access logs (a daemon root after a lazy run with
    /// `[fuse] access_log = true`).
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "all")]
    pub profile: Option<PathBuf>,
    /// Warm every chunk of the image.
    #[arg(long)]
    pub all: bool,
    /// At most this many compressed bytes are fetched (e.g. `200MiB`); chunks are taken
    /// in order (layers bottom first) while they fit.
    #[arg(long, value_name = "SIZE", value_parser = config::units::parse_size)]
    pub budget: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Image reference (`host/repo:tag` or `@digest`).
    pub reference: String,
}

/// Files of a profile: by layer number (1 = bottom), by layer digest, or for every layer.
#[derive(Debug, Default, PartialEq)]
struct Profile {
    by_number: HashMap<usize, Vec<Vec<u8>>>,
    by_digest: HashMap<String, Vec<Vec<u8>>>,
    any: Vec<Vec<u8>>,
}

impl Profile {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut p = Profile::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let abs = |path: &str| {
                let mut v = b"/".to_vec();
                v.extend_from_slice(path.trim_start_matches('/').as_bytes());
                v
            };
            match line.split_once(' ') {
                Some((layer, path)) if layer.starts_with("sha256:") => p
                    .by_digest
                    .entry(layer.to_string())
                    .or_default()
                    .push(abs(path)),
                Some((layer, path)) if layer.bytes().all(|b| b.is_ascii_digit()) => {
                    let i: usize = layer.parse().ok().filter(|i| *i > 0).with_context(|| {
                        format!("profile line {}: layer number {layer:?}", n + 1)
                    })?;
                    p.by_number.entry(i).or_default().push(abs(path));
                }
                _ if line.starts_with('/') => p.any.push(abs(line)),
                _ => bail!(
                    "profile line {}: {line:?} is not `N PATH`, `sha256:<layer> PATH` or `/PATH`",
                    n + 1
                ),
            }
        }
        Ok(p)
    }

    /// Reads the access logs of layer state under `dir` (`layer.json` + `access.log`,
    /// up to three levels down: `<root>/snapshots/<id>/layer`).
    fn from_state(dir: &Path) -> anyhow::Result<Self> {
        let mut p = Profile::default();
        let mut todo = vec![(dir.to_path_buf(), 0)];
        while let Some((d, depth)) = todo.pop() {
            let (state, log) = (d.join("layer.json"), d.join("access.log"));
            if state.is_file() && log.is_file() {
                let saved: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(&state).with_context(|| format!("read {}", state.display()))?,
                )
                .with_context(|| format!("parse {}", state.display()))?;
                let digest = saved["digest"]
                    .as_str()
                    .with_context(|| format!("{}: no digest", state.display()))?;
                let text =
                    std::fs::read(&log).with_context(|| format!("read {}", log.display()))?;
                let files = p.by_digest.entry(digest.to_string()).or_default();
                files.extend(
                    text.split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec),
                );
                continue;
            }
            if depth < 3 {
                if let Ok(entries) = std::fs::read_dir(&d) {
                    todo.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| (e.path(), depth + 1)),
                    );
                }
            }
        }
        if p.by_digest.is_empty() {
            bail!(
                "{} holds no layer state with an access log (run the workload lazily with \
                 `[fuse] access_log = true`, or give a profile file)",
                dir.display()
            );
        }
        Ok(p)
    }

    fn load(path: &Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            return Self::from_state(path);
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read profile {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("profile {}", path.display()))
    }

    /// The files listed for layer `number` (1 = bottom) with blob `digest`.
    fn files_of(&self, number: usize, digest: &str) -> Vec<Vec<u8>> {
        let mut files = self.by_number.get(&number).cloned().unwrap_or_default();
        files.extend(self.by_digest.get(digest).cloned().unwrap_or_default());
        files.extend(self.any.iter().cloned());
        files
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = image::load_config(&args.node, std::slice::from_ref(&args.reference))?;
    let profile = args.profile.as_deref().map(Profile::load).transpose()?;
    let rt = image::runtime()?;
    let ctx = image::context(&cfg, &rt)?;
    let image = rt.block_on(image::open_image(&ctx, &cfg, &args.reference))?;

    // Plan every layer, then cut to the budget (bottom layers first).
    let mut plans: Vec<WarmPlan> = Vec::new();
    for (layer, &number) in image.layers.iter().zip(&image.numbers) {
        let plan = match &profile {
            None if args.all => layer.warm_plan(WarmSelection::All),
            None => layer.warm_plan(WarmSelection::Landmark),
            Some(p) => {
                let files = p.files_of(number, layer.source().digest.as_ref());
                layer.warm_plan(WarmSelection::Files(&files))
            }
        };
        plans.push(plan);
    }
    let wanted: u64 = plans.iter().map(WarmPlan::bytes).sum();
    let mut left = args.budget.unwrap_or(u64::MAX);
    for plan in &mut plans {
        left -= plan.truncate_to(left);
    }
    let planned: u64 = plans.iter().map(WarmPlan::bytes).sum();

    let bar = if args.quiet || args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::with_draw_target(Some(planned), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} prefetch [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let start = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (layer, plan) in image.layers.iter().zip(&plans) {
        let digest = layer.source().digest.to_string();
        bar.set_message(short(&digest).to_string());
        let (stats, err) = rt.block_on(layer.warm(&plan.requests, |n| bar.inc(n)));
        if let Some(e) = err {
            failures.push(format!(
                "layer {digest}: {} chunks failed: {e}",
                stats.failed
            ));
        }
        rows.push(json!({
            "digest": digest,
            "fetched_chunks": stats.chunks,
            "fetched_bytes": stats.bytes,
            "failed_chunks": stats.failed,
            "already_local_chunks": plan.local_chunks,
            "already_local_bytes": plan.local_bytes,
            "no_landmark": plan.no_landmark,
            "files_not_in_layer": plan.missing_files.len(),
        }));
    }
    image::flush_cache(&cfg.cache_dir())?;
    bar.finish_and_clear();
    let fetched: u64 = rows
        .iter()
        .map(|r| r["fetched_bytes"].as_u64().unwrap_or(0))
        .sum();
    let report = json!({
        "reference": args.reference,
        "selection": match (&args.profile, args.all) {
            (Some(p), _) => format!("profile {}", p.display()),
            (None, true) => "all".to_string(),
            (None, false) => "landmark".to_string(),
        },
        "layers": rows,
        "not_estargz_layers": image.not_lazy.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        "wanted_bytes": wanted,
        "budget_left_out_bytes": wanted - planned,
        "fetched_bytes": fetched,
        "seconds": start.elapsed().as_secs_f64(),
        "failures": failures,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn print_summary(r: &serde_json::Value) {
    println!(
        "{} ({})",
        r["reference"].as_str().unwrap_or(""),
        r["selection"].as_str().unwrap_or("")
    );
    for l in r["layers"].as_array().into_iter().flatten() {
        let note = if l["no_landmark"].as_bool() == Some(true) {
            ", no prefetch landmark"
        } else {
            ""
        };
        println!(
            "  {}  fetched {} in {} chunks, {} already local{}",
            short(l["digest"].as_str().unwrap_or("")),
            human(l["fetched_bytes"].as_u64().unwrap_or(0)),
            l["fetched_chunks"],
            human(l["already_local_bytes"].as_u64().unwrap_or(0)),
            note
        );
    }
    let left = r["budget_left_out_bytes"].as_u64().unwrap_or(0);
    println!(
        "fetched {} in {:.1} s{}",
        human(r["fetched_bytes"].as_u64().unwrap_or(0)),
        r["seconds"].as_f64().unwrap_or(0.0),
        if left > 0 {
            format!(" ({} left out by the budget)", human(left))
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_name_layers_by_number_digest_or_not_at_all() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p = Profile::parse(&format!(
            "1 /usr/bin/python3\n# c\n\n{d} etc/passwd\n/bin/sh\n"
        ))
        .unwrap();
        assert_eq!(
            p.files_of(1, "x"),
            vec![b"/usr/bin/python3".to_vec(), b"/bin/sh".to_vec()]
        );
        assert_eq!(
            p.files_of(2, &d),
            vec![b"/etc/passwd".to_vec(), b"/bin/sh".to_vec()]
        );
        let e = Profile::parse("python3\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        assert!(Profile::parse("0 /x\n").is_err());
    }

    #[test]
    fn access_logs_of_layer_state_make_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("snapshots/7/layer");
        std::fs::create_dir_all(&state).unwrap();
        let d = format!("sha256:{}", "b".repeat(64));
        std::fs::write(state.join("layer.json"), format!(r#"{{"digest":"{d}"}}"#)).unwrap();
        std::fs::write(state.join("access.log"), "/bin/sh\n/etc/passwd\n").unwrap();
        let p = Profile::load(dir.path()).unwrap();
        assert_eq!(
            p.files_of(1, &d),
            vec![b"/bin/sh".to_vec(), b"/etc/passwd".to_vec()]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(Profile::load(empty.path()).is_err());
    }
}
