//! Shared by the fleet tests (`fleet_mirror.rs`: docker-registry's pull-through cache as
//! the cluster mirror; `fleet_starling_mirror.rs`: `starling mirror`): an origin registry
//! behind a shaped link (its own network namespace, rate-limited veth, delay proxy), a
//! cluster mirror on the host, and "nodes" that are each their own containerd + starling +
//! root, configured through one containerd host directory (`hosts.toml` naming the mirror;
//! starling's `registry.hosts_dir` and `ctr-remote --hosts-dir` read the same one). The
//! nodes start the same eStargz image lazily (background fetch off, so only what the
//! container reads is fetched).
//!
//! Bytes the origin serves are counted on the shaped link (host end of the veth: everything
//! that left the origin's namespace, headers included), so they include the mirror's own
//! fetches. Scenarios, each on fresh nodes and a fresh mirror:
//! - `direct`: one node, no mirror (what one node alone makes the origin serve);
//! - `mirror1`: one node through the mirror;
//! - `mirror3`: three nodes at once through the mirror;
//! - `staggered3`: one node through the mirror, then two more at once (a rollout that
//!   starts one node first).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::containerd::{Containerd, ContainerdOptions};
use integration::images::busybox;
use integration::mirror::StarlingMirror;
use integration::oci::{Content, LayerBuilder};
use integration::process::run_cmd;
use integration::registry::{Registry, RegistryOptions};
use integration::shaped::{ShapedLink, ShapedOptions};
use integration::starling::{starling_bin, Starling, StarlingConfig, StarlingOptions};
use integration::workdir::Workdir;

/// One node: its own starling (root, cache, socket) and containerd.
pub struct Node {
    containerd: Containerd,
    _starling: Starling,
}

impl Node {
    fn start(wd: &Workdir, name: &str, origin: &str, hosts_dir: Option<&Path>) -> Node {
        let dir = wd.join(name);
        let mut config = StarlingConfig::new()
            .insecure_host(origin)
            .set("fetch.background_fetch", false);
        if let Some(d) = hosts_dir {
            config = config.set("registry.hosts_dir", d.to_string_lossy().to_string());
        }
        let starling = Starling::start_in(
            &dir.join("st"),
            &wd.join(format!("{name}.sock")),
            StarlingOptions {
                config: Some(config),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let containerd = Containerd::start_in(
            &dir.join("ctd"),
            ContainerdOptions::default().proxy("starling", starling.socket()),
            false,
        )
        .unwrap();
        containerd
            .ctr()
            .wait_snapshotter("starling", Duration::from_secs(60))
            .unwrap();
        Node {
            containerd,
            _starling: starling,
        }
    }

    /// Lazy pull and one run of `cmd`; returns the output and the wall time of both.
    fn start_container(
        &self,
        reference: &str,
        hosts_dir: Option<&Path>,
        cmd: &[&str],
    ) -> (String, Duration) {
        let ctr = self.containerd.ctr();
        let started = Instant::now();
        let mut args = vec![
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "starling",
        ];
        let dir;
        if let Some(d) = hosts_dir {
            dir = d.to_string_lossy().to_string();
            args.extend(["--hosts-dir", &dir]);
        }
        args.push(reference);
        ctr.ctr_remote_ok(args).unwrap();
        let out = ctr.run_ok(reference, "starling", cmd).unwrap();
        (out, started.elapsed())
    }
}

/// Which cluster mirror the nodes go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorKind {
    /// None: the nodes go to the origin.
    Direct,
    /// docker-registry in pull-through cache mode (`proxy.remoteurl`).
    PullThrough,
    /// `starling mirror` (blocks fetched by range, single-flight).
    Starling,
}

/// A running cluster mirror.
pub enum ClusterMirror {
    PullThrough(Box<Registry>),
    Starling(Box<StarlingMirror>),
}

impl ClusterMirror {
    fn start(kind: MirrorKind, wd: &Workdir, name: &str, origin: &str) -> Option<ClusterMirror> {
        match kind {
            MirrorKind::Direct => None,
            MirrorKind::PullThrough => Some(ClusterMirror::PullThrough(Box::new(
                Registry::start_in(
                    &wd.join(name),
                    RegistryOptions {
                        extra_yaml: format!("proxy:\n  remoteurl: http://{origin}\n"),
                        ..Default::default()
                    },
                    false,
                )
                .unwrap(),
            ))),
            MirrorKind::Starling => {
                // STARLING_FLEET_MIRROR_BLOCK_SIZE: the mirror's --block-size (figures with
                // other block sizes; default: the mirror's own)
                let block = std::env::var("STARLING_FLEET_MIRROR_BLOCK_SIZE").ok();
                let extra: Vec<&str> = match &block {
                    Some(b) => vec!["--block-size", b],
                    None => vec![],
                };
                Some(ClusterMirror::Starling(Box::new(
                    StarlingMirror::start(&wd.join(name), origin, &extra).unwrap(),
                )))
            }
        }
    }

