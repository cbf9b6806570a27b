//! containerd's CRI plugin configuration for a test node: the shipped image settings of
//! `contrib/containerd/config.toml` (1.x) or `config-v3.toml` (2.x) — snapshotter,
//! snapshot annotations — plus what the node needs.

use std::path::Path;

use crate::engines::ContainerdVersion;
use crate::error::{Error, IoContext, Result};
use crate::images::busybox;
use crate::oci::ImageBuilder;
use crate::registry::Registry;
use crate::workdir::unique_token;

/// containerd namespace of the CRI plugin.
pub const NAMESPACE: &str = "k8s.io";
/// The CRI plugin of containerd 1.6/1.7 (config version 2): everything in one table.
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// containerd 2.x (config version 3): the CRI's image part (snapshotter, annotations,
/// sandbox image, registries) ...
pub const CRI_IMAGES: &str = "io.containerd.cri.v1.images";
/// ... and its runtime part.
pub const CRI_RUNTIME: &str = "io.containerd.cri.v1.runtime";

/// What a test node adds to the shipped CRI configuration.
#[derive(Debug, Clone)]
pub struct CriSettings {
    /// The sandbox (pause) image.
    pub sandbox_image: String,
    /// Registries (`HOST:PORT`) containerd reaches over plain HTTP.
    pub plain_http_hosts: Vec<String>,
}

/// The shipped file of `version` (contrib/containerd/config.toml or config-v3.toml).
fn contrib_file(version: ContainerdVersion) -> &'static str {
    if version.is_2x() {
        "contrib/containerd/config-v3.toml"
    } else {
        "contrib/containerd/config.toml"
    }
}

/// The table of the shipped config of `version` holding the CRI's image settings
/// (`[plugins."io.containerd.grpc.v1.cri".containerd]` for 1.x,
/// `[plugins."io.containerd.cri.v1.images"]` for 2.x).
pub fn contrib_cri_images(version: ContainerdVersion) -> Result<toml::Table> {
    let file = contrib_file(version);
    let doc: toml::Table = crate::contrib::containerd_base(version)
        .parse()
        .map_err(|e| Error::invalid(file, format!("{e}")))?;
    let plugins = doc.get("plugins");
    let t = if version.is_2x() {
        plugins.and_then(|p| p.get(CRI_IMAGES))
    } else {
        plugins
            .and_then(|p| p.get(CRI_PLUGIN))
            .and_then(|c| c.get("containerd"))
    };
    t.and_then(|t| t.as_table())
        .cloned()
        .ok_or_else(|| Error::invalid(file, "no CRI image settings (snapshotter)"))
}

/// The snapshotter the shipped CRI configuration of `version` pulls into.
pub fn contrib_snapshotter(version: ContainerdVersion) -> Result<String> {
    contrib_cri_images(version)?
        .get("snapshotter")
        .and_then(|s| s.as_str())
        .map(String::from)
        .ok_or_else(|| Error::invalid(contrib_file(version), "no snapshotter for the CRI"))
}

