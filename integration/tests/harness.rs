//! Smoke tests proving the harness against the real parts: docker-registry, skopeo,
//! containerd + runc with the overlayfs snapshotter, treecmp against the reference
//! extraction, the shaped link, and clean teardown.

use std::time::Duration;

use integration::containerd::{Containerd, ContainerdOptions};
use integration::prereq;
use integration::registry::Registry;
use integration::require;
use integration::workdir::Workdir;

#[test]
fn busybox_push_pull_run_with_overlayfs() {
    require!(prereq::containerd_stack());
    let wd = Workdir::new("bb").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let img = integration::images::busybox()
        .unwrap()
        .push(&reg, "busybox:latest")
        .unwrap();
    assert!(reg.has_tag("busybox", "latest"));
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    let r = reg.reference("busybox:latest");
    ctr.pull(&r, "overlayfs").unwrap();
    assert_eq!(ctr.image_chain_id(&r).unwrap(), img.chain_ids()[0]);
    let out = ctr
        .run_ok(
            &r,
            "overlayfs",
            &[
                "/bin/sh",
                "-c",
                "echo hello from busybox; cat /etc/passwd | head -1",
            ],
        )
        .unwrap();
    assert_eq!(out, "hello from busybox\nroot:x:0:0:root:/root:/bin/sh\n");
    let fail = ctr
        .run(&r, "overlayfs", &["/bin/sh", "-c", "exit 3"])
        .unwrap();
    assert_eq!(fail.status.code(), Some(3));
    let log = reg.access_since_settled(0);
    assert!(
        log.iter()
            .any(|e| e.is_blob_get() && e.uri.contains(&img.layers[0].digest)),
        "{log:?}"
    );
    ctr.remove_all_images().unwrap();
    assert!(ctr.images().unwrap().is_empty());
    let _ = Duration::from_secs(1);
}

#[test]
fn edge_image_unpacked_by_containerd_equals_reference_stack() {
    use integration::extract::ExtractOptions;
    use integration::images::{edge_image, EdgeOptions};
    use integration::overlay::OverlayStack;
    use integration::treecmp::{compare_trees, CompareOptions};
    require!(prereq::containerd_stack());
    let wd = Workdir::new("edge").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let edge = edge_image(&EdgeOptions::default());
    let img = edge.builder().push(&reg, "edge:latest").unwrap();
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    let r = reg.reference("edge:latest");
    ctr.pull(&r, "overlayfs").unwrap();
    let view = ctr.mount_image(&r, "overlayfs", &wd.join("view")).unwrap();
    let dirs = img
        .extract_layers(&wd.join("layers"), &ExtractOptions::overlay())
        .unwrap();
    let stack = OverlayStack::mount(&dirs, &wd.join("expect"), &[]).unwrap();
    let mut opts = CompareOptions::default().with_mtime().ignore_mtime_of("");
    for d in &edge.implicit_dirs {
        opts = opts.ignore_mtime_of(d);
    }
    let diff = compare_trees(stack.path(), view.path(), &opts).unwrap();
    diff.assert_equal("reference overlay stack vs containerd's overlayfs unpack");
    assert!(diff.left_entries > 150, "{}", diff.left_entries);
}

