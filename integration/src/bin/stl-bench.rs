//! `stl-bench`: the side-by-side benchmark driver behind `scripts/bench` (see
//! `docs/benchmarks.md`). Parses flags into [`BenchOptions`] and runs
//! [`integration::bench::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use integration::bench::plan::{BenchOptions, LinkProfile, Snapshotter, Variant};

/// Side-by-side benchmark: overlayfs vs starling vs the stargz peer over a shaped link.
#[derive(Parser, Debug)]
#[command(name = "stl-bench")]
struct Args {
    /// Smoke test: 1 run, pydeb only, print(1) only, no micro-benchmarks (flags given
    /// explicitly still apply on top).
    #[arg(long)]
    quick: bool,
    /// A predefined set: `broad` = pydeb, node, java, server, gcc, pysci, script, each with
    /// a workload that ends at a "ready" marker (plus read-all on pysci), variants orig,
    /// esgz and stl-esgz, a warm overlayfs baseline, regions-read traces and both link
    /// profiles (flags given explicitly still apply on top).
    #[arg(long, value_name = "NAME")]
    suite: Option<String>,
    /// Link profile(s): `wan` (20 ms RTT, 100 Mbit/s), `dc` (2 ms RTT, 1 Gbit/s), `both`
    /// (wan, then dc) or a list in the order to run, e.g. `dc,wan` [default: --rtt/--rate;
    /// both with --suite broad].
    #[arg(long, value_name = "wan|dc|both|LIST", conflicts_with_all = ["rtt", "rate"])]
    profile: Option<String>,
    /// Runs (rounds) per cell and workload [default: 5, 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// Images, comma-separated: pydeb, pylarge, node, java, server, gcc, pysci, script
    /// [default: pydeb,pylarge; pydeb with --quick; the broad set with --suite broad].
    #[arg(long, value_delimiter = ',')]
    images: Option<Vec<String>>,
    /// Workloads, comma-separated: print, imports, gcc, node, java, server, sci,
    /// entrypoint, read-all, warm-read-all, warm-walk [default: all that run on the
    /// images; print with --quick; each broad image's own with --suite broad].
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Snapshotters, comma-separated: overlayfs, starling, stargz [default: all three].
    #[arg(long, value_delimiter = ',')]
    snapshotters: Option<Vec<String>>,
    /// Restrict image variants: orig, esgz, esgz-opt, stl-esgz, stl-opt [default: each
    /// snapshotter's own].
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<String>>,
    /// Shaped link round-trip time in milliseconds [default: 20].
    #[arg(long)]
    rtt: Option<u64>,
    /// Shaped link rate in Mbit/s [default: 100].
    #[arg(long)]
    rate: Option<u32>,
    /// Results directory [default: results/<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the micro-benchmarks.
    #[arg(long)]
    no_micro: bool,
    /// Run the micro-benchmarks even with --quick.
    #[arg(long)]
    micro: bool,
    /// `ctr-remote image optimize --period` in seconds.
    #[arg(long, default_value_t = 3)]
    optimize_period: u32,
    /// Compare starling binaries in the same rounds (A/B): comma-separated paths. Every
    /// starling cell runs once per binary (the daemon restarted with it; `starling rpull`
    /// of the same binary); the first also replaces STARLING_BIN and makes the
    /// `stl-esgz` images. The report adds a table of each later binary against the first.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    starling_bins: Option<Vec<PathBuf>>,
    /// Only re-render results.md and the charts of an earlier run's results.json in DIR.
    #[arg(long, value_name = "DIR")]
    render: Option<PathBuf>,
}

fn options(a: Args) -> anyhow::Result<BenchOptions> {
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("results").join(integration::bench::timestamp()));
    let mut o = match (a.suite.as_deref(), a.quick) {
        (Some("broad"), false) => BenchOptions::broad(out),
        (Some("broad"), true) => BenchOptions {
            runs: 1,
            ..BenchOptions::broad(out)
        },
        (Some(other), _) => anyhow::bail!("unknown suite {other:?} (expected broad)"),
        (None, true) => BenchOptions::quick(out),
        (None, false) => BenchOptions::full(out),
    };
    if let Some(r) = a.runs {
        o.runs = r;
    }
    if let Some(i) = a.images {
        o.images = i;
    }
    if let Some(w) = a.workloads {
        o.workloads = w;
    }
    if let Some(s) = a.snapshotters {
        o.snapshotters = s
            .iter()
            .map(|x| Snapshotter::parse(x))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = a.variants {
        o.variants = Some(
            v.iter()
                .map(|x| Variant::parse(x))
                .collect::<Result<_, _>>()?,
        );
    }
    if a.rtt.is_some() || a.rate.is_some() {
        o.rtt = Duration::from_millis(a.rtt.unwrap_or(20));
        o.rate_mbit = a.rate.unwrap_or(100);
        o.profiles.clear();
    }
    if let Some(p) = a.profile {
        o.profiles = LinkProfile::parse_list(&p)?;
        o.rtt = Duration::from_millis(o.profiles[0].rtt_ms);
        o.rate_mbit = o.profiles[0].rate_mbit;
    }
    o.optimize_period = a.optimize_period;
    if let Some(b) = a.starling_bins {
        o.starling_bins = b
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
    }
    if a.no_micro {
        o.micro = false;
    }
    if a.micro {
        o.micro = true;
    }
    o.validate()?;
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let args = Args::parse();
    if let Some(dir) = &args.render {
        let path = dir.join("results.json");
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        if let Ok(suite) =
            serde_json::from_slice::<integration::bench::report::SuiteResults>(&bytes)
        {
            for f in integration::bench::write_suite(&suite.profiles, dir)? {
                println!("wrote {}", f.display());
            }
            return Ok(());
        }
        let results: integration::bench::report::Results =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
        for f in integration::bench::write_results(&results, dir, true)? {
            println!("wrote {}", f.display());
        }
        return Ok(());
    }
    let opts = options(args)?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the benchmark needs root (containerd, mounts, network namespaces)");
    }
    if let Some(first) = opts.starling_bins.first() {
        // the harness starts the daemon and the CLI from STARLING_BIN
        std::env::set_var("STARLING_BIN", first);
    }
    let all = integration::bench::run_suite(&opts, &format!("scripts/bench {command}"))
        .context("benchmark failed")?;
    if all.len() > 1 {
        let suite = integration::bench::report::SuiteResults { profiles: all };
        println!("{}", suite.markdown());
    } else if let Some(r) = all.first() {
        println!("{}", r.markdown());
    }
    println!("results in {}", opts.out.display());
    Ok(())
}