    fn host(&self) -> String {
        match self {
            ClusterMirror::PullThrough(r) => r.host(),
            ClusterMirror::Starling(m) => m.host(),
        }
    }

    /// Requests it answered that named the origin with `?ns=` (for `starling mirror`,
    /// started without a default upstream, every request it served named it).
    fn requests_with_ns(&self, origin: &str) -> usize {
        match self {
            ClusterMirror::PullThrough(r) => {
                let ns = format!("ns={}", origin.replace(':', "%3A"));
                r.access_log()
                    .iter()
                    .filter(|e| e.uri.contains(&ns))
                    .count()
            }
            ClusterMirror::Starling(m) => m.metric("served_bytes_total").map_or(0, |b| {
                if b > 0 {
                    m.metric("requests_total").unwrap_or(0) as usize
                } else {
                    0
                }
            }),
        }
    }
}

/// A containerd host directory naming `mirror` as the mirror of `origin`.
fn hosts_dir(wd: &Workdir, name: &str, origin: &str, mirror: &str) -> PathBuf {
    let root = wd.join(name);
    // containerd's name for a HOST:PORT directory: HOST_PORT_.
    let (host, port) = origin.rsplit_once(':').unwrap();
    let dir = root.join(format!("{host}_{port}_"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "# the cluster's mirror\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    root
}

#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub origin_bytes: u64,
    pub starts: Vec<Duration>,
    pub mirror_requests_with_ns: usize,
    /// `starling mirror` only: its exit summary (counters).
    pub mirror_summary: Option<String>,
}

pub struct Fleet {
    wd: Workdir,
    link: ShapedLink,
    _origin: Registry,
    reference: String,
}

impl Fleet {
    /// Origin registry with the image at `name:tag` (pushed there by `push`), behind a
    /// shaped link.
    pub fn start(
        tag: &str,
        shaped: ShapedOptions,
        push: impl FnOnce(&Registry) -> String,
    ) -> Fleet {
        let wd = Workdir::new(tag).unwrap();
        let origin = Registry::start(&wd).unwrap();
        let name = push(&origin);
        let link = ShapedLink::start(&wd, &origin, shaped).unwrap();
        let reference = link.reference(&name);
        Fleet {
            wd,
            link,
            _origin: origin,
            reference,
        }
    }

    /// Starts `nodes` fresh nodes (through a fresh mirror of `kind`, or directly) and the
    /// container on each at once (with `first_alone`, on the first node before the
    /// others); checks each output with `check`.
    pub fn run(
        &self,
        name: &'static str,
        nodes: usize,
        kind: MirrorKind,
        first_alone: bool,
        cmd: &[&str],
        check: &dyn Fn(&str),
    ) -> Scenario {
        let origin = self.link.host();
        let mut mirror = ClusterMirror::start(kind, &self.wd, &format!("{name}-mirror"), &origin);
        let hosts = mirror
            .as_ref()
            .map(|m| hosts_dir(&self.wd, &format!("{name}-certs.d"), &origin, &m.host()));
        let started: Vec<Node> = (0..nodes)
            .map(|i| Node::start(&self.wd, &format!("{name}-n{i}"), &origin, hosts.as_deref()))
            .collect();
        let before = self.link.link_bytes().rx;
        let mut starts = Vec::new();
        let mut rest = &started[..];
        if first_alone {
            let (out, took) = started[0].start_container(&self.reference, hosts.as_deref(), cmd);
            check(&out);
            starts.push(took);
            rest = &started[1..];
        }
        starts.extend(std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|n| {
                    let hosts = hosts.as_deref();
                    s.spawn(move || n.start_container(&self.reference, hosts, cmd))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (out, took) = h.join().unwrap();
                    check(&out);
                    took
                })
                .collect::<Vec<_>>()
        }));
        let origin_bytes = self.link.link_bytes().rx - before;
        let mirror_requests_with_ns = mirror
            .as_ref()
            .map(|m| m.requests_with_ns(&origin))
            .unwrap_or(0);
        drop(started);
        let mirror_summary = match &mut mirror {
            Some(ClusterMirror::Starling(m)) => {
                let log = m.stop().unwrap();
                let line = log
                    .lines()
                    .find(|l| l.contains("mirror stopped"))
                    .unwrap_or_else(|| panic!("no exit summary in the mirror's log:\n{log}"))
                    .to_string();
                Some(line)
            }
            _ => None,
        };
        let s = Scenario {
            name,
            origin_bytes,
            starts,
            mirror_requests_with_ns,
            mirror_summary,
        };
        eprintln!(
            "{}: origin served {:.2} MB; starts {:?}; mirror requests with ns: {}{}",
            s.name,
            s.origin_bytes as f64 / 1e6,
            s.starts,
            s.mirror_requests_with_ns,
            s.mirror_summary
                .as_deref()
                .map(|l| format!("\n    {}", l.split("mirror stopped: ").last().unwrap_or(l)))
                .unwrap_or_default()
        );
        s
    }
}

