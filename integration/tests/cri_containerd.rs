//! The CRI path as the kubelet drives it, per containerd version (each scenario written
//! once; one `#[test]` line per version): containerd's CRI plugin configured from the
//! shipped `contrib/containerd/config.toml`, starling from `contrib/kubernetes/*.toml`, a
//! docker-registry with htpasswd auth for the pods' images, an anonymous one for the
//! sandbox image, and the CRI calls a kubelet makes (runtime calls to containerd, image
//! calls to starling's image service as `contrib/kubernetes/kubelet-config.yaml` says).
//! The node has no registry credentials of its own.
//!
//! - `pod_credentials`: ImageFsInfo, then PullImage with the pod's credentials through
//!   the image service: every layer is mounted lazily (metrics; no layer blob in
//!   containerd's content store), the credentials are kept on disk (0600);
//!   RunPodSandbox (the eStargz sandbox image is lazy too), CreateContainer,
//!   StartContainer: the container's output; ExecSync reads a file through the lazy layer
//!   (digest checked); starling is restarted and a file not read before is read (fetched
//!   with the credentials from disk); a pull with a wrong password fails with the
//!   registry's refusal (no hang) and leaves the kept credentials as they were; the same
//!   image pulled past starling (containerd's own image service, pod credentials starling
//!   never sees) falls back to a full pull with a WARN naming the refusal; RemoveImage
//!   forgets the credentials of a repository with no image left and keeps the others.
//! - `credential_provider`: starling runs a kubelet credential provider plugin (a shell
//!   script answering the htpasswd credentials, configured as
//!   `contrib/kubernetes/credential-provider.toml` shows); images pulled past the image
//!   service are lazy with the plugin's credentials; the answer is cached as it says (per
//!   image or per registry); a wrong password from the plugin makes the layers fall back to
//!   a full pull with a WARN naming the refusal.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use integration::cri::node::{check_contrib_kubelet, CONTRIB_KUBELET};
use integration::cri::{push_estargz, read_container_log, CriNode, CriNodeOptions};
use integration::engines::ContainerdVersion;
use integration::images::busybox;
use integration::metrics::metric;
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::{prereq, require};
use sha2::Digest as _;

fn node_prereqs(version: ContainerdVersion) -> Result<(), String> {
    prereq::containerd_stack()?;
    version.check()?;
    prereq::fuse()?;
    prereq::starling_binary()
}

const A_LEN: usize = 1 << 20;
const B_LEN: usize = 6 << 20;

/// busybox + a data layer (`data/a.bin` 1 MiB, `data/b.bin` 6 MiB: two eStargz chunks,
/// `data/hello`); `seed` makes the data layer differ between images.
fn app_image(seed: u64) -> ImageBuilder {
    busybox().unwrap().layer(
        LayerBuilder::new()
            .dir("data")
            .file(
                "data/a.bin",
                Content::Pattern {
                    len: A_LEN as u64,
                    seed,
                },
            )
            .file(
                "data/b.bin",
                Content::Pattern {
                    len: B_LEN as u64,
                    seed: seed + 1,
                },
            )
            .file(
                "data/hello",
                format!("hello from data layer {seed}\n").into_bytes(),
            ),
    )
}

fn pattern_sha256(len: usize, seed: u64) -> String {
    let bytes = Content::Pattern {
        len: len as u64,
        seed,
    }
    .to_vec()
    .unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

fn metrics(node: &CriNode) -> String {
    node.starling.metrics().unwrap()
}

fn mounted(node: &CriNode) -> f64 {
    metric(
        &metrics(node),
        "starling_lazy_prepares_total",
        &["outcome=\"mounted\""],
    )
}

/// Layer digests of `repo:tag` in the node's private registry.
fn layer_digests(node: &CriNode, repo: &str, tag: &str) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&node.registry.manifest(repo, tag).unwrap().body).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Blobs in containerd's content store (CRI namespace).
fn content_blobs(node: &CriNode) -> String {
    node.ctr().ctr_ok(["content", "ls", "-q"]).unwrap()
}

