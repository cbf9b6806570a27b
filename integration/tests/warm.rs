//! Warming nodes and moving chunk caches between them, end to end (real docker-registry,
//! containerd 1.6, runc, FUSE and the starling daemon):
//!
//! - `starling prefetch --profile` next to a running daemon warms the files a workload
//!   reads; the container started afterwards fetches nothing (the pull fetches the
//!   layers' footers and TOCs only) and the unlisted file was not fetched
//!   (`prefetch_then_run_fetches_nothing_for_the_warmed_files`);
//! - `starling prefetch --all` on a root without a daemon, `starling cache export` from it,
//!   `starling cache import` into a running daemon's root: the container runs without a
//!   fetch (`exported_cache_imported_into_another_root_runs_without_fetching`);
//! - a tampered and a cut archive import nothing wrong and say what they skipped, and an
//!   import into a capped cache stays under the cap
//!   (`bad_archives_import_nothing_wrong_and_the_cap_holds`).

use std::path::Path;
use std::time::Duration;

use integration::images::busybox;
use integration::oci::{Content, ImageBuilder, LayerBuilder};
use integration::stack::{Stack, StackOptions};
use integration::starling::{StarlingConfig, StarlingOptions};
use integration::{client, prereq, require};
use serde_json::Value;
use sha2::Digest as _;

const TIMEOUT: Duration = Duration::from_secs(300);

/// busybox + a data layer: `a.bin` (1 MiB), `b.bin` (`b_len` bytes), `hello`.
fn data_image(b_len: u64) -> ImageBuilder {
    busybox().unwrap().layer(
        LayerBuilder::new()
            .dir("data")
            .file(
                "data/a.bin",
                Content::Pattern {
                    len: 1 << 20,
                    seed: 31,
                },
            )
            .file(
                "data/b.bin",
                Content::Pattern {
                    len: b_len,
                    seed: 32,
                },
            )
            .file("data/hello", "hello from the data layer\n"),
    )
}

const READ_A: &[&str] = &["/bin/sh", "-c", "cat /data/hello; md5sum /data/a.bin"];

/// What `READ_A` reads, and what containerd reads while creating the container.
const PROFILE: &str = "/bin/busybox\n/data/hello\n/data/a.bin\n/etc/passwd\n/etc/group\n";

