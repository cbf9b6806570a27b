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
    let img = integration::images::busybox().unwrap().push(&reg, "busybox:latest").unwrap();
    assert!(reg.has_tag("busybox", "latest"));
    let cd = Containerd::start(&wd, ContainerdOptions::default()).unwrap();
    let ctr = cd.ctr();
    let r = reg.reference("busybox:latest");
    ctr.pull(&r, "overlayfs").unwrap();
    assert_eq!(ctr.image_chain_id(&r).unwrap(), img.chain_ids()[0]);
    let out = ctr.run_ok(&r, "overlayfs", &["/bin/sh", "-c", "echo hello from busybox; cat /etc/passwd | head -1"]).unwrap();
    assert_eq!(out, "hello from busybox\nroot:x:0:0:root:/root:/bin/sh\n");
    let fail = ctr.run(&r, "overlayfs", &["/bin/sh", "-c", "exit 3"]).unwrap();
    assert_eq!(fail.status.code(), Some(3));
    let log = reg.access_since_settled(0);
    assert!(log.iter().any(|e| e.is_blob_get() && e.uri.contains(&img.layers[0].digest)), "{log:?}");
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
    let dirs = img.extract_layers(&wd.join("layers"), &ExtractOptions::overlay()).unwrap();
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
    let layer = LayerBuilder::new().file("blob.bin", Content::Pattern { len: 10_000_000, seed: 9 }).uncompressed();
    let img = ImageBuilder::new().layer(layer).push(&reg, "big:latest").unwrap();
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
        let (status, n) = integration::http::get_discard(&format!("{}/v2/big/blobs/{}", link.url(), blob.digest), &[]).unwrap();
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
        assert!(after.rx - before.rx >= blob.size, "link counted {} B", after.rx - before.rx);
        assert!(stats.bytes_down >= blob.size);
        assert_eq!(stats.requests, 1);
        assert!(stats.requests_log[0].path.ends_with(&blob.digest));
        // the loopback registry served the same storage without the link
        let (status, n2) = integration::http::get_discard(&reg.blob_url("big", &blob.digest), &[]).unwrap();
        assert_eq!((status, n2), (200, blob.size));
    }
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists(), "netns {ns} left behind");
    assert!(!std::path::Path::new("/sys/class/net").join(&vh).exists(), "veth {vh} left behind");
}