fn exec_sha256(node: &CriNode, id: &str, path: &str) -> String {
    let out = node
        .kubelet
        .exec_sync(id, &["sha256sum", path], Duration::from_secs(60))
        .unwrap();
    assert_eq!(out.exit_code, 0, "sha256sum {path}: {out:?}");
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn pod_credentials(version: ContainerdVersion) {
    require!(node_prereqs(version));
    check_contrib_kubelet().unwrap_or_else(|e| panic!("{CONTRIB_KUBELET}: {e}"));
    let mut node = CriNode::start(
        "cri-pod",
        CriNodeOptions {
            version,
            ..Default::default()
        },
    )
    .unwrap();
    let (user, password) = {
        let (u, p) = node.user();
        (u.to_string(), p.to_string())
    };
    let images = node.wd.join("images");
    let app = push_estargz(&app_image(21), &images, &node.registry, "team/app:v1").unwrap();
    let other = push_estargz(&app_image(31), &images, &node.registry, "team/other:v1").unwrap();

    // The kubelet's first call on an image endpoint.
    node.kubelet.image_fs_info().unwrap();

    // PullImage with the pod's credentials, through starling's image service.
    let mounted_before = mounted(&node);
    let image_ref = node.kubelet.pull_with(&app, &user, &password).unwrap();
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let app_layers = layer_digests(&node, "team/app", "v1");
    assert_eq!(
        mounted(&node) - mounted_before,
        app_layers.len() as f64,
        "every layer of the pod's image is mounted lazily\n{}",
        node.starling.log()
    );
    let blobs = content_blobs(&node);
    for l in &app_layers {
        assert!(
            !blobs.contains(l.as_str()),
            "layer {l} was downloaded:\n{blobs}"
        );
    }
    let creds = node.credentials_file();
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", creds.display());
    let kept = std::fs::read_to_string(&creds).unwrap();
    assert!(kept.contains("team/app") && kept.contains(&user), "{kept}");

    // The pod: sandbox (lazy eStargz pause image from the anonymous registry) + container.
    let log_dir = node.wd.join("pods/app");
    let before_sandbox = mounted(&node);
    let pod = node.kubelet.run_pod("app", &log_dir).unwrap();
    assert_eq!(
        mounted(&node) - before_sandbox,
        1.0,
        "the sandbox image's own layer is mounted lazily (its busybox layer is the app's)"
    );
    let id = node
        .kubelet
        .create_container(
            &pod,
            "app",
            &app,
            &["/bin/sh", "-c", "cat /data/hello; exec sleep 3600"],
        )
        .unwrap();
    node.kubelet.start_container(&id).unwrap();
    let log = log_dir.join("app.log");
    integration::poll::wait_for("the container's output", Duration::from_secs(60), || {
        read_container_log(&log).contains("hello from data layer 21")
    })
    .unwrap_or_else(|e| panic!("{e}\nlog: {}", read_container_log(&log)));
    assert_eq!(
        exec_sha256(&node, &id, "/data/a.bin"),
        pattern_sha256(A_LEN, 21)
    );

    // A restarted daemon reads more of the running pod's files with the kept credentials.
    node.restart_starling().unwrap();
    let fetched_before = node.starling.fetched_bytes().unwrap_or(0.0);
    assert_eq!(
        exec_sha256(&node, &id, "/data/b.bin"),
        pattern_sha256(B_LEN, 22)
    );
    let fetched = node.starling.fetched_bytes().unwrap() - fetched_before;
    assert!(
        fetched >= (B_LEN / 2) as f64,
        "b.bin came from the registry after the restart ({fetched} bytes)"
    );

    // A wrong password: the registry's refusal, quickly; the kept credentials stay.
    let err = node
        .kubelet
        .pull(
            &other,
            Some(cri::api::AuthConfig {
                username: user.clone(),
                password: "not-the-password".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
    let status = err.status().unwrap_or_else(|| panic!("no answer: {err:?}"));
    let msg = status.message().to_ascii_lowercase();
    assert!(
        msg.contains("401") || msg.contains("unauthorized"),
        "{status:?}"
    );
    let kept = std::fs::read_to_string(&creds).unwrap();
    assert!(
        !kept.contains("team/other") && kept.contains("team/app"),
        "{kept}"
    );
    assert!(!kept.contains("not-the-password"), "{kept}");

    // Past starling (containerd's own image service: starling never sees the pod's
    // credentials) the layers fall back to a full pull, with a WARN naming the refusal.
    let direct = node.containerd_direct().unwrap();
    direct.pull_with(&other, &user, &password).unwrap();
    let warn = node
        .starling
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("falls back to a full pull"))
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        warn.iter()
            .any(|l| l.contains("401") && l.contains("no credentials")),
        "{warn:#?}"
    );
    let blobs = content_blobs(&node);
    let other_layers = layer_digests(&node, "team/other", "v1");
    assert!(
        blobs.contains(other_layers.last().unwrap().as_str()),
        "the data layer was downloaded in full:\n{blobs}"
    );
    // Through the image service the credentials are kept (the image is there already).
    node.kubelet.pull_with(&other, &user, &password).unwrap();
    assert!(std::fs::read_to_string(&creds)
        .unwrap()
        .contains("team/other"));

    // RemoveImage: the repository with no image left is forgotten, the other kept.
    node.kubelet.remove_all_pods().unwrap();
    node.kubelet.remove_image(&app).unwrap();
    assert!(node.kubelet.image_status(&app).unwrap().is_none());
    let kept = std::fs::read_to_string(&creds).unwrap();
    assert!(
        !kept.contains("team/app") && kept.contains("team/other"),
        "{kept}"
    );
    assert!(
        !metrics(&node).contains("starling_fetch_digest_mismatches_total 1"),
        "no corrupt data"
    );
}

/// A credential provider plugin answering the registry's credentials for `host`
/// (cacheKeyType Registry), except for images of `team/wrong`: a wrong password for that
/// image only (cacheKeyType Image). It logs each request to `<script>.log`.
fn provider_script(path: &std::path::Path, host: &str, user: &str, password: &str) {
    let answer = |key: &str, password: &str| {
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": key,
            "cacheDuration": "5m0s",
            "auth": { host: { "username": user, "password": password } },
        })
    };
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nreq=$(cat)\necho \"$req\" >> \"$0.log\"\n\
             case \"$req\" in\n*team/wrong*) cat <<'EOF'\n{}\nEOF\n;;\n\
             *) cat <<'EOF'\n{}\nEOF\n;;\nesac\n",
            answer("Image", "not-the-password"),
            answer("Registry", password)
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn credential_provider(version: ContainerdVersion) {
    require!(node_prereqs(version));
    // The shipped example, with the test's plugin in place of the cloud one.
    let shipped =
        integration::starling::workspace_root().join("contrib/kubernetes/credential-provider.toml");
    let shipped: toml::Table = std::fs::read_to_string(&shipped).unwrap().parse().unwrap();
    let mut provider = shipped["kubernetes"]["credential_providers"][0]
        .as_table()
        .unwrap()
        .clone();
    let bin = tempfile_dir();
    provider.insert("name".into(), "test-provider".into());
    provider.insert("args".into(), toml::Value::Array(vec![]));
    let mut settings = vec![
        (
            "kubernetes.credential_provider_bin_dir".to_string(),
            toml::Value::from(bin.to_string_lossy().into_owned()),
        ),
        (
            "kubernetes.credential_provider_timeout".to_string(),
            shipped["kubernetes"]["credential_provider_timeout"].clone(),
        ),
    ];
    // `{registry}` becomes the private registry's HOST:PORT once it runs.
    provider.insert(
        "match_images".into(),
        toml::Value::Array(vec!["{registry}".into()]),
    );
    settings.push((
        "kubernetes.credential_providers".to_string(),
        toml::Value::Array(vec![toml::Value::Table(provider)]),
    ));
    let node = CriNode::start(
        "cri-provider",
        CriNodeOptions {
            version,
            image_service: false,
            starling_settings: settings,
            ..Default::default()
        },
    )
    .unwrap();
    let (user, password) = {
        let (u, p) = node.user();
        (u.to_string(), p.to_string())
    };
    let script = bin.join("test-provider");
    provider_script(&script, &node.registry.host(), &user, &password);
    let images = node.wd.join("images");
    let app = push_estargz(&app_image(41), &images, &node.registry, "team/prov:v1").unwrap();
    let app2 = push_estargz(&app_image(51), &images, &node.registry, "team/prov2:v1").unwrap();
    let wrong = push_estargz(&app_image(61), &images, &node.registry, "team/wrong:v1").unwrap();

    // The plugin's wrong password for one image: containerd (with the kubelet's
    // credentials) pulls it, starling's layers fall back to a full pull with a WARN naming
    // the refusal; no hang.
    let before = mounted(&node);
    node.kubelet.pull_with(&wrong, &user, &password).unwrap();
    assert_eq!(mounted(&node), before, "{}", node.starling.log());
    let warn = node
        .starling
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("falls back to a full pull"))
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        warn.iter()
            .any(|l| l.contains("401") && l.contains("credentials or token refused")),
        "{warn:#?}"
    );
    let wrong_layers = layer_digests(&node, "team/wrong", "v1");
    assert!(
        content_blobs(&node).contains(wrong_layers.last().unwrap().as_str()),
        "the data layer was downloaded in full"
    );

    // The kubelet (with its own credential provider) passes credentials to containerd;
    // starling gets its own from the plugin.
    let before = mounted(&node);
    node.kubelet.pull_with(&app, &user, &password).unwrap();
    node.kubelet.pull_with(&app2, &user, &password).unwrap();
    // The data layers of both (busybox's layer came in full with team/wrong).
    assert_eq!(
        mounted(&node) - before,
        2.0,
        "lazy with the plugin's credentials\n{}",
        node.starling.log()
    );
    let asked = std::fs::read_to_string(script.with_extension("log")).unwrap_or_default();
    let requests: Vec<serde_json::Value> = asked
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        requests.len(),
        2,
        "one run per image key: team/wrong's answer is cached for that image, the next \
         for the registry\n{asked}"
    );
    assert!(requests
        .iter()
        .all(|r| r["kind"] == "CredentialProviderRequest"));
    let image = |i: usize| requests[i]["image"].as_str().unwrap().to_string();
    let host = node.registry.host();
    assert!(
        image(0).starts_with(&format!("{host}/team/wrong")),
        "{asked}"
    );
    assert!(
        image(1).starts_with(&format!("{host}/team/prov")),
        "{asked}"
    );

    let log_dir = node.wd.join("pods/prov");
    let pod = node.kubelet.run_pod("prov", &log_dir).unwrap();
    let id = node
        .kubelet
        .create_container(
            &pod,
            "prov",
            &app,
            &["/bin/sh", "-c", "cat /data/hello; exec sleep 3600"],
        )
        .unwrap();
    node.kubelet.start_container(&id).unwrap();
    assert_eq!(
        exec_sha256(&node, &id, "/data/b.bin"),
        pattern_sha256(B_LEN, 42)
    );
    let _ = std::fs::remove_dir_all(&bin);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "stl-cri-bin-{}",
        integration::workdir::unique_token(6)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn containerd_1_6_pod_credentials() {
    pod_credentials(ContainerdVersion::V1_6);
}

#[test]
fn containerd_1_7_pod_credentials() {
    pod_credentials(ContainerdVersion::V1_7);
}

#[test]
fn containerd_2_1_pod_credentials() {
    pod_credentials(ContainerdVersion::V2_1);
}

#[test]
fn containerd_1_6_credential_provider() {
    credential_provider(ContainerdVersion::V1_6);
}

#[test]
fn containerd_1_7_credential_provider() {
    credential_provider(ContainerdVersion::V1_7);
}

#[test]
fn containerd_2_1_credential_provider() {
    credential_provider(ContainerdVersion::V2_1);
}
