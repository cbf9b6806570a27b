//! Micro-benchmarks on single layers, without containers: each eStargz layer of one image
//! mounted three ways — extracted on native overlayfs, the stargz peer's FUSE mount of it
//! (after a lazy pull through containerd from the loopback registry), and `starling mount`
//! (when that subcommand works) — then timed: first read of every file, warm sequential read
//! (`tar -cf - . | cat`), warm metadata walk (`find -printf '%p %s %m'`). Plus daemon RSS with
//! N layers mounted (every eStargz variant of every selected image pulled lazily, then each
//! image's root walked).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::extract::{extract_layer, ExtractOptions};
use crate::overlay::OverlayStack;
use crate::process::{run_cmd, Daemon};

use super::format::{fmt_summary, ratio, secs};
use super::plan::{BenchOptions, Snapshotter, Variant};
use super::runner::rss_kib;
use super::setup::{note, BenchEnv};
use super::stats::{paired_ratios, Summary};
use super::BenchError;

/// The three ways a layer is mounted.
pub const NATIVE: &str = "native overlayfs";
/// The peer's FUSE mount.
pub const PEER: &str = "stargz peer";
/// `starling mount`.
pub const STARLING: &str = "starling mount";

/// The measures.
pub const MEASURES: [&str; 3] = ["first read", "warm read", "walk"];

/// One layer under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: String,
    /// Entries in the extracted layer.
    pub entries: usize,
    /// Bytes of regular files.
    pub bytes: u64,
}

/// One timed measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroSample {
    /// Round.
    pub round: usize,
    /// Layer index (bottom first).
    pub layer: usize,
    /// [`NATIVE`], [`PEER`] or [`STARLING`].
    pub mount: String,
    /// One of [`MEASURES`].
    pub measure: String,
    /// Seconds.
    pub secs: f64,
}

/// A memory reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssPoint {
    /// Which process(es).
    pub daemon: String,
    /// Lazy layers mounted.
    pub layers: usize,
    /// When it was read.
    pub after: String,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM, KiB.
    pub hwm_kib: u64,
}

/// Micro-benchmark results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MicroResults {
    /// Image and variant whose layers were mounted.
    pub image: String,
    /// Variant tag.
    pub variant: String,
    /// The layers.
    pub layers: Vec<LayerInfo>,
    /// Timed measures.
    pub samples: Vec<MicroSample>,
    /// Memory readings.
    pub rss: Vec<RssPoint>,
    /// Fallbacks, skipped columns.
    pub notes: Vec<String>,
}

fn sh(script: &str, dir: &Path) -> Result<f64, BenchError> {
    let t = Instant::now();
    run_cmd(
        Command::new("sh").args(["-c", script, "sh"]).arg(dir),
        Duration::from_secs(1800),
    )?
    .check()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Reads every file of `dir` sequentially.
pub fn read_all(dir: &Path) -> Result<f64, BenchError> {
    sh("tar -C \"$1\" -cf - . | cat >/dev/null", dir)
}

/// Stats every entry of `dir`.
pub fn walk(dir: &Path) -> Result<f64, BenchError> {
    sh("find \"$1\" -printf '%p %s %m\\n' >/dev/null", dir)
}

/// (entries, bytes of regular files, largest regular file relative path and size).
fn survey(dir: &Path) -> (usize, u64, Option<(PathBuf, u64)>) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut n, mut bytes, mut big): (usize, u64, Option<(PathBuf, u64)>) = (0, 0, None);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            n += 1;
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
                if big.as_ref().is_none_or(|b| m.len() > b.1) {
                    let rel = e.path().strip_prefix(dir).map(Path::to_path_buf).ok();
                    big = rel.map(|r| (r, m.len())).or(big);
                }
            }
        }
    }
    (n, bytes, big)
}

fn probe_matches(mnt: &Path, probe: &(PathBuf, u64)) -> bool {
    mnt.join(&probe.0)
        .symlink_metadata()
        .is_ok_and(|m| m.is_file() && m.len() == probe.1)
}

/// Keeps `starling mount` processes and their mount points; stopped and unmounted on drop.
struct StarlingMounts {
    daemons: Vec<Daemon>,
    dirs: Vec<PathBuf>,
}

impl Drop for StarlingMounts {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.stop();
        }
        for dir in &self.dirs {
            let _ = crate::mounts::unmount_under(dir);
        }
    }
}

