//! `starling merge`: create a merged snapshot through containerd's snapshots service (or
//! straight through starling's socket): Prepare (or View) KEY with the merge labels,
//! optionally Commit it as NAME, and print the mounts.
//!
//! Through containerd, KEY, NAME and the inputs are names in `--namespace`, and the
//! snapshot gets the `containerd.io/gc.root` label (so containerd's GC keeps it until it
//! is removed, e.g. `ctr snapshots rm KEY`) unless `--no-gc-root`. Pointed at starling's
//! own socket (detected: it has no version service), KEY and the inputs are backend keys
//! and no GC label is added.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::types::Mount;

use snapshotter::merge::{MergeMode, MODE_LABEL, SOURCES_LABEL};

/// containerd's label that makes its GC keep a resource.
const GC_ROOT: &str = "containerd.io/gc.root";

/// Arguments of `starling merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// containerd's socket, or starling's own socket (then KEY and INPUTs are backend keys).
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(
        long,
        short = 'n',
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Snapshotter name starling is registered under in containerd.
    #[arg(long, default_value = "starling")]
    pub snapshotter: String,
    /// Merge mode: auto (stack if it fits, else hardlink), stack, hardlink or copy
    /// [default: the daemon's configured mode].
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<MergeMode>,
    /// Commit the merged snapshot under this name (then no mounts are printed).
    #[arg(long, value_name = "NAME")]
    pub commit: Option<String>,
    /// Create a read-only view instead of an active snapshot.
    #[arg(long, conflicts_with = "commit")]
    pub view: bool,
    /// Extra label on the snapshot (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Do not add containerd's gc.root label (containerd's GC may then remove the
    /// snapshot unless a lease or container references it).
    #[arg(long)]
    pub no_gc_root: bool,
    /// Print `mount` commands for this target instead of the mounts as JSON.
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Key of the new snapshot.
    pub key: String,
    /// Input snapshots (committed), bottom first: `A B C` applies C's changes on B's on A's.
    #[arg(required = true)]
    pub inputs: Vec<String>,
}

fn parse_mode(s: &str) -> Result<MergeMode, String> {
    s.parse().map_err(|e: snapshotter::Error| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not KEY=VALUE")),
    }
}

/// The labels the request carries.
fn request_labels(args: &Args, gc_root: bool) -> anyhow::Result<HashMap<String, String>> {
    if let Some(bad) = args.inputs.iter().find(|i| i.is_empty() || i.contains(',')) {
        bail!("input {bad:?}: snapshot names must be non-empty and contain no comma");
    }
    let mut labels: HashMap<String, String> = args.labels.iter().cloned().collect();
    labels.insert(SOURCES_LABEL.into(), args.inputs.join(","));
    if let Some(mode) = args.mode {
        labels.insert(MODE_LABEL.into(), mode.as_str().into());
    }
    if gc_root {
        labels.insert(
            GC_ROOT.into(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        );
    }
    Ok(labels)
}

fn request<T>(msg: T, namespace: &str) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "containerd-namespace",
        namespace
            .parse()
            .with_context(|| format!("namespace {namespace:?}"))?,
    );
    Ok(req)
}

fn status(e: containerd_client::tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let mounts = runtime.block_on(merge(&args))?;
    match (&args.commit, &args.target) {
        (Some(name), _) => println!("committed {name}"),
        (None, Some(target)) => {
            for m in &mounts {
                println!(
                    "mount -t {} {} {} -o {}",
                    m.r#type,
                    m.source,
                    target.display(),
                    m.options.join(",")
                );
            }
        }
        (None, None) => {
            let json: Vec<serde_json::Value> = mounts
                .iter()
                .map(|m| {
                    serde_json::json!({"type": m.r#type, "source": m.source, "options": m.options})
                })
                .collect();
            println!("{}", serde_json::Value::Array(json));
        }
    }
    Ok(())
}

async fn merge(args: &Args) -> anyhow::Result<Vec<Mount>> {
    let channel: Channel = containerd_client::connect(&args.address)
        .await
        .with_context(|| format!("connect to {}", args.address.display()))?;
    // containerd answers the version service; starling's socket serves snapshots only.
    let via_containerd = VersionClient::new(channel.clone())
        .version(request((), &args.namespace)?)
        .await
        .is_ok();
    let labels = request_labels(args, via_containerd && !args.no_gc_root)?;
    let mut client = SnapshotsClient::new(channel);
    let ns = &args.namespace;
    let mounts = if args.view {
        let msg = ViewSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            key: args.key.clone(),
            parent: String::new(),
            labels: labels.clone(),
        };
        client
            .view(request(msg, ns)?)
            .await
            .map_err(status)
            .with_context(|| format!("view {:?}", args.key))?
            .into_inner()
            .mounts
    } else {
        let msg = PrepareSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            key: args.key.clone(),
            parent: String::new(),
            labels: labels.clone(),
        };
        client
            .prepare(request(msg, ns)?)
            .await
            .map_err(status)
            .with_context(|| format!("prepare {:?}", args.key))?
            .into_inner()
            .mounts
    };
    if let Some(name) = &args.commit {
        let mut commit_labels = HashMap::new();
        if let Some(v) = labels.get(GC_ROOT) {
            commit_labels.insert(GC_ROOT.to_string(), v.clone());
        }
        let msg = CommitSnapshotRequest {
            snapshotter: args.snapshotter.clone(),
            name: name.clone(),
            key: args.key.clone(),
            labels: commit_labels,
        };
        client
            .commit(request(msg, ns)?)
            .await
            .map_err(status)
            .with_context(|| format!("commit {:?} as {name:?}", args.key))?;
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("merge").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_become_labels() {
        let a = parse(&[
            "--mode",
            "hardlink",
            "--label",
            "x=1",
            "--namespace",
            "ns",
            "k",
            "a",
            "b",
        ])
        .unwrap();
        assert_eq!(a.namespace, "ns");
        let l = request_labels(&a, true).unwrap();
        assert_eq!(l[SOURCES_LABEL], "a,b");
        assert_eq!(l[MODE_LABEL], "hardlink");
        assert_eq!(l["x"], "1");
        assert!(l[GC_ROOT].ends_with('Z'), "{}", l[GC_ROOT]);
        let l = request_labels(&parse(&["k", "a"]).unwrap(), false).unwrap();
        assert!(!l.contains_key(GC_ROOT) && !l.contains_key(MODE_LABEL));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["k"]).is_err(), "at least one input");
        assert!(parse(&["--mode", "zip", "k", "a"]).is_err());
        assert!(parse(&["--label", "novalue", "k", "a"]).is_err());
        assert!(parse(&["--view", "--commit", "n", "k", "a"]).is_err());
        let a = parse(&["k", "a,b"]).unwrap();
        assert!(request_labels(&a, false).is_err(), "comma in a name");
    }
}
