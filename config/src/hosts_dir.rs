//! containerd's registry host directory (`config_path`, e.g. `/etc/containerd/certs.d`): for a
//! registry host, which directory applies (`HOST_PORT_`, `HOST:PORT` or `HOST`, then
//! `_default`), and what its `hosts.toml` says: the `[host."..."]` endpoints in file order,
//! then the `server` (the origin) with the top-level settings. Without a `hosts.toml`, the
//! directory's Docker-style certificate files (`*.crt` CAs, `*.cert` + `*.key` client pairs)
//! apply to the origin. The semantics follow containerd's `docs/hosts.md`; unknown keys are
//! ignored like containerd does, and reported as warnings naming the file, line and key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::Location;

/// The file containerd reads in a host directory.
pub const HOSTS_FILE: &str = "hosts.toml";
/// The directory used for hosts without their own.
pub const DEFAULT_DIR: &str = "_default";

/// What a host may be used for (`capabilities`; all three when the key is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve tags to digests.
    pub resolve: bool,
    /// Push.
    pub push: bool,
}

impl Capabilities {
    /// Pull, resolve and push (containerd's default).
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint of a host directory: a `[host."..."]` table, or the `server` (last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `HOST[:PORT]`; empty for the origin when the file has no `server` (the registry host
    /// itself is meant).
    pub host: String,
    /// The API root requests go below (`/v2`, or the URL's path with `override_path`).
    pub path: String,
    /// What the endpoint is used for.
    pub capabilities: Capabilities,
    /// CA certificate files (absolute; relative names are taken relative to the directory).
    pub ca: Vec<PathBuf>,
    /// Client certificate files, each with its key file (`None`: the key is in the same file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// `skip_verify`: do not verify the server's certificate (when set).
    pub skip_verify: Option<bool>,
    /// Extra headers (a name can have several values).
    pub headers: BTreeMap<String, Vec<String>>,
    /// `dial_timeout`: connect timeout.
    pub dial_timeout: Option<Duration>,
}

impl HostEndpoint {
    /// An endpoint with containerd's defaults for an absent `server`.
    fn origin_default() -> Self {
        HostEndpoint {
            scheme: String::new(),
            host: String::new(),
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            ca: Vec::new(),
            client: Vec::new(),
            skip_verify: None,
            headers: BTreeMap::new(),
            dial_timeout: None,
        }
    }

    /// True if TLS settings were given for it.
    pub fn has_tls_settings(&self) -> bool {
        !self.ca.is_empty() || !self.client.is_empty() || self.skip_verify.is_some()
    }
}

/// What one host directory configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// The directory it came from.
    pub dir: PathBuf,
    /// The endpoints to try in order; the last one is the origin (`server`).
    pub endpoints: Vec<HostEndpoint>,
    /// Keys containerd does not know (ignored), as "FILE:LINE:COL: unknown key `K` ...".
    pub warnings: Vec<String>,
}

impl HostsFile {
    /// The mirrors: every endpoint but the last.
    pub fn mirrors(&self) -> &[HostEndpoint] {
        &self.endpoints[..self.endpoints.len() - 1]
    }

    /// The origin (`server`): the last endpoint.
    pub fn origin(&self) -> &HostEndpoint {
        self.endpoints.last().expect("a hosts file has an origin")
    }
}

/// Errors of reading a host directory.
#[derive(Debug, thiserror::Error)]
pub enum HostsDirError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `hosts.toml` is not valid TOML.
    #[error("{}{}: TOML syntax error: {message}", path.display(), at(location))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where the parser stopped.
        location: Option<Location>,
        /// The parser's message.
        message: String,
    },
    /// A known key has an unusable value.
    #[error("{}{}: `{key}`: {message}", path.display(), at(location))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where the key is.
        location: Option<Location>,
        /// The key (`host."https://m".capabilities`).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn at(location: &Option<Location>) -> String {
    location.map_or(String::new(), |l| format!(":{}:{}", l.line, l.column))
}

