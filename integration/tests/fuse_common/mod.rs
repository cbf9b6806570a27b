//! Shared by the lazy-layer filesystem tests and benchmarks: `starling mount --background`
//! processes (stopped by PID on drop), images converted layer by layer with
//! `starling estargz build` (no `starling convert` needed) or with
//! `ctr-remote image convert` through containerd, cached in the test image cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use integration::images::{cached, CachedImage};
use integration::oci::OciImage;
use integration::process::run_cmd;
use integration::registry::Registry;
use integration::stack::{Stack, StackOptions};
use integration::starling::starling_bin;
use serde_json::{json, Value};

/// TOC digest annotation of eStargz layers.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Uncompressed size annotation.
pub const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// A `starling mount --background` process serving one layer; stopped on drop.
#[derive(Debug)]
pub struct LazyMount {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub digest: String,
}

/// Settings written to the starling configuration file of the mounts.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub passthrough: bool,
    pub prefetch: bool,
    pub background_fetch: bool,
    pub stream_threshold: f64,
    pub memory_size: Option<u64>,
    /// `[fuse] threads` (the configuration's default when `None`).
    pub threads: Option<usize>,
    pub extra: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            passthrough: true,
            prefetch: true,
            background_fetch: true,
            stream_threshold: 0.5,
            memory_size: None,
            threads: None,
            extra: String::new(),
        }
    }
}

impl MountConfig {
    pub fn write(&self, path: &Path) -> Result<()> {
        let threads = self
            .threads
            .map(|t| format!("threads = {t}\n"))
            .unwrap_or_default();
        let mut s = format!(
            "[fuse]\npassthrough = {}\n{threads}[fetch]\nprefetch = {}\nbackground_fetch = {}\nstream_threshold = {:.3}\n",
            self.passthrough, self.prefetch, self.background_fetch, self.stream_threshold
        );
        if let Some(m) = self.memory_size {
            s.push_str(&format!("[cache]\nmemory_size = {m}\n"));
        }
        s.push_str(&self.extra);
        std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
    }
}

impl LazyMount {
    /// `starling mount --background --plain-http --root ROOT --config CONFIG REF DIGEST MP`.
    pub fn start(
        root: &Path,
        config: &Path,
        reference: &str,
        digest: &str,
        mountpoint: &Path,
    ) -> Result<LazyMount> {
        Self::start_with(
            &starling_bin()?,
            root,
            config,
            reference,
            digest,
            mountpoint,
        )
    }

    /// [`LazyMount::start`] with the starling binary `bin`.
    pub fn start_with(
        bin: &Path,
        root: &Path,
        config: &Path,
        reference: &str,
        digest: &str,
        mountpoint: &Path,
    ) -> Result<LazyMount> {
        std::fs::create_dir_all(mountpoint)?;
        let log = root.join(format!("mount-{}.log", &digest[7..19]));
        let out = run_cmd(
            Command::new(bin)
                .args(["mount", "--background", "--plain-http", "--root"])
                .arg(root)
                .arg("--config")
                .arg(config)
                .arg("--log-file")
                .arg(&log)
                .args([reference, digest])
                .arg(mountpoint),
            Duration::from_secs(300),
        )?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "starling mount {reference} {digest} failed: {}\n{}\nlog:\n{tail}",
                out.stdout,
                out.stderr
            );
        }
        let pid = out
            .stdout
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no pid in {:?}", out.stdout))?;
        Ok(LazyMount {
            pid,
            mountpoint: mountpoint.to_path_buf(),
            digest: digest.to_string(),
        })
    }

    /// Resident set size of the serving process (KiB).
    pub fn rss_kib(&self) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS for pid {}", self.pid))
    }

    /// Stops the process (SIGTERM: it unmounts) and waits for it.
    pub fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(15);
        while integration::process::pid_running(self.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        if integration::process::pid_running(self.pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        self.pid = 0;
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mounts every layer of `image` (pushed as `reference`) under `dir/<i>`.
pub fn mount_all(
    root: &Path,
    config: &Path,
    reference: &str,
    image: &OciImage,
    dir: &Path,
) -> Result<Vec<LazyMount>> {
    image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            LazyMount::start(root, config, reference, &l.digest, &dir.join(i.to_string()))
        })
        .collect()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Converts every layer of `src` with `starling estargz build [--zstdchunked]` into the
/// layout `dst` under `tag` (config diff_ids, manifest annotations and media types
/// updated, like `starling convert` will).
pub fn starling_convert(src: &OciImage, dst: &Path, tag: &str, zstd: bool) -> Result<OciImage> {
    integration::oci::image::init_layout(dst)?;
    let blobs = dst.join("blobs/sha256");
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &src.layers {
        let out = blobs.join(format!("tmp-{}", std::process::id()));
        let mut cmd = Command::new(starling_bin()?);
        cmd.args(["estargz", "build", "--json"]);
        if zstd {
            cmd.arg("--zstdchunked");
        }
        cmd.arg(&l.path).arg(&out);
        let r = run_cmd(&mut cmd, Duration::from_secs(1800))?.check()?;
        let v: Value = serde_json::from_str(r.stdout.trim())?;
        let digest = v["blobDigest"]
            .as_str()
            .ok_or_else(|| anyhow!("no blobDigest"))?;
        std::fs::rename(&out, blob_path(dst, digest))?;
        let media = if zstd {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        layers.push(json!({
            "mediaType": media,
            "digest": digest,
            "size": v["blobSize"],
            "annotations": {
                TOC_DIGEST: v["tocDigest"],
                UNCOMPRESSED_SIZE: v["uncompressedSize"].to_string(),
            }
        }));
        diff_ids.push(v["diffID"].clone());
    }
    let mut config: Value = serde_json::from_slice(&src.config)?;
    config["rootfs"]["diff_ids"] = Value::Array(diff_ids);
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = integration::oci::image::write_blob(&blobs, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = integration::oci::image::write_blob(&blobs, &manifest_bytes)?;
    let idx_path = dst.join("index.json");
    let mut idx: Value = serde_json::from_slice(&std::fs::read(&idx_path)?)?;
    let list = idx["manifests"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("index.json without manifests"))?;
    list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag));
    list.push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&idx_path, serde_json::to_vec(&idx)?)?;
    Ok(OciImage::open(dst, tag)?)
}

