//! A Kubernetes node for one test, minus the kubelet: a private registry with htpasswd auth
//! (the pods' images), an anonymous one (the sandbox image), starling with the shipped
//! `contrib/kubernetes/starling.toml` (its CRI image service on a private socket) and no
//! registry credentials of its own, and containerd (any [`ContainerdVersion`]) with the CRI
//! plugin configured from `contrib/containerd/config.toml` or `config-v3.toml` and starling
//! as its snapshotter. [`CriNode::kubelet`]
//! talks to both as the kubelet does: runtime calls to containerd, image calls to
//! starling's image service. Dropping the node removes every pod first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::CriClient;
use super::config::{contrib_snapshotter, cri_toml, pause_image, push_estargz, CriSettings};
use crate::containerd::{Containerd, ContainerdOptions, Ctr};
use crate::engines::ContainerdVersion;
use crate::error::{Error, IoContext, Result};
use crate::registry::{Registry, RegistryOptions};
use crate::starling::{Starling, StarlingConfig, StarlingOptions};
use crate::workdir::Workdir;

/// starling's Kubernetes settings for a node, relative to the workspace.
pub const CONTRIB_STARLING: &str = "contrib/kubernetes/starling.toml";
/// The kubelet's settings for a node with starling, relative to the workspace.
pub const CONTRIB_KUBELET: &str = "contrib/kubernetes/kubelet-config.yaml";

/// How to start a node.
#[derive(Debug, Clone)]
pub struct CriNodeOptions {
    /// Which containerd.
    pub version: ContainerdVersion,
    /// User and password of the private registry.
    pub user: (String, String),
    /// Serve starling's CRI image service (else the kubelet's image calls go to
    /// containerd directly).
    pub image_service: bool,
    /// Settings added to starling's configuration (dotted keys); `{registry}` in strings
    /// becomes the private registry's `HOST:PORT`.
    pub starling_settings: Vec<(String, toml::Value)>,
    /// Start starling without `--unmount-on-stop` (a restart keeps running pods' layers).
    pub keep_mounts_on_stop: bool,
}

impl Default for CriNodeOptions {
    fn default() -> Self {
        CriNodeOptions {
            version: ContainerdVersion::default(),
            user: ("alice".into(), "pod-secret-pw".into()),
            image_service: true,
            starling_settings: Vec::new(),
            keep_mounts_on_stop: true,
        }
    }
}

/// A running node; see the module docs.
#[derive(Debug)]
pub struct CriNode {
    /// The kubelet's view: runtime service of containerd, image service of starling.
    pub kubelet: CriClient,
    /// containerd with the CRI plugin (its `ctr` uses the `k8s.io` namespace).
    pub containerd: Containerd,
    /// starling.
    pub starling: Starling,
    /// The pods' registry (htpasswd).
    pub registry: Registry,
    /// The anonymous registry of the sandbox image.
    pub public: Registry,
    /// The sandbox image's reference.
    pub pause: String,
    /// The snapshotter name containerd's CRI plugin uses (from the shipped config).
    pub snapshotter: String,
    image_socket: PathBuf,
    opts: CriNodeOptions,
    /// The workdir (dropped last).
    pub wd: Workdir,
}

/// The value of `key:` in a flat YAML file (the shipped kubelet settings).
pub fn yaml_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// The shipped starling settings for a node, as a config to adjust.
pub fn contrib_starling_config() -> Result<StarlingConfig> {
    let path = crate::starling::workspace_root().join(CONTRIB_STARLING);
    let text = std::fs::read_to_string(&path).ctx(|| format!("read {}", path.display()))?;
    StarlingConfig::raw(&text)
}

/// Checks that the shipped kubelet settings point at the shipped starling and containerd
/// sockets: `imageServiceEndpoint` is starling's `image_service_address`, and
/// `containerRuntimeEndpoint` the address starling forwards to.
pub fn check_contrib_kubelet() -> Result<()> {
    let root = crate::starling::workspace_root();
    let path = root.join(CONTRIB_KUBELET);
    let kubelet = std::fs::read_to_string(&path).ctx(|| format!("read {}", path.display()))?;
    let starling: toml::Table = std::fs::read_to_string(root.join(CONTRIB_STARLING))
        .ctx(|| format!("read {CONTRIB_STARLING}"))?
        .parse()
        .map_err(|e| Error::invalid(CONTRIB_STARLING, format!("{e}")))?;
    let k = &starling["kubernetes"];
    let want = [
        ("imageServiceEndpoint", k["image_service_address"].as_str()),
        ("containerRuntimeEndpoint", k["runtime_address"].as_str()),
    ];
    for (key, socket) in want {
        let got = yaml_value(&kubelet, key);
        let socket = socket.unwrap_or_default();
        if got.as_deref() != Some(&format!("unix://{socket}")) {
            return Err(Error::invalid(
                CONTRIB_KUBELET,
                format!("{key} is {got:?}, starling's settings say unix://{socket}"),
            ));
        }
    }
    Ok(())
}

