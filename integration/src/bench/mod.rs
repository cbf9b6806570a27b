//! The side-by-side benchmark suite behind `scripts/bench` (binary `stl-bench`): overlayfs,
//! starling and the stargz peer in one containerd, images pulled over the shaped link,
//! workloads run with `ctr`, every cell measured in the same rounds so ratios pair up.
//!
//! [`plan`] says what runs (snapshotters, variants, workloads, link profiles, options);
//! [`setup`] starts the harness stack and makes the image variants; [`link`] shapes and
//! checks the link per profile; [`starling_cli`] detects which starling subcommands work;
//! [`runner`] measures samples; [`access`] measures the file regions each workload reads
//! and [`attribution`] maps a run's requests onto them; [`micro`] the single-layer
//! micro-benchmarks; [`stats`], [`report`] and [`goals`] turn samples into tables and JSON
//! ([`format`]: how numbers are written); `chart` (feature `chart`) draws the PNGs.

pub mod access;
pub mod attribution;
mod error;
pub mod format;
pub mod goals;
mod host;
pub mod link;
pub mod micro;
pub mod plan;
pub mod report;
pub mod results;
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

use plan::{BenchOptions, Cell, LinkProfile};
use report::{Results, RunInfo, SuiteResults, VariantReport};
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
    for (k, bin) in env.starling_bins.iter().enumerate().skip(1) {
        v.insert(
            format!("starling {}", (b'A' + k as u8) as char),
            format!(
                "{} ({})",
                first_line(&bin.to_string_lossy(), &["--version"]),
                bin.display()
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
        if results.is_broad() {
            files.extend(chart::draw_profile(results, out)?);
        }
        Ok(files)
    }
    #[cfg(not(feature = "chart"))]
    {
        eprintln!("bench: built without feature `chart`: no PNG");
        Ok(files)
    }
}

/// Runs the whole benchmark; results land in `opts.out`. With several link profiles each
/// profile's results go to `opts.out/<profile>/` and a combined report to `opts.out`; the
/// results of every profile are returned, in profile order.
pub fn run_suite(opts: &BenchOptions, command: &str) -> Result<Vec<Results>, BenchError> {
    opts.validate()?;
    let t = Instant::now();
    let profiles = opts.link_profiles();
    let info = |p: &LinkProfile| RunInfo {
        started: timestamp(),
        load_start: load_average(),
        kernel: first_line("uname", &["-r"]),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rtt_ms: p.rtt_ms,
        rate_mbit: p.rate_mbit,
        runs: opts.runs,
        command: command.into(),
        suite: if opts.pairs.is_some() {
            "broad".into()
        } else {
            String::new()
        },
        profile: Some(p.clone()),
        ..Default::default()
    };
    let mut all: Vec<Results> = Vec::new();
    let mut env = BenchEnv::start(opts)?;
    let outcome = (|| -> Result<(), BenchError> {
        let versions = versions(&env);
        let cells = env.prepare_images(opts)?;
        let access = if opts.access_trace {
            env.access_reports(opts)
        } else {
            BTreeMap::new()
        };
        for (k, p) in profiles.iter().enumerate() {
            if k > 0 && opts.stop_requested() {
                setup::note(
                    &mut env.notes,
                    format!("stopped on request before link profile {}", p.name),
                );
                break;
            }
            let mut results = Results {
                info: info(p),
                ..Default::default()
            };
            results.info.versions = versions.clone();
            let out = profile_dir(opts, p);
            if k > 0 {
                env.set_profile(p)?;
            }
            results.info.link_check = match env.check_link() {
                Ok(c) => {
                    eprintln!(
                        "bench: link {}: nominal {}; measured {:.1} ms per request, {:.0} Mbit/s \
                         (one stream, {:.0} MB blob)",
                        p.name,
                        p.describe(),
                        c.request_ms,
                        c.mbit,
                        c.blob_bytes as f64 / 1e6
                    );
                    Some(c)
                }
                Err(e) => {
                    setup::note(
                        &mut env.notes,
                        format!("link check of {} failed: {e}", p.name),
                    );
                    None
                }
            };
            results.access = access
                .iter()
                .map(|(i, m)| {
                    (
                        i.clone(),
                        m.iter().map(|(w, r)| (w.clone(), r.top(15))).collect(),
                    )
                })
                .collect();
            let r = run_profile(&mut env, opts, &cells, &mut results, &out, k == 0);
            if opts.keep_fetches {
                results.fetch = env.fetch_breakdowns(&results, &access);
            }
            results.notes = env.notes.clone();
            results.info.duration_s = t.elapsed().as_secs_f64();
            results.info.load_end = load_average();
            let files = write_results(&results, &out, true)?;
            for f in files {
                eprintln!("bench: wrote {}", f.display());
            }
            all.push(results);
            r?;
        }
        Ok(())
    })();
    let runc = env.runc_state.clone();
    let notes = env.notes.clone();
    drop(env);
    if runc.exists() {
        crate::containerd::cleanup_runc(&runc);
        let _ = std::fs::remove_dir_all(&runc);
    }
    if all.is_empty() {
        // failed before the first profile ran: still leave a report saying why
        let mut results = Results {
            info: info(&profiles[0]),
            notes,
            ..Default::default()
        };
        results.info.duration_s = t.elapsed().as_secs_f64();
        results.info.load_end = load_average();
        write_results(&results, &opts.out, false)?;
    }
    if profiles.len() > 1 && !all.is_empty() {
        for f in write_suite(&all, &opts.out)? {
            eprintln!("bench: wrote {}", f.display());
        }
    }
    outcome?;
    Ok(all)
}

/// [`run_suite`] for a single link profile (the first one); its results.
pub fn run(opts: &BenchOptions, command: &str) -> Result<Results, BenchError> {
    run_suite(opts, command)?
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Setup("no link profile ran".into()))
}