fn ctr_remote_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "stargz-snapshotter"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace(['/', ' '], "_")
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Converts tags of `src` (an OCI layout) with `ctr-remote image convert --oci
/// (--estargz | --zstdchunked)` through a private containerd, into the layout `dst`.
pub fn ctr_remote_convert_layout(src: &Path, tags: &[&str], dst: &Path, zstd: bool) -> Result<()> {
    let stack = Stack::start("fuse-conv", StackOptions::default())?;
    let ctr = stack.ctr();
    integration::oci::image::init_layout(dst)?;
    for tag in tags {
        let orig = stack.registry.reference(&format!("conv/orig:{tag}"));
        let conv = stack.registry.reference(&format!("conv/esgz:{tag}"));
        stack
            .registry
            .push_layout(src, tag, &format!("conv/orig:{tag}"))?;
        ctr.ctr_ok(["content", "fetch", "--plain-http", &orig])?;
        let flag = if zstd { "--zstdchunked" } else { "--estargz" };
        ctr.ctr_remote_ok(["image", "convert", flag, "--oci", &orig, &conv])?;
        ctr.push(&conv)?;
        run_cmd(
            Command::new("skopeo")
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    "--preserve-digests",
                ])
                .arg(format!("docker://{conv}"))
                .arg(format!("oci:{}:{tag}", dst.display())),
            Duration::from_secs(600),
        )?
        .check()?;
    }
    Ok(())
}

/// `pydeb` converted by `starling estargz build` (tags `latest`, `implicit-parents`).
pub fn pydeb_starling(zstd: bool) -> Result<CachedImage> {
    let src = integration::images::pydeb()?;
    let key = format!(
        "fusetest-{}-starling-{}-v1",
        integration::images::PYDEB_KEY,
        if zstd { "zstdchunked" } else { "estargz" }
    );
    Ok(cached(&key, |layout, _scratch, _logs| {
        for tag in ["latest", "implicit-parents"] {
            starling_convert(&src.image(tag)?, layout, tag, zstd).map_err(|e| {
                integration::error::Error::invalid("starling convert", e.to_string())
            })?;
        }
        Ok(())
    })?)
}

/// `pydeb` converted by `ctr-remote image convert`.
pub fn pydeb_ctr_remote(zstd: bool) -> Result<CachedImage> {
    let src = integration::images::pydeb()?;
    let key = format!(
        "fusetest-{}-ctrremote-{}-{}",
        integration::images::PYDEB_KEY,
        if zstd { "zstdchunked" } else { "estargz" },
        ctr_remote_version()
    );
    Ok(cached(&key, |layout, _scratch, _logs| {
        ctr_remote_convert_layout(&src.layout, &["latest", "implicit-parents"], layout, zstd)
            .map_err(|e| integration::error::Error::invalid("ctr-remote convert", e.to_string()))
    })?)
}

/// Pushes tag `tag` of a layout as `name`; returns the reference.
pub fn push(registry: &Registry, layout: &Path, tag: &str, name: &str) -> Result<String> {
    registry.push_layout(layout, tag, name)?;
    Ok(registry.reference(name))
}
