//! kubelet credential provider plugins as a credential source: the plugins listed in
//! `[[kubernetes.credential_providers]]` are asked, in order, about the images their
//! `match_images` patterns match ([`pattern`]), with the kubelet's exec protocol
//! ([`exec`]); the first answer with credentials for the image wins. Answers are cached
//! as the plugin says (`cacheKeyType` Image, Registry or Global; `cacheDuration`, else the
//! plugin's `default_cache_duration`; zero = not cached), and concurrent lookups of one
//! plugin run it once. A plugin that fails is logged (WARN) and not run again for
//! [`RETRY_AFTER`]: the lookup goes on without it.

pub mod exec;
pub mod pattern;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::PodAuth;
use crate::repo::RepoKey;
use exec::{Answer, CacheKeyType, Invocation};
use pattern::{ImagePattern, PatternError};

/// How long a failed plugin is left alone (its failure is not retried on every request).
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The configured plugins cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[kubernetes.credential_providers] {name:?}: {source}")]
pub struct ProviderError {
    /// The plugin's name.
    pub name: String,
    /// The pattern that does not parse.
    #[source]
    pub source: PatternError,
}

struct Cached {
    auth: Vec<(ImagePattern, PodAuth)>,
    expires: Instant,
}

struct Plugin {
    name: String,
    program: PathBuf,
    match_images: Vec<ImagePattern>,
    default_cache_duration: Duration,
    api_version: String,
    args: Vec<String>,
    env: std::collections::BTreeMap<String, String>,
    /// Answers by cache key (`image:H/R`, `registry:H`, `global`).
    cache: Mutex<HashMap<String, Cached>>,
    /// One run at a time; a lookup that waited finds the answer in the cache.
    running: tokio::sync::Mutex<()>,
    failed_at: Mutex<Option<Instant>>,
    /// Runs so far (for tests and logs).
    runs: std::sync::atomic::AtomicU64,
}

/// The configured credential provider plugins.
pub struct CredentialProviders {
    plugins: Vec<Plugin>,
    timeout: Duration,
}

impl std::fmt::Debug for CredentialProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| &p.name))
            .finish()
    }
}

fn cache_key(kind: CacheKeyType, repo: &RepoKey) -> String {
    match kind {
        CacheKeyType::Image => format!("image:{}", repo.image()),
        CacheKeyType::Registry => format!("registry:{}", repo.host),
        CacheKeyType::Global => "global".to_string(),
    }
}

/// The credentials of the best key of `auth` matching `image`: keys in reverse order
/// (longer before shorter with the same prefix, exact hosts before globs), as the kubelet
/// tries them.
fn pick(auth: &[(ImagePattern, PodAuth)], image: &str) -> Option<PodAuth> {
    let mut keys: Vec<&(ImagePattern, PodAuth)> = auth.iter().collect();
    keys.sort_by(|a, b| {
        b.0.as_str()
            .cmp(a.0.as_str())
            .then(a.0.has_glob().cmp(&b.0.has_glob()))
    });
    keys.into_iter()
        .find(|(p, _)| p.matches(image))
        .map(|(_, a)| a.clone())
}

impl CredentialProviders {
    /// The plugins of `cfg` (`credential_providers`, found in `credential_provider_bin_dir`).
    /// A missing executable is a WARN here and an error when it is run.
    pub fn new(cfg: &config::KubernetesConfig) -> Result<Self, ProviderError> {
        let mut plugins = Vec::new();
        for p in &cfg.credential_providers {
            let match_images = p
                .match_images
                .iter()
                .map(|m| ImagePattern::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| ProviderError {
                    name: p.name.clone(),
                    source,
                })?;
            let program = cfg.credential_provider_bin_dir.join(&p.name);
            if !program.is_file() {
                tracing::warn!(plugin = %p.name, program = %program.display(),
                    "credential provider plugin not found (install it, or fix credential_provider_bin_dir)");
            }
            plugins.push(Plugin {
                name: p.name.clone(),
                program,
                match_images,
                default_cache_duration: p.default_cache_duration,
                api_version: p.api_version.clone(),
                args: p.args.clone(),
                env: p.env.clone(),
                cache: Mutex::new(HashMap::new()),
                running: tokio::sync::Mutex::new(()),
                failed_at: Mutex::new(None),
                runs: Default::default(),
            });
        }
        Ok(CredentialProviders {
            plugins,
            timeout: cfg.credential_provider_timeout,
        })
    }

    /// True if no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// How many times plugin `name` was run.
    #[cfg(test)]
    pub(crate) fn runs(&self, name: &str) -> u64 {
        self.plugins
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.runs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Credentials for `repo` from the first plugin that matches it and has some, with the
    /// plugin's name.
    pub async fn lookup(&self, repo: &RepoKey) -> Option<(PodAuth, &str)> {
        let image = repo.image();
        for p in &self.plugins {
            if !p.match_images.iter().any(|m| m.matches(&image)) {
                continue;
            }
            if let Some(a) = p.lookup(repo, &image, self.timeout).await {
                return Some((a, p.name.as_str()));
            }
        }
        None
    }
}

impl Plugin {
    fn cached(&self, repo: &RepoKey, image: &str) -> Option<Option<PodAuth>> {
        let now = Instant::now();
        let mut cache = self.cache.lock();
        cache.retain(|_, c| c.expires > now);
        [
            CacheKeyType::Image,
            CacheKeyType::Registry,
            CacheKeyType::Global,
        ]
        .into_iter()
        .find_map(|k| cache.get(&cache_key(k, repo)))
        .map(|c| pick(&c.auth, image))
    }

    async fn lookup(&self, repo: &RepoKey, image: &str, timeout: Duration) -> Option<PodAuth> {
        if let Some(hit) = self.cached(repo, image) {
            return hit;
        }
        let _running = self.running.lock().await;
        if let Some(hit) = self.cached(repo, image) {
            return hit;
        }
        if matches!(*self.failed_at.lock(), Some(t) if t.elapsed() < RETRY_AFTER) {
            return None;
        }
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let inv = Invocation {
            program: &self.program,
            args: &self.args,
            env: &self.env,
            api_version: &self.api_version,
            timeout,
        };
        match exec::run(&inv, image).await {
            Ok(answer) => {
                *self.failed_at.lock() = None;
                let found = pick(&answer.auth, image);
                tracing::debug!(plugin = %self.name, image, run, found = found.is_some(),
                    cache_key_type = ?answer.cache_key_type, "credential provider answered");
                self.keep(repo, answer);
                found
            }
            Err(e) => {
                *self.failed_at.lock() = Some(Instant::now());
                tracing::warn!(plugin = %self.name, image, run, error = %e,
                    "credential provider failed; going on without its credentials");
                None
            }
        }
    }

    fn keep(&self, repo: &RepoKey, answer: Answer) {
        let ttl = answer.cache_duration.unwrap_or(self.default_cache_duration);
        if ttl.is_zero() {
            return;
        }
        self.cache.lock().insert(
            cache_key(answer.cache_key_type, repo),
            Cached {
                auth: answer.auth,
                expires: Instant::now() + ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests;
