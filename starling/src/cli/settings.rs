//! Where every command's configuration comes from: the `--config` file, else the default
//! file when it exists, else the built-in defaults; and the flags node commands share on
//! top of it (`--root`, `--plain-http`).

use std::path::Path;

use anyhow::Context;
use config::Config;

/// The configuration from `path`, else from the default file if it exists, else the
/// defaults (not validated yet), and where it came from (for messages).
pub fn read(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    Ok(match path {
        Some(p) => (
            Config::load(p).with_context(|| format!("configuration file {}", p.display()))?,
            p.display().to_string(),
        ),
        None if Path::new(config::DEFAULT_PATH).exists() => (
            Config::load(Path::new(config::DEFAULT_PATH)).context("default configuration file")?,
            config::DEFAULT_PATH.to_string(),
        ),
        None => (Config::default(), "built-in defaults".to_string()),
    })
}

/// [`read`], validated.
pub fn read_valid(path: Option<&Path>) -> anyhow::Result<Config> {
    let (cfg, _) = read(path)?;
    cfg.validate().context("invalid settings")?;
    Ok(cfg)
}

/// Applies `--root DIR` (made absolute).
pub fn set_root(cfg: &mut Config, root: Option<&Path>) -> anyhow::Result<()> {
    if let Some(root) = root {
        cfg.root =
            std::path::absolute(root).with_context(|| format!("--root {}", root.display()))?;
    }
    Ok(())
}

/// Applies `--plain-http`: the registries of `references` are reached over plain HTTP.
pub fn plain_http(cfg: &mut Config, references: &[String]) -> anyhow::Result<()> {
    for r in references {
        let reference: registry::Reference = r.parse().with_context(|| format!("reference {r}"))?;
        cfg.registry
            .hosts
            .entry(reference.repository.host)
            .or_default()
            .insecure = true;
    }
    Ok(())
}

/// A node command's configuration: the file, then `--root` and `--plain-http` (for the
/// hosts of `references`), validated.
pub fn for_node(
    path: Option<&Path>,
    root: Option<&Path>,
    plain: bool,
    references: &[String],
) -> anyhow::Result<Config> {
    let (mut cfg, _) = read(path)?;
    set_root(&mut cfg, root)?;
    if plain {
        plain_http(&mut cfg, references)?;
    }
    cfg.validate().context("invalid settings")?;
    Ok(cfg)
}
