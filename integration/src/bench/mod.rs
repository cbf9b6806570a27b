//! The side-by-side benchmark suite behind `scripts/bench` (binary `stl-bench`): overlayfs,
//! starling and the stargz peer in one containerd, images pulled over the shaped link,
//! workloads run with `ctr`, every cell measured in the same rounds so ratios pair up.
//!
//! [`plan`] says what runs (snapshotters, variants, workloads, options); [`setup`] starts the
//! harness stack and makes the image variants; [`starling_cli`] detects which starling
//! subcommands work; [`runner`] measures samples; [`micro`] the single-layer
//! micro-benchmarks; [`stats`] and [`report`] turn samples into tables and JSON
//! ([`format`]: how numbers are written); `chart`
//! (feature `chart`) draws the PNG.

mod error;
pub mod format;
mod host;
pub mod micro;
pub mod plan;
pub mod report;
pub mod runner;
pub mod setup;
pub mod starling_cli;
pub mod stats;

#[cfg(feature = "chart")]
pub mod chart;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::run_ok;

use plan::BenchOptions;
use report::{Results, RunInfo, VariantReport};
use setup::BenchEnv;

pub use error::BenchError;

pub use host::{load_average, timestamp};

fn first_line(program: &str, args: &[&str]) -> String {
    run_ok(program, args, Duration::from_secs(10))
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

fn versions(env: &BenchEnv) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert(
        "containerd".into(),
        first_line("containerd", &["--version"]),
    );
    v.insert("runc".into(), first_line("runc", &["--version"]));
    v.insert("ctr-remote".into(), setup::ctr_remote_version());
    if let Some(cli) = &env.starling_cli {
        v.insert(
            "starling".into(),
            format!(
                "{} ({})",
                first_line(&cli.bin.to_string_lossy(), &["--version"]),
                cli.bin.display()
            ),
        );
    }
    v
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    std::fs::write(path, bytes).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `results.json` and `results.md` (and the charts, with feature `chart`) into `out`.
pub fn write_results(
    results: &Results,
    out: &Path,
    charts: bool,
) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(out).map_err(|source| BenchError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(results).map_err(|e| BenchError::Setup(e.to_string()))?;
    write(&out.join("results.json"), &json)?;
    write(&out.join("results.md"), results.markdown().as_bytes())?;
    let files = vec![out.join("results.json"), out.join("results.md")];
    if !charts {
        return Ok(files);
    }
    #[cfg(feature = "chart")]
    {
        let mut files = files;
        files.extend(chart::draw(results, out)?);
        Ok(files)
    }
    #[cfg(not(feature = "chart"))]
    {
        eprintln!("bench: built without feature `chart`: no PNG");
        Ok(files)
    }
}

/// Runs the whole benchmark; results land in `opts.out`.
pub fn run(opts: &BenchOptions, command: &str) -> Result<Results, BenchError> {
    opts.validate()?;
    let t = Instant::now();
    let mut results = Results {
        info: RunInfo {
            started: timestamp(),
            load_start: load_average(),
            kernel: first_line("uname", &["-r"]),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rtt_ms: opts.rtt.as_millis() as u64,
            rate_mbit: opts.rate_mbit,
            runs: opts.runs,
            command: command.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut env = BenchEnv::start(opts)?;
    let outcome = run_in(&mut env, opts, &mut results);
    results.notes = env.notes.clone();
    let runc = env.runc_state.clone();
    drop(env);
    if runc.exists() {
        crate::containerd::cleanup_runc(&runc);
        let _ = std::fs::remove_dir_all(&runc);
    }
    results.info.duration_s = t.elapsed().as_secs_f64();
    results.info.load_end = load_average();
    let files = write_results(&results, &opts.out, true)?;
    outcome?;
    for f in files {
        eprintln!("bench: wrote {}", f.display());
    }
    Ok(results)
}

fn run_in(
    env: &mut BenchEnv,
    opts: &BenchOptions,
    results: &mut Results,
) -> Result<(), BenchError> {
    results.info.versions = versions(env);
    let cells = env.prepare_images(opts)?;
    results.cells = cells.clone();
    for (image, vs) in &env.images {
        let m = results.variants.entry(image.clone()).or_default();
        for (v, info) in vs {
            m.insert(
                v.tag().into(),
                VariantReport {
                    repo_tag: info.repo_tag.clone(),
                    how: info.how.clone(),
                    build_secs: info.build_secs,
                    compressed_bytes: info.compressed_bytes(),
                    layers: info.layers.len(),
                },
            );
        }
    }
    eprintln!(
        "bench: {} round(s) over {} cell(s): {}",
        opts.runs,
        cells.len(),
        cells
            .iter()
            .map(|c| c.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = opts.out.clone();
    let mut partial = results.clone();
    partial.notes = env.notes.clone();
    let samples = runner::run_rounds(env, opts, &cells, |s| {
        eprintln!(
            "bench: round {} {} {:<13} {:<24} {}",
            s.round + 1,
            s.image,
            s.workload,
            s.cell.label(),
            if s.ok {
                format!(
                    "total {:.2} s (pull {:.2}, create {:.2}, run {:.2}), {:.1} MB, {} req",
                    s.total_s,
                    s.pull_s,
                    s.create_s,
                    s.run_s,
                    s.link_bytes as f64 / 1e6,
                    s.requests
                )
            } else {
                format!(
                    "FAILED: {}",
                    s.error
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                )
            }
        );
        partial.samples.push(s.clone());
        // keep what was measured so far if the run dies later
        let _ = write_results(&partial, &out, false);
    });
    results.samples = samples;
    if opts.micro {
        match micro::run_micro(env, opts) {
            Ok(m) => results.micro = Some(m),
            Err(e) => setup::note(&mut env.notes, format!("micro-benchmarks failed: {e}")),
        }
    }
    Ok(())
}