#[test]
fn shaped_link_rate_latency_and_counters() {
    use integration::oci::{Content, ImageBuilder, LayerBuilder};
    use integration::shaped::{ShapedLink, ShapedOptions};
    use std::time::Instant;
    require!(prereq::netns(), prereq::registry());
    let wd = Workdir::new("shaped").unwrap();
    let reg = Registry::start(&wd).unwrap();
    // a 10 MB incompressible layer, stored uncompressed: the blob is 10 MB + tar headers
    let layer = LayerBuilder::new()
        .file(
            "blob.bin",
            Content::Pattern {
                len: 10_000_000,
                seed: 9,
            },
        )
        .uncompressed();
    let img = ImageBuilder::new()
        .layer(layer)
        .push(&reg, "big:latest")
        .unwrap();
    let blob = &img.layers[0];
    let (ns, vh);
    {
        let link = ShapedLink::start(&wd, &reg, ShapedOptions::default()).unwrap();
        ns = link.netns().to_string();
        vh = link.veth_host().to_string();
        assert!(std::path::Path::new("/run/netns").join(&ns).exists());
        // latency: a small request takes about one RTT more than on loopback
        let t = Instant::now();
        let r = integration::http::get(&format!("{}/v2/", link.url()), &[]).unwrap();
        assert_eq!(r.status, 200);
        let small = t.elapsed();
        let before = link.link_bytes();
        link.reset_proxy_stats();
        let t = Instant::now();
        let (status, n) = integration::http::get_discard(
            &format!("{}/v2/big/blobs/{}", link.url(), blob.digest),
            &[],
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!((status, n), (200, blob.size));
        let after = link.link_bytes();
        let stats = link.proxy_stats().unwrap();
        println!(
            "shaped link: GET /v2/ {:.1} ms; {:.1} MB blob in {:.2} s = {:.1} Mbit/s (shaped to 100); link rx {} B, proxy down {} B, {} requests",
            small.as_secs_f64() * 1e3,
            n as f64 / 1e6,
            secs,
            n as f64 * 8.0 / secs / 1e6,
            after.rx - before.rx,
            stats.bytes_down,
            stats.requests
        );
        assert!(
            after.rx - before.rx >= blob.size,
            "link counted {} B",
            after.rx - before.rx
        );
        assert!(stats.bytes_down >= blob.size);
        assert_eq!(stats.requests, 1);
        assert!(stats.requests_log[0].path.ends_with(&blob.digest));
        // the loopback registry served the same storage without the link
        let (status, n2) =
            integration::http::get_discard(&reg.blob_url("big", &blob.digest), &[]).unwrap();
        assert_eq!((status, n2), (200, blob.size));
    }
    assert!(
        !std::path::Path::new("/run/netns").join(&ns).exists(),
        "netns {ns} left behind"
    );
    assert!(
        !std::path::Path::new("/sys/class/net").join(&vh).exists(),
        "veth {vh} left behind"
    );
}

#[test]
fn registry_basic_auth_restart_and_access_log() {
    use integration::registry::RegistryOptions;
    require!(prereq::registry(), prereq::binaries(&["busybox"]));
    let wd = Workdir::new("regauth").unwrap();
    let mut reg = Registry::start_with(&wd, RegistryOptions::htpasswd("alice", "s3cret")).unwrap();
    let anon = integration::http::get(&format!("{}/v2/", reg.url()), &[]).unwrap();
    assert_eq!(anon.status, 401);
    let auth = reg.authorization().unwrap();
    let ok =
        integration::http::get(&format!("{}/v2/", reg.url()), &[("Authorization", &auth)]).unwrap();
    assert_eq!(ok.status, 200);
    let img = integration::images::busybox()
        .unwrap()
        .push(&reg, "bb:1")
        .unwrap();
    assert!(reg.has_tag("bb", "1"));
    let mark = reg.access_mark();
    let blob = reg.blob_url("bb", &img.layers[0].digest);
    let r = integration::http::get(&blob, &[("Authorization", &auth), ("Range", "bytes=0-99")])
        .unwrap();
    assert_eq!((r.status, r.body.len()), (206, 100));
    let log = reg.access_since_settled(mark);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].status, log[0].bytes), (206, 100));
    // stop: refused; start again: same port, same storage
    let host = reg.host();
    reg.stop().unwrap();
    assert!(integration::http::get(&format!("{}/v2/", reg.url()), &[]).is_err());
    reg.start_again().unwrap();
    assert_eq!(reg.host(), host);
    assert!(reg.has_tag("bb", "1"));
    reg.kill().unwrap();
    reg.start_again().unwrap();
    assert!(reg.has_tag("bb", "1"));
}

