//! The models a node serves: which versions are loaded, loading and unloading them as the
//! repository changes (polling) or as operators ask (RepositoryModelLoad / Unload).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ort::environment::Environment;

use crate::error::{Error, Result};
use crate::metrics::InferenceMetrics;
use crate::model::ModelVersion;
use crate::repository::{Repository, StoredVersion, check_name};

/// A version's state, as RepositoryIndex reports it.
#[derive(Clone, Debug)]
pub enum VersionState {
    Ready(Arc<ModelVersion>),
    /// It failed to load; the reason says why.
    Unavailable(String),
}

#[derive(Debug, Default)]
struct ModelState {
    /// Version → (the file's tag when it was loaded, state).
    versions: BTreeMap<u64, (String, VersionState)>,
    /// Why the model as a whole cannot load (a bad config.json), if it cannot.
    error: Option<String>,
    /// Unloaded by an operator: polling leaves it alone until it is loaded again.
    unloaded: bool,
}

/// One row of RepositoryIndex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRow {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
}

type Key = (String, String);

pub struct Models {
    env: &'static Environment,
    repo: Repository,
    metrics: InferenceMetrics,
    state: RwLock<HashMap<Key, ModelState>>,
    /// One sync at a time: a poll and an explicit load never race on a model.
    syncing: tokio::sync::Mutex<()>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").finish_non_exhaustive()
    }
}

