//! What a benchmark run measures: the snapshotters, image variants and workloads, the
//! options that select them, and the cells (image × variant × snapshotter) each workload
//! runs on, in the per-round interleaved order.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BenchError;
use crate::shaped::ShapedOptions;

/// A snapshotter column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Snapshotter {
    /// containerd's built-in overlayfs snapshotter: full pull and unpack.
    Overlayfs,
    /// starling (`starling daemon`, proxy plugin named `starling`).
    Starling,
    /// The reference stargz snapshotter (stargz-mini), proxy plugin named `stargz`.
    Stargz,
}

impl Snapshotter {
    /// All, in column order.
    pub const ALL: [Snapshotter; 3] = [
        Snapshotter::Overlayfs,
        Snapshotter::Starling,
        Snapshotter::Stargz,
    ];

    /// Its name in containerd (`--snapshotter NAME`) and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::Starling => "starling",
            Snapshotter::Stargz => "stargz",
        }
    }

    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::Starling => "starling",
            Snapshotter::Stargz => "stargz peer",
        }
    }

    /// True for the lazy-pulling ones (a daemon to restart, RSS to read).
    pub fn is_lazy(self) -> bool {
        self != Snapshotter::Overlayfs
    }

    /// Parses a name (`stargz-peer` and `peer` are accepted for the peer).
    pub fn parse(s: &str) -> Result<Snapshotter, BenchError> {
        match s {
            "overlayfs" | "overlay" => Ok(Snapshotter::Overlayfs),
            "starling" => Ok(Snapshotter::Starling),
            "stargz" | "stargz-peer" | "peer" => Ok(Snapshotter::Stargz),
            _ => Err(BenchError::Option(format!(
                "unknown snapshotter {s:?} (expected overlayfs, starling or stargz)"
            ))),
        }
    }
}

impl fmt::Display for Snapshotter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An image variant (one tag per variant in the benchmark registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Variant {
    /// The original gzip image.
    #[serde(rename = "orig")]
    Orig,
    /// eStargz by `ctr-remote image convert --estargz --oci`.
    #[serde(rename = "esgz")]
    Esgz,
    /// Optimized eStargz by `ctr-remote image optimize --oci`.
    #[serde(rename = "esgz-opt")]
    EsgzOpt,
    /// eStargz by `starling convert`.
    #[serde(rename = "stl-esgz")]
    StlEsgz,
    /// Optimized eStargz by `starling optimize`.
    #[serde(rename = "stl-opt")]
    StlOpt,
}

impl Variant {
    /// All, in row order.
    pub const ALL: [Variant; 5] = [
        Variant::Orig,
        Variant::Esgz,
        Variant::EsgzOpt,
        Variant::StlEsgz,
        Variant::StlOpt,
    ];

    /// Registry tag.
    pub fn tag(self) -> &'static str {
        match self {
            Variant::Orig => "orig",
            Variant::Esgz => "esgz",
            Variant::EsgzOpt => "esgz-opt",
            Variant::StlEsgz => "stl-esgz",
            Variant::StlOpt => "stl-opt",
        }
    }

    /// What it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Orig => "original gzip",
            Variant::Esgz => "eStargz (ctr-remote convert)",
            Variant::EsgzOpt => "eStargz optimized (ctr-remote optimize)",
            Variant::StlEsgz => "eStargz (starling convert)",
            Variant::StlOpt => "eStargz optimized (starling optimize)",
        }
    }

    /// The ctr-remote variant a starling-made one is compared with (itself otherwise).
    pub fn counterpart(self) -> Variant {
        match self {
            Variant::StlEsgz => Variant::Esgz,
            Variant::StlOpt => Variant::EsgzOpt,
            v => v,
        }
    }

    /// Parses a tag.
    pub fn parse(s: &str) -> Result<Variant, BenchError> {
        Variant::ALL
            .into_iter()
            .find(|v| v.tag() == s)
            .ok_or_else(|| {
                BenchError::Option(format!(
                    "unknown variant {s:?} (expected one of orig, esgz, esgz-opt, stl-esgz, stl-opt)"
                ))
            })
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// A command run in a container: `INTERPRETER /.stl-bench/NAME` with the script
/// bind-mounted read-only (`ctr containers create` in containerd 1.6 reorders arguments, so
/// a command line with `-c` cannot be passed to it), or the image's own entrypoint and
/// command when `interpreter` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Short name (`--workloads`), also the script's file name.
    pub name: &'static str,
    /// `python3`, `sh`, `node`...; empty: run the image's default entrypoint + command.
    pub interpreter: &'static str,
    /// The script (unused when `interpreter` is empty).
    pub script: &'static str,
    /// Text its stdout must contain (checks the run really did its work).
    pub expect: &'static str,
    /// Only on these images (`None`: all).
    pub images: Option<&'static [&'static str]>,
    /// A warm workload runs right after this cold one, image still present, caches warm.
    pub after: Option<&'static str>,
    /// For the report.
    pub describe: &'static str,
}