/// `v` with `from` replaced by `to` in every string.
fn substitute(v: &toml::Value, from: &str, to: &str) -> toml::Value {
    match v {
        toml::Value::String(s) => toml::Value::String(s.replace(from, to)),
        toml::Value::Array(a) => {
            toml::Value::Array(a.iter().map(|x| substitute(x, from, to)).collect())
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, x)| (k.clone(), substitute(x, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl CriNode {
    /// Starts a node (see the module docs).
    pub fn start(name: &str, opts: CriNodeOptions) -> Result<CriNode> {
        let wd = Workdir::new(name)?;
        let public = Registry::start(&wd)?;
        let (user, password) = &opts.user;
        let registry = Registry::start_with(&wd, RegistryOptions::htpasswd(user, password))?;
        let pause = push_estargz(&pause_image()?, &wd.join("images"), &public, "pause:3.10")?;
        let snapshotter = contrib_snapshotter(opts.version)?;

        let cdir = wd.join("containerd");
        let csock = cdir.join("c.sock");
        let image_socket = wd.join("img.sock");
        let mut cfg = contrib_starling_config()?
            .set("metrics_address", "127.0.0.1:0")
            // No credentials on the node: no docker config, no [registry.hosts] entries.
            .set(
                "registry.docker_config",
                wd.join("no-docker-config.json")
                    .to_string_lossy()
                    .into_owned(),
            )
            .set("fetch.background_fetch", false)
            .set("fetch.request_timeout", "10s")
            .set(
                "kubernetes.runtime_address",
                csock.to_string_lossy().into_owned(),
            );
        cfg = if opts.image_service {
            cfg.set(
                "kubernetes.image_service_address",
                image_socket.to_string_lossy().into_owned(),
            )
        } else {
            cfg.set("kubernetes.image_service_address", "")
        };
        for (k, v) in &opts.starling_settings {
            cfg = cfg.set(k, substitute(v, "{registry}", &registry.host()));
        }
        let starling = Starling::start(
            &wd,
            StarlingOptions {
                config: Some(cfg),
                log_level: Some("info,fusefs=info".into()),
                keep_mounts_on_stop: opts.keep_mounts_on_stop,
                ..Default::default()
            },
        )?;

        std::fs::create_dir_all(&cdir).ctx(|| format!("create {}", cdir.display()))?;
        let settings = CriSettings {
            sandbox_image: pause.clone(),
            plain_http_hosts: vec![public.host(), registry.host()],
        };
        let copts = ContainerdOptions {
            version: opts.version,
            namespace: super::NAMESPACE.into(),
            cri: true,
            extra_toml: cri_toml(opts.version, &cdir, &settings)?,
            ..Default::default()
        }
        .proxy(&snapshotter, starling.socket());
        let containerd = Containerd::start_in(&cdir, copts, false)?;
        containerd
            .ctr()
            .wait_snapshotter(&snapshotter, Duration::from_secs(60))?;
        let images = if opts.image_service {
            image_socket.clone()
        } else {
            csock.clone()
        };
        let kubelet = CriClient::new(&csock, &images)?;
        kubelet.wait_ready(Duration::from_secs(60))?;
        Ok(CriNode {
            kubelet,
            containerd,
            starling,
            registry,
            public,
            pause,
            snapshotter,
            image_socket,
            opts,
            wd,
        })
    }

    /// Restarts starling (SIGTERM: running pods' lazy layers stay with the fd store holder
    /// when `keep_mounts_on_stop`) and waits until containerd reaches it again (its gRPC
    /// client refuses calls for a few seconds after a failed reconnect).
    pub fn restart_starling(&mut self) -> Result<()> {
        self.starling.restart()?;
        self.containerd
            .ctr()
            .wait_snapshotter(&self.snapshotter, Duration::from_secs(60))
    }

    /// A client whose image calls go to containerd directly, past starling (as a kubelet
    /// without `--image-service-endpoint`).
    pub fn containerd_direct(&self) -> Result<CriClient> {
        CriClient::new(self.containerd.address(), self.containerd.address())
    }

    /// `ctr` in the CRI plugin's namespace.
    pub fn ctr(&self) -> &Ctr {
        self.containerd.ctr()
    }

    /// starling's image service socket.
    pub fn image_socket(&self) -> &Path {
        &self.image_socket
    }

    /// The pods' credentials file starling keeps.
    pub fn credentials_file(&self) -> PathBuf {
        self.starling.root().join("cri/credentials.json")
    }

    /// The private registry's user and password.
    pub fn user(&self) -> (&str, &str) {
        (&self.opts.user.0, &self.opts.user.1)
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if let Err(e) = self.kubelet.remove_all_pods() {
            eprintln!("warning: CRI node teardown: {e}");
        }
    }
}
