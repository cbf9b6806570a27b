//! The documented configuration snippets in `contrib/` as the tests use them: containerd's
//! config is rendered from `contrib/containerd/config.toml` (1.x) or `config-v3.toml`
//! (2.x) and dockerd's `daemon.json` from `contrib/docker/daemon.json`, with only the
//! machine-specific parts (paths, sockets, the platform, the CRI switch) replaced. The
//! files are compiled in, so an edit to contrib is an edit to what CI runs.

use std::path::Path;

use serde_json::Value;
use toml::{Table, Value as Toml};

use crate::engines::ContainerdVersion;
use crate::error::{Error, Result};

/// `contrib/containerd/config.toml`: containerd 1.6 / 1.7 (config version 2).
pub const CONTAINERD_V2: &str = include_str!("../../contrib/containerd/config.toml");
/// `contrib/containerd/config-v3.toml`: containerd 2.x (config version 3).
pub const CONTAINERD_V3: &str = include_str!("../../contrib/containerd/config-v3.toml");
/// `contrib/docker/daemon.json`: Docker with starling as its containerd snapshotter.
pub const DOCKER_DAEMON_JSON: &str = include_str!("../../contrib/docker/daemon.json");

const TRANSFER: &str = "io.containerd.transfer.v1.local";
const REMOTE_ANNOTATIONS: &str = "enable_remote_snapshot_annotations";

/// The contrib config containerd `version` starts from.
pub fn containerd_base(version: ContainerdVersion) -> &'static str {
    if version.is_2x() {
        CONTAINERD_V3
    } else {
        CONTAINERD_V2
    }
}

/// What a private containerd needs beyond the contrib snippet.
#[derive(Debug, Clone)]
pub struct ContainerdPaths<'a> {
    /// Directory holding `root/`, `state/`, `opt/` and the debug socket.
    pub dir: &'a Path,
    /// gRPC socket (the ttrpc socket is `<socket>.ttrpc`).
    pub socket: &'a Path,
    /// Debug log level.
    pub log_level: &'a str,
}

fn table<'t>(t: &'t mut Table, key: &str) -> &'t mut Table {
    let v = t
        .entry(key.to_string())
        .or_insert_with(|| Toml::Table(Table::new()));
    if !v.is_table() {
        *v = Toml::Table(Table::new());
    }
    v.as_table_mut().expect("just made a table")
}

fn path(p: &Path) -> Toml {
    Toml::String(p.to_string_lossy().into_owned())
}