/// Where the workload scripts are mounted in the container.
pub const SCRIPT_DIR: &str = "/.stl-bench";

const READ_ALL: &str = "tar -cf - /usr 2>/dev/null | cat >/dev/null\necho read-all-done\n";

/// Images with python3 (the python workloads run only there).
const PYTHON_IMAGES: &[&str] = &["pydeb", "pylarge", "pysci"];

/// The `server` workload: postgres started the way the image's command does, ready when
/// `pg_isready` gets an answer on its socket (checked every 10 ms).
const SERVER: &str = r#"PG=/usr/lib/postgresql/15/bin
"$PG/postgres" -D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf -c unix_socket_directories=/tmp -c external_pid_file= -c listen_addresses= >/tmp/pg.log 2>&1 &
i=0
until "$PG/pg_isready" -q -h /tmp; do
  i=$((i + 1))
  if [ "$i" -gt 6000 ]; then cat /tmp/pg.log; exit 1; fi
  sleep 0.01
done
echo server-ready
"#;

/// The `sci` workload: a heavy import and a tiny computation.
const SCI: &str =
    "import numpy as np\nimport pandas as pd\nfrom sklearn.linear_model import LinearRegression\n\
x = np.arange(20.0).reshape(-1, 1)\ny = 3.0 * x.ravel() + 1.0\nm = LinearRegression().fit(x, y)\n\
print('sci-ready', round(float(m.coef_[0]), 3), pd.Series(y).mean())\n";

