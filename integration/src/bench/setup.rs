//! Sets a benchmark environment up: the harness [`Stack`] (loopback registry, shaped link,
//! containerd with overlayfs, starling and the stargz peer as far as they are available),
//! the images in every variant the run needs (ctr-remote-made eStargz variants are cached
//! as OCI layouts next to the harness images; starling-made ones are made fresh each run),
//! and which starling subcommands work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::containerd::Ctr;
use crate::images::CachedImage;
use crate::oci::OciImage;
use crate::peer::PeerOptions;
use crate::process::{run_cmd, run_ok};
use crate::shaped::ShapedLink;
use crate::stack::{Stack, StackOptions};
use crate::starling::StarlingOptions;
use crate::workdir::unique_token;

use super::plan::{self, Availability, BenchOptions, Cell, Snapshotter, Variant};
use super::starling_cli::StarlingCli;
use super::BenchError;

/// One variant of an image in the benchmark registry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VariantInfo {
    /// `repo:tag` in the registries (`pydeb:esgz`).
    pub repo_tag: String,
    /// How it was made.
    pub how: String,
    /// Seconds it took to make (0 when it came from the cache).
    pub build_secs: f64,
    /// Layers: (digest, compressed size).
    pub layers: Vec<(String, u64)>,
    /// OCI layout holding it (cached ctr-remote variants and the original), with its tag.
    #[serde(skip)]
    pub layout: Option<(PathBuf, String)>,
}

impl VariantInfo {
    /// Compressed size of all layers.
    pub fn compressed_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum()
    }
}

/// How starling pulls lazily in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StarlingPull {
    /// `starling rpull`.
    StarlingRpull,
    /// `ctr-remote image rpull --snapshotter starling` (until `starling rpull` works).
    CtrRemoteRpull,
}

/// The running environment and what it offers.
pub struct BenchEnv {
    /// Registry, shaped link, containerd, daemons.
    pub stack: Stack,
    /// starling's client subcommands (when the binary exists).
    pub starling_cli: Option<StarlingCli>,
    /// How starling pulls.
    pub starling_pull: StarlingPull,
    /// Snapshotters and starling tools that work.
    pub avail: Availability,
    /// image → variant → info.
    pub images: BTreeMap<String, BTreeMap<Variant, VariantInfo>>,
    /// Things the report should say (fallbacks, skipped columns).
    pub notes: Vec<String>,
    /// runc state of our containerd namespace (`ctr containers create` has no --runc-root).
    pub runc_state: PathBuf,
    /// Host directory with the workload scripts, bind-mounted at [`plan::SCRIPT_DIR`].
    pub scripts_dir: PathBuf,
    /// Keep the request log of lazy cold samples ([`BenchOptions::keep_fetches`]).
    pub keep_fetches: bool,
    /// The starling binaries compared (`--starling-bins`; empty: one binary).
    pub starling_bins: Vec<PathBuf>,
}

impl std::fmt::Debug for BenchEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchEnv")
            .field("wd", &self.stack.wd.path())
            .field("avail", &self.avail)
            .finish()
    }
}

/// Prints a note and keeps it for the report.
pub fn note(notes: &mut Vec<String>, text: impl Into<String>) {
    let t = text.into();
    eprintln!("bench: {t}");
    notes.push(t);
}

/// The installed ctr-remote (stargz-snapshotter package) version, for cache keys.
pub fn ctr_remote_version() -> String {
    run_ok(
        "dpkg-query",
        ["-W", "-f=${Version}", "stargz-snapshotter"],
        Duration::from_secs(10),
    )
    .map(|v| v.trim().to_string())
    .ok()
    .filter(|v| !v.is_empty())
    .unwrap_or_else(|| "unknown".into())
}

impl BenchEnv {
    /// The shaped link.
    pub fn shaped(&self) -> &ShapedLink {
        self.stack
            .shaped
            .as_ref()
            .expect("the benchmark stack always has a shaped link")
    }

    /// `ctr` for our containerd.
    pub fn ctr(&self) -> &Ctr {
        self.stack.ctr()
    }

    /// Reference of `image`'s `variant` behind the shaped link.
    pub fn shaped_ref(&self, image: &str, variant: Variant) -> String {
        self.shaped()
            .reference(&format!("{image}:{}", variant.tag()))
    }

    /// Reference of `image`'s `variant` on the loopback registry.
    pub fn loopback_ref(&self, image: &str, variant: Variant) -> String {
        self.stack
            .registry
            .reference(&format!("{image}:{}", variant.tag()))
    }

