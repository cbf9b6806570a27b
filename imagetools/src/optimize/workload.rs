//! The process to profile: the image config's entrypoint, command, environment, working
//! directory and user, with the overrides `ctr-remote image optimize` offers (Docker's
//! rules: a new entrypoint drops the image's command unless arguments are given too).

use serde_json::Value;

/// `PATH` when the image sets none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Changes to the image's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces the entrypoint (and drops the image's command unless `args` is set).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the command (the entrypoint's arguments).
    pub args: Option<Vec<String>>,
    /// Replaces entrypoint and command together.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` added to (or replacing in) the image's environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// `user[:group]`, names or numbers.
    pub user: Option<String>,
}

/// The process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// argv (never empty).
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// `user[:group]` as configured (resolved against the image's `/etc/passwd` later).
    pub user: String,
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("the image config's {what} holds a non-string"))
            })
            .collect(),
        Some(_) => Err(format!("the image config's {what} is not a list")),
    }
}

fn key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

impl Workload {
    /// The workload of an image config (`{"config": {"Entrypoint", "Cmd", "Env",
    /// "WorkingDir", "User"}}`) with `o` applied.
    pub fn from_config(config: &Value, o: &Overrides) -> Result<Workload, String> {
        let c = config.get("config").unwrap_or(&Value::Null);
        let image_entry = strings(c.get("Entrypoint"), "Entrypoint")?;
        let image_cmd = strings(c.get("Cmd"), "Cmd")?;
        let args = match (&o.command, &o.entrypoint, &o.args) {
            (Some(cmd), _, _) => cmd.clone(),
            (None, Some(e), Some(a)) => [e.clone(), a.clone()].concat(),
            (None, Some(e), None) => e.clone(),
            (None, None, Some(a)) => [image_entry, a.clone()].concat(),
            (None, None, None) => [image_entry, image_cmd].concat(),
        };
        if args.is_empty() || args[0].is_empty() {
            return Err(
                "the image has no entrypoint or command: give one (--entrypoint, --args or -- CMD...)"
                    .into(),
            );
        }
        let mut env = strings(c.get("Env"), "Env")?;
        for kv in &o.env {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(format!("--env {kv:?} is not KEY=VALUE"));
            }
            env.retain(|e| key(e) != key(kv));
            env.push(kv.clone());
        }
        if !env.iter().any(|e| key(e) == "PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let cwd = match &o.cwd {
            Some(d) => d.clone(),
            None => c
                .get("WorkingDir")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .unwrap_or("/")
                .to_string(),
        };
        if !cwd.starts_with('/') {
            return Err(format!("working directory {cwd:?} is not absolute"));
        }
        let user = match &o.user {
            Some(u) => u.clone(),
            None => c
                .get("User")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        Ok(Workload {
            args,
            env,
            cwd,
            user,
        })
    }

    /// The value of `PATH`.
    pub fn path_env(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn config() -> Value {
        json!({"config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["run", "fast"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/app",
            "User": "daemon"
        }})
    }

    #[test]
    fn image_defaults() {
        let w = Workload::from_config(&config(), &Overrides::default()).unwrap();
        assert_eq!(w.args, v(&["/entry", "run", "fast"]));
        assert_eq!(w.env, v(&["PATH=/bin", "A=1"]));
        assert_eq!(w.cwd, "/app");
        assert_eq!(w.user, "daemon");
        assert_eq!(w.path_env(), "/bin");
    }

    #[test]
    fn overrides_follow_dockers_rules() {
        let c = config();
        let with = |o: Overrides| Workload::from_config(&c, &o).unwrap().args;
        assert_eq!(
            with(Overrides {
                entrypoint: Some(v(&["sh"])),
                ..Default::default()
            }),
            v(&["sh"])
        );
        assert_eq!(
            with(Overrides {
                entrypoint: Some(v(&["sh"])),
                args: Some(v(&["-c", "x"])),
                ..Default::default()
            }),
            v(&["sh", "-c", "x"])
        );
        assert_eq!(
            with(Overrides {
                args: Some(v(&["slow"])),
                ..Default::default()
            }),
            v(&["/entry", "slow"])
        );
        assert_eq!(
            with(Overrides {
                command: Some(v(&["python3", "-c", "1"])),
                entrypoint: Some(v(&["ignored"])),
                ..Default::default()
            }),
            v(&["python3", "-c", "1"])
        );
        let w = Workload::from_config(
            &c,
            &Overrides {
                env: v(&["A=2", "B=x=y"]),
                cwd: Some("/tmp".into()),
                user: Some("0:0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(w.env, v(&["PATH=/bin", "A=2", "B=x=y"]));
        assert_eq!((w.cwd.as_str(), w.user.as_str()), ("/tmp", "0:0"));
    }

    #[test]
    fn bad_configs_and_overrides_are_errors() {
        let empty = json!({"config": {}});
        let e = Workload::from_config(&empty, &Overrides::default()).unwrap_err();
        assert!(e.contains("no entrypoint or command"), "{e}");
        let w = Workload::from_config(
            &empty,
            &Overrides {
                command: Some(v(&["sh"])),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(w.env, vec![format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(w.cwd, "/");
        let bad = json!({"config": {"Cmd": "sh -c x"}});
        assert!(Workload::from_config(&bad, &Overrides::default())
            .unwrap_err()
            .contains("Cmd"));
        let e = Workload::from_config(
            &config(),
            &Overrides {
                env: v(&["NOVALUE"]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("NOVALUE"), "{e}");
        let e = Workload::from_config(
            &config(),
            &Overrides {
                cwd: Some("rel".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("not absolute"), "{e}");
    }
}
