//! Against a real docker-registry without auth: push (monolithic, chunked, mount), HEAD,
//! range and multi-range reads (and their single-range fallbacks), streams, manifest
//! resolution, error naming, and a blob's tail with its size in one suffix-range request
//! (HEAD only where suffixes fail).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use registry::testutil::proxy::{Proxy, ProxyMode};
use registry::{Priority, PushOptions, PushOutcome, Reference, RegistryError, Repository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_head_read_ranges_and_stream() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let (client, metrics) = client(&fetch_config(), &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "test/blobs");
    let blob_data = data(1, 3 * 1024 * 1024 + 12345);
    let digest = digest_of(&blob_data);
    let opts = PushOptions {
        chunk_size: 1 << 20,
        ..Default::default()
    };
    let outcome = client
        .push_blob(&repo, &digest, &blob_data, &opts)
        .await
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    let again = client
        .push_blob(&repo, &digest, &blob_data, &opts)
        .await
        .unwrap();
    assert_eq!(again, PushOutcome::AlreadyExists);
    let other = Repository::new(reg.host(), "test/other");
    let mounted = client
        .push_blob(
            &other,
            &digest,
            &blob_data,
            &PushOptions {
                mount_from: Some("test/blobs".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(mounted, PushOutcome::Mounted);

    let blob = client.blob(&repo, &digest, None).await.unwrap();
    assert_eq!(blob.size(), blob_data.len() as u64);
    let r = blob
        .read_range(1000..5000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(r, blob_data.slice(1000..5000));

    let mut s = blob.stream(0, Priority::Background);
    let mut all = Vec::new();
    while let Some(chunk) = s.next_chunk().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, blob_data, "whole stream (digest checked at its end)");
    let mut s = blob.stream(3_000_000, Priority::Background);
    let mut tail = Vec::new();
    while let Some(chunk) = s.next_chunk().await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(tail, blob_data[3_000_000..]);
    let m = metrics.snapshot();
    assert!(m.bytes_fetched >= blob_data.len() as u64, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_range_and_single_range_reads_are_equivalent() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let regcfg = registry_config(reg.dir.path());
    let (pusher, _) = client(&fetch_config(), &regcfg);
    let repo_name = "test/multi";
    let blob_data = data(2, 8 << 20);
    let digest = push(&pusher, &Repository::new(reg.host(), repo_name), &blob_data).await;
    let ranges = scattered(7, blob_data.len() as u64, 300, 40_000);
    let expected: Vec<Bytes> = ranges
        .iter()
        .map(|r| blob_data.slice(r.start as usize..r.end as usize))
        .collect();

    let first_only = Proxy::start(reg.addr(), ProxyMode::FirstRangeOnly);
    let drop_multi = Proxy::start(reg.addr(), ProxyMode::DropMultiRange);
    let mut fetch_single = fetch_config();
    fetch_single.multi_range = false;
    let cases = [
        ("multi-range", reg.host(), fetch_config()),
        ("single-range by config", reg.host(), fetch_single),
        (
            "server answers the first range only",
            first_only.host(),
            fetch_config(),
        ),
        (
            "server ignores multi-range (HTTP 200)",
            drop_multi.host(),
            fetch_config(),
        ),
    ];
    let mut counts = Vec::new();
    for (name, host, fetch) in cases {
        let (c, metrics) = client(&fetch, &regcfg);
        let blob = c
            .blob(
                &Repository::new(host, repo_name),
                &digest,
                Some(blob_data.len() as u64),
            )
            .await
            .unwrap();
        let got = blob.read_ranges(&ranges, Priority::OnDemand).await.unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(g == e, "{name}: range {i} {:?} differs", ranges[i]);
        }
        // A second read on the same client: the fallback is remembered.
        let after_first = metrics.snapshot().multi_range_requests;
        let again = blob
            .read_ranges(&ranges[..20], Priority::OnDemand)
            .await
            .unwrap();
        assert_eq!(again, expected[..20], "{name}");
        let m = metrics.snapshot();
        counts.push((name, m, m.multi_range_requests - after_first));
    }
    for (name, m, _) in &counts {
        eprintln!(
            "{name}: {} requests ({} multi-range), {} bytes",
            m.range_requests, m.multi_range_requests, m.bytes_fetched
        );
    }
    let (_, multi, multi_again) = &counts[0];
    let (_, single, _) = &counts[1];
    assert!(
        *multi_again >= 1,
        "multi-range still used on the second read"
    );
    assert!(multi.multi_range_requests >= 1, "{multi:?}");
    assert!(
        multi.range_requests < 20,
        "few requests for 300 ranges: {multi:?}"
    );
    assert_eq!(single.multi_range_requests, 0, "{single:?}");
    assert!(
        single.range_requests > multi.range_requests * 5,
        "{single:?} vs {multi:?}"
    );
    for p in [&first_only, &drop_multi] {
        assert!(
            p.stats.rewritten.load(Ordering::SeqCst) >= 1,
            "proxy saw a multi-range request"
        );
    }
    // Once a multi-range request was refused the client stops asking for several ranges.
    for (name, m, again) in &counts[2..] {
        assert!(m.multi_range_requests >= 1, "{name}: {m:?}");
        assert_eq!(
            *again, 0,
            "{name}: no multi-range request on the second read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_picks_the_host_platform_and_reads_layers_and_config() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let (c, _) = client(&fetch_config(), &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "test/image");
    let config_json = Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#,
    );
    let layer = data(4, 200_000);
    let config_digest = push(&c, &repo, &config_json).await;
    let layer_digest = push(&c, &repo, &layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config_json.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest.to_string(), "size": layer.len(),
                    "annotations": {"containerd.io/snapshot/stargz/toc.digest": "sha256:abc"}}],
    });
    let manifest_bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let mdigest = c
        .push_manifest(
            &repo,
            "amd64-only",
            "application/vnd.oci.image.manifest.v1+json",
            manifest_bytes.clone(),
        )
        .await
        .unwrap();
    let (os, arch) = registry::host_platform();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest.to_string(),
             "size": manifest_bytes.len(), "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest.to_string(),
             "size": manifest_bytes.len(), "platform": {"os": os, "architecture": arch}},
        ],
    });
    c.push_manifest(
        &repo,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        Bytes::from(serde_json::to_vec(&index).unwrap()),
    )
    .await
    .unwrap();

    let r: Reference = format!("{}/test/image:multi", reg.host()).parse().unwrap();
    let img = c.resolve(&r).await.unwrap();
    assert!(img.index_digest.is_some());
    assert_eq!(img.manifest_digest, mdigest);
    assert_eq!(img.layers().len(), 1);
    assert_eq!(img.layers()[0].digest(), &layer_digest);
    let ann = img.layers()[0].annotations().as_ref().unwrap();
    assert_eq!(
        ann["containerd.io/snapshot/stargz/toc.digest"],
        "sha256:abc"
    );
    assert_eq!(img.config_bytes, config_json);
    assert_eq!(img.config().unwrap().architecture().to_string(), "amd64");
    let by_digest: Reference = format!("{}/test/image@{mdigest}", reg.host())
        .parse()
        .unwrap();
    assert_eq!(
        c.resolve(&by_digest).await.unwrap().manifest_digest,
        mdigest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_host_repository_digest_and_status() {
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let (c, _) = client(&fetch_config(), &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "test/missing");
    let d = digest_of(b"never pushed");
    let err = c.blob(&repo, &d, None).await.err().unwrap();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&reg.host()) && msg.contains("test/missing") && msg.contains(d.digest()),
        "{msg}"
    );
    assert_eq!(err.status(), Some(404));

    let blob = c.blob(&repo, &d, Some(10)).await.unwrap();
    let err = blob
        .read_range(0..10, Priority::OnDemand)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let err = blob
        .read_range(5..20, Priority::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Range { .. }), "{err}");
    let missing: Reference = format!("{}/test/missing:nope", reg.host()).parse().unwrap();
    let err = c.resolve(&missing).await.unwrap_err();
    assert!(err.to_string().contains(":nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_tail_is_one_suffix_request_with_fallbacks() {
    use common::http::{HttpRequest, HttpResponse, HttpServer};
    require_registry!();
    let reg = RegistryProc::start(RegistryAuth::None);
    let (client, metrics) = client(&fetch_config(), &registry_config(reg.dir.path()));
    let repo = Repository::new(reg.host(), "test/tail");
    let blob_data = data(7, 300_000);
    let digest = digest_of(&blob_data);
    client
        .push_blob(&repo, &digest, &blob_data, &PushOptions::default())
        .await
        .unwrap();
    // docker-registry honours `Range: bytes=-N`: size and bytes in one request.
    let before = metrics.snapshot().requests;
    let (blob, tail) = client
        .blob_tail(&repo, &digest, None, 1000, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(metrics.snapshot().requests - before, 1, "one request");
    assert_eq!(blob.size(), blob_data.len() as u64);
    assert_eq!(tail, blob_data.slice(blob_data.len() - 1000..));
    let r = blob.read_range(10..20, Priority::OnDemand).await.unwrap();
    assert_eq!(r, blob_data.slice(10..20), "the handle reads the blob");
    // A tail longer than the blob is the whole blob.
    let (blob, tail) = client
        .blob_tail(&repo, &digest, None, 1 << 20, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(
        (blob.size(), tail),
        (blob_data.len() as u64, blob_data.clone())
    );
    // A known size: one plain range request.
    let before = metrics.snapshot().requests;
    let (_, tail) = client
        .blob_tail(
            &repo,
            &digest,
            Some(blob_data.len() as u64),
            64,
            Priority::OnDemand,
        )
        .await
        .unwrap();
    assert_eq!(metrics.snapshot().requests - before, 1);
    assert_eq!(tail, blob_data.slice(blob_data.len() - 64..));

    // Registries without suffix ranges: one answers 416, one ignores the range (200 with
    // the whole blob, whose length is the size). Both still give the right tail.
    for mode in [416u16, 200] {
        let (upstream, seen) = (
            blob_data.clone(),
            Arc::new(std::sync::Mutex::new(Vec::new())),
        );
        let log = seen.clone();
        let server = HttpServer::start(Arc::new(move |req: &HttpRequest| {
            let range = req.header("range").map(str::to_string);
            log.lock().unwrap().push(format!(
                "{} {}",
                req.method,
                range.clone().unwrap_or_default()
            ));
            let len = upstream.len();
            if req.method == "HEAD" {
                return HttpResponse::new(200).header("Content-Length", &len.to_string());
            }
            match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                Some(r) if r.starts_with('-') => {
                    if mode == 416 {
                        HttpResponse::new(416)
                    } else {
                        HttpResponse::new(200).body(upstream.to_vec())
                    }
                }
                Some(r) => {
                    let (a, b) = r.split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    HttpResponse::new(206)
                        .header("Content-Range", &format!("bytes {a}-{b}/{len}"))
                        .body(upstream[a..=b].to_vec())
                }
                None => HttpResponse::new(200).body(upstream.to_vec()),
            }
        }));
        // A loopback host: plain HTTP.
        let (c, _) = common::client(&fetch_config(), &registry_config(reg.dir.path()));
        let repo = Repository::new(server.host(), "test/tail");
        let (blob, tail) = c
            .blob_tail(&repo, &digest, None, 500, Priority::OnDemand)
            .await
            .unwrap();
        assert_eq!(blob.size(), blob_data.len() as u64, "mode {mode}");
        assert_eq!(
            tail,
            blob_data.slice(blob_data.len() - 500..),
            "mode {mode}"
        );
        let seen = seen.lock().unwrap().clone();
        let heads = seen.iter().filter(|s| s.starts_with("HEAD")).count();
        assert_eq!(heads, usize::from(mode == 416), "mode {mode}: {seen:?}");
    }
}
