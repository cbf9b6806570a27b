//! containerd's CRI plugin configuration for a test node: the shipped
//! `contrib/containerd/config.toml` table plus what the node needs.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::images::busybox;
use crate::oci::ImageBuilder;
use crate::registry::Registry;
use crate::workdir::unique_token;

/// containerd namespace of the CRI plugin.
pub const NAMESPACE: &str = "k8s.io";
/// The CRI plugin of containerd 1.6/1.7 (config version 2).
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// The node's containerd configuration shipped for 1.6 and 1.7, relative to the workspace.
pub const CONTRIB_CONTAINERD: &str = "contrib/containerd/config.toml";

/// What a test node adds to the shipped CRI configuration.
#[derive(Debug, Clone)]
pub struct CriSettings {
    /// The sandbox (pause) image.
    pub sandbox_image: String,
    /// Registries (`HOST:PORT`) containerd reaches over plain HTTP.
    pub plain_http_hosts: Vec<String>,
}

fn contrib_path(rel: &str) -> PathBuf {
    crate::starling::workspace_root().join(rel)
}

/// The shipped file's CRI plugin table.
pub fn contrib_cri_table() -> Result<toml::Table> {
    let path = contrib_path(CONTRIB_CONTAINERD);
    let text = std::fs::read_to_string(&path).ctx(|| format!("read {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| Error::invalid(path.display().to_string(), format!("{e}")))?;
    doc.get("plugins")
        .and_then(|p| p.get(CRI_PLUGIN))
        .and_then(|c| c.as_table())
        .cloned()
        .ok_or_else(|| {
            Error::invalid(
                path.display().to_string(),
                format!("no [plugins.\"{CRI_PLUGIN}\"] table"),
            )
        })
}

/// The snapshotter the shipped CRI configuration pulls into.
pub fn contrib_snapshotter() -> Result<String> {
    contrib_cri_table()?
        .get("containerd")
        .and_then(|c| c.get("snapshotter"))
        .and_then(|s| s.as_str())
        .map(String::from)
        .ok_or_else(|| Error::invalid(CONTRIB_CONTAINERD, "no containerd.snapshotter for CRI"))
}

fn table(v: &mut toml::Table, key: &str) -> Result<toml::Table> {
    match v.remove(key) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(Error::invalid(
            CONTRIB_CONTAINERD,
            format!("{key} is not a table"),
        )),
    }
}

/// The CRI plugin's part of containerd's config (version 2) for a node whose files live
/// under `dir`: the shipped table plus [`CriSettings`]; writes the registry host files
/// (`dir/certs.d/HOST/hosts.toml`). Append it to the config (`extra_toml`).
pub fn cri_toml(dir: &Path, s: &CriSettings) -> Result<String> {
    let mut cri = contrib_cri_table()?;
    let p = |x: &str| toml::Value::String(dir.join(x).to_string_lossy().into_owned());
    cri.insert("sandbox_image".into(), s.sandbox_image.clone().into());
    // root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj would fail.
    cri.insert("restrict_oom_score_adj".into(), true.into());
    cri.insert("stream_server_address".into(), "127.0.0.1".into());
    cri.insert("stream_server_port".into(), "0".into());
    let mut containerd = table(&mut cri, "containerd")?;
    containerd.insert("default_runtime_name".into(), "runc".into());
    let mut runtimes = table(&mut containerd, "runtimes")?;
    let mut runc = toml::Table::new();
    runc.insert("runtime_type".into(), "io.containerd.runc.v2".into());
    let mut options = toml::Table::new();
    options.insert("Root".into(), p("runc"));
    runc.insert("options".into(), options.into());
    runtimes.insert("runc".into(), runc.into());
    containerd.insert("runtimes".into(), runtimes.into());
    cri.insert("containerd".into(), containerd.into());
    let mut cni = toml::Table::new();
    cni.insert("bin_dir".into(), p("cni/bin"));
    cni.insert("conf_dir".into(), p("cni/conf"));
    cri.insert("cni".into(), cni.into());
    let mut registry = table(&mut cri, "registry")?;
    registry.insert("config_path".into(), p("certs.d"));
    cri.insert("registry".into(), registry.into());
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
    let mut plugins = toml::Table::new();
    plugins.insert(CRI_PLUGIN.into(), cri.into());
    let mut root = toml::Table::new();
    root.insert("plugins".into(), plugins.into());
    let text = toml::to_string(&root).map_err(|e| Error::invalid("CRI config", e.to_string()))?;
    // The main config already opened [plugins]; a second header would be an error.
    Ok(text
        .lines()
        .filter(|l| l.trim() != "[plugins]")
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
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
    use super::*;

    #[test]
    fn cri_config_keeps_the_shipped_settings_and_adds_the_nodes() {
        let dir = tempfile_dir();
        let s = CriSettings {
            sandbox_image: "127.0.0.1:5000/pause:latest".into(),
            plain_http_hosts: vec!["127.0.0.1:5000".into()],
        };
        let text = format!(
            "version = 2\n[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/x\"\n{}",
            cri_toml(&dir, &s).unwrap()
        );
        let v: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
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
        let hosts = std::fs::read_to_string(dir.join("certs.d/127.0.0.1:5000/hosts.toml")).unwrap();
        assert!(
            hosts.contains("server = \"http://127.0.0.1:5000\""),
            "{hosts}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("stl-cri-cfg-{}", unique_token(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