/// containerd's directory name for a `HOST:PORT` (`HOST_PORT_`); `None` without a port.
pub fn port_dir_name(host: &str) -> Option<String> {
    let i = host.rfind(':')?;
    (i > 0).then(|| format!("{}_{}_", &host[..i], &host[i + 1..]))
}

/// The directories containerd looks at for `host`, in order: `HOST_PORT_` (with a port),
/// `HOST[:PORT]`, `_default`.
pub fn candidate_dirs(root: &Path, host: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = port_dir_name(host) {
        dirs.push(root.join(d));
    }
    dirs.push(root.join(host));
    dirs.push(root.join(DEFAULT_DIR));
    dirs
}

/// The first directory of [`candidate_dirs`] that exists.
pub fn find_dir(root: &Path, host: &str) -> Result<Option<PathBuf>, HostsDirError> {
    for dir in candidate_dirs(root, host) {
        match std::fs::metadata(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(HostsDirError::Read { path: dir, source }),
        }
    }
    Ok(None)
}

/// What `root` configures for `host`; `None` when no directory applies.
pub fn load(root: &Path, host: &str) -> Result<Option<HostsFile>, HostsDirError> {
    let Some(dir) = find_dir(root, host)? else {
        return Ok(None);
    };
    load_dir(&dir).map(Some)
}

/// Reads one host directory: its `hosts.toml`, or else its certificate files.
pub fn load_dir(dir: &Path) -> Result<HostsFile, HostsDirError> {
    let path = dir.join(HOSTS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => parse(&text, dir, &path),
        Ok(_) => cert_files(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert_files(dir),
        Err(source) => Err(HostsDirError::Read { path, source }),
    }
}

/// Docker's certificate layout: `*.crt` are CAs, `NAME.cert` is a client certificate with
/// its key in `NAME.key` (or in the same file). All apply to the origin.
fn cert_files(dir: &Path) -> Result<HostsFile, HostsDirError> {
    let read_err = |source| HostsDirError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut origin = HostEndpoint::origin_default();
    for name in &names {
        if name.ends_with(".crt") {
            origin.ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            let key = names.contains(&key).then(|| dir.join(key));
            origin.client.push((dir.join(name), key));
        }
    }
    Ok(HostsFile {
        dir: dir.to_path_buf(),
        endpoints: vec![origin],
        warnings: Vec::new(),
    })
}

/// Keys of a host table (and of the top level, with `server` and `host`).
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

struct Parser<'a> {
    text: &'a str,
    dir: &'a Path,
    path: &'a Path,
    /// (offset, message): sorted by offset at the end.
    warnings: Vec<(usize, String)>,
}