/// Where a profile's results go: `out` itself for a single profile, `out/<name>` otherwise.
pub fn profile_dir(opts: &BenchOptions, p: &LinkProfile) -> PathBuf {
    if opts.link_profiles().len() > 1 {
        opts.out.join(&p.name)
    } else {
        opts.out.clone()
    }
}

/// Writes the combined report of several profiles: `results.md` (the goal tables of each
/// profile), `results.json` ([`SuiteResults`]) and `chart-<profile>.png` into `out`.
pub fn write_suite(all: &[Results], out: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(out).map_err(|source| BenchError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let suite = SuiteResults {
        profiles: all.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&suite).map_err(|e| BenchError::Setup(e.to_string()))?;
    write(&out.join("results.json"), &json)?;
    write(&out.join("results.md"), suite.markdown().as_bytes())?;
    #[allow(unused_mut)]
    let mut files = vec![out.join("results.json"), out.join("results.md")];
    #[cfg(feature = "chart")]
    for r in all {
        files.extend(chart::draw_profile(r, out)?);
    }
    Ok(files)
}

fn run_profile(
    env: &mut BenchEnv,
    opts: &BenchOptions,
    cells: &[Cell],
    results: &mut Results,
    out: &Path,
    first: bool,
) -> Result<(), BenchError> {
    results.cells = cells.to_vec();
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
    let profile = results
        .info
        .profile
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    eprintln!(
        "bench: {} round(s) over {} cell(s) on link {profile}: {}",
        opts.runs,
        cells.len(),
        cells
            .iter()
            .map(|c| c.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut partial = results.clone();
    partial.notes = env.notes.clone();
    let samples = runner::run_rounds(env, opts, cells, |s| {
        eprintln!(
            "bench: [{profile}] round {} {} {:<13} {:<24}{} {}",
            s.round + 1,
            s.image,
            s.workload,
            s.cell.label(),
            if s.baseline { " (warm)" } else { "" },
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
        let _ = write_results(&partial, out, false);
    });
    results.samples = samples;
    if opts.micro && first {
        match micro::run_micro(env, opts) {
            Ok(m) => results.micro = Some(m),
            Err(e) => setup::note(&mut env.notes, format!("micro-benchmarks failed: {e}")),
        }
    }
    Ok(())
}
