//! Docker Engine 28 (Debian sid's dockerd, docker CLI and buildx, extracted by
//! `scripts/engines`) with starling as its containerd snapshotter, on a private containerd
//! 2.1: `daemon.json` from `contrib/docker/daemon.json` (the containerd-snapshotter feature,
//! `storage-driver` = `stargz`, the name under which Docker's BuildKit mounts a build's
//! base layers remotely), the containerd config from `contrib/containerd/config-v3.toml`.
//! One dockerd for the whole sequence
//! (`docker_pull_run_and_builds_on_an_estargz_base_keep_it_lazy`):
//!
//! 1. `docker pull` + `docker run` of the eStargz image (busybox + a data layer): lazy;
//! 2. `docker build` FROM it with `RUN` (reads a file of the lazy base, writes a new one),
//!    pushed to the registry (gzip: Docker cannot write eStargz itself) and run from there —
//!    the export diffs a snapshot whose parent is a FUSE mount, which failed with
//!    "failed to get xattr ... operation not supported" while the lazy filesystem answered
//!    getxattr with ENOSYS;
//! 3. a second build FROM the first, pushed and run;
//! 4. a build with `COPY --link` on the eStargz base, pushed and run;
//!
//! and after all of it the base is still lazy: none of its layer blobs is in containerd's
//! content store (namespace `moby`), its snapshot is a remote snapshot, the unread 6 MiB of
//! the data layer were never fetched.

mod engines_common;

use std::path::Path;

use engines_common::{assert_lazy, esgz_image, layers, stack, HELLO};
use integration::containerd::{ContainerdVersion, Ctr};
use integration::docker::{Docker, DockerOptions, NAMESPACE};
use integration::stack::Stack;
use integration::{engines, prereq, require};

/// Writes `Dockerfile` (and `files`) into `dir`.
fn context(dir: &Path, dockerfile: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Builds `dir` and pushes it as `reference`; returns the build log.
fn build(s: &Stack, docker: &Docker, dir: &Path, reference: &str) -> String {
    let out = docker.build_push(dir, reference).unwrap();
    assert!(
        out.success(),
        "docker build {}: {}\n--- dockerd ---\n{}\n--- starling ---\n{}",
        dir.display(),
        out.stderr,
        tail(&docker.log(), 40),
        tail(&s.starling().unwrap().log(), 40)
    );
    out.stderr
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn docker_pull_run_and_builds_on_an_estargz_base_keep_it_lazy() {
    let v = ContainerdVersion::V2_1;
    require!(
        prereq::containerd_stack(),
        prereq::fuse(),
        prereq::starling_binary(),
        v.check(),
        engines::docker_check()
    );
    let s = stack("engdk", v, &["starling", "stargz"]);
    let docker = Docker::start(
        &s.wd,
        &s.containerd,
        DockerOptions {
            insecure_registries: vec![s.registry.host()],
            ..Default::default()
        },
    )
    .unwrap();
    let sn = docker.storage_driver().to_string();
    assert_eq!(sn, "stargz", "contrib/docker/daemon.json names stargz");
    let mut moby: Ctr = s.ctr().clone();
    moby.namespace = NAMESPACE.into();

    // 1. docker pull + run
    let (esgz, blobs) = esgz_image(&s);
    docker.pull(&esgz).unwrap();
    assert_eq!(docker.run(&esgz, &["cat", "/data/hello"]).unwrap(), HELLO);
    assert_lazy(&s, &moby, &sn, &esgz, &blobs);

    // 2. FROM the eStargz base, RUN, pushed, run from the registry
    let v1 = s.registry.reference("app:v1");
    let ctx = s.wd.join("ctx");
    context(
        &ctx.join("v1"),
        &format!(
            "FROM {esgz}\nRUN cat /data/hello > /built.txt && echo run-step >> /built.txt\n\
             CMD [\"cat\", \"/built.txt\"]\n"
        ),
        &[],
    );
    build(&s, &docker, &ctx.join("v1"), &v1);
    let v1_layers = layers(&s.registry, "app", "v1");
    assert_eq!(v1_layers.len(), 3, "base (2) + RUN: {v1_layers:?}");
    assert_eq!(
        v1_layers[..2],
        blobs[..],
        "the pushed image keeps the eStargz base layers as they are"
    );
    assert_eq!(docker.run(&v1, &[]).unwrap(), format!("{HELLO}run-step\n"));

    // 3. a second build on top of the first
    let v2 = s.registry.reference("app:v2");
    context(
        &ctx.join("v2"),
        &format!(
            "FROM {v1}\nRUN cat /built.txt > /second.txt && echo second >> /second.txt\n\
             CMD [\"cat\", \"/second.txt\"]\n"
        ),
        &[],
    );
    build(&s, &docker, &ctx.join("v2"), &v2);
    assert_eq!(layers(&s.registry, "app", "v2").len(), 4);
    assert_eq!(
        docker.run(&v2, &[]).unwrap(),
        format!("{HELLO}run-step\nsecond\n")
    );

    // 4. COPY --link on the eStargz base
    let link = s.registry.reference("app:link");
    context(
        &ctx.join("link"),
        &format!(
            "FROM {esgz}\nCOPY --link copied.txt /data/copied.txt\n\
             CMD [\"cat\", \"/data/hello\", \"/data/copied.txt\"]\n"
        ),
        &[("copied.txt", "copied with --link\n")],
    );
    build(&s, &docker, &ctx.join("link"), &link);
    assert_eq!(
        docker.run(&link, &[]).unwrap(),
        format!("{HELLO}copied with --link\n")
    );

    // The base is still lazy after the builds and the runs of their images.
    assert_lazy(&s, &moby, &sn, &esgz, &blobs);
    for r in [&v1, &v2, &link] {
        let chain = moby.image_chain_id(r).unwrap();
        assert!(
            moby.snapshots(&sn).unwrap().contains(&chain),
            "{r}: its snapshot {chain} is not on {sn}"
        );
    }
}