#[test]
fn pydeb_cached_image_runs_python() {
    require!(prereq::containerd_stack(), prereq::debian_images());
    let t = std::time::Instant::now();
    let py = integration::images::pydeb().unwrap();
    println!(
        "pydeb layout {} ready in {:.1} s (build took {:?} s)",
        py.layout.display(),
        t.elapsed().as_secs_f64(),
        py.build_secs
    );
    let latest = py.image("latest").unwrap();
    let implicit = py.image("implicit-parents").unwrap();
    assert_eq!(latest.layers.len(), 2);
    assert_eq!(
        latest.layers[0].digest, implicit.layers[0].digest,
        "variants share the base layer"
    );
    assert_ne!(latest.layers[1].digest, implicit.layers[1].digest);
    let wd = Workdir::new("pydeb").unwrap();
    let reg = Registry::start(&wd).unwrap();
    let t = std::time::Instant::now();
    py.push(&reg, "latest", "pydeb:latest").unwrap();
    let pushed = t.elapsed();
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let r = reg.reference("pydeb:latest");
    let t = std::time::Instant::now();
    cd.ctr().pull(&r, "overlayfs").unwrap();
    let pulled = t.elapsed();
    let out = cd
        .ctr()
        .run_ok(&r, "overlayfs", &["python3", "-c", "print(1)"]);
    assert_eq!(out.unwrap(), "1\n");
    println!(
        "pydeb: push {pushed:?}, pull+unpack {pulled:?}, pull+run {:?}",
        t.elapsed()
    );
}

#[test]
fn peer_lazy_pull_of_converted_image() {
    use integration::stack::{Stack, StackOptions};
    require!(
        prereq::containerd_stack(),
        prereq::ctr_remote(),
        prereq::fuse()
    );
    let bin = match integration::peer::peer_binary() {
        Ok(b) => b,
        Err(reason) => return prereq::skip_optional(module_path!(), &reason),
    };
    let opts = StackOptions {
        peer: Some((bin, Default::default())),
        peer_name: Some("stargz".into()),
        ..Default::default()
    };
    let stack = Stack::start("peer", opts).unwrap();
    let ctr = stack.ctr();
    integration::images::busybox()
        .unwrap()
        .push(&stack.registry, "busybox:latest")
        .unwrap();
    let (src, dst) = (
        stack.registry.reference("busybox:latest"),
        stack.registry.reference("busybox:esgz"),
    );
    ctr.pull(&src, "overlayfs").unwrap();
    ctr.convert_estargz(&src, &dst, &[]).unwrap();
    ctr.push(&dst).unwrap();
    ctr.remove_all_images().unwrap();
    let mark = stack.registry.access_mark();
    ctr.rpull(&dst, "stargz").unwrap();
    let out = ctr
        .run_ok(
            &dst,
            "stargz",
            &["/bin/sh", "-c", "echo lazy; ls /bin | wc -l"],
        )
        .unwrap();
    assert!(out.starts_with("lazy\n"), "{out}");
    let log = stack.registry.access_since_settled(mark);
    assert!(
        log.iter().any(|e| e.status == 206),
        "the peer fetched ranges: {log:?}"
    );
    let peer_root = stack.peer.as_ref().unwrap().root().to_path_buf();
    let fuse_mounts = integration::mounts::mounts_under(&peer_root).unwrap();
    assert!(
        !fuse_mounts.is_empty(),
        "peer mounted layers under its root"
    );
    let wd_path = stack.wd.path().to_path_buf();
    drop(stack);
    assert!(integration::mounts::mounts_under(&wd_path)
        .unwrap()
        .is_empty());
}