/// The daemon fetches only what is read: no background fetch, no program read-ahead.
fn stack(name: &str) -> Stack {
    let cfg = StarlingConfig::new()
        .set("metrics_address", "127.0.0.1:0")
        .set("fetch.background_fetch", false)
        .set("fetch.program_read_ahead", false);
    Stack::start(
        name,
        StackOptions {
            starling: Some(StarlingOptions {
                config: Some(cfg),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Pushes the data image and its eStargz conversion; returns the eStargz reference.
fn push_estargz(s: &Stack, repo: &str, b_len: u64) -> String {
    data_image(b_len)
        .push(&s.registry, &format!("{repo}:plain"))
        .unwrap();
    let plain = s.registry.reference(&format!("{repo}:plain"));
    let esgz = s.registry.reference(&format!("{repo}:esgz"));
    let out = client::run(["convert", "--plain-http", &plain, &esgz], TIMEOUT).unwrap();
    assert!(out.success(), "convert: {}", out.stderr);
    esgz
}

/// `starling ARGS` that must succeed; its JSON output.
fn starling_json(args: &[&str]) -> Value {
    let out = client::run(args, TIMEOUT).unwrap();
    assert!(
        out.success(),
        "starling {args:?}: {}\n{}",
        out.stderr,
        out.stdout
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn root_arg(root: &Path) -> String {
    root.display().to_string()
}

/// Every cache entry under `cache` is named by the sha256 of its content; returns (count,
/// bytes).
fn check_cache_entries(cache: &Path) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    let Ok(subs) = std::fs::read_dir(cache.join("sha256")) else {
        return (0, 0);
    };
    for sub in subs.flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            let data = std::fs::read(f.path()).unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&data)),
                name,
                "cache entry {} does not match its name",
                f.path().display()
            );
            n += 1;
            bytes += data.len() as u64;
        }
    }
    (n, bytes)
}

#[test]
fn prefetch_then_run_fetches_nothing_for_the_warmed_files() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("warm-pf");
    let esgz = push_estargz(&s, "warm", 6 << 20);
    let ctr = s.ctr();
    let expected = "hello from the data layer\n";
    let root = s.starling().unwrap().root().to_path_buf();
    let profile = root.join("profile.txt");
    std::fs::write(&profile, PROFILE).unwrap();

    // Warm the node next to the running daemon.
    let r = starling_json(&[
        "prefetch",
        "--plain-http",
        "--root",
        &root_arg(&root),
        "--profile",
        &profile.display().to_string(),
        "--json",
        &esgz,
    ]);
    let fetched = r["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 1 << 20, "a.bin and busybox were fetched: {r}");
    assert!(
        fetched < 6 << 20,
        "b.bin (6 MiB, not listed) was not fetched: {r}"
    );
    // Again: everything is local.
    let again = starling_json(&[
        "prefetch",
        "--plain-http",
        "--root",
        &root_arg(&root),
        "--profile",
        &profile.display().to_string(),
        "--json",
        &esgz,
    ]);
    assert_eq!(again["fetched_bytes"], 0, "{again}");

    let b0 = s.fetched_bytes().unwrap();
    client::rpull_ok(ctr, &esgz, "starling").unwrap();
    let b1 = s.fetched_bytes().unwrap();
    let out = ctr.run_ok(&esgz, "starling", READ_A).unwrap();
    assert!(out.starts_with(expected), "{out}");
    let b2 = s.fetched_bytes().unwrap();
    eprintln!(
        "prefetch: {fetched} bytes; pull: {} bytes (footers + TOCs); run: {} bytes",
        b1 - b0,
        b2 - b1
    );
    assert_eq!(b2, b1, "the container fetched bytes of warmed files");
    assert!(
        b1 - b0 < 256.0 * 1024.0,
        "the pull fetched {} bytes",
        b1 - b0
    );
}

#[test]
fn exported_cache_imported_into_another_root_runs_without_fetching() {
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary()
    );
    let s = stack("warm-xfer");
    let esgz = push_estargz(&s, "xfer", 2 << 20);
    let other = s.wd.subdir("other-node").unwrap();
    let archive = s.wd.join("cache.tar.zst");

    // Node A: no daemon, warm everything, export the image's chunks.
    let r = starling_json(&[
        "prefetch",
        "--plain-http",
        "--root",
        &root_arg(&other),
        "--all",
        "--json",
        &esgz,
    ]);
    assert!(r["fetched_bytes"].as_u64().unwrap() > 3 << 20, "{r}");
    let e = starling_json(&[
        "cache",
        "export",
        "--plain-http",
        "--root",
        &root_arg(&other),
        "-o",
        &archive.display().to_string(),
        "--json",
        &esgz,
    ]);
    assert_eq!(e["not_in_cache"], 0, "{e}");

    // Node B: the stack's daemon, running; import into its root.
    let root = s.starling().unwrap().root().to_path_buf();
    let i = starling_json(&[
        "cache",
        "import",
        "--root",
        &root_arg(&root),
        "--json",
        &archive.display().to_string(),
    ]);
    assert_eq!(i["imported"], e["chunks"], "{i}");
    assert_eq!(i["skipped"], 0, "{i}");
    assert_eq!(i["layers"].as_array().unwrap().len(), 2, "{i}");

    let ctr = s.ctr();
    let b0 = s.fetched_bytes().unwrap();
    client::rpull_ok(ctr, &esgz, "starling").unwrap();
    let b1 = s.fetched_bytes().unwrap();
    let out = ctr
        .run_ok(
            &esgz,
            "starling",
            &["/bin/md5sum", "/data/a.bin", "/data/b.bin"],
        )
        .unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    let b2 = s.fetched_bytes().unwrap();
    eprintln!(
        "import: {i}\npull: {} bytes, run: {} bytes",
        b1 - b0,
        b2 - b1
    );
    assert_eq!(b2, b1, "the container fetched bytes the import brought");
}