/// The four scenarios of a fleet test, each on fresh nodes and a fresh mirror.
pub struct Scenarios {
    /// One node, no mirror.
    pub direct: Scenario,
    /// One node through the mirror.
    pub one: Scenario,
    /// Three nodes at once through the mirror.
    pub three: Scenario,
    /// One node through the mirror, then two at once.
    pub staggered: Scenario,
}

impl Fleet {
    /// Runs [`Scenarios`] with `kind` as the cluster mirror and prints the figures.
    pub fn scenarios(&self, kind: MirrorKind, cmd: &[&str], check: &dyn Fn(&str)) -> Scenarios {
        let s = Scenarios {
            direct: self.run("direct", 1, MirrorKind::Direct, false, cmd, check),
            one: self.run("mirror1", 1, kind, false, cmd, check),
            three: self.run("mirror3", 3, kind, false, cmd, check),
            staggered: self.run("staggered3", 3, kind, true, cmd, check),
        };
        report(&s.direct, &s.one, &s.three, &s.staggered);
        s
    }
}

fn report(direct: &Scenario, one: &Scenario, three: &Scenario, staggered: &Scenario) {
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let mean = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64;
    eprintln!(
        "origin bytes: 3 nodes via mirror / 1 node direct = {:.2}x; / 1 node via mirror = {:.2}x",
        ratio(three.origin_bytes, direct.origin_bytes),
        ratio(three.origin_bytes, one.origin_bytes)
    );
    eprintln!(
        "origin bytes: 1 then 2 nodes via mirror / 1 node direct = {:.2}x; / 1 node via mirror = {:.2}x; starts {:?}",
        ratio(staggered.origin_bytes, direct.origin_bytes),
        ratio(staggered.origin_bytes, one.origin_bytes),
        staggered.starts.iter().map(|d| format!("{:.2}s", d.as_secs_f64())).collect::<Vec<_>>(),
    );
    eprintln!(
        "start: 1 node direct {:.2}s, 1 node via mirror {:.2}s, 3 nodes via mirror {:?} (mean {:.2}s, {:.2}x direct)",
        mean(&direct.starts),
        mean(&one.starts),
        three.starts.iter().map(|d| format!("{:.2}s", d.as_secs_f64())).collect::<Vec<_>>(),
        mean(&three.starts),
        mean(&three.starts) / mean(&direct.starts)
    );
}

pub fn starling_convert(src: &str, dst: &str) {
    let mut c = Command::new(starling_bin().unwrap());
    c.args(["convert", "--plain-http", src, dst]);
    run_cmd(&mut c, Duration::from_secs(600))
        .unwrap()
        .check()
        .unwrap();
}

/// The CI form's origin: busybox + a 6 MiB incompressible file + a small file, converted
/// to eStargz, behind a 10 ms RTT, 200 Mbit/s link.
pub fn ci_fleet(tag: &str) -> Fleet {
    Fleet::start(
        tag,
        ShapedOptions {
            rtt: Duration::from_millis(10),
            rate_mbit: 200,
            ..Default::default()
        },
        |origin| {
            busybox()
                .unwrap()
                .layer(
                    LayerBuilder::new()
                        .dir("data")
                        .file(
                            "data/big.bin",
                            Content::Pattern {
                                len: 6 << 20,
                                seed: 5,
                            },
                        )
                        .file("data/hello", "hello from the fleet\n"),
                )
                .push(origin, "fleet:plain")
                .unwrap();
            starling_convert(
                &origin.reference("fleet:plain"),
                &origin.reference("fleet:esgz"),
            );
            "fleet:esgz".to_string()
        },
    )
}

/// The CI form's command: reads the small file and 1 MiB of the large one (the rest stays
/// unfetched).
pub const CI_CMD: [&str; 3] = [
    "/bin/sh",
    "-c",
    "cat /data/hello; head -c 1048576 /data/big.bin | sha256sum",
];

/// Checks the CI form's output.
pub fn ci_check(out: &str) {
    use sha2::Digest as _;
    let mut first = vec![0u8; 1 << 20];
    integration::oci::content::fill_pattern(5, 0, &mut first);
    let expected = hex::encode(sha2::Sha256::digest(&first));
    assert!(out.starts_with("hello from the fleet\n"), "{out}");
    assert!(out.contains(&expected), "{out}");
}

/// The pydeb figures' origin (converted by `starling estargz build`, cached) over the
/// benchmark link (20 ms RTT, 100 Mbit/s).
pub fn pydeb_fleet(tag: &str) -> Fleet {
    let image = crate::fuse_common::pydeb_starling(false).unwrap();
    Fleet::start(tag, ShapedOptions::default(), |origin| {
        origin
            .push_layout(&image.layout, "latest", "pydeb:esgz")
            .unwrap();
        "pydeb:esgz".to_string()
    })
}

/// The pydeb figures' command: python3 importing a few modules.
pub const PYDEB_CMD: [&str; 3] = [
    "python3",
    "-c",
    "import json, sqlite3, asyncio, email, http.client, xml.etree.ElementTree; print('imported')",
];

/// Checks the pydeb command's output.
pub fn pydeb_check(out: &str) {
    assert_eq!(out.trim(), "imported");
}
