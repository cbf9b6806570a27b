//! One-call test environment: a workdir, a registry, optionally the shaped link, starling
//! and the reference peer, and a containerd with them registered as proxy snapshotters,
//! each waited on until it answers through containerd. Fields drop in teardown order.

use std::path::PathBuf;
use std::time::Duration;

use crate::containerd::{Containerd, ContainerdOptions, Ctr};
use crate::error::{Error, Result};
use crate::peer::{Peer, PeerOptions};
use crate::registry::{Registry, RegistryOptions};
use crate::shaped::{ShapedLink, ShapedOptions};
use crate::starling::{Starling, StarlingOptions};
use crate::workdir::Workdir;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Registry options.
    pub registry: RegistryOptions,
    /// Start the shaped link with these options.
    pub shaped: Option<ShapedOptions>,
    /// Start starling with these options.
    pub starling: Option<StarlingOptions>,
    /// Names starling is registered under in containerd (default `["starling"]`; add
    /// `"stargz"` for compatibility tests with `ctr-remote`).
    pub starling_names: Vec<String>,
    /// Start the reference peer (binary, options), registered as `peer_name`.
    pub peer: Option<(PathBuf, PeerOptions)>,
    /// containerd name of the peer (default `stargz-peer`).
    pub peer_name: Option<String>,
    /// More proxy plugins (name, socket) — e.g. a socket a test serves itself; not waited on.
    pub extra_proxies: Vec<(String, PathBuf)>,
    /// containerd namespace (default `default`).
    pub namespace: Option<String>,
    /// containerd's options (version, CRI, extra TOML...); the stack adds the proxy
    /// plugins above to them.
    pub containerd: ContainerdOptions,
}

/// A running environment; dropping it tears everything down in order.
#[derive(Debug)]
pub struct Stack {
    /// containerd (dropped first: tasks killed, containers removed).
    pub containerd: Containerd,
    /// starling, if started.
    pub starling: Option<Starling>,
    /// The peer, if started.
    pub peer: Option<Peer>,
    /// The shaped link, if started.
    pub shaped: Option<ShapedLink>,
    /// The loopback registry.
    pub registry: Registry,
    /// The workdir (dropped last: leftover mounts detached, files removed).
    pub wd: Workdir,
}

impl Stack {
    /// Starts everything `opts` asks for.
    pub fn start(name: &str, opts: StackOptions) -> Result<Stack> {
        let wd = Workdir::new(name)?;
        let registry = Registry::start_with(&wd, opts.registry.clone())?;
        let shaped = match &opts.shaped {
            Some(o) => Some(ShapedLink::start(&wd, &registry, o.clone())?),
            None => None,
        };
        let starling = match &opts.starling {
            Some(o) => {
                // The shaped registry is not on loopback: the daemon would talk HTTPS to it
                // (and fall back to full pulls) unless told it is plain HTTP.
                let mut o = o.clone();
                if let Some(link) = &shaped {
                    o.config = Some(o.config.unwrap_or_default().insecure_host(&link.host()));
                }
                Some(Starling::start(&wd, o)?)
            }
            None => None,
        };
        let peer = match &opts.peer {
            Some((bin, o)) => Some(Peer::start(&wd, bin, *o)?),
            None => None,
        };
        let mut copts = opts.containerd.clone();
        if let Some(ns) = &opts.namespace {
            copts.namespace = ns.clone();
        }
        let mut wait = Vec::new();
        if let Some(s) = &starling {
            let names = if opts.starling_names.is_empty() {
                vec!["starling".to_string()]
            } else {
                opts.starling_names.clone()
            };
            for n in names {
                copts = copts.proxy(&n, s.socket());
                wait.push(n);
            }
        }
        if let Some(p) = &peer {
            let n = opts
                .peer_name
                .clone()
                .unwrap_or_else(|| "stargz-peer".into());
            copts = copts.proxy(&n, p.socket());
            wait.push(n);
        }
        for (n, s) in &opts.extra_proxies {
            copts = copts.proxy(n, s);
        }
        let containerd = Containerd::start(&wd, copts)?;
        for n in &wait {
            containerd
                .ctr()
                .wait_snapshotter(n, Duration::from_secs(60))?;
        }
        Ok(Stack {
            containerd,
            starling,
            peer,
            shaped,
            registry,
            wd,
        })
    }

    /// The `ctr` runner.
    pub fn ctr(&self) -> &Ctr {
        self.containerd.ctr()
    }

    /// starling; [`Error::Missing`] when the stack was started without it.
    pub fn starling(&self) -> Result<&Starling> {
        self.starling
            .as_ref()
            .ok_or_else(|| Error::Missing("the stack was started without starling".into()))
    }

    /// Bytes starling fetched from registries so far ([`Starling::fetched_bytes`]).
    pub fn fetched_bytes(&self) -> Result<f64> {
        self.starling()?.fetched_bytes()
    }
}
