//! The mirror in front of a real docker-registry: ranges and whole blobs come back byte for
//! byte with the right statuses and headers; concurrent requests for the same cold range
//! cost the upstream each block once (single-flight, counted in bytes); bad requests get
//! clear 4xx errors; starling's registry client uses it as a mirror (`?ns=`).

use bytes::Bytes;
use mirror::{Mirror, Settings, UpstreamHosts};
use registry::testutil::*;
use registry::{require_registry, Priority, Repository};

const BLOCK: u64 = 64 << 10;

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _cache: tempfile::TempDir,
}

impl Running {
    async fn start(origin: &RegistryProc, max_size: u64) -> Running {
        Self::start_for(origin.host(), origin, max_size).await
    }

    /// A mirror whose default upstream is `host` (e.g. a proxy in front of `origin`).
    async fn start_for(host: String, origin: &RegistryProc, max_size: u64) -> Running {
        let cache = tempfile::tempdir().unwrap();
        let (client, _) = client(&fetch_config(), &registry_config(origin.dir.path()));
        let m = Mirror::open(
            client,
            Settings {
                cache_dir: cache.path().to_path_buf(),
                max_size,
                block_size: BLOCK,
                hosts: UpstreamHosts {
                    default: Some(host),
                    ..Default::default()
                },
            },
        )
        .unwrap();
        let listener = Mirror::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(m.serve(listener, async {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task,
            _cache: cache,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("starling_mirror_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

async fn get(url: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Bytes) {
    let mut r = reqwest::Client::new().get(url);
    if let Some(h) = range {
        r = r.header("Range", h);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap())
}

async fn origin_with_blob(len: usize) -> (RegistryProc, Repository, Bytes, String) {
    let origin = RegistryProc::start(RegistryAuth::None);
    let (pusher, _) = client(&fetch_config(), &registry_config(origin.dir.path()));
    let repo = Repository::new(origin.host(), "fleet/app");
    let data = data(7, len);
    let digest = push(&pusher, &repo, &data).await;
    (origin, repo, data, digest.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_whole_blobs_come_back_byte_for_byte() {
    require_registry!();
    let size = (3 << 20) + 12345;
    let (origin, _repo, data, digest) = origin_with_blob(size).await;
    let m = Running::start(&origin, 64 << 20).await;
    let blob = m.url(&format!("/v2/fleet/app/blobs/{digest}"));

    let (st, h, body) = get(&m.url("/v2/"), None).await;
    assert_eq!((st, &body[..]), (200, &b"{}"[..]));
    assert_eq!(h["docker-distribution-api-version"], "registry/2.0");

    let (st, h, body) = get(&blob, Some("bytes=100000-300000")).await;
    assert_eq!(st, 206);
    assert_eq!(h["content-range"], format!("bytes 100000-300000/{size}"));
    assert_eq!(body, data.slice(100_000..300_001));
    // a suffix range (what a node's TOC read sends), across the short last block
    let (st, h, body) = get(&blob, Some("bytes=-70000")).await;
    assert_eq!(st, 206);
    assert_eq!(
        h["content-range"],
        format!("bytes {}-{}/{size}", size - 70000, size - 1)
    );
    assert_eq!(body, data.slice(size - 70000..));
    // a whole-blob GET, partly from cached blocks, verified against the digest
    let (st, h, body) = get(&blob, None).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-length"], size.to_string());
    assert_eq!(body, data);
    let head = reqwest::Client::new().head(&blob).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["content-length"], size.to_string());
    assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    // everything was read: each block came from the origin once
    assert_eq!(m.metric("upstream_bytes_total").await, size as u64);
    let (st, _, body) = get(&blob, Some("bytes=5-9")).await;
    assert_eq!((st, body), (206, data.slice(5..10)));
    assert_eq!(m.metric("upstream_bytes_total").await, size as u64);
    assert!(m.metric("block_hits_total").await > 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_each_upstream_block_fetch() {
    require_registry!();
    let (origin, _repo, data, digest) = origin_with_blob(4 << 20).await;
    let m = Running::start(&origin, 64 << 20).await;
    let blob = m.url(&format!("/v2/fleet/app/blobs/{digest}"));
    // eight "nodes" ask for the same cold MiB at once (aligned to blocks: 16 blocks)
    let start = 1u64 << 20;
    let range = format!("bytes={start}-{}", start + (1 << 20) - 1);
    let answers = futures::future::join_all((0..8).map(|_| get(&blob, Some(&range)))).await;
    for (st, _, body) in answers {
        assert_eq!(st, 206);
        assert_eq!(
            body,
            data.slice(start as usize..(start as usize + (1 << 20)))
        );
    }
    assert_eq!(m.metric("upstream_bytes_total").await, 1 << 20);
    assert_eq!(m.metric("block_fetches_total").await, 16);
    assert_eq!(
        m.metric("block_joins_total").await + m.metric("block_hits_total").await,
        7 * 16,
        "the other seven requests joined or hit every block"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    require_registry!();
    let (origin, _repo, _data, digest) = origin_with_blob(100_000).await;
    let m = Running::start(&origin, 64 << 20).await;
    let blob = m.url(&format!("/v2/fleet/app/blobs/{digest}"));
    let check = |(st, _, body): (u16, reqwest::header::HeaderMap, Bytes), want: u16, code: &str| {
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(st, want, "{text}");
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
    };
    let (st, h, _) = get(&blob, Some("bytes=100000-")).await;
    assert_eq!(st, 416);
    assert_eq!(h["content-range"], "bytes */100000");
    check(get(&blob, Some("bytes=9-2")).await, 400, "RANGE_INVALID");
    let unknown = format!("sha256:{}", "0".repeat(64));
    check(
        get(&m.url(&format!("/v2/fleet/app/blobs/{unknown}")), None).await,
        404,
        "BLOB_UNKNOWN",
    );
    check(
        get(&m.url("/v2/fleet/app/manifests/nope"), None).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    check(
        get(
            &m.url(&format!("/v2/fleet/app/blobs/{digest}?ns=evil.example")),
            None,
        )
        .await,
        403,
        "DENIED",
    );
    check(
        get(&m.url(&format!("/v2/..%2F/blobs/{digest}")), None).await,
        400,
        "NAME_INVALID",
    );
    check(
        get(&m.url("/v2/fleet/app/blobs/sha256:abc"), None).await,
        400,
        "DIGEST_INVALID",
    );
    check(get(&m.url("/v2/_catalog"), None).await, 404, "NOT_FOUND");
    let put = reqwest::Client::new().put(&blob).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 405);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_reads_through_it_as_a_mirror_and_the_cache_stays_bounded() {
    require_registry!();
    let size = 2 << 20;
    let (origin, repo, data, digest) = origin_with_blob(size).await;
    // the cache holds 16 blocks (1 MiB) of the blob's 32
    let m = Running::start(&origin, 16 * BLOCK).await;
    let mut regcfg = registry_config(origin.dir.path());
    regcfg.hosts.entry(origin.host()).or_default().mirrors = vec![config::MirrorConfig {
        host: m.addr.to_string(),
        insecure: true,
        ..Default::default()
    }];
    let (node, _) = client(&fetch_config(), &regcfg);
    let blob = node
        .blob(&repo, &digest.parse().unwrap(), None)
        .await
        .unwrap();
    let ranges = scattered(3, size as u64, 40, 100_000);
    let got = blob.read_ranges(&ranges, Priority::OnDemand).await.unwrap();
    for (r, g) in ranges.iter().zip(got) {
        assert_eq!(g, data.slice(r.start as usize..r.end as usize));
    }
    assert!(m.metric("requests_total").await > 1);
    assert!(m.metric("upstream_bytes_total").await > 0);
    assert!(m.metric("cache_bytes").await <= 16 * BLOCK);
    let all = blob
        .read_range(0..size as u64, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(all, data);
    assert!(m.metric("cache_bytes").await <= 16 * BLOCK);
    assert!(m.metric("evicted_blocks_total").await > 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_proxied_with_their_digest_and_type() {
    require_registry!();
    let (origin, repo, data, digest) = origin_with_blob(1000).await;
    let (pusher, _) = client(&fetch_config(), &registry_config(origin.dir.path()));
    let config = Bytes::from_static(b"{}");
    let config_digest = push(&pusher, &repo, &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": data.len()}],
    })
    .to_string();
    let mdigest = pusher
        .push_manifest(
            &repo,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    let m = Running::start(&origin, 64 << 20).await;
    let ns = origin.host().replace(':', "%3A");
    for reference in ["v1".to_string(), mdigest.to_string()] {
        let url = m.url(&format!("/v2/fleet/app/manifests/{reference}?ns={ns}"));
        let resp = reqwest::Client::new()
            .get(&url)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["docker-content-digest"], mdigest.as_ref());
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(resp.text().await.unwrap(), manifest);
        let head = reqwest::Client::new().head(&url).send().await.unwrap();
        assert_eq!(head.status().as_u16(), 200);
        assert_eq!(head.headers()["content-length"], manifest.len().to_string());
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_blob_that_does_not_match_its_digest_is_cut_off_and_uncached() {
    require_registry!();
    let size = 300_000;
    let (origin, _repo, data, digest) = origin_with_blob(size).await;
    // the upstream flips bytes in every range answer
    let proxy = registry::testutil::proxy::Proxy::start(
        origin.addr(),
        registry::testutil::proxy::ProxyMode::FlipBodies {
            percent: 100,
            seed: 1,
        },
    );
    let m = Running::start_for(proxy.addr.to_string(), &origin, 64 << 20).await;
    let blob = m.url(&format!("/v2/fleet/app/blobs/{digest}"));
    // cut off: before the headers, or within the body
    if let Ok(resp) = reqwest::get(&blob).await {
        assert_eq!(resp.status().as_u16(), 200);
        if let Ok(b) = resp.bytes().await {
            assert!(
                b.len() < size && b != data,
                "a complete wrong body was sent"
            );
        }
    }
    assert_eq!(m.metric("digest_mismatches_total").await, 1);
    assert_eq!(
        m.metric("cache_bytes").await,
        0,
        "the blob's blocks were dropped"
    );
    m.stop().await;
}

/// A figure, not a check: whole-blob GETs of a 256 MiB blob straight from docker-registry,
/// through a cold mirror and through a warm one (loopback). Run with
/// `cargo test --release -p mirror --test serve -- --ignored --nocapture whole_blob_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput figure"]
async fn whole_blob_rate() {
    require_registry!();
    let size = 256 << 20;
    let (origin, _repo, data, digest) = origin_with_blob(size).await;
    let m = Running::start(&origin, 1 << 30).await;
    let rate = |took: std::time::Duration| size as f64 / 1e6 / took.as_secs_f64();
    let direct = format!("http://{}/v2/fleet/app/blobs/{digest}", origin.host());
    let via = m.url(&format!("/v2/fleet/app/blobs/{digest}"));
    for (what, url) in [
        ("direct", &direct),
        ("mirror cold", &via),
        ("mirror warm", &via),
    ] {
        let t = std::time::Instant::now();
        let (st, _, body) = get(url, None).await;
        let took = t.elapsed();
        assert_eq!(st, 200);
        assert!(body == data);
        eprintln!(
            "{what}: {:.0} MB/s ({:.2} s)",
            rate(took),
            took.as_secs_f64()
        );
    }
    m.stop().await;
}
