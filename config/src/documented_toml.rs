//! Renders a [`Config`] as TOML with each key's doc comment (taken from the field docs of the
//! section structs, so the printed documentation cannot drift from the code).

use std::fmt::Write;

use documented::DocumentedFields;
use serde::Serialize;

use crate::kubernetes::{CredentialProviderConfig, KubernetesConfig};
use crate::registry::{HostConfig, MirrorConfig};
use crate::Config;

const HEADER: &str = "\
# starling configuration (TOML).
# Durations are strings such as \"30s\", \"500ms\" or \"1m 30s\"; sizes are strings such as
# \"64MiB\" or \"20GiB\", or integers (bytes). Every key is optional; unknown keys are errors.
";

pub(crate) fn render(config: &Config) -> String {
    let mut out = String::from(HEADER);
    if *config == Config::default() {
        out.push_str("# The values below are the defaults.\n");
    }
    let table = to_table(config);
    // Top-level scalars first (TOML requires them before any [section]).
    for (i, name) in Config::FIELD_NAMES.iter().enumerate() {
        if let Some(v) = table.get(*name).filter(|v| !v.is_table()) {
            out.push('\n');
            comment(&mut out, "", Config::FIELD_DOCS[i]);
            let _ = writeln!(out, "{} = {}", key(name), v);
        }
    }
    section::<crate::CacheConfig>(&mut out, "cache", &table, Config::FIELD_DOCS);
    section::<crate::FetchConfig>(&mut out, "fetch", &table, Config::FIELD_DOCS);
    section::<crate::FuseConfig>(&mut out, "fuse", &table, Config::FIELD_DOCS);
    registry(&mut out, config, &table);
    section::<crate::SnapshotterConfig>(&mut out, "snapshotter", &table, Config::FIELD_DOCS);
    section::<crate::MergeConfig>(&mut out, "merge", &table, Config::FIELD_DOCS);
    section::<crate::DaemonConfig>(&mut out, "daemon", &table, Config::FIELD_DOCS);
    kubernetes(&mut out, config, &table);
    out
}

fn to_table<T: Serialize>(value: &T) -> toml::Table {
    // Serializing our own plain structs to a table cannot fail (no non-string map keys).
    toml::Table::try_from(value).unwrap_or_default()
}

fn section<T: DocumentedFields>(
    out: &mut String,
    name: &str,
    root: &toml::Table,
    root_docs: &[&str],
) {
    let doc = Config::FIELD_NAMES
        .iter()
        .position(|n| *n == name)
        .map_or("", |i| root_docs[i]);
    out.push('\n');
    comment(out, "", doc);
    let _ = writeln!(out, "[{name}]");
    let empty = toml::Table::new();
    let table = root.get(name).and_then(|v| v.as_table()).unwrap_or(&empty);
    fields::<T>(out, "", table);
}

/// Writes the fields of `T` present in `table`, each preceded by its doc comment.
fn fields<T: DocumentedFields>(out: &mut String, prefix: &str, table: &toml::Table) {
    for (i, name) in T::FIELD_NAMES.iter().enumerate() {
        comment(out, prefix, T::FIELD_DOCS[i]);
        match table.get(*name) {
            Some(v) => {
                let _ = writeln!(out, "{prefix}{} = {}", key(name), v);
            }
            None => {
                let _ = writeln!(out, "{prefix}# {} is not set", key(name));
            }
        }
    }
}

fn registry(out: &mut String, config: &Config, root: &toml::Table) {
    out.push('\n');
    comment(out, "", doc_of::<Config>("registry"));
    out.push_str("[registry]\n");
    let empty = toml::Table::new();
    let table = root
        .get("registry")
        .and_then(|v| v.as_table())
        .unwrap_or(&empty);
    comment(out, "", doc_of::<crate::RegistryConfig>("docker_config"));
    if let Some(v) = table.get("docker_config") {
        let _ = writeln!(out, "docker_config = {v}");
    }
    for name in ["hosts_dir", "mirror_skip"] {
        out.push('\n');
        comment(out, "", doc_of::<crate::RegistryConfig>(name));
        if let Some(v) = table.get(name) {
            let _ = writeln!(out, "{name} = {v}");
        }
    }
    out.push('\n');
    comment(out, "", doc_of::<crate::RegistryConfig>("hosts"));
    if config.registry.hosts.is_empty() {
        out.push_str("# Example (all keys of a host):\n");
        let example = HostConfig {
            mirrors: vec![MirrorConfig {
                host: "mirror.example.com:5000".into(),
                insecure: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        host(out, "# ", "registry.example.com:5000", &example);
    } else {
        for (name, h) in &config.registry.hosts {
            host(out, "", name, h);
        }
    }
}

/// `[kubernetes]`: its keys, then each credential provider (or a commented example).
fn kubernetes(out: &mut String, config: &Config, root: &toml::Table) {
    out.push('\n');
    comment(out, "", doc_of::<Config>("kubernetes"));
    out.push_str("[kubernetes]\n");
    let empty = toml::Table::new();
    let table = root
        .get("kubernetes")
        .and_then(|v| v.as_table())
        .unwrap_or(&empty);
    for (i, name) in KubernetesConfig::FIELD_NAMES.iter().enumerate() {
        if *name == "credential_providers" {
            continue;
        }
        comment(out, "", KubernetesConfig::FIELD_DOCS[i]);
        if let Some(v) = table.get(*name) {
            let _ = writeln!(out, "{} = {}", key(name), v);
        }
    }
    out.push('\n');
    comment(out, "", doc_of::<KubernetesConfig>("credential_providers"));
    let providers = &config.kubernetes.credential_providers;
    let (prefix, list) = if providers.is_empty() {
        out.push_str("# Example (all keys of a plugin):\n");
        let example = CredentialProviderConfig {
            name: "ecr-credential-provider".into(),
            match_images: vec!["*.dkr.ecr.*.amazonaws.com".into()],
            default_cache_duration: std::time::Duration::from_secs(12 * 3600),
            api_version: crate::CREDENTIAL_PROVIDER_API_VERSIONS[0].into(),
            args: vec!["get-credentials".into()],
            env: [("AWS_PROFILE".to_string(), "node".to_string())].into(),
        };
        ("# ", vec![example])
    } else {
        ("", providers.clone())
    };
    for p in &list {
        let _ = writeln!(out, "{prefix}[[kubernetes.credential_providers]]");
        fields::<CredentialProviderConfig>(out, prefix, &to_table(p));
    }
}

fn host(out: &mut String, prefix: &str, name: &str, host: &HostConfig) {
    let _ = writeln!(out, "{prefix}[registry.hosts.{}]", key(name));
    fields::<HostConfig>(out, prefix, &to_table(host));
    let _ = writeln!(out, "{prefix}# Keys of a mirror:");
    for (i, field) in MirrorConfig::FIELD_NAMES.iter().enumerate() {
        let doc = MirrorConfig::FIELD_DOCS[i].replace('\n', " ");
        let _ = writeln!(out, "{prefix}#   {field}: {doc}");
    }
}

fn doc_of<T: DocumentedFields>(field: &str) -> &'static str {
    T::get_field_docs(field).unwrap_or("")
}

fn comment(out: &mut String, prefix: &str, doc: &str) {
    for line in doc.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{prefix}#");
        } else {
            let _ = writeln!(out, "{prefix}# {line}");
        }
    }
}

/// A TOML key, quoted unless it is a bare key.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}