/// Every workload, in row order. Each prints a marker at its end, so "first output" is
/// defined for all of them and the output can be checked.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "print",
        interpreter: "python3",
        script: "print(1)\n",
        expect: "1",
        images: Some(PYTHON_IMAGES),
        after: None,
        describe: "python3 -c 'print(1)'",
    },
    Workload {
        name: "imports",
        interpreter: "python3",
        script: "import json, sqlite3, asyncio, email, http.client, xml.etree.ElementTree\nprint('imported')\n",
        expect: "imported",
        images: Some(PYTHON_IMAGES),
        after: None,
        describe: "python3 -c 'import json, sqlite3, asyncio, email, http.client, xml.etree.ElementTree'",
    },
    Workload {
        name: "gcc",
        interpreter: "sh",
        script: "set -e\nprintf '#include <stdio.h>\\nint main(void) { puts(\"hello gcc\"); return 0; }\\n' >/tmp/h.c\ngcc -O0 -o /tmp/h /tmp/h.c\n/tmp/h\n",
        expect: "hello gcc",
        images: Some(&["pylarge", "gcc"]),
        after: None,
        describe: "gcc hello world (compile + run)",
    },
    Workload {
        name: "node",
        interpreter: "node",
        script: "console.log('node-ready', 1);\n",
        expect: "node-ready",
        images: Some(&["node"]),
        after: None,
        describe: "node -e 'console.log(1)'",
    },
    Workload {
        name: "java",
        interpreter: "",
        script: "",
        expect: "java-ready",
        images: Some(&["java"]),
        after: None,
        describe: "the image's command: java -cp /opt/hello Hello (JVM start, a lambda, prints)",
    },
    Workload {
        name: "server",
        interpreter: "sh",
        script: SERVER,
        expect: "server-ready",
        images: Some(&["server"]),
        after: None,
        describe: "postgres start until pg_isready gets an answer on its socket",
    },
    Workload {
        name: "sci",
        interpreter: "python3",
        script: SCI,
        expect: "sci-ready",
        images: Some(&["pysci"]),
        after: None,
        describe: "import numpy, pandas, sklearn.linear_model; fit a 20-point regression",
    },
    Workload {
        name: "entrypoint",
        interpreter: "",
        script: "",
        expect: "script-ready",
        images: Some(&["script"]),
        after: None,
        describe: "the image's entrypoint: a shell script (sed, awk, seq, date) that execs sqlite3",
    },
    Workload {
        name: "read-all",
        interpreter: "sh",
        script: READ_ALL,
        expect: "read-all-done",
        images: None,
        after: None,
        describe: "read everything: tar -cf - /usr | cat >/dev/null",
    },
    Workload {
        name: "warm-read-all",
        interpreter: "sh",
        script: READ_ALL,
        expect: "read-all-done",
        images: None,
        after: Some("read-all"),
        describe: "warm read everything (second run, image and cache kept)",
    },
    Workload {
        name: "warm-walk",
        interpreter: "sh",
        script: "find / -xdev -printf '%p %s %m\\n' >/dev/null\necho walk-done\n",
        expect: "walk-done",
        images: None,
        after: Some("read-all"),
        describe: "warm metadata walk: find / -xdev -printf '%p %s %m\\n'",
    },
];

