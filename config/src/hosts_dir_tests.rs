use super::*;

fn parse_str(text: &str) -> Result<HostsFile, HostsDirError> {
    parse(
        text,
        Path::new("/etc/containerd/certs.d/docker.io"),
        Path::new("/etc/containerd/certs.d/docker.io/hosts.toml"),
    )
}

#[test]
fn hosts_in_file_order_then_the_server() {
    let f = parse_str(
        r#"
server = "https://registry-1.docker.io"

[host."http://zeta.local:5000"]
  capabilities = ["pull", "resolve"]

[host."https://alpha.local"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["ca.pem", "/abs/other.pem"]
  client = [["c.pem", "k.pem"], "both.pem"]
  [host."https://alpha.local".header]
    x-spegel = "yes"
    x-multi = ["a", "b"]

[host."10.0.0.9:5000/prefix"]
"#,
    )
    .unwrap();
    let hosts: Vec<_> = f
        .endpoints
        .iter()
        .map(|e| (e.scheme.as_str(), e.host.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("http", "zeta.local:5000", "/v2"),
            ("https", "alpha.local", "/v2"),
            ("https", "10.0.0.9:5000", "/prefix/v2"),
            ("https", "registry-1.docker.io", "/v2"),
        ],
        "file order (not alphabetical), then the server"
    );
    assert_eq!(f.mirrors().len(), 3);
    let zeta = &f.endpoints[0];
    assert_eq!(
        zeta.capabilities,
        Capabilities {
            pull: true,
            resolve: true,
            push: false
        }
    );
    let alpha = &f.endpoints[1];
    assert_eq!(alpha.skip_verify, Some(true));
    assert_eq!(
        alpha.ca,
        [
            PathBuf::from("/etc/containerd/certs.d/docker.io/ca.pem"),
            PathBuf::from("/abs/other.pem")
        ]
    );
    assert_eq!(
        alpha.client,
        [
            (
                PathBuf::from("/etc/containerd/certs.d/docker.io/c.pem"),
                Some(PathBuf::from("/etc/containerd/certs.d/docker.io/k.pem"))
            ),
            (
                PathBuf::from("/etc/containerd/certs.d/docker.io/both.pem"),
                None
            )
        ]
    );
    assert_eq!(alpha.headers["x-spegel"], ["yes"]);
    assert_eq!(alpha.headers["x-multi"], ["a", "b"]);
    assert!(alpha.has_tls_settings() && !zeta.has_tls_settings());
    assert_eq!(f.origin().capabilities, Capabilities::ALL);
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
}

#[test]
fn without_server_the_origin_is_the_registry_host_itself() {
    let f = parse_str("[host.\"http://mirror:5000\"]\n").unwrap();
    assert_eq!(f.endpoints.len(), 2);
    assert_eq!(
        f.origin().host,
        "",
        "filled in by the client: the host itself"
    );
    assert_eq!(f.origin().path, "/v2");
}

#[test]
fn override_path_keeps_the_url_path() {
    let f = parse_str(
        r#"
[host."https://mirror.local/api/registry"]
  override_path = true
[host."https://plain.local/api/registry"]
[host."https://v2.local/x/v2/"]
"#,
    )
    .unwrap();
    let paths: Vec<_> = f.endpoints.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/api/registry", "/api/registry/v2", "/x/v2", "/v2"]);
}

#[test]
fn unknown_keys_are_warnings_naming_file_line_and_key() {
    let f = parse_str(
        "server = \"https://r.io\"\nmirrors = 3\n[host.\"https://m\"]\n  capabilites = [\"pull\"]\n",
    )
    .unwrap();
    assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
    assert!(
        f.warnings[0]
            .starts_with("/etc/containerd/certs.d/docker.io/hosts.toml:2:1: unknown key `mirrors`"),
        "{}",
        f.warnings[0]
    );
    assert!(
        f.warnings[1].contains(":4:3: unknown key `host.\"https://m\".capabilites`"),
        "{}",
        f.warnings[1]
    );
    // The misspelt key was ignored: containerd's default capabilities apply.
    assert_eq!(f.endpoints[0].capabilities, Capabilities::ALL);
}

#[test]
fn bad_files_are_clear_errors() {
    let cases = [
        ("server = \n", "TOML syntax error"),
        ("server = 5\n", "`server`: must be a URL string"),
        ("server = \"ftp://x\"\n", "the scheme must be http or https"),
        ("server = \"https://a b\"\n", "HOST[:PORT]"),
        (
            "[host.\"https://m\"]\ncapabilities = [\"pul\"]\n",
            "unknown capability \"pul\"",
        ),
        (
            "[host.\"https://m\"]\nskip_verify = \"yes\"\n",
            "must be true or false",
        ),
        (
            "[host.\"https://m\"]\nclient = [[\"a\"]]\n",
            "a pair must have two files",
        ),
        (
            "[host.\"https://m\"]\ndial_timeout = \"soon\"\n",
            "dial_timeout",
        ),
        (
            "[host.\"https://m\".header]\n\"bad name\" = \"v\"\n",
            "not a valid HTTP header name",
        ),
        ("host = 1\n", "`host`: must be a table of hosts"),
    ];
    for (text, want) in cases {
        let err = parse_str(text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/containerd/certs.d/docker.io/hosts.toml:"),
            "{text:?}: {err}"
        );
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn directories_are_looked_up_like_containerd() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    assert_eq!(
        candidate_dirs(r, "reg.local:5000"),
        [
            r.join("reg.local_5000_"),
            r.join("reg.local:5000"),
            r.join("_default")
        ]
    );
    assert_eq!(
        candidate_dirs(r, "docker.io"),
        [r.join("docker.io"), r.join("_default")]
    );
    assert!(load(r, "docker.io").unwrap().is_none());

    std::fs::create_dir(r.join("_default")).unwrap();
    std::fs::write(
        r.join("_default/hosts.toml"),
        "[host.\"http://default-mirror:5000\"]\n",
    )
    .unwrap();
    let f = load(r, "quay.io").unwrap().unwrap();
    assert_eq!(f.dir, r.join("_default"));
    assert_eq!(f.endpoints[0].host, "default-mirror:5000");

    std::fs::create_dir(r.join("reg.local:5000")).unwrap();
    std::fs::write(
        r.join("reg.local:5000/hosts.toml"),
        "[host.\"http://colon:5000\"]\n",
    )
    .unwrap();
    assert_eq!(
        load(r, "reg.local:5000").unwrap().unwrap().endpoints[0].host,
        "colon:5000"
    );
    std::fs::create_dir(r.join("reg.local_5000_")).unwrap();
    std::fs::write(
        r.join("reg.local_5000_/hosts.toml"),
        "[host.\"http://underscore:5000\"]\n",
    )
    .unwrap();
    assert_eq!(
        load(r, "reg.local:5000").unwrap().unwrap().endpoints[0].host,
        "underscore:5000",
        "HOST_PORT_ wins over HOST:PORT"
    );
}

#[test]
fn without_hosts_toml_certificate_files_apply_to_the_origin() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("reg.io");
    std::fs::create_dir(&d).unwrap();
    for f in [
        "ca.crt",
        "client.cert",
        "client.key",
        "lone.cert",
        "notes.txt",
    ] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    let f = load(root.path(), "reg.io").unwrap().unwrap();
    assert_eq!(f.endpoints.len(), 1);
    let o = f.origin();
    assert_eq!(o.host, "");
    assert_eq!(o.ca, [d.join("ca.crt")]);
    assert_eq!(
        o.client,
        [
            (d.join("client.cert"), Some(d.join("client.key"))),
            (d.join("lone.cert"), None)
        ]
    );
}

#[test]
fn an_unreadable_hosts_file_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("reg.io");
    std::fs::create_dir(&d).unwrap();
    std::fs::create_dir(d.join(HOSTS_FILE)).unwrap(); // a directory: read fails
    let err = load(root.path(), "reg.io").unwrap_err().to_string();
    assert!(err.contains("reg.io/hosts.toml"), "{err}");
}