impl Models {
    pub fn new(env: &'static Environment, repo: Repository, metrics: InferenceMetrics) -> Self {
        Self {
            env,
            repo,
            metrics,
            state: RwLock::new(HashMap::new()),
            syncing: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn environment(&self) -> &'static Environment {
        self.env
    }

    /// Brings one model in line with the repository now (after a push or a removal).
    pub async fn refresh(&self, tenant: &str, model: &str) {
        let _one = self.syncing.lock().await;
        let key = (tenant.to_string(), model.to_string());
        match self.repo.versions(tenant, model).await {
            Ok(v) if v.is_empty() => {
                self.write().remove(&key);
            }
            _ => self.sync(tenant, model).await,
        }
        self.count_loaded();
    }

    /// True once the models found at start-up have been loaded (or failed to).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, ModelState>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, ModelState>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings every tenant's models in line with the repository (models unloaded by an
    /// operator excepted).
    pub async fn poll(&self) -> Result<()> {
        let _one = self.syncing.lock().await;
        let mut seen = Vec::new();
        for tenant in self.repo.tenants().await? {
            for model in self.repo.models(&tenant).await? {
                seen.push((tenant.clone(), model));
            }
        }
        let known: Vec<Key> = self.read().keys().cloned().collect();
        for key in known {
            if !seen.contains(&key) {
                tracing::info!(model = %key.1, "model removed from the repository: unloading");
                self.write().remove(&key);
            }
        }
        for (tenant, model) in seen {
            let skip = self
                .read()
                .get(&(tenant.clone(), model.clone()))
                .is_some_and(|s| s.unloaded);
            if !skip {
                self.sync(&tenant, &model).await;
            }
        }
        self.count_loaded();
        Ok(())
    }

    /// Loads a model's versions now (RepositoryModelLoad), even one an operator unloaded.
    pub async fn load(&self, tenant: &str, model: &str) -> Result<()> {
        check_name(model)?;
        let _one = self.syncing.lock().await;
        if self.repo.versions(tenant, model).await?.is_empty() {
            return Err(Error::NotFound(format!(
                "model {model} is not in the repository (no <version>/model.onnx)"
            )));
        }
        if let Some(s) = self
            .write()
            .get_mut(&(tenant.to_string(), model.to_string()))
        {
            s.unloaded = false;
        }
        self.sync(tenant, model).await;
        self.count_loaded();
        let state = self.read();
        let s = state
            .get(&(tenant.to_string(), model.to_string()))
            .ok_or_else(|| Error::Internal("model state vanished".into()))?;
        if let Some(e) = &s.error {
            return Err(Error::FailedPrecondition(format!("model {model}: {e}")));
        }
        let failures: Vec<String> = s
            .versions
            .iter()
            .filter_map(|(v, (_, st))| match st {
                VersionState::Unavailable(r) => Some(format!("version {v}: {r}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        if !failures.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "model {model}: {}",
                failures.join("; ")
            )));
        }
        Ok(())
    }

    /// Unloads every version of a model (RepositoryModelUnload). Requests already running
    /// finish; new ones get Unavailable until it is loaded again.
    pub async fn unload(&self, tenant: &str, model: &str) -> Result<()> {
        check_name(model)?;
        let _one = self.syncing.lock().await;
        let mut state = self.write();
        let s = state
            .get_mut(&(tenant.to_string(), model.to_string()))
            .ok_or_else(|| Error::NotFound(format!("model {model} is not loaded")))?;
        s.versions.clear();
        s.error = None;
        s.unloaded = true;
        drop(state);
        self.count_loaded();
        Ok(())
    }

    async fn sync(&self, tenant: &str, model: &str) {
        let key = (tenant.to_string(), model.to_string());
        let (config, stored) = match self.config_and_versions(tenant, model).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(model, error = %e, "model cannot be loaded");
                let mut state = self.write();
                let s = state.entry(key).or_default();
                s.error = Some(e.to_string());
                s.versions.clear();
                return;
            }
        };
        let wanted = config
            .version_policy
            .select(&stored.iter().map(|v| v.version).collect::<Vec<_>>());
        let current: BTreeMap<u64, String> = self
            .read()
            .get(&key)
            .map(|s| {
                s.versions
                    .iter()
                    .map(|(v, (tag, _))| (*v, tag.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut loaded = BTreeMap::new();
        for sv in stored.iter().filter(|v| wanted.contains(&v.version)) {
            if current.get(&sv.version) == Some(&sv.tag) {
                continue;
            }
            let state = match self.load_version(tenant, model, sv, &config).await {
                Ok(m) => {
                    tracing::info!(model, version = sv.version, "model version loaded");
                    VersionState::Ready(m)
                }
                Err(e) => {
                    tracing::warn!(model, version = sv.version, error = %e, "model version failed to load");
                    VersionState::Unavailable(e.to_string())
                }
            };
            loaded.insert(sv.version, (sv.tag.clone(), state));
        }
        let mut state = self.write();
        let s = state.entry(key).or_default();
        s.error = None;
        s.versions.retain(|v, _| wanted.contains(v));
        s.versions.extend(loaded);
    }

    async fn config_and_versions(
        &self,
        tenant: &str,
        model: &str,
    ) -> Result<(crate::config::ModelConfig, Vec<StoredVersion>)> {
        let config = self.repo.config(tenant, model).await?;
        let versions = self.repo.versions(tenant, model).await?;
        Ok((config, versions))
    }

    async fn load_version(
        &self,
        tenant: &str,
        model: &str,
        sv: &StoredVersion,
        config: &crate::config::ModelConfig,
    ) -> Result<Arc<ModelVersion>> {
        let bytes = self.repo.model_bytes(tenant, model, sv.version).await?;
        let (env, t, m, v, c, metrics) = (
            self.env,
            tenant.to_string(),
            model.to_string(),
            sv.version,
            config.clone(),
            self.metrics.clone(),
        );
        // Building sessions takes a while: off the IO runtime (the batcher task it starts is
        // spawned onto the runtime from there).
        tokio::task::spawn_blocking(move || ModelVersion::load(env, &t, &m, v, &bytes, c, metrics))
            .await
            .map_err(|e| Error::Internal(format!("loading task: {e}")))?
    }

    fn count_loaded(&self) {
        let n = self
            .read()
            .values()
            .flat_map(|s| s.versions.values())
            .filter(|(_, st)| matches!(st, VersionState::Ready(_)))
            .count();
        self.metrics.loaded_versions.set(n as i64);
    }

    /// The version a request names (empty: the newest ready one).
    pub fn get(&self, tenant: &str, model: &str, version: &str) -> Result<Arc<ModelVersion>> {
        let state = self.read();
        let s = state
            .get(&(tenant.to_string(), model.to_string()))
            .ok_or_else(|| Error::NotFound(format!("model '{model}' is not in the repository")))?;
        if s.unloaded {
            return Err(Error::Unavailable(format!("model {model} is unloaded")));
        }
        if version.is_empty() {
            return s
                .versions
                .values()
                .rev()
                .find_map(|(_, st)| match st {
                    VersionState::Ready(m) => Some(Arc::clone(m)),
                    VersionState::Unavailable(_) => None,
                })
                .ok_or_else(|| {
                    let why = s.error.clone().or_else(|| {
                        s.versions.values().find_map(|(_, st)| match st {
                            VersionState::Unavailable(r) => Some(r.clone()),
                            VersionState::Ready(_) => None,
                        })
                    });
                    Error::Unavailable(format!(
                        "model {model} has no ready version{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    ))
                });
        }
        let v: u64 = version.parse().map_err(|_| {
            Error::invalid(
                "model_version",
                format!("'{version}' is not a version number"),
            )
        })?;
        match s.versions.get(&v) {
            Some((_, VersionState::Ready(m))) => Ok(Arc::clone(m)),
            Some((_, VersionState::Unavailable(r))) => Err(Error::Unavailable(format!(
                "model {model} version {v} is not available: {r}"
            ))),
            None => {
                let have: Vec<String> = s.versions.keys().map(u64::to_string).collect();
                Err(Error::NotFound(format!(
                    "model {model} has no version {v} being served (served: {})",
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                )))
            }
        }
    }

    /// Served versions of a model, ready or not.
    pub fn versions(&self, tenant: &str, model: &str) -> Vec<u64> {
        self.read()
            .get(&(tenant.to_string(), model.to_string()))
            .map(|s| s.versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every ready version of the tenant's models (for statistics).
    pub fn ready_versions(&self, tenant: &str) -> Vec<Arc<ModelVersion>> {
        self.read()
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .flat_map(|(_, s)| s.versions.values())
            .filter_map(|(_, st)| match st {
                VersionState::Ready(m) => Some(Arc::clone(m)),
                VersionState::Unavailable(_) => None,
            })
            .collect()
    }

    /// The tenant's repository as RepositoryIndex shows it.
    pub fn index(&self, tenant: &str) -> Vec<IndexRow> {
        let state = self.read();
        let mut rows = Vec::new();
        for ((t, name), s) in state.iter() {
            if t != tenant {
                continue;
            }
            if let Some(e) = &s.error {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: e.clone(),
                });
            }
            if s.unloaded {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "unloaded".into(),
                });
            }
            for (v, (_, st)) in &s.versions {
                let (state, reason) = match st {
                    VersionState::Ready(_) => ("READY", String::new()),
                    VersionState::Unavailable(r) => ("UNAVAILABLE", r.clone()),
                };
                rows.push(IndexRow {
                    name: name.clone(),
                    version: v.to_string(),
                    state,
                    reason,
                });
            }
        }
        rows.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        rows
    }
}