/// Parses the text of `path` (a `hosts.toml` in `dir`).
pub fn parse(text: &str, dir: &Path, path: &Path) -> Result<HostsFile, HostsDirError> {
    let root = DeTable::parse(text).map_err(|e| HostsDirError::Syntax {
        path: path.to_path_buf(),
        location: e.span().map(|s| Location::of_offset(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let mut p = Parser {
        text,
        dir,
        path,
        warnings: Vec::new(),
    };
    let top = root.get_ref();
    let mut endpoints = Vec::new();
    // `[host."..."]` tables in the order they appear in the file.
    if let Some((key, value)) = entry(top, "host") {
        let DeValue::Table(hosts) = value.get_ref() else {
            return Err(p.invalid(key.span().start, "host", "must be a table of hosts"));
        };
        let mut ordered: Vec<_> = hosts.iter().collect();
        ordered.sort_by_key(|(k, _)| k.span().start);
        for (name, table) in ordered {
            let at = format!("host.{:?}", name.get_ref().as_ref());
            let DeValue::Table(t) = table.get_ref() else {
                return Err(p.invalid(name.span().start, &at, "must be a table"));
            };
            let mut ep = p.endpoint_settings(t, &at, &[])?;
            p.set_server(&mut ep, name.get_ref(), name.span().start, &at)?;
            endpoints.push(ep);
        }
    }
    let mut origin = p.endpoint_settings(top, "", &["server", "host"])?;
    if let Some((key, value)) = entry(top, "server") {
        let DeValue::String(s) = value.get_ref() else {
            return Err(p.invalid(
                key.span().start,
                "server",
                "must be a URL string, e.g. \"https://registry.example.com\"",
            ));
        };
        p.set_server(&mut origin, s, value.span().start, "server")?;
    }
    endpoints.push(origin);
    Ok(HostsFile {
        dir: dir.to_path_buf(),
        endpoints,
        warnings: {
            p.warnings.sort();
            p.warnings.into_iter().map(|(_, w)| w).collect()
        },
    })
}

fn entry<'t, 'i>(
    table: &'t DeTable<'i>,
    name: &str,
) -> Option<(&'t Spanned<Cow<'i, str>>, &'t Spanned<DeValue<'i>>)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == name)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Parser<'_> {
    fn invalid(&self, offset: usize, key: &str, message: impl Into<String>) -> HostsDirError {
        HostsDirError::Invalid {
            path: self.path.to_path_buf(),
            location: Some(Location::of_offset(self.text, offset)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn abs(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Sets scheme, host and path from a server URL (`HOST`, `https://HOST[:PORT][/PATH]`).
    fn set_server(
        &self,
        ep: &mut HostEndpoint,
        server: &str,
        offset: usize,
        key: &str,
    ) -> Result<(), HostsDirError> {
        let url = if server.contains("://") {
            server.to_string()
        } else {
            format!("https://{server}")
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            self.invalid(
                offset,
                key,
                format!("{server:?} is not a URL (\"https://HOST[:PORT]\")"),
            )
        })?;
        if scheme != "http" && scheme != "https" {
            return Err(self.invalid(
                offset,
                key,
                format!("{server:?}: the scheme must be http or https"),
            ));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        crate::registry::check_host(host).map_err(|m| self.invalid(offset, key, m))?;
        let path = clean_path(path);
        ep.path = if ep.path.is_empty() {
            // override_path: the URL's path is the API root as it is.
            path
        } else if path.is_empty() || path == "/" {
            "/v2".into()
        } else if path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        ep.scheme = scheme.to_string();
        ep.host = host.to_string();
        Ok(())
    }

    /// The settings of one table (a host's, or the top level's with `extra` keys allowed).
    fn endpoint_settings(
        &mut self,
        t: &DeTable<'_>,
        at: &str,
        extra: &[&str],
    ) -> Result<HostEndpoint, HostsDirError> {
        let mut ep = HostEndpoint::origin_default();
        for (key, value) in t.iter() {
            let name = key.get_ref().as_ref();
            let here = join(at, name);
            let off = value.span().start;
            match name {
                "capabilities" => {
                    ep.capabilities = Capabilities {
                        pull: false,
                        resolve: false,
                        push: false,
                    };
                    for (s, o) in
                        self.strings(value, &here, "a list of \"pull\", \"resolve\", \"push\"")?
                    {
                        match s.to_ascii_lowercase().as_str() {
                            "pull" => ep.capabilities.pull = true,
                            "resolve" => ep.capabilities.resolve = true,
                            "push" => ep.capabilities.push = true,
                            _ => {
                                return Err(self.invalid(
                                    o,
                                    &here,
                                    format!("unknown capability {s:?} (use \"pull\", \"resolve\" or \"push\")"),
                                ))
                            }
                        }
                    }
                }
                "ca" => {
                    ep.ca = self
                        .strings(value, &here, "a file name or a list of file names")?
                        .into_iter()
                        .map(|(s, _)| self.abs(&s))
                        .collect();
                }
                "client" => ep.client = self.client(value, &here)?,
                "skip_verify" => match value.get_ref() {
                    DeValue::Boolean(b) => ep.skip_verify = Some(*b),
                    _ => return Err(self.invalid(off, &here, "must be true or false")),
                },
                "override_path" => match value.get_ref() {
                    DeValue::Boolean(true) => ep.path = String::new(),
                    DeValue::Boolean(false) => {}
                    _ => return Err(self.invalid(off, &here, "must be true or false")),
                },
                "header" => {
                    let DeValue::Table(h) = value.get_ref() else {
                        return Err(self.invalid(
                            off,
                            &here,
                            "must be a table of NAME = \"value\" or [\"values\"]",
                        ));
                    };
                    for (hname, hvalue) in h.iter() {
                        let hkey = format!("{here}.{}", hname.get_ref());
                        let values =
                            self.strings(hvalue, &hkey, "a string or a list of strings")?;
                        check_header(hname.get_ref(), &values)
                            .map_err(|m| self.invalid(hname.span().start, &hkey, m))?;
                        ep.headers.insert(
                            hname.get_ref().to_string(),
                            values.into_iter().map(|(v, _)| v).collect(),
                        );
                    }
                }
                "dial_timeout" => {
                    let DeValue::String(s) = value.get_ref() else {
                        return Err(self.invalid(
                            off,
                            &here,
                            "must be a duration string like \"5s\"",
                        ));
                    };
                    let d =
                        crate::units::parse_duration(s).map_err(|m| self.invalid(off, &here, m))?;
                    ep.dial_timeout = Some(d);
                }
                other if extra.contains(&other) => {}
                _ => {
                    let l = Location::of_offset(self.text, key.span().start);
                    self.warnings.push((key.span().start, format!(
                        "{}:{}:{}: unknown key `{here}` is ignored (containerd ignores it too; known keys: server, host, {})",
                        self.path.display(),
                        l.line,
                        l.column,
                        HOST_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(ep)
    }

    /// A string or a list of strings, each with its offset.
    fn strings(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        what: &str,
    ) -> Result<Vec<(String, usize)>, HostsDirError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(vec![(s.to_string(), value.span().start)]),
            DeValue::Array(a) => a
                .iter()
                .map(|v| match v.get_ref() {
                    DeValue::String(s) => Ok((s.to_string(), v.span().start)),
                    _ => Err(self.invalid(v.span().start, key, format!("must be {what}"))),
                })
                .collect(),
            _ => Err(self.invalid(value.span().start, key, format!("must be {what}"))),
        }
    }

    /// `client`: a file, a list of files, or a list of [cert, key] pairs.
    fn client(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsDirError> {
        let what = "a file, a list of files or a list of [\"cert\", \"key\"] pairs";
        let items: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
            DeValue::String(_) => vec![value],
            DeValue::Array(a) => a.iter().collect(),
            _ => return Err(self.invalid(value.span().start, key, format!("must be {what}"))),
        };
        let mut out = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(s) => out.push((self.abs(s), None)),
                DeValue::Array(_) => {
                    let pair = self.strings(item, key, what)?;
                    let [(cert, _), (k, _)] = pair.as_slice() else {
                        return Err(self.invalid(
                            item.span().start,
                            key,
                            "a pair must have two files: [\"cert\", \"key\"]",
                        ));
                    };
                    out.push((self.abs(cert), Some(self.abs(k))));
                }
                _ => return Err(self.invalid(item.span().start, key, format!("must be {what}"))),
            }
        }
        Ok(out)
    }
}

/// `path.Clean` for URL paths: no empty or `.` segments, `..` resolved, no trailing slash.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("/{}", parts.join("/"))
    }
}

fn check_header(name: &str, values: &[(String, usize)]) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    if name.eq_ignore_ascii_case("host") {
        return Err("the Host header cannot be set".into());
    }
    for (v, _) in values {
        if !v.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
            return Err(format!("the value of {name:?} must be printable ASCII"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "hosts_dir_tests.rs"]
mod tests;