/// Runs the micro-benchmarks.
pub fn run_micro(env: &mut BenchEnv, opts: &BenchOptions) -> Result<MicroResults, BenchError> {
    let image = if opts.images.iter().any(|i| i == "pydeb") {
        "pydeb".to_string()
    } else {
        opts.images.first().cloned().unwrap_or_default()
    };
    let mut res = MicroResults {
        image: image.clone(),
        variant: Variant::Esgz.tag().into(),
        ..Default::default()
    };
    let Some(info) = env
        .images
        .get(&image)
        .and_then(|s| s.get(&Variant::Esgz))
        .cloned()
    else {
        note(
            &mut res.notes,
            "micro-benchmarks skipped: no esgz variant was built",
        );
        return Ok(res);
    };
    let Some((layout, _)) = info.layout.clone() else {
        note(
            &mut res.notes,
            "micro-benchmarks skipped: the esgz variant has no layout",
        );
        return Ok(res);
    };
    let base = env.stack.wd.subdir("micro")?;
    eprintln!(
        "bench: micro-benchmarks on {image}:esgz ({} layers)",
        info.layers.len()
    );
    // native: each layer extracted, on overlayfs (over an empty lower)
    let mut native = Vec::new();
    let mut probes = Vec::new();
    for (i, (digest, _)) in info.layers.iter().enumerate() {
        let dir = base.join(format!("x{i}"));
        let blob = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        extract_layer(
            &blob,
            &dir,
            &ExtractOptions::overlay().skip_estargz_metadata(),
        )?;
        let (entries, bytes, big) = survey(&dir);
        res.layers.push(LayerInfo {
            digest: digest.clone(),
            entries,
            bytes,
        });
        probes.push(big);
        native.push(OverlayStack::mount(
            &[&dir],
            &base.join(format!("n{i}")),
            &[],
        )?);
    }
    let mut mounts: BTreeMap<&'static str, Vec<PathBuf>> = BTreeMap::new();
    mounts.insert(
        NATIVE,
        native.iter().map(|n| n.path().to_path_buf()).collect(),
    );
    let loop_ref = env.loopback_ref(&image, Variant::Esgz);
    // the peer: lazy pull through containerd, then its per-layer FUSE mounts
    if env.avail.snapshotters.contains(&Snapshotter::Stargz) {
        match peer_mounts(env, &loop_ref, &probes) {
            Ok(m) => {
                mounts.insert(PEER, m);
            }
            Err(e) => note(
                &mut res.notes,
                format!("stargz peer micro column skipped: {e}"),
            ),
        }
    }
    // starling mount, one process per layer
    let mut stl = StarlingMounts {
        daemons: Vec::new(),
        dirs: Vec::new(),
    };
    match env.starling_cli.clone() {
        Some(cli) if cli.mount.available() => {
            match starling_mounts(&cli, &base, &loop_ref, &info.layers, &probes, &mut stl) {
                Ok(m) => {
                    mounts.insert(STARLING, m);
                }
                Err(e) => note(
                    &mut res.notes,
                    format!("starling mount micro column skipped: {e}"),
                ),
            }
        }
        Some(cli) => note(
            &mut res.notes,
            format!(
                "starling mount not available yet ({}): starling micro column skipped",
                cli.mount.reason
            ),
        ),
        None => note(
            &mut res.notes,
            "no starling binary: starling micro column skipped",
        ),
    }
    let names: Vec<&'static str> = mounts.keys().copied().collect();
    for round in 0..opts.runs {
        let k = round % names.len().max(1);
        let order: Vec<&str> = names[k..]
            .iter()
            .chain(names[..k].iter())
            .copied()
            .collect();
        for m in order {
            for (layer, dir) in mounts[m].iter().enumerate() {
                let mut measure = |what: &str, secs: f64| {
                    res.samples.push(MicroSample {
                        round,
                        layer,
                        mount: m.to_string(),
                        measure: what.to_string(),
                        secs,
                    })
                };
                if round == 0 {
                    measure(MEASURES[0], read_all(dir)?);
                }
                measure(MEASURES[1], read_all(dir)?);
                measure(MEASURES[2], walk(dir)?);
            }
        }
    }
    let n = info.layers.len();
    if mounts.contains_key(PEER) {
        if let Some((hwm, rss)) = env.daemon_pid(Snapshotter::Stargz).and_then(rss_kib) {
            res.rss.push(RssPoint {
                daemon: PEER.into(),
                layers: n,
                after: "micro reads and walks".into(),
                rss_kib: rss,
                hwm_kib: hwm,
            });
        }
    }
    if mounts.contains_key(STARLING) {
        let (mut hwm, mut rss) = (0, 0);
        for d in &stl.daemons {
            if let Some((h, r)) = rss_kib(d.pid()) {
                hwm += h;
                rss += r;
            }
        }
        res.rss.push(RssPoint {
            daemon: format!("{STARLING} (sum of {} processes)", stl.daemons.len()),
            layers: n,
            after: "micro reads and walks".into(),
            rss_kib: rss,
            hwm_kib: hwm,
        });
    }
    drop(stl);
    drop(native);
    rss_with_layers(env, opts, &mut res)?;
    Ok(res)
}