    /// Starts everything `opts` needs; columns that cannot run are dropped with a note.
    pub fn start(opts: &BenchOptions) -> Result<BenchEnv, BenchError> {
        let mut notes = Vec::new();
        let mut avail = Availability::default();
        let mut starling_cli = None;
        let mut peer = None;
        for s in &opts.snapshotters {
            match s {
                Snapshotter::Overlayfs => avail.snapshotters.push(*s),
                Snapshotter::Starling => match crate::starling::starling_bin() {
                    Ok(bin) => {
                        starling_cli = Some(StarlingCli::probe(&bin));
                        avail.snapshotters.push(*s);
                    }
                    Err(e) => note(&mut notes, format!("starling column skipped: {e}")),
                },
                Snapshotter::Stargz => match crate::peer::peer_binary() {
                    Ok(bin) => {
                        peer = Some(bin);
                        avail.snapshotters.push(*s);
                    }
                    Err(e) => note(
                        &mut notes,
                        format!("stargz peer column skipped (cannot build the peer): {e}"),
                    ),
                },
            }
        }
        let namespace = format!("stlbench{}", unique_token(6).to_lowercase());
        let shaped = plan::shaped_options(&opts.link_profiles()[0]);
        let make = |with_starling: bool| StackOptions {
            shaped: Some(shaped.clone()),
            starling: with_starling.then(StarlingOptions::default),
            peer: peer.clone().map(|b| (b, PeerOptions::default())),
            peer_name: Some("stargz".into()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        };
        let with_starling = avail.snapshotters.contains(&Snapshotter::Starling);
        eprintln!("bench: starting registry, shaped link, containerd and snapshotters");
        let stack = match Stack::start("bench", make(with_starling)) {
            Ok(s) => s,
            Err(e) if with_starling => {
                note(
                    &mut notes,
                    format!("starling column skipped: `starling daemon` did not start: {e}"),
                );
                avail.snapshotters.retain(|s| *s != Snapshotter::Starling);
                starling_cli = None;
                Stack::start("bench", make(false))?
            }
            Err(e) => return Err(e.into()),
        };
        let runc_state = PathBuf::from("/run/containerd/runc").join(&namespace);
        let scripts_dir = stack.wd.subdir("scripts")?;
        for w in plan::WORKLOADS.iter().filter(|w| !w.uses_image_command()) {
            let p = scripts_dir.join(w.name);
            std::fs::write(&p, w.script)
                .map_err(|e| BenchError::Setup(format!("write {}: {e}", p.display())))?;
        }
        let mut env = BenchEnv {
            stack,
            starling_cli,
            starling_pull: StarlingPull::CtrRemoteRpull,
            avail,
            images: BTreeMap::new(),
            notes,
            runc_state,
            scripts_dir,
            keep_fetches: opts.keep_fetches,
            starling_bins: opts.starling_bins.clone(),
        };
        env.decide_starling_tools();
        Ok(env)
    }

    fn decide_starling_tools(&mut self) {
        let Some(cli) = self.starling_cli.clone() else {
            return;
        };
        for line in cli.describe() {
            eprintln!("bench: {line}");
        }
        self.avail.starling_convert = cli.convert.available();
        self.avail.starling_optimize = cli.optimize.available();
        if !cli.convert.available() {
            note(
                &mut self.notes,
                "starling convert not available yet: using ctr-remote-converted images for the starling column",
            );
        }
        if !cli.optimize.available() {
            note(
                &mut self.notes,
                "starling optimize not available yet: using ctr-remote-optimized images for the starling column",
            );
        }
        if cli.rpull.available() {
            self.starling_pull = StarlingPull::StarlingRpull;
        } else {
            note(
                &mut self.notes,
                "starling rpull not available yet: pulling with `ctr-remote image rpull --snapshotter starling`",
            );
        }
    }

    /// Pushes the originals and makes every variant the cells need.
    pub fn prepare_images(&mut self, opts: &BenchOptions) -> Result<Vec<Cell>, BenchError> {
        let cells_wanted = plan::cells(opts, &self.avail);
        let variants = plan::needed_variants(&cells_wanted);
        let crv = ctr_remote_version();
        for image in &opts.images {
            let cached = crate::images::by_name(image)?;
            let mut set = BTreeMap::new();
            let orig_tag = format!("{image}:orig");
            self.stack
                .registry
                .push_layout(&cached.layout, "latest", &orig_tag)?;
            set.insert(
                Variant::Orig,
                variant_info(
                    &orig_tag,
                    "original (harness image cache)",
                    0.0,
                    &cached.layout,
                    "latest",
                )?,
            );
            for v in &variants {
                let made = match v {
                    Variant::Orig => continue,
                    Variant::Esgz | Variant::EsgzOpt => {
                        Some(self.ctr_remote_variant(image, &cached, *v, &crv, opts)?)
                    }
                    Variant::StlEsgz | Variant::StlOpt => {
                        self.starling_variant(image, *v, opts.optimize_period)?
                    }
                };
                if let Some(info) = made {
                    set.insert(*v, info);
                }
            }
            self.images.insert(image.clone(), set);
        }
        self.ctr().remove_all_images()?;
        if self.starling_pull == StarlingPull::StarlingRpull {
            self.trial_starling_rpull(opts)?;
        }
        let cells = plan::cells(opts, &self.avail)
            .into_iter()
            .filter(|c| {
                opts.images.iter().all(|i| {
                    self.images
                        .get(i)
                        .is_some_and(|s| s.contains_key(&c.variant))
                })
            })
            .collect();
        Ok(cells)
    }

    /// `esgz` / `esgz-opt` made by ctr-remote, cached as an OCI layout across runs.
    fn ctr_remote_variant(
        &mut self,
        image: &str,
        src: &CachedImage,
        v: Variant,
        crv: &str,
        opts: &BenchOptions,
    ) -> Result<VariantInfo, BenchError> {
        let tag = v.tag();
        let period = if v == Variant::EsgzOpt {
            format!("-p{}", opts.optimize_period)
        } else {
            String::new()
        };
        let key = format!("bench-{}-{tag}{period}-ctrremote-{crv}", src.key);
        let repo_tag = format!("{image}:{tag}");
        let src_ref = self.loopback_ref(image, Variant::Orig);
        let dst_ref = self.loopback_ref(image, v);
        // converting a large image (pysci: 0.9 GB of gzip) takes longer than a ctr step
        let mut ctr = self.ctr().clone();
        ctr.timeout = Duration::from_secs(3600);
        let registry_host = self.stack.registry.host();
        let t = Instant::now();
        let mut built = false;
        let entry = crate::images::cached(&key, |layout, _scratch, logs| {
            built = true;
            eprintln!("bench: making {repo_tag} with ctr-remote (cached for later runs)");
            ctr.pull(&src_ref, "overlayfs")?;
            match v {
                Variant::Esgz => ctr.convert_estargz(&src_ref, &dst_ref, &[])?,
                _ => {
                    let record = logs.join("optimize-record.json");
                    let period = opts.optimize_period.to_string();
                    ctr.optimize_estargz(
                        &src_ref,
                        &dst_ref,
                        &[
                            "--period",
                            &period,
                            "--record-out",
                            &record.to_string_lossy(),
                        ],
                    )?
                }
            }
            ctr.push(&dst_ref)?;
            copy_to_layout(&registry_host, &repo_tag, layout, tag)
        })?;
        let secs = if built {
            t.elapsed().as_secs_f64()
        } else {
            self.stack
                .registry
                .push_layout(&entry.layout, tag, &repo_tag)?;
            0.0
        };
        let how = match v {
            Variant::Esgz => format!("ctr-remote {crv} image convert --estargz --oci"),
            _ => format!(
                "ctr-remote {crv} image optimize --oci --period {} (image's default command)",
                opts.optimize_period
            ),
        };
        variant_info(&repo_tag, &how, secs, &entry.layout, tag)
    }

    /// `stl-esgz` / `stl-opt` made by starling (fresh each run); `None` with a note when
    /// the command fails.
    fn starling_variant(
        &mut self,
        image: &str,
        v: Variant,
        optimize_period: u32,
    ) -> Result<Option<VariantInfo>, BenchError> {
        let Some(cli) = self.starling_cli.clone() else {
            return Ok(None);
        };
        let src = self.loopback_ref(image, Variant::Orig);
        let dst = self.loopback_ref(image, v);
        let (mut cmd, what) = match v {
            Variant::StlEsgz => (cli.convert_cmd(&src, &dst), "starling convert"),
            _ => (
                cli.optimize_cmd(self.ctr(), "starling", &src, &dst, optimize_period),
                "starling optimize",
            ),
        };
        eprintln!("bench: making {image}:{} with {what}", v.tag());
        let t = Instant::now();
        let out = run_cmd(&mut cmd, Duration::from_secs(3600));
        let secs = t.elapsed().as_secs_f64();
        let ok = match out {
            Ok(o) if o.success() => Ok(()),
            Ok(o) => Err(format!("{}\n{}", o.stdout.trim(), o.stderr.trim())),
            Err(e) => Err(e.to_string()),
        };
        let repo_tag = format!("{image}:{}", v.tag());
        let fallback = |notes: &mut Vec<String>, avail: &mut Availability, why: &str| {
            note(
                notes,
                format!("{what} failed on {image} ({why}): using ctr-remote-made images for the starling column"),
            );
            match v {
                Variant::StlEsgz => avail.starling_convert = false,
                _ => avail.starling_optimize = false,
            }
        };
        if let Err(e) = ok {
            fallback(&mut self.notes, &mut self.avail, e.trim());
            return Ok(None);
        }
        match manifest_layers(&self.stack.registry, image, v.tag()) {
            Ok(layers) if layers.iter().all(|l| l.2) => Ok(Some(VariantInfo {
                repo_tag,
                how: what.to_string(),
                build_secs: secs,
                layers: layers.into_iter().map(|l| (l.0, l.1)).collect(),
                layout: None,
            })),
            Ok(_) => {
                fallback(
                    &mut self.notes,
                    &mut self.avail,
                    "its layers carry no containerd.io/snapshot/stargz/toc.digest annotation",
                );
                Ok(None)
            }
            Err(e) => {
                fallback(&mut self.notes, &mut self.avail, &e.to_string());
                Ok(None)
            }
        }
    }

    /// Pulls one eStargz variant with `starling rpull` and checks containerd has the image;
    /// falls back to ctr-remote's rpull (with a note) when it does not work.
    fn trial_starling_rpull(&mut self, opts: &BenchOptions) -> Result<(), BenchError> {
        let Some(cli) = self.starling_cli.clone() else {
            return Ok(());
        };
        let Some(image) = opts.images.first() else {
            return Ok(());
        };
        let r = self.loopback_ref(image, Variant::Esgz);
        let out = run_cmd(
            &mut cli.rpull_cmd(self.ctr(), "starling", &r),
            Duration::from_secs(600),
        );
        let listed = self.ctr().images().unwrap_or_default().contains(&r);
        let why = match out {
            Ok(o) if o.success() && listed => None,
            Ok(o) if o.success() => Some(format!(
                "the image is not in containerd namespace {} afterwards",
                self.ctr().namespace
            )),
            Ok(o) => Some(o.stderr.trim().to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            note(
                &mut self.notes,
                format!("starling rpull trial failed ({why}): pulling with `ctr-remote image rpull --snapshotter starling`"),
            );
            self.starling_pull = StarlingPull::CtrRemoteRpull;
        }
        self.ctr().remove_all_images()?;
        Ok(())
    }

    /// Deletes the runc state of our namespace (after containerd stopped).
    pub fn cleanup_runc_state(&self) {
        if self.runc_state.exists() {
            crate::containerd::cleanup_runc(&self.runc_state);
            let _ = std::fs::remove_dir_all(&self.runc_state);
        }
    }
}

/// `skopeo copy docker://HOST/REPO_TAG oci:LAYOUT:TAG`, blobs and manifest unchanged.
fn copy_to_layout(host: &str, repo_tag: &str, layout: &Path, tag: &str) -> crate::Result<()> {
    let mut c = Command::new("skopeo");
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--preserve-digests",
    ])
    .arg(format!("docker://{host}/{repo_tag}"))
    .arg(format!("oci:{}:{tag}", layout.display()));
    run_cmd(&mut c, Duration::from_secs(1800))?
        .check()
        .map(drop)
}

fn variant_info(
    repo_tag: &str,
    how: &str,
    secs: f64,
    layout: &Path,
    tag: &str,
) -> Result<VariantInfo, BenchError> {
    let img = OciImage::open(layout, tag)?;
    Ok(VariantInfo {
        repo_tag: repo_tag.into(),
        how: how.into(),
        build_secs: secs,
        layers: img
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect(),
        layout: Some((layout.to_path_buf(), tag.to_string())),
    })
}

/// (digest, size, has a TOC digest annotation) of each layer of `repo:tag`.
fn manifest_layers(
    reg: &crate::registry::Registry,
    repo: &str,
    tag: &str,
) -> Result<Vec<(String, u64, bool)>, BenchError> {
    let r = reg.manifest(repo, tag)?;
    let m: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| BenchError::Setup(format!("manifest of {repo}:{tag}: {e}")))?;
    Ok(m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or_default().to_string(),
                l["size"].as_u64().unwrap_or(0),
                l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
            )
        })
        .collect())
}
