//! starling's configuration: the TOML file's types (one module per section), their defaults
//! (printable with `starling config default`, every key with its doc comment) and validation
//! that names the offending key and its line.
//!
//! ```toml
//! root = "/var/lib/starling"
//! [fetch]
//! request_timeout = "30s"
//! [registry.hosts."10.0.0.5:5000"]
//! insecure = true
//! mirrors = [{ host = "mirror.local:5000", insecure = true }]
//! ```
//!
//! Durations are strings (`"30s"`, `"500ms"`, `"1m 30s"`); sizes are strings with a unit
//! (`"64MiB"`, `"20GiB"`) or integers (bytes). Unknown keys are errors.

mod cache;
mod daemon;
mod documented_toml;
mod error;
mod fetch;
mod fuse;
pub mod hosts_dir;
mod kubernetes;
mod merge;
mod registry;
mod snapshotter;
pub mod units;

use std::path::{Path, PathBuf};

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

pub use cache::{CacheConfig, MIN_MAX_SIZE};
pub use daemon::{DaemonConfig, MIN_RESTART_GRACE};
pub use error::{ConfigError, Invalid, KeyPath, KeySegment, Location};
pub use fetch::FetchConfig;
pub use fuse::FuseConfig;
pub use kubernetes::{
    CredentialProviderConfig, KubernetesConfig, CREDENTIAL_PROVIDER_API_VERSIONS,
};
pub use merge::{MergeConfig, MergeMode};
pub use registry::{check_host, HostConfig, MirrorConfig, RegistryConfig, Secret};
pub use snapshotter::SnapshotterConfig;

/// The default configuration file path of the daemon.
pub const DEFAULT_PATH: &str = "/etc/starling/config.toml";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State directory: metadata store, snapshot dirs, and (unless `cache.dir` is set) the
    /// chunk cache.
    pub root: PathBuf,
    /// Unix socket on which the daemon serves containerd's snapshots API.
    pub address: PathBuf,
    /// Log filter: "error", "warn", "info", "debug", "trace", or a tracing directive list
    /// such as "fusefs=debug,info". The command line's --log-level overrides it.
    pub log_level: String,
    /// IP:PORT for the Prometheus metrics endpoint; "" turns it off.
    pub metrics_address: String,
    /// Chunk cache on disk and in memory.
    pub cache: CacheConfig,
    /// Fetching layer bytes from registries.
    pub fetch: FetchConfig,
    /// FUSE mounts of lazy layers.
    pub fuse: FuseConfig,
    /// Registry hosts, mirrors and credentials.
    pub registry: RegistryConfig,
    /// The containerd-facing snapshotter.
    pub snapshotter: SnapshotterConfig,
    /// Merged snapshots.
    pub merge: MergeConfig,
    /// Stopping and restarting the daemon: its lazy layers' mounts across a restart.
    pub daemon: DaemonConfig,
    /// Kubernetes nodes: the CRI image service that keeps pods' pull credentials for lazy
    /// layers, and kubelet credential provider plugins.
    pub kubernetes: KubernetesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/starling"),
            address: PathBuf::from("/run/starling/starling.sock"),
            log_level: "info".to_string(),
            metrics_address: String::new(),
            cache: CacheConfig::default(),
            fetch: FetchConfig::default(),
            fuse: FuseConfig::default(),
            registry: RegistryConfig::default(),
            snapshotter: SnapshotterConfig::default(),
            merge: MergeConfig::default(),
            daemon: DaemonConfig::default(),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors (a file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            location: e.span().map(|s| Location::of_offset(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = key_path(e.path());
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            if let Some(name) = unknown_field_name(&message) {
                if key.0.last() != Some(&KeySegment::Key(name.to_string())) {
                    key = key.key(name);
                }
            }
            let location = inner
                .span()
                .map(|s| Location::of_offset(text, s.start))
                .or_else(|| locate(text, &key));
            ConfigError::Invalid {
                origin: origin.to_string(),
                location,
                key,
                message,
            }
        })?;
        config.check().map_err(|inv| ConfigError::Invalid {
            origin: origin.to_string(),
            location: locate(text, &inv.key),
            key: inv.key,
            message: inv.message,
        })?;
        Ok(config)
    }

    /// Checks values that types alone cannot (ranges, hosts, headers, combinations).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|inv| ConfigError::Invalid {
            origin: "<config>".to_string(),
            location: None,
            key: inv.key,
            message: inv.message,
        })
    }

    fn check(&self) -> Result<(), Invalid> {
        let top = KeyPath::default();
        if !self.root.is_absolute() {
            return Err(Invalid::new(top.key("root"), "must be an absolute path"));
        }
        if !self.address.is_absolute() {
            return Err(Invalid::new(top.key("address"), "must be an absolute path"));
        }
        if self.address.as_os_str().len() > 100 {
            return Err(Invalid::new(
                top.key("address"),
                "is too long for a unix socket path (at most 100 bytes)",
            ));
        }
        if !self.metrics_address.is_empty()
            && self
                .metrics_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(Invalid::new(
                top.key("metrics_address"),
                format!(
                    "{:?} is not IP:PORT (or \"\" for off)",
                    self.metrics_address
                ),
            ));
        }
        self.cache.validate(&top.key("cache"))?;
        self.fetch.validate(&top.key("fetch"))?;
        self.fuse.validate(&top.key("fuse"))?;
        self.registry.validate(&top.key("registry"))?;
        self.daemon.validate(&top.key("daemon"))?;
        self.kubernetes.validate(&top.key("kubernetes"))?;
        if self.kubernetes.image_service_address == self.address {
            return Err(Invalid::new(
                top.key("kubernetes").key("image_service_address"),
                "must differ from `address` (the snapshots API socket)",
            ));
        }
        Ok(())
    }

    /// The chunk cache directory (`cache.dir`, or `<root>/cache`).
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.resolved_dir(&self.root)
    }

    /// This configuration as TOML with every key's documentation as comments
    /// (`starling config default` prints it for the defaults). Parses back to `self`.
    pub fn to_toml_documented(&self) -> String {
        documented_toml::render(self)
    }
}

fn key_path(path: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    KeyPath(
        path.iter()
            .filter_map(|seg| match seg {
                Segment::Seq { index } => Some(KeySegment::Index(*index)),
                Segment::Map { key } => Some(KeySegment::Key(key.clone())),
                Segment::Enum { variant } => Some(KeySegment::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Finds the line of `key` in `text` (the deepest part of the path that exists).
fn locate(text: &str, key: &KeyPath) -> Option<Location> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table = Some(root.get_ref());
    let mut array = None;
    for seg in &key.0 {
        let found = match (seg, table, array) {
            (KeySegment::Key(k), Some(t), _) => t
                .iter()
                .find(|(name, _)| name.get_ref().as_ref() == k.as_str())
                .map(|(name, v)| (name.span(), v)),
            (KeySegment::Index(i), _, Some(a)) => {
                let a: &toml::de::DeArray = a;
                a.get(*i).map(|v| (v.span(), v))
            }
            _ => None,
        };
        let Some((s, v)) = found else { break };
        span = Some(s);
        table = None;
        array = None;
        match v.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    span.map(|s| Location::of_offset(text, s.start))
}

#[cfg(test)]
mod tests;