/// Merges `extra` into `base`: tables key by key, anything else replaced.
pub fn merge_toml(base: &mut Table, extra: Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(Toml::Table(b)), Toml::Table(e)) => merge_toml(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Renders containerd's config: the contrib snippet of `version`, with
/// - root, state, gRPC/ttrpc/debug sockets and the `opt` dir under `paths.dir`;
/// - `[proxy_plugins]` reduced to `proxies` (name, socket): a name the snippet defines
///   keeps its entry with the address replaced, another gets `type = "snapshot"` (2.x:
///   plus `exports.enable_remote_snapshot_annotations`);
/// - 2.x: the transfer service's `unpack_config` kept for overlayfs and `proxies` (one
///   added where the snippet has none), the platform set to this machine's;
/// - the CRI plugins disabled unless `cri`;
/// - `extra_toml` merged last.
pub fn containerd_config(
    version: ContainerdVersion,
    paths: &ContainerdPaths<'_>,
    proxies: &[(String, std::path::PathBuf)],
    cri: bool,
    extra_toml: &str,
) -> Result<String> {
    let base = containerd_base(version);
    let mut t: Table = base
        .parse()
        .map_err(|e: toml::de::Error| Error::invalid("contrib containerd config", e.to_string()))?;
    let dir = paths.dir;
    t.insert("version".into(), Toml::Integer(version.config_version()));
    t.insert("root".into(), path(&dir.join("root")));
    t.insert("state".into(), path(&dir.join("state")));
    table(&mut t, "grpc").insert("address".into(), path(paths.socket));
    let ttrpc = format!("{}.ttrpc", paths.socket.to_string_lossy());
    table(&mut t, "ttrpc").insert("address".into(), Toml::String(ttrpc));
    let debug = table(&mut t, "debug");
    debug.insert("address".into(), path(&dir.join("debug.sock")));
    debug.insert("level".into(), Toml::String(paths.log_level.into()));
    table(table(&mut t, "plugins"), "io.containerd.internal.v1.opt")
        .insert("path".into(), path(&dir.join("opt")));
    if version.config_version() >= 3 {
        // containerd 2.x runs NRI by default on the machine-wide /var/run/nri/nri.sock: two
        // test instances at once would collide (the second exits). Each gets its own.
        table(table(&mut t, "plugins"), "io.containerd.nri.v1.nri")
            .insert("socket_path".into(), path(&dir.join("nri.sock")));
    }

    let documented = t.remove("proxy_plugins").and_then(|v| match v {
        Toml::Table(t) => Some(t),
        _ => None,
    });
    let mut rendered = Table::new();
    for (name, socket) in proxies {
        let mut p = documented
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        p.insert("type".into(), Toml::String("snapshot".into()));
        p.insert("address".into(), path(socket));
        if version.is_2x() {
            table(&mut p, "exports")
                .entry(REMOTE_ANNOTATIONS.to_string())
                .or_insert_with(|| Toml::String("true".into()));
        }
        rendered.insert(name.clone(), Toml::Table(p));
    }
    if !rendered.is_empty() {
        t.insert("proxy_plugins".into(), Toml::Table(rendered));
    }

    if version.is_2x() {
        let platform = format!("linux/{}", crate::oci::image::host_arch());
        let transfer = table(table(&mut t, "plugins"), TRANSFER);
        let documented = match transfer.remove("unpack_config") {
            Some(Toml::Array(a)) => a,
            _ => Vec::new(),
        };
        let wanted: Vec<&str> = std::iter::once("overlayfs")
            .chain(proxies.iter().map(|(n, _)| n.as_str()))
            .collect();
        let mut unpack = Vec::new();
        for name in &wanted {
            let mut u = documented
                .iter()
                .filter_map(|v| v.as_table())
                .find(|u| u.get("snapshotter").and_then(|s| s.as_str()) == Some(name))
                .cloned()
                .unwrap_or_default();
            u.insert("snapshotter".into(), Toml::String((*name).into()));
            u.insert("platform".into(), Toml::String(platform.clone()));
            unpack.push(Toml::Table(u));
        }
        transfer.insert("unpack_config".into(), Toml::Array(unpack));
    }

    if !cri {
        let disabled = version
            .cri_plugins()
            .iter()
            .map(|p| Toml::String((*p).into()))
            .collect();
        t.insert("disabled_plugins".into(), Toml::Array(disabled));
    }
    if !extra_toml.trim().is_empty() {
        let extra: Table = extra_toml
            .parse()
            .map_err(|e: toml::de::Error| Error::invalid("extra containerd TOML", e.to_string()))?;
        merge_toml(&mut t, extra);
    }
    toml::to_string(&t).map_err(|e| Error::invalid("containerd config", e.to_string()))
}

/// What a private dockerd needs beyond the contrib `daemon.json`.
#[derive(Debug, Clone, Default)]
pub struct DockerSettings {
    /// Snapshotter (`storage-driver`) instead of the documented one.
    pub storage_driver: Option<String>,
    /// Registries to talk plain HTTP to (`insecure-registries`).
    pub insecure_registries: Vec<String>,
    /// `"debug": true`.
    pub debug: bool,
}

/// Renders dockerd's `daemon.json`: the contrib file with `settings` applied.
pub fn docker_daemon_json(settings: &DockerSettings) -> Result<String> {
    let mut v: Value = serde_json::from_str(DOCKER_DAEMON_JSON)
        .map_err(|e| Error::invalid("contrib/docker/daemon.json", e.to_string()))?;
    let o = v
        .as_object_mut()
        .ok_or_else(|| Error::invalid("contrib/docker/daemon.json", "not a JSON object"))?;
    if let Some(d) = &settings.storage_driver {
        o.insert("storage-driver".into(), Value::String(d.clone()));
    }
    if !settings.insecure_registries.is_empty() {
        o.insert(
            "insecure-registries".into(),
            settings.insecure_registries.clone().into(),
        );
    }
    if settings.debug {
        o.insert("debug".into(), Value::Bool(true));
    }
    serde_json::to_string_pretty(&v).map_err(|e| Error::invalid("daemon.json", e.to_string()))
}

/// The snapshotter the contrib `daemon.json` names (`storage-driver`).
pub fn docker_storage_driver() -> Result<String> {
    let v: Value = serde_json::from_str(DOCKER_DAEMON_JSON)
        .map_err(|e| Error::invalid("contrib/docker/daemon.json", e.to_string()))?;
    v["storage-driver"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| Error::invalid("contrib/docker/daemon.json", "no storage-driver"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn render(version: ContainerdVersion, names: &[&str], cri: bool) -> Table {
        let proxies: Vec<(String, PathBuf)> = names
            .iter()
            .map(|n| (n.to_string(), PathBuf::from("/tmp/x/st.sock")))
            .collect();
        let text = containerd_config(
            version,
            &ContainerdPaths {
                dir: Path::new("/tmp/x/containerd"),
                socket: Path::new("/tmp/x/containerd/c.sock"),
                log_level: "info",
            },
            &proxies,
            cri,
            "[plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n",
        )
        .unwrap();
        text.parse().unwrap()
    }

    #[test]
    fn v2_config_has_private_paths_and_the_documented_proxies() {
        let v = render(
            ContainerdVersion::V1_6,
            &["starling", "stargz", "peer"],
            false,
        );
        assert_eq!(v["version"].as_integer(), Some(2));
        assert_eq!(v["root"].as_str(), Some("/tmp/x/containerd/root"));
        assert_eq!(
            v["grpc"]["address"].as_str(),
            Some("/tmp/x/containerd/c.sock")
        );
        for n in ["starling", "stargz", "peer"] {
            assert_eq!(
                v["proxy_plugins"][n]["address"].as_str(),
                Some("/tmp/x/st.sock")
            );
            assert_eq!(v["proxy_plugins"][n]["type"].as_str(), Some("snapshot"));
        }
        assert_eq!(
            v["disabled_plugins"][0].as_str(),
            Some("io.containerd.grpc.v1.cri")
        );
        // the documented CRI settings stay (used when the CRI is on)
        assert_eq!(
            v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["snapshotter"].as_str(),
            Some("starling")
        );
        assert_eq!(
            v["plugins"]["io.containerd.gc.v1.scheduler"]["deletion_threshold"].as_integer(),
            Some(1)
        );
    }

    #[test]
    fn v3_config_exports_annotations_and_unpacks_into_each_proxy() {
        let v = render(ContainerdVersion::V2_1, &["starling", "peer"], true);
        assert_eq!(v["version"].as_integer(), Some(3));
        assert!(v.get("disabled_plugins").is_none(), "CRI asked for");
        // only the proxies asked for, each exporting the remote-snapshot annotations
        assert!(v["proxy_plugins"].get("stargz").is_none());
        for n in ["starling", "peer"] {
            assert_eq!(
                v["proxy_plugins"][n]["exports"][REMOTE_ANNOTATIONS].as_str(),
                Some("true")
            );
        }
        let unpack: Vec<&str> = v["plugins"][TRANSFER]["unpack_config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["snapshotter"].as_str().unwrap())
            .collect();
        assert_eq!(unpack, ["overlayfs", "starling", "peer"]);
        // 2.x: the CRI pulls through the transfer service; the old switch would turn that
        // off (containerd falls back to its local pull).
        let images = &v["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(images["snapshotter"].as_str(), Some("starling"));
        assert!(images.get("disable_snapshot_annotations").is_none());
    }

    #[test]
    fn daemon_json_keeps_the_documented_snapshotter_feature() {
        let j: Value = serde_json::from_str(
            &docker_daemon_json(&DockerSettings {
                insecure_registries: vec!["127.0.0.1:5000".into()],
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(j["features"]["containerd-snapshotter"], Value::Bool(true));
        assert_eq!(
            j["storage-driver"],
            Value::String(docker_storage_driver().unwrap())
        );
        assert_eq!(j["insecure-registries"][0], "127.0.0.1:5000");
    }
}