fn peer_mounts(
    env: &mut BenchEnv,
    reference: &str,
    probes: &[Option<(PathBuf, u64)>],
) -> Result<Vec<PathBuf>, BenchError> {
    env.reset_for(Snapshotter::Stargz)?;
    env.pull(Snapshotter::Stargz, reference)?;
    let root = env
        .daemon_root(Snapshotter::Stargz)
        .ok_or_else(|| BenchError::Setup("no peer".into()))?;
    let fuse: Vec<PathBuf> = crate::mounts::mounts_under(&root)?
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse"))
        .map(|m| m.mount_point)
        .collect();
    probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p
                .as_ref()
                .ok_or_else(|| BenchError::Setup(format!("layer {i} has no regular file")))?;
            fuse.iter()
                .find(|m| probe_matches(m, p))
                .cloned()
                .ok_or_else(|| {
                    BenchError::Setup(format!(
                        "no peer FUSE mount has layer {i}'s {} ({} mounts)",
                        p.0.display(),
                        fuse.len()
                    ))
                })
        })
        .collect()
}

fn starling_mounts(
    cli: &super::starling_cli::StarlingCli,
    base: &Path,
    reference: &str,
    layers: &[(String, u64)],
    probes: &[Option<(PathBuf, u64)>],
    keep: &mut StarlingMounts,
) -> Result<Vec<PathBuf>, BenchError> {
    let mut out = Vec::new();
    for (i, (digest, _)) in layers.iter().enumerate() {
        let dir = base.join(format!("s{i}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Setup(format!("create {}: {e}", dir.display())))?;
        keep.dirs.push(dir.clone());
        let spec = cli.mount_spec(reference, digest, &dir, &base.join(format!("s{i}.log")));
        let mut d = Daemon::start(spec)?;
        let probe = dir.clone();
        let r = d.wait_ready(
            &format!("starling mount of layer {i}"),
            Duration::from_secs(120),
            || {
                crate::mounts::mounts_under(&probe).is_ok_and(|l| {
                    l.iter()
                        .any(|m| m.mount_point == probe && m.fs_type.starts_with("fuse"))
                })
            },
        );
        keep.daemons.push(d);
        r?;
        if let Some(p) = &probes[i] {
            if !probe_matches(&dir, p) {
                return Err(BenchError::Setup(format!(
                    "starling's mount of layer {i} lacks {} ({} bytes)",
                    p.0.display(),
                    p.1
                )));
            }
        }
        out.push(dir);
    }
    Ok(out)
}

/// Daemon RSS with every eStargz variant of every selected image pulled lazily (N layers),
/// after the pulls and after walking each image's root.
fn rss_with_layers(
    env: &mut BenchEnv,
    opts: &BenchOptions,
    res: &mut MicroResults,
) -> Result<(), BenchError> {
    for s in [Snapshotter::Stargz, Snapshotter::Starling] {
        if !env.avail.snapshotters.contains(&s) {
            continue;
        }
        env.reset_for(s)?;
        let mut refs = Vec::new();
        for image in &opts.images {
            for v in [Variant::Esgz, Variant::EsgzOpt] {
                if env.images.get(image).is_some_and(|m| m.contains_key(&v)) {
                    let r = env.loopback_ref(image, v);
                    env.pull(s, &r)?;
                    refs.push(r);
                }
            }
        }
        let n = env.lazy_mounts(s).unwrap_or(0);
        let label = if s == Snapshotter::Stargz {
            PEER.to_string()
        } else {
            "starling daemon".to_string()
        };
        let mut point = |env: &mut BenchEnv, after: &str| {
            if let Some((hwm, rss)) = env.daemon_pid(s).and_then(rss_kib) {
                res.rss.push(RssPoint {
                    daemon: label.clone(),
                    layers: n,
                    after: after.into(),
                    rss_kib: rss,
                    hwm_kib: hwm,
                });
            }
        };
        point(env, &format!("lazy pull of {} images", refs.len()));
        let ctr = env.ctr().clone();
        let views = env.stack.wd.subdir(format!("views-{}", s.name()))?;
        for (i, r) in refs.iter().enumerate() {
            let m = ctr.mount_image(r, s.name(), &views.join(i.to_string()))?;
            walk(m.path())?;
        }
        point(env, "walk of every image");
        if n == 0 {
            note(
                &mut res.notes,
                format!(
                    "{label}: no lazy (FUSE) layers were mounted; its RSS is that of full pulls"
                ),
            );
        }
        env.reset_for(s)?;
    }
    Ok(())
}

impl MicroResults {
    fn summary(&self, layer: usize, mount: &str, measure: &str) -> Option<Summary> {
        Summary::of(
            self.samples
                .iter()
                .filter(|s| s.layer == layer && s.mount == mount && s.measure == measure)
                .map(|s| s.secs),
        )
    }

    /// Speed relative to native (native time / this time), paired by round.
    pub fn speed_vs_native(&self, layer: usize, mount: &str, measure: &str) -> Option<Summary> {
        let by_round = |m: &str| -> BTreeMap<usize, f64> {
            self.samples
                .iter()
                .filter(|s| s.layer == layer && s.mount == m && s.measure == measure)
                .map(|s| (s.round, s.secs))
                .collect()
        };
        Summary::of(paired_ratios(&by_round(NATIVE), &by_round(mount)))
    }

    /// The micro-benchmark section of the report.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## Micro-benchmarks: single layers of {}:{} (loopback registry)\n\n\
             Seconds, median [min–max]; speed = native time / this time, paired by round \
             (goals: warm read ≥ 0.9, walk ≥ 0.7). \"first read\" is one run: the native \
             layer is already in the page cache, the lazy ones fetch what is not cached yet.\n",
            self.image, self.variant
        );
        for n in &self.notes {
            let _ = writeln!(m, "- {n}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(m);
        }
        let mounts = [NATIVE, PEER, STARLING];
        let _ = writeln!(
            m,
            "| layer | measure | {NATIVE} | {PEER} | {STARLING} | {PEER} speed | {STARLING} speed |\n|---|---|---|---|---|---|---|"
        );
        for (i, l) in self.layers.iter().enumerate() {
            let name = format!(
                "{i} ({}, {} entries, {:.0} MB)",
                &l.digest[..l.digest.len().min(19)],
                l.entries,
                l.bytes as f64 / 1e6
            );
            for measure in MEASURES {
                let _ = write!(m, "| {name} | {measure} |");
                for mount in mounts {
                    let _ = write!(
                        m,
                        " {} |",
                        fmt_summary(self.summary(i, mount, measure), secs)
                    );
                }
                for mount in [PEER, STARLING] {
                    let _ = write!(
                        m,
                        " {} |",
                        fmt_summary(self.speed_vs_native(i, mount, measure), ratio)
                    );
                }
                let _ = writeln!(m);
            }
        }
        let _ = writeln!(
            m,
            "\n### Snapshotter memory with N lazy layers mounted\n\n| process | layers | after | VmRSS MB | VmHWM MB |\n|---|---|---|---|---|"
        );
        for p in &self.rss {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.0} | {:.0} |",
                p.daemon,
                p.layers,
                p.after,
                p.rss_kib as f64 / 1024.0,
                p.hwm_kib as f64 / 1024.0
            );
        }
        let _ = writeln!(m);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survey_counts_and_finds_the_largest_file() {
        let wd = crate::workdir::Workdir::new("bsurvey").unwrap();
        let d = wd.subdir("t").unwrap();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/big"), vec![0u8; 5000]).unwrap();
        std::fs::write(d.join("small"), b"x").unwrap();
        std::os::unix::fs::symlink("small", d.join("link")).unwrap();
        let (n, bytes, big) = survey(&d);
        assert_eq!(n, 5);
        assert_eq!(bytes, 5001);
        let big = big.unwrap();
        assert_eq!(big, (PathBuf::from("a/b/big"), 5000));
        assert!(probe_matches(&d, &big));
        assert!(!probe_matches(&d, &(PathBuf::from("small"), 2)));
        assert!(read_all(&d).unwrap() >= 0.0);
        assert!(walk(&d).unwrap() >= 0.0);
        assert!(walk(&d.join("missing")).is_err());
    }

    #[test]
    fn speed_is_native_over_mount_by_round() {
        let s = |round, mount: &str, secs| MicroSample {
            round,
            layer: 0,
            mount: mount.into(),
            measure: "walk".into(),
            secs,
        };
        let r = MicroResults {
            layers: vec![LayerInfo {
                digest: "sha256:abc".into(),
                entries: 3,
                bytes: 10,
            }],
            samples: vec![
                s(0, NATIVE, 0.2),
                s(0, PEER, 1.0),
                s(1, NATIVE, 0.3),
                s(1, PEER, 1.0),
            ],
            ..Default::default()
        };
        let sp = r.speed_vs_native(0, PEER, "walk").unwrap();
        assert!((sp.median - 0.25).abs() < 1e-9);
        let md = r.markdown();
        assert!(md.contains("| 0 (sha256:abc, 3 entries, 0 MB) | walk | 0.25 [0.20–0.30] | 1.00 | – | 0.25× [0.20×–0.30×] | – |"), "{md}");
    }
}
