//! containerd's configuration as `starling doctor` reads it: the file (version 1, 2 for
//! containerd 1.6/1.7, 3 for 2.x) with its `imports` merged over it, and the checks of what
//! stops lazy pulls there: the proxy plugin (missing, pointing elsewhere, not named `stargz`
//! for BuildKit), containerd 2.x's `exports.enable_remote_snapshot_annotations` and transfer
//! service `unpack_config`, and the CRI plugin's snapshotter and snapshot annotations.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::check::Check;

/// containerd's default configuration file.
pub const DEFAULT_PATH: &str = "/etc/containerd/config.toml";

/// The names BuildKit (Docker's builder), nerdctl and `ctr-remote` special-case.
const STARGZ: &str = "stargz";

const TRANSFER: &str = "io.containerd.transfer.v1.local";
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const CRI_V3_IMAGES: &str = "io.containerd.cri.v1.images";

/// A loaded configuration.
#[derive(Debug)]
pub struct ContainerdConfig {
    /// The main file.
    pub path: PathBuf,
    /// Its `version` (1 when absent).
    pub version: i64,
    /// The files `imports` brought in, in order.
    pub imports: Vec<PathBuf>,
    /// Everything, imports merged over the main file.
    pub table: Table,
}

/// Which containerd reads it: 1.x or 2.x (version 3 files, or `containerd --version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// containerd 1.6 / 1.7.
    V1,
    /// containerd 2.x.
    V2,
}

impl ContainerdConfig {
    /// Reads `path` and its imports.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cfg = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let patterns: Vec<String> = cfg
            .table
            .get("imports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for pattern in patterns {
            for file in expand(base, &pattern) {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let imported: Table = toml::from_str(&text)
                    .map_err(|e| format!("{} (imported): {e}", file.display()))?;
                merge(&mut cfg.table, imported);
                cfg.imports.push(file);
            }
        }
        Ok(cfg)
    }

    /// Parses one file's text (no imports).
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let table: Table = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let version = table
            .get("version")
            .and_then(Value::as_integer)
            .unwrap_or(1);
        Ok(ContainerdConfig {
            path: path.to_path_buf(),
            version,
            imports: Vec::new(),
            table,
        })
    }

    fn get(&self, keys: &[&str]) -> Option<&Value> {
        let mut v = self.table.get(keys[0])?;
        for k in &keys[1..] {
            v = v.as_table()?.get(*k)?;
        }
        Some(v)
    }

    /// The CRI image settings' table path (by version) and whether CRI is disabled.
    fn cri(&self) -> (Vec<&'static str>, bool) {
        let disabled = self
            .table
            .get("disabled_plugins")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .any(|p| p == "cri" || p == CRI_V2 || p == CRI_V3_IMAGES)
            });
        let path = match self.version {
            v if v >= 3 => vec!["plugins", CRI_V3_IMAGES],
            2 => vec!["plugins", CRI_V2, "containerd"],
            _ => vec!["plugins", "cri", "containerd"],
        };
        (path, disabled)
    }
}

/// Files matching `pattern` (relative to `base`; `*` and `?` in the file name), sorted.
fn expand(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let p = base.join(pattern);
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?']) {
        return if p.exists() { vec![p] } else { Vec::new() };
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `*` (any run) and `?` (one character) matching.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `linux/amd64` style platform of this machine.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    format!("linux/{arch}")
}

/// The checks of `cfg` for a daemon listening on `socket`, read by containerd `generation`.
pub fn checks(cfg: &ContainerdConfig, socket: &Path, generation: Generation) -> Vec<Check> {
    let mut out = Vec::new();
    let imports = if cfg.imports.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = cfg
            .imports
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(", imports {}", list.join(", "))
    };
    out.push(Check::ok(
        "containerd config",
        format!(
            "{} (version {}{imports}; read as containerd {})",
            cfg.path.display(),
            cfg.version,
            match generation {
                Generation::V1 => "1.6/1.7",
                Generation::V2 => "2.x",
            }
        ),
    ));
    let names = proxy_checks(cfg, socket, generation, &mut out);
    if generation == Generation::V2 {
        transfer_checks(cfg, &names, &mut out);
    }
    cri_checks(cfg, &names, generation, &mut out);
    out
}

