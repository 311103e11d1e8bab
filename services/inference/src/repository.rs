//! The model repository on the object store, one per tenant (see
//! [`gbrain_storage::layout::model_repository`]): `<model>/<version>/model.onnx` with an
//! optional `<model>/config.json`.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use gbrain_storage::layout;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A model name: what KServe clients put in `model_name`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "model_name",
            format!(
                "'{name}' is not a model name (1 to 128 of A-Z a-z 0-9 _ - ., not starting with .)"
            ),
        ))
    }
}

/// A version in the repository, with a tag that changes when its file does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: u64,
    pub tag: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
}

fn last_segment(p: &Path) -> Option<String> {
    p.filename().map(str::to_string)
}

impl Repository {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Tenants with a model repository.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from(layout::MODELS)))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(last_segment)
            .filter_map(|s| s.strip_prefix("tenant=").map(str::to_string))
            .collect())
    }

    /// The tenant's models.
    pub async fn models(&self, tenant: &str) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&layout::model_repository(tenant)))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(last_segment)
            .filter(|n| check_name(n).is_ok())
            .collect())
    }

    /// The model's versions that have a `model.onnx`.
    pub async fn versions(&self, tenant: &str, model: &str) -> Result<Vec<StoredVersion>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&layout::model_dir(tenant, model)))
            .await?;
        let mut out = Vec::new();
        for dir in &listed.common_prefixes {
            let Some(version) = last_segment(dir).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            match self
                .store
                .head(&layout::model_file(tenant, model, version))
                .await
            {
                Ok(meta) => out.push(StoredVersion {
                    version,
                    tag: meta
                        .e_tag
                        .unwrap_or_else(|| format!("{}-{}", meta.last_modified, meta.size)),
                    size: meta.size,
                }),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    /// The model's configuration; the defaults when it has no `config.json`.
    pub async fn config(&self, tenant: &str, model: &str) -> Result<ModelConfig> {
        match self.store.get(&layout::model_config(tenant, model)).await {
            Ok(got) => ModelConfig::parse(&got.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Ok(ModelConfig::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn model_bytes(&self, tenant: &str, model: &str, version: u64) -> Result<Bytes> {
        match self
            .store
            .get(&layout::model_file(tenant, model, version))
            .await
        {
            Ok(got) => Ok(got.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(format!(
                "model {model} has no version {version}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a version (the config first, so a poll never sees the model without it),
    /// replacing the version's file if it has one.
    pub async fn put(
        &self,
        tenant: &str,
        model: &str,
        version: u64,
        onnx: Bytes,
        config: Option<&ModelConfig>,
    ) -> Result<()> {
        self.write_config(tenant, model, config).await?;
        gbrain_storage::store::put_large(
            self.store.as_ref(),
            &layout::model_file(tenant, model, version),
            onnx,
        )
        .await?;
        Ok(())
    }

    /// Stores a new version's file (write the config first, [`Repository::write_config`]):
    /// false when the version has a file already (written meanwhile by another push), and then
    /// nothing is replaced. An exclusive create on the object store (S3 `If-None-Match`), so
    /// that two pushes at once never take the same number.
    pub async fn put_new(
        &self,
        tenant: &str,
        model: &str,
        version: u64,
        onnx: Bytes,
    ) -> Result<bool> {
        check_name(model)?;
        Ok(gbrain_storage::store::put_new(
            self.store.as_ref(),
            &layout::model_file(tenant, model, version),
            onnx,
        )
        .await?)
    }

    /// Stores the model's config.json, when one is given; a poll never sees a version
    /// without the config it was pushed with.
    pub async fn write_config(
        &self,
        tenant: &str,
        model: &str,
        config: Option<&ModelConfig>,
    ) -> Result<()> {
        check_name(model)?;
        if let Some(c) = config {
            c.check()?;
            let text = serde_json::to_vec_pretty(c)
                .map_err(|e| Error::Internal(format!("config.json: {e}")))?;
            self.store
                .put(&layout::model_config(tenant, model), PutPayload::from(text))
                .await?;
        }
        Ok(())
    }

    /// Removes one version, or the whole model.
    pub async fn remove(&self, tenant: &str, model: &str, version: Option<u64>) -> Result<()> {
        check_name(model)?;
        match version {
            Some(v) => {
                self.store
                    .delete(&layout::model_file(tenant, model, v))
                    .await?;
            }
            None => {
                gbrain_storage::staging::delete_prefix(
                    &self.store,
                    &layout::model_dir(tenant, model),
                )
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            }
        }
        Ok(())
    }
}
