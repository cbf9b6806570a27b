//! Tests of loading, validation errors (key + line) and the documented defaults.

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml")
}

fn invalid(text: &str) -> (String, Option<Location>, String) {
    match parse(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let key = e.key().map(|k| k.to_string()).unwrap_or_default();
            (key, e.location(), e.to_string())
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn empty_text_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
    Config::default().validate().unwrap();
}

#[test]
fn values_are_read() {
    let c = parse(
        r#"
root = "/srv/starling"
[cache]
max_size = "1GiB"
memory_size = 1048576
[fetch]
request_timeout = "500ms"
multi_range = false
[registry.hosts."reg.local:5000"]
insecure = true
username = "bob"
password = "pw"
headers = { "X-Trace" = "1" }
mirrors = [{ host = "mirror.local", request_timeout = "2s" }]
[merge]
default_mode = "hardlink"
"#,
    )
    .unwrap();
    assert_eq!(c.cache_dir(), std::path::Path::new("/srv/starling/cache"));
    assert_eq!(c.cache.max_size, 1 << 30);
    assert_eq!(c.cache.memory_size, 1 << 20);
    assert_eq!(c.fetch.request_timeout, Duration::from_millis(500));
    assert!(!c.fetch.multi_range);
    let h = c.registry.host("reg.local:5000").unwrap();
    assert!(h.insecure);
    assert_eq!(h.password.expose(), "pw");
    assert_eq!(h.headers["X-Trace"], "1");
    assert_eq!(h.mirrors[0].host, "mirror.local");
    assert_eq!(h.mirrors[0].request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.merge.default_mode, MergeMode::Hardlink);
}

#[test]
fn unknown_key_is_rejected_with_key_and_line() {
    let (key, loc, msg) = invalid("root = \"/x\"\n\n[fetch]\nmax_retries = 3\nretries = 4\n");
    assert_eq!(key, "fetch.retries");
    assert_eq!(loc.map(|l| l.line), Some(5), "{msg}");
    assert!(msg.contains("test.toml:5:"), "{msg}");
    assert!(msg.contains("fetch.retries"), "{msg}");

    let (key, loc, _) = invalid("bogus = 1\n");
    assert_eq!(key, "bogus");
    assert_eq!(loc.map(|l| l.line), Some(1));

    let (key, loc, _) = invalid(
        "[registry.hosts.\"a:5000\"]\ninsecure = true\nmirrors = [{ host = \"m\", tls = 1 }]\n",
    );
    assert_eq!(key, "registry.hosts.\"a:5000\".mirrors[0].tls");
    assert_eq!(loc.map(|l| l.line), Some(3));
}

#[test]
fn bad_duration_names_the_key_and_line() {
    let (key, loc, msg) = invalid("[fetch]\n\nrequest_timeout = \"abc\"\n");
    assert_eq!(key, "fetch.request_timeout");
    assert_eq!(loc.map(|l| l.line), Some(3));
    assert!(msg.contains("\"abc\""), "{msg}");
}

#[test]
fn negative_sizes_are_rejected() {
    let (key, _, msg) = invalid("[cache]\nmax_size = -5\n");
    assert_eq!(key, "cache.max_size");
    assert!(msg.contains("negative"), "{msg}");
    let (key, loc, msg) = invalid("[cache]\nmemory_size = \"-1GiB\"\n");
    assert_eq!(key, "cache.memory_size");
    assert_eq!(loc.map(|l| l.line), Some(2));
    assert!(msg.contains("negative"), "{msg}");
}

#[test]
fn wrong_types_and_enum_values_are_rejected() {
    let (key, _, _) = invalid("[fetch]\nmax_retries = \"five\"\n");
    assert_eq!(key, "fetch.max_retries");
    let (key, loc, msg) = invalid("[merge]\ndefault_mode = \"sideways\"\n");
    assert_eq!(key, "merge.default_mode");
    assert_eq!(loc.map(|l| l.line), Some(2));
    assert!(msg.contains("sideways"), "{msg}");
}

#[test]
fn mirror_host_with_scheme_is_rejected() {
    let text = "[registry.hosts.\"docker.io\"]\nmirrors = [\n  { host = \"ok.local\" },\n  { host = \"http://m.local:5000\" },\n]\n";
    let (key, loc, msg) = invalid(text);
    assert_eq!(key, "registry.hosts.\"docker.io\".mirrors[1].host");
    assert_eq!(loc.map(|l| l.line), Some(4), "{msg}");
    assert!(msg.contains("scheme"), "{msg}");
}

#[test]
fn cross_field_and_range_checks_name_the_key() {
    let (key, loc, _) = invalid("[fetch]\nmin_backoff = \"10s\"\nmax_backoff = \"1s\"\n");
    assert_eq!(key, "fetch.min_backoff");
    assert_eq!(loc.map(|l| l.line), Some(2));
    let (key, _, _) = invalid("[fetch]\nstream_threshold = 1.5\n");
    assert_eq!(key, "fetch.stream_threshold");
    let (key, _, _) = invalid("[fetch]\nmax_concurrent_requests = 0\n");
    assert_eq!(key, "fetch.max_concurrent_requests");
    let (key, _, _) = invalid("[fetch]\nbackground_batch_size = 0\n");
    assert_eq!(key, "fetch.background_batch_size");
    let (key, _, _) = invalid("[fetch]\nbackground_batch_size = \"1GiB\"\n");
    assert_eq!(key, "fetch.background_batch_size");
    let (key, _, _) = invalid("metrics_address = \"localhost\"\n");
    assert_eq!(key, "metrics_address");
    let (key, _, _) = invalid("[registry.hosts.\"bad host\"]\n");
    assert_eq!(key, "registry.hosts.\"bad host\"");
    let (key, _, _) = invalid("[registry.hosts.h]\npassword = \"x\"\n");
    assert_eq!(key, "registry.hosts.h.password");
    let (key, _, _) = invalid("[registry.hosts.h]\nheaders = { \"Bad Name\" = \"v\" }\n");
    assert_eq!(key, "registry.hosts.h.headers.\"Bad Name\"");
}

#[test]
fn background_and_prefetch_keys_parse_with_defaults() {
    let d = crate::FetchConfig::default();
    assert!(d.elf_read_ahead && d.program_read_ahead && d.script_read_ahead);
    assert_eq!(
        d.start_files,
        ["/etc/passwd", "/etc/group", "/etc/localtime"]
    );
    assert_eq!(d.neighbour_read_ahead, 32 << 10);
    assert_eq!(d.elf_read_ahead_extent, crate::ElfExtent::Loader);
    assert_eq!(d.next_chunk_read_ahead, crate::NextChunk::Sequential);
    assert_eq!(d.next_chunk_window, 4 << 20);
    assert_eq!(d.directory_read_ahead, 0);
    let c = parse(
        "[fetch]\nelf_read_ahead_extent = \"whole\"\nnext_chunk_read_ahead = \"always\"\ndirectory_read_ahead = \"1MiB\"\n",
    )
    .unwrap();
    assert_eq!(c.fetch.elf_read_ahead_extent, crate::ElfExtent::Whole);
    assert_eq!(c.fetch.next_chunk_read_ahead, crate::NextChunk::Always);
    assert_eq!(c.fetch.directory_read_ahead, 1 << 20);
    let e = parse("[fetch]\nnext_chunk_read_ahead = \"sometimes\"\n").unwrap_err();
    assert!(e.to_string().contains("next_chunk_read_ahead"), "{e}");
    let c = parse("[fetch]\nelf_read_ahead = false\nstart_files = []\n").unwrap();
    assert!(!c.fetch.elf_read_ahead);
    assert!(c.fetch.start_files.is_empty());
    let e = parse("[fetch]\nstart_files = [\"etc/passwd\"]\n").unwrap_err();
    assert!(e.to_string().contains("start_files"), "{e}");
    assert!(
        !d.wait_for_prefetch,
        "mounts do not wait for the prefetch by default"
    );
    assert_eq!(d.background_batch_size, 1 << 20);
    assert_eq!(d.background_pause_after_read, Duration::from_secs(2));
    let c = parse(
        "[fetch]\nwait_for_prefetch = true\nbackground_batch_size = \"4MiB\"\nbackground_pause_after_read = \"500ms\"\n",
    )
    .unwrap();
    assert!(c.fetch.wait_for_prefetch);
    assert_eq!(c.fetch.background_batch_size, 4 << 20);
    assert_eq!(
        c.fetch.background_pause_after_read,
        Duration::from_millis(500)
    );
}

#[test]
fn syntax_errors_have_a_line() {
    match parse("[fetch\nx = 1\n") {
        Err(ConfigError::Syntax { location, .. }) => assert_eq!(location.map(|l| l.line), Some(1)),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn errors_never_show_secrets() {
    let text =
        "[registry.hosts.h]\nusername = \"u\"\npassword = \"s3cr3t-pw\"\nidentity_token = 7\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("identity_token"), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "{err}");
}

#[test]
fn documented_defaults_parse_back_and_document_every_key() {
    let text = Config::default().to_toml_documented();
    assert_eq!(parse(&text).unwrap(), Config::default(), "{text}");
    for key in [
        "root",
        "address",
        "log_level",
        "metrics_address",
        "[cache]",
        "max_size",
        "[fetch]",
        "coalesce_gap",
        "stream_threshold",
        "[fuse]",
        "passthrough",
        "[registry]",
        "docker_config",
        "[snapshotter]",
        "allow_fallback",
        "[merge]",
        "default_mode",
        "[daemon]",
        "unmount_on_stop",
        "restart_grace",
    ] {
        assert!(text.contains(key), "missing {key} in\n{text}");
    }
    // The commented host example documents every host and mirror key.
    for key in [
        "# insecure =",
        "# identity_token =",
        "# mirrors =",
        "#   request_timeout:",
    ] {
        assert!(text.contains(key), "missing {key} in\n{text}");
    }
    // Every key line is preceded by a comment.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(" = ") && !l.starts_with('#') {
            assert!(lines[i - 1].starts_with('#'), "undocumented: {l}");
        }
    }
}

#[test]
fn documented_non_default_config_round_trips() {
    let mut c = Config::default();
    c.fetch.max_retries = 2;
    c.registry.hosts.insert(
        "reg.local:5000".into(),
        HostConfig {
            insecure: true,
            request_timeout: Some(Duration::from_secs(3)),
            mirrors: vec![MirrorConfig {
                host: "m:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let text = c.to_toml_documented();
    assert_eq!(parse(&text).unwrap(), c, "{text}");
}

#[test]
fn load_reads_files_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[fuse]\nthreads = 0\n").unwrap();
    let err = Config::load(&p).unwrap_err().to_string();
    assert!(
        err.contains("c.toml:2:") && err.contains("fuse.threads"),
        "{err}"
    );
    let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
}

#[test]
fn daemon_stop_keys_parse_with_defaults_and_bounds() {
    let d = DaemonConfig::default();
    assert!(
        !d.unmount_on_stop,
        "a stop hands the mounts over by default"
    );
    assert_eq!(d.restart_grace, Duration::from_secs(600));
    assert_eq!(d.restart_grace(), Some(Duration::from_secs(600)));
    let c = parse("[daemon]\nunmount_on_stop = true\nrestart_grace = \"2s\"\n").unwrap();
    assert!(c.daemon.unmount_on_stop);
    assert_eq!(c.daemon.restart_grace(), Some(Duration::from_secs(2)));
    // "0s" (or "0") waits forever.
    for zero in ["0s", "0"] {
        let c = parse(&format!("[daemon]\nrestart_grace = \"{zero}\"\n")).unwrap();
        assert_eq!(c.daemon.restart_grace(), None, "{zero}");
    }
    let (key, loc, msg) = invalid("[daemon]\n\nrestart_grace = \"500ms\"\n");
    assert_eq!(key, "daemon.restart_grace");
    assert_eq!(loc.map(|l| l.line), Some(3));
    assert!(msg.contains("at least 1s"), "{msg}");
    let (key, _, _) = invalid("[daemon]\nrestart_grace = \"soon\"\n");
    assert_eq!(key, "daemon.restart_grace");
    let (key, _, _) = invalid("[daemon]\nunmount_on_stop = \"yes\"\n");
    assert_eq!(key, "daemon.unmount_on_stop");
    let (key, _, _) = invalid("[daemon]\nunmount_on_shutdown = true\n");
    assert_eq!(key, "daemon.unmount_on_shutdown");
    // Rendered and read back.
    let mut c = Config::default();
    c.daemon.unmount_on_stop = true;
    c.daemon.restart_grace = Duration::ZERO;
    assert_eq!(parse(&c.to_toml_documented()).unwrap(), c);
}

#[test]
fn kubernetes_keys_parse_validate_and_render() {
    let c = parse(
        r#"
[kubernetes]
image_service_address = "/run/starling/image.sock"
credential_provider_bin_dir = "/opt/plugins"
[[kubernetes.credential_providers]]
name = "p"
match_images = ["*.example.com", "reg.io:5000/team"]
default_cache_duration = "10m"
api_version = "credentialprovider.kubelet.k8s.io/v1"
env = { A = "1" }
"#,
    )
    .unwrap();
    let k = &c.kubernetes;
    assert!(k.image_service_enabled());
    assert_eq!(
        k.runtime_address,
        std::path::Path::new("/run/containerd/containerd.sock")
    );
    assert_eq!(
        k.credential_providers[0].default_cache_duration,
        Duration::from_secs(600)
    );
    assert_eq!(parse(&c.to_toml_documented()).unwrap(), c);
    assert!(!Config::default().kubernetes.image_service_enabled());
    for (text, key, words) in [
        ("[kubernetes]\nimage_service_address = \"rel.sock\"\n", "kubernetes.image_service_address", "absolute"),
        (
            "[kubernetes]\nimage_service_address = \"/run/c.sock\"\nruntime_address = \"/run/c.sock\"\n",
            "kubernetes.image_service_address",
            "differ",
        ),
        (
            "[kubernetes]\nimage_service_address = \"/run/starling/starling.sock\"\n",
            "kubernetes.image_service_address",
            "address",
        ),
        (
            "[[kubernetes.credential_providers]]\nname = \"a/b\"\nmatch_images = [\"x\"]\napi_version = \"credentialprovider.kubelet.k8s.io/v1\"\n",
            "kubernetes.credential_providers[0].name",
            "file name",
        ),
        (
            "[[kubernetes.credential_providers]]\nname = \"p\"\nmatch_images = []\napi_version = \"credentialprovider.kubelet.k8s.io/v1\"\n",
            "kubernetes.credential_providers[0].match_images",
            "at least one",
        ),
        (
            "[[kubernetes.credential_providers]]\nname = \"p\"\nmatch_images = [\"x\"]\napi_version = \"v2\"\n",
            "kubernetes.credential_providers[0].api_version",
            "credentialprovider.kubelet.k8s.io/v1",
        ),
        (
            "[[kubernetes.credential_providers]]\nname = \"p\"\nmatch_images = [\"https://x\"]\napi_version = \"credentialprovider.kubelet.k8s.io/v1\"\n",
            "kubernetes.credential_providers[0].match_images[0]",
            "HOST[:PORT]",
        ),
        ("[kubernetes]\ncredential_provider_timeout = \"0s\"\n", "kubernetes.credential_provider_timeout", "greater"),
    ] {
        let (k, _, msg) = invalid(text);
        assert_eq!(k, key, "{text}");
        assert!(msg.contains(words), "{msg}");
    }
}

/// The Kubernetes snippets shipped in contrib/ are valid configuration.
#[test]
fn contrib_kubernetes_snippets_are_valid() {
    for (name, text) in [
        (
            "starling.toml",
            include_str!("../../contrib/kubernetes/starling.toml"),
        ),
        (
            "credential-provider.toml",
            include_str!("../../contrib/kubernetes/credential-provider.toml"),
        ),
    ] {
        let c = Config::from_toml_str(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(c, Config::default(), "{name}");
    }
}

/// `contrib/starling/config.toml` is what `starling config default` prints.
#[test]
fn contrib_config_is_the_documented_default() {
    assert_eq!(
        include_str!("../../contrib/starling/config.toml"),
        Config::default().to_toml_documented(),
        "regenerate it: starling config default > contrib/starling/config.toml"
    );
}

#[test]
fn registry_hosts_dir_and_mirror_skip() {
    let d = Config::default();
    assert!(
        d.registry.hosts_dir.as_os_str().is_empty(),
        "off by default"
    );
    assert_eq!(d.registry.mirror_skip, Duration::from_secs(30));
    let text = "[registry]\nhosts_dir = \"/etc/containerd/certs.d\"\nmirror_skip = \"5s\"\n";
    let c = Config::from_toml_str(text, "t.toml").unwrap();
    assert_eq!(
        c.registry.hosts_dir,
        std::path::PathBuf::from("/etc/containerd/certs.d")
    );
    assert_eq!(c.registry.mirror_skip, Duration::from_secs(5));
    // Rendered with their documentation, and read back the same.
    let rendered = c.to_toml_documented();
    assert!(
        rendered.contains("hosts_dir = \"/etc/containerd/certs.d\""),
        "{rendered}"
    );
    assert!(rendered.contains("containerd's registry host directory"));
    assert_eq!(Config::from_toml_str(&rendered, "r.toml").unwrap(), c);
    let (key, _, _) = invalid("[registry]\nhosts_dir = \"certs.d\"\n");
    assert_eq!(key, "registry.hosts_dir");
    let (key, _, _) = invalid("[registry]\nmirror_skip = \"0s\"\n");
    assert_eq!(key, "registry.mirror_skip");
}