/// Proxy plugin checks; returns the names registered for `socket`.
fn proxy_checks(
    cfg: &ContainerdConfig,
    socket: &Path,
    generation: Generation,
    out: &mut Vec<Check>,
) -> Vec<String> {
    let socket_text = socket.display().to_string();
    let add_fix = format!(
        "add to {}: [proxy_plugins.starling] type = \"snapshot\", address = \"{socket_text}\" \
         (contrib/containerd/{}), then restart containerd",
        cfg.path.display(),
        if generation == Generation::V2 {
            "config-v3.toml"
        } else {
            "config.toml"
        }
    );
    let proxies = cfg
        .get(&["proxy_plugins"])
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    let mut ours = Vec::new();
    for (name, entry) in &proxies {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
        let address = entry.get("address").and_then(Value::as_str).unwrap_or("");
        if address != socket_text {
            if kind == "snapshot" && (name == "starling" || name == STARGZ) {
                out.push(Check::fail(
                    format!("proxy plugin {name:?}"),
                    format!("points at {address:?}, but starling listens on {socket_text}"),
                    format!(
                        "set address = \"{socket_text}\" in [proxy_plugins.{name}] (or start \
                         the daemon with --address {address}), then restart containerd"
                    ),
                ));
            }
            continue;
        }
        if kind != "snapshot" {
            out.push(Check::fail(
                format!("proxy plugin {name:?}"),
                format!("has type {kind:?}, not \"snapshot\""),
                format!("set type = \"snapshot\" in [proxy_plugins.{name}]"),
            ));
            continue;
        }
        out.push(Check::ok(
            format!("proxy plugin {name:?}"),
            format!("type snapshot at {socket_text}"),
        ));
        ours.push(name.clone());
    }
    if ours.is_empty() {
        if !out.iter().any(|c| c.what.starts_with("proxy plugin")) {
            out.push(Check::fail(
                "proxy plugin",
                format!("no [proxy_plugins] entry of type \"snapshot\" points at {socket_text}: containerd cannot use starling"),
                add_fix,
            ));
        }
        return ours;
    }
    if !ours.iter().any(|n| n == STARGZ) {
        out.push(Check::warn(
            "proxy plugin \"stargz\"",
            "starling is not registered as \"stargz\": BuildKit (docker build, buildx), nerdctl \
             and ctr-remote mount base layers lazily only for a snapshotter of that name",
            format!(
                "add [proxy_plugins.stargz] type = \"snapshot\", address = \"{socket_text}\" (the \
                 same daemon; both entries may stay)"
            ),
        ));
    }
    if generation == Generation::V2 {
        for name in &ours {
            let exported = cfg
                .get(&[
                    "proxy_plugins",
                    name,
                    "exports",
                    "enable_remote_snapshot_annotations",
                ])
                .is_some_and(|v| v.as_str() == Some("true") || v.as_bool() == Some(true));
            if exported {
                out.push(Check::ok(
                    format!("proxy plugin {name:?} exports"),
                    "enable_remote_snapshot_annotations = \"true\"",
                ));
            } else {
                out.push(Check::fail(
                    format!("proxy plugin {name:?} exports"),
                    "containerd 2.x passes the layer annotations (TOC digest, image, layer) only \
                     to a proxy snapshotter that asks for them: pulls by containerd (ctr image \
                     pull, CRI, Docker) cannot be lazy",
                    format!(
                        "add [proxy_plugins.{name}.exports] enable_remote_snapshot_annotations = \
                         \"true\""
                    ),
                ));
            }
        }
    }
    ours
}