fn tables(pairs: Vec<(&str, toml::Value)>) -> toml::Value {
    toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The CRI plugins' part of containerd's config for a node whose files live under `dir`:
/// the shipped image settings of `version` plus [`CriSettings`] and what a private node
/// needs (runc root, CNI dirs, `restrict_oom_score_adj`, streaming on loopback); writes
/// the registry host files (`dir/certs.d/HOST/hosts.toml`). Give it to containerd as
/// `extra_toml` (merged into the rendered contrib config).
pub fn cri_toml(version: ContainerdVersion, dir: &Path, s: &CriSettings) -> Result<String> {
    let p = |x: &str| toml::Value::String(dir.join(x).to_string_lossy().into_owned());
    let mut images = contrib_cri_images(version)?;
    let runc = tables(vec![
        ("runtime_type", "io.containerd.runc.v2".into()),
        ("options", tables(vec![("Root", p("runc"))])),
    ]);
    let registry = tables(vec![("config_path", p("certs.d"))]);
    let plugins = if version.is_2x() {
        images.insert(
            "pinned_images".into(),
            tables(vec![("sandbox", s.sandbox_image.clone().into())]),
        );
        images.insert("registry".into(), registry);
        let runtime = tables(vec![
            // root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj would fail.
            ("restrict_oom_score_adj", true.into()),
            (
                "containerd",
                tables(vec![
                    ("default_runtime_name", "runc".into()),
                    ("runtimes", tables(vec![("runc", runc)])),
                ]),
            ),
            (
                "cni",
                tables(vec![
                    ("bin_dirs", toml::Value::Array(vec![p("cni/bin")])),
                    ("conf_dir", p("cni/conf")),
                ]),
            ),
        ]);
        let grpc = tables(vec![
            ("stream_server_address", "127.0.0.1".into()),
            ("stream_server_port", "0".into()),
        ]);
        tables(vec![
            (CRI_IMAGES, toml::Value::Table(images)),
            (CRI_RUNTIME, runtime),
            (CRI_PLUGIN, grpc),
        ])
    } else {
        images.insert("default_runtime_name".into(), "runc".into());
        images.insert("runtimes".into(), tables(vec![("runc", runc)]));
        tables(vec![(
            CRI_PLUGIN,
            tables(vec![
                ("sandbox_image", s.sandbox_image.clone().into()),
                // root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj would fail.
                ("restrict_oom_score_adj", true.into()),
                ("stream_server_address", "127.0.0.1".into()),
                ("stream_server_port", "0".into()),
                ("containerd", toml::Value::Table(images)),
                (
                    "cni",
                    tables(vec![("bin_dir", p("cni/bin")), ("conf_dir", p("cni/conf"))]),
                ),
                ("registry", registry),
            ]),
        )])
    };
    for d in ["cni/bin", "cni/conf", "runc"] {
        std::fs::create_dir_all(dir.join(d)).ctx(|| format!("create {}", dir.join(d).display()))?;
    }
    for host in &s.plain_http_hosts {
        let hd = dir.join("certs.d").join(host);
        std::fs::create_dir_all(&hd).ctx(|| format!("create {}", hd.display()))?;
        let text = format!(
            "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        std::fs::write(hd.join("hosts.toml"), text)
            .ctx(|| format!("write {}", hd.join("hosts.toml").display()))?;
    }
    toml::to_string(&tables(vec![("plugins", plugins)]))
        .map_err(|e| Error::invalid("CRI config", e.to_string()))
}

/// The sandbox image: busybox running `sleep infinity`, plus a layer of its own (so that
/// preparing it is a lazy mount of its own even next to busybox-based pod images).
pub fn pause_image() -> Result<ImageBuilder> {
    Ok(busybox()?
        .layer(
            crate::oci::LayerBuilder::new()
                .file("pause", "sandbox image of starling's CRI tests\n"),
        )
        .entrypoint(["/bin/sleep", "infinity"])
        .cmd(Vec::<String>::new()))
}

/// Writes `image` as an OCI layout under `work`, converts it to eStargz with `starling
/// convert` and pushes it to `registry` as `name` (`repo:tag`); returns the reference.
pub fn push_estargz(
    image: &ImageBuilder,
    work: &Path,
    registry: &Registry,
    name: &str,
) -> Result<String> {
    let token = unique_token(6);
    let (src, dst) = (
        work.join(format!("src-{token}")),
        work.join(format!("esgz-{token}")),
    );
    image.write_layout(&src, "latest")?;
    crate::client::run(
        [
            "convert".to_string(),
            format!("oci:{}:latest", src.display()),
            format!("oci:{}:latest", dst.display()),
        ],
        crate::client::TIMEOUT,
    )?
    .check()?;
    registry.push_layout(&dst, "latest", name)?;
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dst);
    Ok(registry.reference(name))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn render(version: ContainerdVersion) -> (toml::Table, PathBuf) {
        let dir = tempfile_dir();
        let s = CriSettings {
            sandbox_image: "127.0.0.1:5000/pause:latest".into(),
            plain_http_hosts: vec!["127.0.0.1:5000".into()],
        };
        let paths = crate::contrib::ContainerdPaths {
            dir: &dir,
            socket: &dir.join("c.sock"),
            log_level: "info",
        };
        let extra = cri_toml(version, &dir, &s).unwrap();
        let text = crate::contrib::containerd_config(version, &paths, &[], true, &extra).unwrap();
        (text.parse().unwrap_or_else(|e| panic!("{e}\n{text}")), dir)
    }

    #[test]
    fn v2_keeps_the_shipped_settings_and_adds_the_nodes() {
        let (v, dir) = render(ContainerdVersion::V1_6);
        let c = &v["plugins"][CRI_PLUGIN];
        assert_eq!(c["containerd"]["snapshotter"].as_str(), Some("starling"));
        assert_eq!(
            c["containerd"]["disable_snapshot_annotations"].as_bool(),
            Some(false)
        );
        assert_eq!(
            c["sandbox_image"].as_str(),
            Some("127.0.0.1:5000/pause:latest")
        );
        assert_eq!(c["restrict_oom_score_adj"].as_bool(), Some(true));
        assert!(v["plugins"]["io.containerd.internal.v1.opt"].is_table());
        assert!(v
            .get("disabled_plugins")
            .is_none_or(|d| d.as_array().is_some_and(|a| a.is_empty())));
        let hosts = std::fs::read_to_string(dir.join("certs.d/127.0.0.1:5000/hosts.toml")).unwrap();
        assert!(
            hosts.contains("server = \"http://127.0.0.1:5000\""),
            "{hosts}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn v3_splits_images_and_runtime() {
        let (v, dir) = render(ContainerdVersion::V2_1);
        let i = &v["plugins"][CRI_IMAGES];
        assert_eq!(i["snapshotter"].as_str(), Some("starling"));
        assert!(
            i.get("disable_snapshot_annotations").is_none(),
            "transfer service"
        );
        assert_eq!(
            i["pinned_images"]["sandbox"].as_str(),
            Some("127.0.0.1:5000/pause:latest")
        );
        let r = &v["plugins"][CRI_RUNTIME];
        assert_eq!(r["restrict_oom_score_adj"].as_bool(), Some(true));
        assert!(r["containerd"]["runtimes"]["runc"]["options"]["Root"].is_str());
        assert_eq!(
            contrib_snapshotter(ContainerdVersion::V2_1).unwrap(),
            "starling"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("stl-cri-cfg-{}", unique_token(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