/// Looks a workload up by name.
pub fn workload(name: &str) -> Result<&'static Workload, BenchError> {
    WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
        BenchError::Option(format!(
            "unknown workload {name:?} (expected one of {})",
            WORKLOADS
                .iter()
                .map(|w| w.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

impl Workload {
    /// The container's command (empty: the image's default entrypoint and command).
    pub fn command(&self) -> Vec<String> {
        if self.uses_image_command() {
            return Vec::new();
        }
        vec![
            self.interpreter.to_string(),
            format!("{SCRIPT_DIR}/{}", self.name),
        ]
    }

    /// True when the container runs the image's own entrypoint and command.
    pub fn uses_image_command(&self) -> bool {
        self.interpreter.is_empty()
    }

    /// True when it runs on `image`.
    pub fn runs_on(&self, image: &str) -> bool {
        self.images.is_none_or(|l| l.contains(&image))
    }
}

/// The test images the benchmark knows.
pub const IMAGES: &[&str] = &[
    "pydeb", "pylarge", "node", "java", "server", "gcc", "pysci", "script",
];

/// The broad set (`--suite broad`): each image with the workloads it runs, each ending at
/// a "ready" marker; read-all on the large image.
pub const BROAD_SET: &[(&str, &str)] = &[
    ("pydeb", "print"),
    ("node", "node"),
    ("java", "java"),
    ("server", "server"),
    ("gcc", "gcc"),
    ("pysci", "sci"),
    ("pysci", "read-all"),
    ("script", "entrypoint"),
];

/// A named link shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProfile {
    /// `wan`, `dc` or `custom`.
    pub name: String,
    /// Round-trip time in ms (added by the delay proxy).
    pub rtt_ms: u64,
    /// Rate in Mbit/s (tbf on both veth ends).
    pub rate_mbit: u32,
    /// tbf burst (must hold at least rate / HZ; larger for fast links).
    pub burst: String,
}

impl LinkProfile {
    /// Today's default: 20 ms RTT, 100 Mbit/s.
    pub fn wan() -> LinkProfile {
        LinkProfile {
            name: "wan".into(),
            rtt_ms: 20,
            rate_mbit: 100,
            burst: "128kb".into(),
        }
    }

    /// An in-region cloud link: 2 ms RTT, 1 Gbit/s.
    pub fn dc() -> LinkProfile {
        LinkProfile {
            name: "dc".into(),
            rtt_ms: 2,
            rate_mbit: 1000,
            burst: "1mb".into(),
        }
    }

    /// `--rtt` / `--rate` given by hand (burst as wan's up to 200 Mbit/s, scaled above).
    pub fn custom(rtt_ms: u64, rate_mbit: u32) -> LinkProfile {
        if (rtt_ms, rate_mbit) == (20, 100) {
            return LinkProfile::wan();
        }
        if (rtt_ms, rate_mbit) == (2, 1000) {
            return LinkProfile::dc();
        }
        let kb = (rate_mbit as u64 * 128 / 100).max(128);
        LinkProfile {
            name: "custom".into(),
            rtt_ms,
            rate_mbit,
            burst: format!("{kb}kb"),
        }
    }

    /// `--profile wan|dc|both`, or a comma-separated list in the order to run (`dc,wan`).
    pub fn parse_list(s: &str) -> Result<Vec<LinkProfile>, BenchError> {
        let mut out: Vec<LinkProfile> = Vec::new();
        for name in s.split(',').map(str::trim) {
            let add = match name {
                "wan" => vec![LinkProfile::wan()],
                "dc" => vec![LinkProfile::dc()],
                "both" => vec![LinkProfile::wan(), LinkProfile::dc()],
                _ => {
                    return Err(BenchError::Option(format!(
                        "unknown link profile {name:?} (expected wan, dc, both or a list such as dc,wan)"
                    )))
                }
            };
            for p in add {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// `20 ms RTT, 100 Mbit/s`.
    pub fn describe(&self) -> String {
        format!("{} ms RTT, {} Mbit/s", self.rtt_ms, self.rate_mbit)
    }
}

/// Everything that selects what a run does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rounds (samples per cell and workload).
    pub runs: usize,
    /// Images (`pydeb`, `pylarge`).
    pub images: Vec<String>,
    /// Workload names.
    pub workloads: Vec<String>,
    /// Snapshotter columns wanted (those that cannot run here are dropped with a note).
    pub snapshotters: Vec<Snapshotter>,
    /// Restrict image variants (`None`: each snapshotter's defaults).
    pub variants: Option<Vec<Variant>>,
    /// Shaped link round-trip time (of the first profile; see `profiles`).
    pub rtt: Duration,
    /// Shaped link rate in Mbit/s (of the first profile).
    pub rate_mbit: u32,
    /// Link profiles to run one after the other (empty: one made of `rtt` and `rate_mbit`).
    pub profiles: Vec<LinkProfile>,
    /// Only these (image, workload) pairs run (`--suite broad`); `None`: every selected
    /// workload on every selected image it runs on.
    pub pairs: Option<Vec<(String, String)>>,
    /// Also run each cold workload warm on overlayfs (image pulled and unpacked, a fresh
    /// container) as the baseline of "time lazy pulling adds".
    pub warm_baseline: bool,
    /// Measure the file regions each workload reads (access trace on a local copy).
    pub access_trace: bool,
    /// Keep the HTTP requests (with ranges) of lazy samples, to attribute bytes to files.
    pub keep_fetches: bool,
    /// Results directory (`results/<timestamp>`).
    pub out: PathBuf,
    /// Run the micro-benchmarks (single layer mounts, daemon RSS with N layers).
    pub micro: bool,
    /// `ctr-remote image optimize --period` seconds.
    pub optimize_period: u32,
    /// Starling binaries to compare in the same rounds (`--starling-bins A,B`): every
    /// starling cell runs once per binary, the daemon restarted with that binary (images,
    /// `starling convert` and the rest come from the first). Empty: `STARLING_BIN` or the
    /// built one.
    pub starling_bins: Vec<PathBuf>,
}

impl BenchOptions {
    /// The full default run into `out`.
    pub fn full(out: PathBuf) -> BenchOptions {
        BenchOptions {
            runs: 5,
            images: IMAGES.iter().map(|s| s.to_string()).collect(),
            workloads: WORKLOADS.iter().map(|w| w.name.to_string()).collect(),
            snapshotters: Snapshotter::ALL.to_vec(),
            variants: None,
            rtt: Duration::from_millis(20),
            rate_mbit: 100,
            profiles: Vec::new(),
            pairs: None,
            warm_baseline: false,
            access_trace: false,
            keep_fetches: false,
            out,
            micro: true,
            optimize_period: 3,
            starling_bins: Vec::new(),
        }
    }

    /// `--suite broad`: the broad set ([`BROAD_SET`]) in variants orig (overlayfs), esgz
    /// (ctr-remote; starling and the peer) and stl-esgz (starling convert), with the warm
    /// overlayfs baseline, access traces and request logs, over both link profiles.
    pub fn broad(out: PathBuf) -> BenchOptions {
        let mut images: Vec<String> = Vec::new();
        let mut workloads: Vec<String> = Vec::new();
        for (i, w) in BROAD_SET {
            if !images.iter().any(|x| x == i) {
                images.push(i.to_string());
            }
            if !workloads.iter().any(|x| x == w) {
                workloads.push(w.to_string());
            }
        }
        BenchOptions {
            images,
            workloads,
            variants: Some(vec![Variant::Orig, Variant::Esgz, Variant::StlEsgz]),
            profiles: vec![LinkProfile::wan(), LinkProfile::dc()],
            pairs: Some(
                BROAD_SET
                    .iter()
                    .map(|(i, w)| (i.to_string(), w.to_string()))
                    .collect(),
            ),
            warm_baseline: true,
            access_trace: true,
            keep_fetches: true,
            micro: false,
            ..BenchOptions::full(out)
        }
    }

    /// A file whose existence ends the run early and cleanly: the image under way finishes
    /// its cells, then no further image, round or link profile starts; what was measured
    /// is reported as usual (`touch <out>/STOP`).
    pub fn stop_file(&self) -> PathBuf {
        self.out.join("STOP")
    }

    /// True once [`BenchOptions::stop_file`] exists.
    pub fn stop_requested(&self) -> bool {
        self.stop_file().exists()
    }

    /// The profiles to run (`profiles`, or one made of `rtt` and `rate_mbit`).
    pub fn link_profiles(&self) -> Vec<LinkProfile> {
        if self.profiles.is_empty() {
            vec![LinkProfile::custom(
                self.rtt.as_millis() as u64,
                self.rate_mbit,
            )]
        } else {
            self.profiles.clone()
        }
    }

    /// `--quick`: one run, pydeb, print(1), no micro-benchmarks.
    pub fn quick(out: PathBuf) -> BenchOptions {
        BenchOptions {
            runs: 1,
            images: vec!["pydeb".into()],
            workloads: vec!["print".into()],
            micro: false,
            ..BenchOptions::full(out)
        }
    }

    /// Checks names and numbers.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.runs == 0 {
            return Err(BenchError::Option("--runs must be at least 1".into()));
        }
        if self.runs > 1000 {
            return Err(BenchError::Option("--runs is at most 1000".into()));
        }
        for i in &self.images {
            if !IMAGES.contains(&i.as_str()) {
                return Err(BenchError::Option(format!(
                    "unknown image {i:?} (expected one of {})",
                    IMAGES.join(", ")
                )));
            }
        }
        for w in &self.workloads {
            workload(w)?;
        }
        if self.images.is_empty() || self.workloads.is_empty() || self.snapshotters.is_empty() {
            return Err(BenchError::Option(
                "--images, --workloads and --snapshotters must not be empty".into(),
            ));
        }
        if self.rate_mbit == 0 || self.link_profiles().iter().any(|p| p.rate_mbit == 0) {
            return Err(BenchError::Option("--rate must be positive".into()));
        }
        if self.starling_bins.len() > 8 {
            return Err(BenchError::Option(
                "--starling-bins takes at most 8 binaries".into(),
            ));
        }
        for b in &self.starling_bins {
            if !b.is_file() {
                return Err(BenchError::Option(format!(
                    "--starling-bins: {} is not a file (give paths of built starling binaries)",
                    b.display()
                )));
            }
        }
        if !self.starling_bins.is_empty() && !self.snapshotters.contains(&Snapshotter::Starling) {
            return Err(BenchError::Option(
                "--starling-bins needs the starling snapshotter in --snapshotters".into(),
            ));
        }
        for i in &self.images {
            if self.workloads_for(i).is_empty() {
                return Err(BenchError::Option(format!(
                    "no selected workload runs on image {i} (workloads: {}; see --help)",
                    self.workloads.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The selected workloads that run on `image`, in row order.
    pub fn workloads_for(&self, image: &str) -> Vec<&'static Workload> {
        WORKLOADS
            .iter()
            .filter(|w| self.workloads.iter().any(|n| n == w.name) && w.runs_on(image))
            .filter(|w| self.pair_selected(image, w))
            .collect()
    }

    /// True unless `pairs` leaves (image, w) out (a warm workload goes with its parent).
    fn pair_selected(&self, image: &str, w: &Workload) -> bool {
        let Some(pairs) = &self.pairs else {
            return true;
        };
        let name = w.after.unwrap_or(w.name);
        pairs
            .iter()
            .any(|(i, n)| i == image && (n == w.name || n == name))
    }

    /// Cold workloads to execute on `image`: the selected ones plus the parents of selected
    /// warm ones (a parent that is not selected runs but is not reported).
    pub fn cold_steps(&self, image: &str) -> Vec<(&'static Workload, bool)> {
        let sel = self.workloads_for(image);
        WORKLOADS
            .iter()
            .filter(|w| w.after.is_none() && w.runs_on(image) && self.pair_selected(image, w))
            .filter_map(|w| {
                let selected = sel.iter().any(|s| s.name == w.name);
                let parent = sel.iter().any(|s| s.after == Some(w.name));
                (selected || parent).then_some((w, selected))
            })
            .collect()
    }
}

/// What the tools here can do, decided at setup.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Snapshotters that run (wanted and available).
    pub snapshotters: Vec<Snapshotter>,
    /// `starling convert` works.
    pub starling_convert: bool,
    /// `starling optimize` works.
    pub starling_optimize: bool,
}

/// One column of results: an image variant on a snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    /// Snapshotter.
    pub snapshotter: Snapshotter,
    /// Variant.
    pub variant: Variant,
    /// Which starling binary runs the daemon (`--starling-bins`: 0 = the first, A; 1 = B);
    /// always 0 for the other snapshotters and in runs of one binary.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bin: u8,
}

fn is_zero(b: &u8) -> bool {
    *b == 0
}

impl Cell {
    /// `variant` on `snapshotter` (the first starling binary).
    pub const fn new(snapshotter: Snapshotter, variant: Variant) -> Cell {
        Cell {
            snapshotter,
            variant,
            bin: 0,
        }
    }

    /// The same cell run by starling binary `bin`.
    pub const fn with_bin(self, bin: u8) -> Cell {
        Cell { bin, ..self }
    }

    /// The binary's letter in labels: A for the first, B for the second...
    pub fn bin_letter(&self) -> char {
        (b'A' + self.bin) as char
    }

    /// `stargz peer / esgz-opt`; `starling B / esgz` for a second starling binary.
    pub fn label(&self) -> String {
        format!("{} / {}", self.column(), self.variant.tag())
    }

    /// The snapshotter's label, with the binary's letter from the second starling binary
    /// on (`starling B`).
    pub fn column(&self) -> String {
        if self.bin == 0 {
            self.snapshotter.label().to_string()
        } else {
            format!("{} {}", self.snapshotter.label(), self.bin_letter())
        }
    }
}

/// The default variants each snapshotter runs.
pub fn default_variants(s: Snapshotter, avail: &Availability) -> Vec<Variant> {
    match s {
        Snapshotter::Overlayfs => vec![Variant::Orig],
        Snapshotter::Stargz => vec![Variant::Esgz, Variant::EsgzOpt],
        Snapshotter::Starling => {
            let mut v = vec![Variant::Esgz, Variant::EsgzOpt];
            if avail.starling_convert {
                v.push(Variant::StlEsgz);
            }
            if avail.starling_optimize {
                v.push(Variant::StlOpt);
            }
            v
        }
    }
}

/// The cells of a run, in column order.
pub fn cells(opts: &BenchOptions, avail: &Availability) -> Vec<Cell> {
    let mut out = Vec::new();
    for s in Snapshotter::ALL {
        if !avail.snapshotters.contains(&s) {
            continue;
        }
        let bins = match s {
            Snapshotter::Starling => opts.starling_bins.len().max(1),
            _ => 1,
        };
        for v in default_variants(s, avail) {
            if opts.variants.as_ref().is_none_or(|l| l.contains(&v)) {
                for b in 0..bins {
                    out.push(Cell::new(s, v).with_bin(b as u8));
                }
            }
        }
    }
    out
}

/// The variants that must be built (every variant some cell uses).
pub fn needed_variants(cells: &[Cell]) -> Vec<Variant> {
    let mut v: Vec<Variant> = cells.iter().map(|c| c.variant).collect();
    v.sort();
    v.dedup();
    v
}

/// `cells` rotated by `round`, so no snapshotter always goes first.
pub fn round_order(cells: &[Cell], round: usize) -> Vec<Cell> {
    if cells.is_empty() {
        return Vec::new();
    }
    let k = round % cells.len();
    cells[k..]
        .iter()
        .chain(cells[..k].iter())
        .copied()
        .collect()
}

/// Harness options of the shaped link for `p`.
pub fn shaped_options(p: &LinkProfile) -> ShapedOptions {
    ShapedOptions {
        rtt: Duration::from_millis(p.rtt_ms),
        rate_mbit: p.rate_mbit,
        burst: p.burst.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avail(s: &[Snapshotter], convert: bool) -> Availability {
        Availability {
            snapshotters: s.to_vec(),
            starling_convert: convert,
            starling_optimize: false,
        }
    }

    #[test]
    fn cells_follow_availability_and_variant_filter() {
        let o = BenchOptions::full("/tmp/x".into());
        let a = avail(&[Snapshotter::Overlayfs, Snapshotter::Stargz], false);
        let c = cells(&o, &a);
        let l: Vec<String> = c.iter().map(Cell::label).collect();
        assert_eq!(
            l,
            [
                "overlayfs / orig",
                "stargz peer / esgz",
                "stargz peer / esgz-opt"
            ]
        );
        let a = avail(&Snapshotter::ALL, true);
        let c = cells(&o, &a);
        assert!(c.contains(&Cell::new(Snapshotter::Starling, Variant::StlEsgz)));
        assert!(!c.iter().any(|c| c.variant == Variant::StlOpt));
        let mut o2 = o.clone();
        o2.variants = Some(vec![Variant::Esgz]);
        let c = cells(&o2, &a);
        assert_eq!(c.len(), 2);
        assert_eq!(needed_variants(&c), vec![Variant::Esgz]);
    }

    #[test]
    fn each_starling_binary_gets_its_cells() {
        let mut o = BenchOptions::broad("/x".into());
        o.starling_bins = vec!["/bin/true".into(), "/bin/false".into()];
        o.validate().unwrap();
        let a = avail(&Snapshotter::ALL, true);
        let l: Vec<String> = cells(&o, &a).iter().map(Cell::label).collect();
        assert_eq!(
            l,
            [
                "overlayfs / orig",
                "starling / esgz",
                "starling B / esgz",
                "starling / stl-esgz",
                "starling B / stl-esgz",
                "stargz peer / esgz"
            ]
        );
        let json = serde_json::to_string(&Cell::new(Snapshotter::Stargz, Variant::Esgz)).unwrap();
        assert!(!json.contains("bin"), "{json}");
        let b: Cell =
            serde_json::from_str(r#"{"snapshotter":"starling","variant":"esgz","bin":1}"#).unwrap();
        assert_eq!(
            b,
            Cell::new(Snapshotter::Starling, Variant::Esgz).with_bin(1)
        );
        o.starling_bins.push("/nonexistent/starling".into());
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/starling"), "{e}");
        let mut o = BenchOptions::quick("/x".into());
        o.starling_bins = vec!["/bin/true".into()];
        o.snapshotters = vec![Snapshotter::Overlayfs];
        assert!(o.validate().is_err());
    }

    #[test]
    fn rounds_rotate() {
        let a = avail(&Snapshotter::ALL, false);
        let c = cells(&BenchOptions::full("/x".into()), &a);
        assert_eq!(round_order(&c, 0), c);
        let r1 = round_order(&c, 1);
        assert_eq!(r1[0], c[1]);
        assert_eq!(r1[r1.len() - 1], c[0]);
        assert_eq!(round_order(&c, c.len()), c);
    }

    #[test]
    fn workloads_per_image_and_warm_parents() {
        let mut o = BenchOptions::full("/x".into());
        let names = |v: Vec<&'static Workload>| v.iter().map(|w| w.name).collect::<Vec<_>>();
        assert!(!names(o.workloads_for("pydeb")).contains(&"gcc"));
        assert!(names(o.workloads_for("pylarge")).contains(&"gcc"));
        o.workloads = vec!["print".into(), "warm-walk".into()];
        let steps: Vec<(&str, bool)> = o
            .cold_steps("pydeb")
            .into_iter()
            .map(|(w, s)| (w.name, s))
            .collect();
        assert_eq!(steps, [("print", true), ("read-all", false)]);
    }

    #[test]
    fn broad_suite_runs_each_pair_once() {
        let o = BenchOptions::broad("/x".into());
        o.validate().unwrap();
        let mut pairs = Vec::new();
        for i in &o.images {
            for (w, selected) in o.cold_steps(i) {
                assert!(selected);
                pairs.push((i.as_str(), w.name));
            }
        }
        assert_eq!(pairs, BROAD_SET.to_vec());
        assert_eq!(o.link_profiles().len(), 2);
        assert!(o.warm_baseline && o.access_trace);
        let java = workload("java").unwrap();
        assert!(java.uses_image_command() && java.command().is_empty());
        assert_eq!(workload("node").unwrap().command()[1], "/.stl-bench/node");
        assert_eq!(LinkProfile::parse_list("both").unwrap()[1].rate_mbit, 1000);
        assert!(LinkProfile::parse_list("lan").is_err());
        let order: Vec<String> = LinkProfile::parse_list("dc,wan,dc")
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(order, ["dc", "wan"]);
        assert_eq!(LinkProfile::custom(20, 100), LinkProfile::wan());
        assert_eq!(LinkProfile::custom(50, 20).burst, "128kb");
    }

    #[test]
    fn options_are_validated() {
        let mut o = BenchOptions::quick("/x".into());
        assert!(o.validate().is_ok());
        o.images = vec!["alpine".into()];
        assert!(o.validate().unwrap_err().to_string().contains("alpine"));
        let mut o = BenchOptions::quick("/x".into());
        o.images = vec!["node".into()];
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("no selected workload runs on image node"), "{e}");
        let mut o = BenchOptions::quick("/x".into());
        o.runs = 0;
        assert!(o.validate().is_err());
        assert!(Snapshotter::parse("zfs").is_err());
        assert_eq!(Snapshotter::parse("peer").unwrap(), Snapshotter::Stargz);
        assert_eq!(Variant::parse("esgz-opt").unwrap(), Variant::EsgzOpt);
        assert!(workload("nope").is_err());
    }
}