#[test]
fn bad_archives_import_nothing_wrong_and_the_cap_holds() {
    require!(prereq::registry(), prereq::starling_binary());
    let wd = integration::workdir::Workdir::new("warm-bad").unwrap();
    let reg = integration::registry::Registry::start(&wd).unwrap();
    // 20 MiB of data: more than the smallest cap (16 MiB).
    data_image(20 << 20).push(&reg, "big:plain").unwrap();
    let (plain, esgz) = (reg.reference("big:plain"), reg.reference("big:esgz"));
    let out = client::run(["convert", "--plain-http", &plain, &esgz], TIMEOUT).unwrap();
    assert!(out.success(), "convert: {}", out.stderr);
    let src = wd.subdir("src").unwrap();
    starling_json(&[
        "prefetch",
        "--plain-http",
        "--root",
        &root_arg(&src),
        "--all",
        "--json",
        &esgz,
    ]);
    let archive = wd.join("all.tar");
    let e = starling_json(&[
        "cache",
        "export",
        "--root",
        &root_arg(&src),
        "--all",
        "-o",
        &archive.display().to_string(),
        "--json",
    ]);
    let chunks = e["chunks"].as_u64().unwrap();
    let tar = std::fs::read(&archive).unwrap();

    // Tampered: one byte of the first chunk's data flipped.
    let (name, data_at) = first_chunk_entry(&tar);
    let mut bad = tar.clone();
    bad[data_at + 10] ^= 0xff;
    let tampered = wd.join("tampered.tar");
    std::fs::write(&tampered, &bad).unwrap();
    let dst = wd.subdir("dst").unwrap();
    let out = client::run(
        [
            "cache",
            "import",
            "--root",
            &root_arg(&dst),
            tampered.to_str().unwrap(),
        ],
        TIMEOUT,
    )
    .unwrap();
    assert!(!out.success(), "a tampered archive must fail the command");
    assert!(
        out.stderr.contains(&name) && out.stderr.contains("does not match its digest"),
        "{}",
        out.stderr
    );
    assert!(
        !dst.join("cache")
            .join(name.trim_start_matches("chunks/"))
            .exists(),
        "the tampered chunk was cached"
    );
    let (n, _) = check_cache_entries(&dst.join("cache"));
    assert_eq!(n as u64, chunks - 1, "every other chunk imported");

    // Cut short in the middle: what came before is imported and checked, the rest said.
    let cut = wd.join("cut.tar");
    std::fs::write(&cut, &tar[..tar.len() / 2]).unwrap();
    let dst2 = wd.subdir("dst2").unwrap();
    let out = client::run(
        [
            "cache",
            "import",
            "--root",
            &root_arg(&dst2),
            cut.to_str().unwrap(),
        ],
        TIMEOUT,
    )
    .unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("cut short"), "{}", out.stderr);
    let (n, _) = check_cache_entries(&dst2.join("cache"));
    assert!(n > 0 && (n as u64) < chunks, "{n} of {chunks}");

    // The cap: 16 MiB for 20+ MiB of chunks.
    let capped = wd.subdir("capped").unwrap();
    let cfg = wd.join("capped.toml");
    std::fs::write(&cfg, "[cache]\nmax_size = \"16MiB\"\n").unwrap();
    let i = starling_json(&[
        "cache",
        "import",
        "--config",
        cfg.to_str().unwrap(),
        "--root",
        &root_arg(&capped),
        "--json",
        archive.to_str().unwrap(),
    ]);
    assert!(i["evicted"].as_u64().unwrap() > 0, "{i}");
    let (_, bytes) = check_cache_entries(&capped.join("cache"));
    assert!(bytes <= 16 << 20, "{bytes} bytes cached under a 16 MiB cap");
}

/// The name of the first chunk entry of a tar and the offset of its data.
fn first_chunk_entry(tar: &[u8]) -> (String, usize) {
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name.starts_with("chunks/") && e.size() > 100 {
            return (name, e.raw_file_position() as usize);
        }
    }
    panic!("no chunk entry");
}