/// containerd 2.x's transfer service: `unpack_config` must list starling's names.
fn transfer_checks(cfg: &ContainerdConfig, names: &[String], out: &mut Vec<Check>) {
    let key = format!("[[plugins.\"{TRANSFER}\".unpack_config]]");
    let platform = host_platform();
    let entries: Vec<(String, String)> = cfg
        .get(&["plugins", TRANSFER, "unpack_config"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let s = e.get("snapshotter")?.as_str()?.to_string();
                    let p = e
                        .get("platform")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    Some((s, p))
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return;
    }
    let entry_fix = |name: &str| {
        format!("add {key} platform = \"{platform}\", snapshotter = \"{name}\" (keep overlayfs listed too)")
    };
    if entries.is_empty() {
        out.push(Check::fail(
            "transfer service unpack_config",
            format!(
                "missing: the transfer service (ctr image pull, containerd 2.x clients) unpacks \
                 only into overlayfs, never into {}",
                names.join(", ")
            ),
            entry_fix(&names[0]),
        ));
        return;
    }
    let listed = |name: &str| {
        entries
            .iter()
            .any(|(s, p)| s == name && (p.is_empty() || *p == platform))
    };
    for name in names {
        if listed(name) {
            out.push(Check::ok(
                format!("transfer service unpack_config {name:?}"),
                format!("listed for {platform}"),
            ));
        } else {
            let level = if names.iter().any(|n| listed(n)) {
                Check::warn
            } else {
                Check::fail
            };
            out.push(level(
                format!("transfer service unpack_config {name:?}"),
                format!(
                    "{name} is not listed for {platform}: `ctr image pull --snapshotter {name}` \
                     is refused"
                ),
                entry_fix(name),
            ));
        }
    }
    if !listed("overlayfs") {
        out.push(Check::warn(
            "transfer service unpack_config \"overlayfs\"",
            "overlayfs is not listed: the list replaces containerd's default, so normal pulls \
             into overlayfs are refused",
            entry_fix("overlayfs"),
        ));
    }
}

/// The CRI plugin (Kubernetes): snapshotter and snapshot annotations.
fn cri_checks(
    cfg: &ContainerdConfig,
    names: &[String],
    generation: Generation,
    out: &mut Vec<Check>,
) {
    let (path, disabled) = cfg.cri();
    if disabled {
        out.push(Check::ok(
            "CRI plugin",
            "disabled in this config (no Kubernetes): nothing to check",
        ));
        return;
    }
    let key = format!(
        "[{}]",
        path.iter()
            .map(|k| if k.contains('.') {
                format!("\"{k}\"")
            } else {
                k.to_string()
            })
            .collect::<Vec<_>>()
            .join(".")
    );
    let section = cfg.get(&path).and_then(Value::as_table);
    let snapshotter = section
        .and_then(|t| t.get("snapshotter"))
        .and_then(Value::as_str)
        .unwrap_or("overlayfs");
    let annotations = section
        .and_then(|t| t.get("disable_snapshot_annotations"))
        .and_then(Value::as_bool);
    // With no entry at the daemon's socket (failed above), a starling name still counts.
    let ours = names.iter().any(|n| n == snapshotter)
        || (names.is_empty() && (snapshotter == "starling" || snapshotter == STARGZ));
    if !ours {
        out.push(Check::warn(
            "CRI snapshotter",
            format!(
                "Kubernetes pulls use {snapshotter:?}: pods' images are not lazy (fine if this \
                 node runs no Kubernetes)"
            ),
            format!(
                "set snapshotter = \"{}\" and disable_snapshot_annotations = false in {key}",
                names.first().map_or("starling", String::as_str)
            ),
        ));
        return;
    }
    out.push(Check::ok(
        "CRI snapshotter",
        format!("{snapshotter} ({key})"),
    ));
    if generation == Generation::V2 && annotations.is_none() {
        // 2.x's CRI pulls through the transfer service, which passes the layer annotations
        // to a proxy snapshotter that exports enable_remote_snapshot_annotations.
        out.push(Check::ok(
            "CRI snapshot annotations",
            "not set: the CRI pulls through the transfer service, which passes the layer \
             annotations (see the proxy plugin's exports)",
        ));
    } else if annotations.unwrap_or(true) {
        // containerd 1.x's default is true: the CRI passes no layer annotations.
        out.push(Check::fail(
            "CRI snapshot annotations",
            "disable_snapshot_annotations is not false: the CRI passes no layer annotations, \
             every pod image falls back to a full pull",
            format!("set disable_snapshot_annotations = false in {key}"),
        ));
    } else {
        out.push(Check::ok(
            "CRI snapshot annotations",
            "disable_snapshot_annotations = false",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::Level;
    use super::*;

    const V2: &str = include_str!("../../../../contrib/containerd/config.toml");
    const V3: &str = include_str!("../../../../contrib/containerd/config-v3.toml");
    const SOCK: &str = "/run/starling/starling.sock";

    fn run(text: &str, generation: Generation) -> Vec<Check> {
        let cfg = ContainerdConfig::parse(text, Path::new("/etc/containerd/config.toml")).unwrap();
        checks(&cfg, Path::new(SOCK), generation)
    }

    fn levels(checks: &[Check]) -> (usize, usize) {
        (
            checks.iter().filter(|c| c.level == Level::Warn).count(),
            checks.iter().filter(|c| c.level == Level::Fail).count(),
        )
    }

    fn find<'a>(checks: &'a [Check], what: &str, level: Level) -> &'a Check {
        checks
            .iter()
            .find(|c| c.what.contains(what) && c.level == level)
            .unwrap_or_else(|| panic!("no {level:?} check {what:?} in {checks:#?}"))
    }

    /// The contrib files for the platform they name.
    fn contrib_v3() -> String {
        V3.replace("linux/amd64", &host_platform())
    }

    #[test]
    fn contrib_v2_is_all_ok_for_containerd_1() {
        let c = run(V2, Generation::V1);
        assert_eq!(levels(&c), (0, 0), "{c:#?}");
        find(&c, "proxy plugin \"starling\"", Level::Ok);
        find(&c, "proxy plugin \"stargz\"", Level::Ok);
        find(&c, "CRI snapshot annotations", Level::Ok);
        assert!(c[0].detail.contains("version 2"), "{c:#?}");
    }

    #[test]
    fn contrib_v3_is_all_ok_for_containerd_2() {
        let c = run(&contrib_v3(), Generation::V2);
        assert_eq!(levels(&c), (0, 0), "{c:#?}");
        find(&c, "exports", Level::Ok);
        find(&c, "unpack_config \"starling\"", Level::Ok);
        find(&c, "CRI snapshotter", Level::Ok);
    }

    #[test]
    fn contrib_v2_under_containerd_2_lacks_the_2x_settings() {
        let c = run(V2, Generation::V2);
        find(&c, "\"starling\" exports", Level::Fail);
        find(&c, "transfer service unpack_config", Level::Fail);
    }

    #[test]
    fn missing_plugin_fails_with_the_fix() {
        let c = run("version = 2\n", Generation::V1);
        let f = find(&c, "proxy plugin", Level::Fail);
        assert!(f.fix.as_deref().unwrap().contains(SOCK), "{f:?}");
        assert!(f.fix.as_deref().unwrap().contains("config.toml"), "{f:?}");
        // No CRI section: containerd's defaults (overlayfs) → a warning, not a failure.
        find(&c, "CRI snapshotter", Level::Warn);
    }

    #[test]
    fn plugin_pointing_elsewhere_or_of_wrong_type_fails() {
        let text = V2.replacen(SOCK, "/run/other.sock", 1);
        let c = run(&text, Generation::V1);
        let f = find(&c, "proxy plugin \"starling\"", Level::Fail);
        assert!(f.detail.contains("/run/other.sock"), "{f:?}");
        let text = V2.replacen("type = \"snapshot\"", "type = \"content\"", 1);
        let c = run(&text, Generation::V1);
        find(&c, "proxy plugin \"starling\"", Level::Fail);
    }

    #[test]
    fn only_the_starling_name_warns_for_buildkit() {
        let text = "version = 2\n[proxy_plugins.starling]\ntype = \"snapshot\"\naddress = \"/run/starling/starling.sock\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"starling\"\ndisable_snapshot_annotations = false\n";
        let c = run(text, Generation::V1);
        assert_eq!(levels(&c), (1, 0), "{c:#?}");
        let w = find(&c, "\"stargz\"", Level::Warn);
        assert!(w.detail.contains("BuildKit"), "{w:?}");
        assert!(w.fix.as_deref().unwrap().contains("[proxy_plugins.stargz]"));
    }

    #[test]
    fn cri_annotations_disabled_fail() {
        let text = V2.replace(
            "disable_snapshot_annotations = false",
            "disable_snapshot_annotations = true",
        );
        let c = run(&text, Generation::V1);
        let f = find(&c, "CRI snapshot annotations", Level::Fail);
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd]"),
            "{f:?}"
        );
        // Absent = containerd's default (true): also a failure.
        let text = V2.replace("disable_snapshot_annotations = false\n", "");
        find(
            &run(&text, Generation::V1),
            "CRI snapshot annotations",
            Level::Fail,
        );
        // 2.x: absent is fine (the transfer service passes them); true is a failure.
        find(
            &run(&contrib_v3(), Generation::V2),
            "CRI snapshot annotations",
            Level::Ok,
        );
        let text = contrib_v3().replace(
            "[plugins.\"io.containerd.cri.v1.images\"]\n",
            "[plugins.\"io.containerd.cri.v1.images\"]\n  disable_snapshot_annotations = true\n",
        );
        assert_ne!(text, contrib_v3());
        let c = run(&text, Generation::V2);
        let f = find(&c, "CRI snapshot annotations", Level::Fail);
        assert!(f.fix.as_deref().unwrap().contains(CRI_V3_IMAGES), "{f:?}");
    }

    #[test]
    fn cri_disabled_is_fine() {
        let text = format!("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n{V2}");
        let c = run(&text, Generation::V1);
        assert_eq!(levels(&c), (0, 0), "{c:#?}");
        find(&c, "CRI plugin", Level::Ok);
    }

    #[test]
    fn v3_exports_missing_fail() {
        let text = contrib_v3().replace("enable_remote_snapshot_annotations = \"true\"", "");
        let c = run(&text, Generation::V2);
        let f = find(&c, "\"starling\" exports", Level::Fail);
        assert!(
            f.fix
                .as_deref()
                .unwrap()
                .contains("[proxy_plugins.starling.exports] enable_remote_snapshot_annotations"),
            "{f:?}"
        );
        find(&c, "\"stargz\" exports", Level::Fail);
    }

    #[test]
    fn v3_unpack_config_missing_or_partial() {
        let v3 = contrib_v3();
        let cut = v3
            .find("[plugins.\"io.containerd.transfer.v1.local\"]")
            .unwrap();
        let end = v3.find("# Kubernetes").unwrap();
        let without = format!("{}{}", &v3[..cut], &v3[end..]);
        let c = run(&without, Generation::V2);
        let f = find(&c, "transfer service unpack_config", Level::Fail);
        assert!(f.detail.contains("missing"), "{f:?}");
        assert!(f.fix.as_deref().unwrap().contains("unpack_config"), "{f:?}");

        // Only overlayfs and starling listed: stargz warns, overlayfs fine.
        let p = host_platform();
        let partial = v3.replace(
            &format!(
                "  [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n    platform = \"{p}\"\n    snapshotter = \"stargz\"\n"
            ),
            "",
        );
        assert_ne!(partial, v3);
        let c = run(&partial, Generation::V2);
        assert_eq!(levels(&c), (1, 0), "{c:#?}");
        find(&c, "unpack_config \"stargz\"", Level::Warn);

        // Another platform only: starling is not unpacked here.
        let other = v3.replace(&p, "linux/s390x-other");
        let c = run(&other, Generation::V2);
        find(&c, "unpack_config \"starling\"", Level::Fail);
        find(&c, "unpack_config \"overlayfs\"", Level::Warn);
    }

    #[test]
    fn imports_are_merged_over_the_main_file() {
        let tmp = tempfile::tempdir().unwrap();
        let main = tmp.path().join("config.toml");
        std::fs::create_dir(tmp.path().join("conf.d")).unwrap();
        std::fs::write(&main, "version = 2\nimports = [\"conf.d/*.toml\"]\n").unwrap();
        std::fs::write(tmp.path().join("conf.d/10-starling.toml"), V2).unwrap();
        std::fs::write(tmp.path().join("conf.d/README"), "not toml {").unwrap();
        let cfg = ContainerdConfig::load(&main).unwrap();
        assert_eq!(cfg.imports, [tmp.path().join("conf.d/10-starling.toml")]);
        let c = checks(&cfg, Path::new(SOCK), Generation::V1);
        assert_eq!(levels(&c), (0, 0), "{c:#?}");
        assert!(c[0].detail.contains("10-starling.toml"), "{c:#?}");
    }

    #[test]
    fn unreadable_or_bad_files_are_named() {
        let e = ContainerdConfig::load(Path::new("/nonexistent/containerd.toml")).unwrap_err();
        assert!(e.contains("/nonexistent/containerd.toml"), "{e}");
        let e = ContainerdConfig::parse("version = ", Path::new("/x.toml")).unwrap_err();
        assert!(e.contains("/x.toml"), "{e}");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.toml", "a.toml"));
        assert!(wildcard("1?-*.toml", "10-x.toml"));
        assert!(!wildcard("*.toml", "README"));
        assert!(wildcard("*", ""));
    }
}
