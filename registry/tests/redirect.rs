//! Redirects to object storage, with fixture servers (docker-registry's filesystem driver does
//! not redirect): the registry's credentials never go to the storage host, the redirect target
//! is cached per blob, an expired one (HTTP 403) is re-resolved once, and a storage host that
//! answers multi-range requests with the whole object (HTTP 200, like S3) gets single ranges.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::http::{HttpRequest, HttpResponse, HttpServer};
use common::*;
use registry::{Priority, Repository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_cached_and_re_resolved_without_leaking_credentials() {
    let blob = data(50, 500_000);
    let digest = digest_of(&blob);
    let generation = Arc::new(AtomicU32::new(1));
    let storage_auth_headers = Arc::new(AtomicU32::new(0));
    let storage_requests = Arc::new(Mutex::new(Vec::new()));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let storage = {
        let (blob, generation, auth_seen, seen, broken) = (
            blob.clone(),
            generation.clone(),
            storage_auth_headers.clone(),
            storage_requests.clone(),
            broken.clone(),
        );
        HttpServer::start(Arc::new(move |req: &HttpRequest| {
            if broken.load(Ordering::SeqCst) {
                return HttpResponse::new(503).body("slow down");
            }
            seen.lock()
                .unwrap()
                .push(req.header("range").unwrap_or("").to_string());
            if req.header("authorization").is_some() {
                auth_seen.fetch_add(1, Ordering::SeqCst);
            }
            let sig = req
                .query()
                .into_iter()
                .find(|(k, _)| k == "sig")
                .map(|(_, v)| v);
            if sig != Some(generation.load(Ordering::SeqCst).to_string()) {
                return HttpResponse::new(403).body("<Error>expired</Error>");
            }
            match req.header("range") {
                Some(r) if !r.contains(',') => {
                    let (a, b) = r.trim_start_matches("bytes=").split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    HttpResponse::new(206)
                        .header("Content-Range", &format!("bytes {a}-{b}/{}", blob.len()))
                        .body(blob[a..=b].to_vec())
                }
                // Like S3: multi-range requests get the whole object.
                _ => HttpResponse::new(200).body(blob.to_vec()),
            }
        }))
    };

    let redirects = Arc::new(AtomicU32::new(0));
    let user_pw = base64::engine::general_purpose::STANDARD.encode("bob:front-pw");
    let front = {
        let (storage_host, generation, redirects, digest) = (
            storage.host(),
            generation.clone(),
            redirects.clone(),
            digest.clone(),
        );
        let len = blob.len();
        HttpServer::start(Arc::new(move |req: &HttpRequest| {
            if req.header("authorization") != Some(format!("Basic {user_pw}").as_str()) {
                return HttpResponse::new(401).header("WWW-Authenticate", "Basic realm=\"front\"");
            }
            let path = req.path_only();
            if path != format!("/v2/r/blobs/{digest}") {
                return HttpResponse::new(404);
            }
            if req.method == "HEAD" {
                return HttpResponse::new(200).header("Content-Length", &len.to_string());
            }
            redirects.fetch_add(1, Ordering::SeqCst);
            let sig = generation.load(Ordering::SeqCst);
            HttpResponse::new(307).header(
                "Location",
                &format!("http://{storage_host}/bucket/blob?sig={sig}&X-Amz-Signature=secret{sig}"),
            )
        }))
    };

    let state = tempfile::tempdir().unwrap();
    let mut regcfg = registry_config(state.path());
    regcfg.hosts.insert(
        front.host(),
        config::HostConfig {
            username: "bob".into(),
            password: config::Secret::new("front-pw"),
            ..Default::default()
        },
    );
    let (c, _) = client(&fetch_config(), &regcfg);
    let b = c
        .blob(&Repository::new(front.host(), "r"), &digest, None)
        .await
        .unwrap();
    assert_eq!(b.size(), blob.len() as u64);

    assert_eq!(
        b.read_range(0..1000, Priority::OnDemand).await.unwrap(),
        blob.slice(0..1000)
    );
    assert_eq!(redirects.load(Ordering::SeqCst), 1);
    // The cached storage URL is used directly.
    assert_eq!(
        b.read_range(1000..9000, Priority::OnDemand).await.unwrap(),
        blob.slice(1000..9000)
    );
    assert_eq!(
        redirects.load(Ordering::SeqCst),
        1,
        "redirect target cached"
    );
    // The signed URL expires: one 403, then a fresh redirect.
    generation.store(2, Ordering::SeqCst);
    assert_eq!(
        b.read_range(9000..20000, Priority::OnDemand).await.unwrap(),
        blob.slice(9000..20000)
    );
    assert_eq!(redirects.load(Ordering::SeqCst), 2, "re-resolved once");
    // Multi-range requests against storage that answers 200: falls back to single ranges.
    let ranges = vec![0..10, 200_000..200_100, 400_000..400_500];
    let got = b.read_ranges(&ranges, Priority::OnDemand).await.unwrap();
    for (r, g) in ranges.iter().zip(&got) {
        assert_eq!(g, &blob.slice(r.start as usize..r.end as usize));
    }
    assert_eq!(
        storage_auth_headers.load(Ordering::SeqCst),
        0,
        "registry credentials stayed with the registry"
    );
    assert!(
        storage_requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(',')),
        "a multi-range request was tried"
    );

    // Errors about storage name its host but never show the signed query.
    broken.store(true, Ordering::SeqCst);
    let err = b.read_range(0..10, Priority::OnDemand).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&storage.host()) && msg.contains("503"),
        "{msg}"
    );
    assert!(!msg.contains("secret") && !msg.contains("sig="), "{msg}");
}