#[test]
fn teardown_leaves_no_processes_mounts_or_netns() {
    use integration::process::{pid_running, pids_with_cmdline};
    use integration::shaped::ShapedOptions;
    use integration::stack::{Stack, StackOptions};
    require!(prereq::containerd_stack(), prereq::netns());
    let mut stack = Stack::start(
        "teardown",
        StackOptions {
            shaped: Some(ShapedOptions::default()),
            ..Default::default()
        },
    )
    .unwrap();
    integration::images::busybox()
        .unwrap()
        .push(&stack.registry, "bb:latest")
        .unwrap();
    let r = stack.registry.reference("bb:latest");
    let ctr = stack.ctr().clone();
    ctr.pull(&r, "overlayfs").unwrap();
    // a container left running, detached: teardown must kill it
    let id = ctr
        .run_detached(&r, "overlayfs", &["sleep", "1000"])
        .unwrap();
    assert!(id.starts_with("stl-"), "{id}");
    let tasks = ctr.ctr_ok(["tasks", "ls"]).unwrap();
    let task_pid: u32 = tasks
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap();
    let sock = stack.containerd.address().to_string_lossy().into_owned();
    let mut pids = pids_with_cmdline(&sock);
    assert!(!pids.is_empty(), "shim found by its -address");
    pids.push(task_pid);
    pids.push(stack.containerd.daemon().pid());
    pids.push(stack.registry.daemon().pid());
    let shaped = stack.shaped.as_mut().unwrap();
    pids.push(shaped.registry().daemon().pid());
    let netns = shaped.netns().to_string();
    let wd_path = stack.wd.path().to_path_buf();
    assert!(pids.iter().all(|p| pid_running(*p)));
    drop(stack);
    for p in &pids {
        assert!(!pid_running(*p), "pid {p} still running after teardown");
    }
    assert!(pids_with_cmdline(&sock).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(wd_path.to_str().unwrap()),
        "mounts left:\n{mounts}"
    );
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    assert!(!wd_path.exists());
}

#[test]
#[ignore = "slow (tens of seconds): builds and extracts the > 4 GiB file; run with --ignored"]
fn edge_huge_file_builds_and_extracts() {
    use integration::extract::{extract_layer, ExtractOptions};
    use integration::images::edge::{paths, HUGE_LEN};
    use integration::images::{edge_image, EdgeOptions};
    use std::io::{Read, Seek, SeekFrom};
    require!(prereq::root());
    let wd = Workdir::new("huge").unwrap();
    let edge = edge_image(&EdgeOptions { huge_file: true });
    let t = std::time::Instant::now();
    let img = edge
        .builder()
        .write_layout(&wd.join("layout"), "latest")
        .unwrap();
    println!(
        "huge edge image written in {:.1} s, base layer blob {} B",
        t.elapsed().as_secs_f64(),
        img.layers[0].size
    );
    let dest = wd.join("l0");
    extract_layer(&img.layers[0].path, &dest, &ExtractOptions::overlay()).unwrap();
    let mut f = std::fs::File::open(dest.join(paths::HUGE)).unwrap();
    assert_eq!(f.metadata().unwrap().len(), HUGE_LEN);
    let mut b = [0u8; 6];
    f.seek(SeekFrom::Start(1 << 32)).unwrap();
    f.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"past4G");
    println!("built + extracted in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn registry_token_auth_config_passthrough() {
    use integration::registry::{RegistryAuth, RegistryOptions};
    use std::process::Command;
    require!(prereq::registry(), prereq::binaries(&["openssl"]));
    let wd = Workdir::new("regtoken").unwrap();
    let (key, cert) = (wd.join("key.pem"), wd.join("cert.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=token-issuer",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let opts = RegistryOptions {
        auth: RegistryAuth::Token {
            realm: "http://127.0.0.1:9/token".into(),
            service: "stl-registry".into(),
            issuer: "token-issuer".into(),
            rootcertbundle: cert,
        },
        ..Default::default()
    };
    let reg = Registry::start_with(&wd, opts).unwrap();
    let r = integration::http::get(&format!("{}/v2/", reg.url()), &[]).unwrap();
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:9/token\"")
            && challenge.contains("service=\"stl-registry\""),
        "{challenge}"
    );
}
