//! What one query sees: a catalog named `gbrain` holding only its tenant's tables, as of one
//! catalog commit (schema `public`) and as of each named snapshot (schema `snapshot_<name>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use gbrain_catalog::{Catalog, Participant};
use object_store::ObjectStore;
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::tables::{self, TABLES};
use crate::view::QueryView;

pub const CATALOG: &str = "gbrain";
pub const PUBLIC: &str = "public";
pub const SNAPSHOT_PREFIX: &str = "snapshot_";

/// A tenant's data as of one commit, ready to query.
#[derive(Debug)]
pub struct Loaded {
    pub view: Arc<QueryView>,
    pub participants: Vec<Participant>,
    pub decisions: Vec<gbrain_catalog::ModelDecision>,
}

type Entries = Vec<((String, i64), Arc<Loaded>)>;

/// Views by (tenant, commit). A view as of a commit never changes, so entries never go stale;
/// the cache only bounds how many are kept.
#[derive(Debug)]
pub struct Views {
    catalog: Catalog,
    entries: Mutex<Entries>,
    capacity: usize,
}

impl Views {
    pub fn new(catalog: Catalog, capacity: usize) -> Self {
        Self {
            catalog,
            entries: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub async fn get(&self, tenant: &str, seq: i64) -> Result<Arc<Loaded>> {
        {
            let mut entries = self.lock();
            if let Some(i) = entries
                .iter()
                .position(|(k, _)| k.0 == tenant && k.1 == seq)
            {
                // Most recently used last.
                let entry = entries.remove(i);
                let loaded = Arc::clone(&entry.1);
                entries.push(entry);
                return Ok(loaded);
            }
        }
        let view = self.catalog.tenant_view(tenant, seq).await?;
        let participants = self.catalog.participants_at(tenant, seq).await?;
        let decisions = self.catalog.model_decisions(tenant, seq).await?;
        let loaded = Arc::new(Loaded {
            view: Arc::new(QueryView::new(view)),
            participants,
            decisions,
        });
        let mut entries = self.lock();
        if !entries.iter().any(|(k, _)| k.0 == tenant && k.1 == seq) {
            if entries.len() >= self.capacity {
                entries.remove(0);
            }
            entries.push(((tenant.to_string(), seq), Arc::clone(&loaded)));
        }
        Ok(loaded)
    }
}

/// The `gbrain` catalog of one query.
#[derive(Debug)]
pub struct TenantCatalog {
    schemas: HashMap<String, Arc<dyn SchemaProvider>>,
}

impl TenantCatalog {
    /// `public` as `current`, and a lazily loaded schema per named snapshot.
    pub fn new(
        views: &Arc<Views>,
        store: &Arc<dyn ObjectStore>,
        tenant: &str,
        current: Arc<Loaded>,
        snapshots: &[(String, i64)],
    ) -> Self {
        let mut schemas: HashMap<String, Arc<dyn SchemaProvider>> = HashMap::new();
        let cell = OnceCell::new_with(Some(current));
        schemas.insert(
            PUBLIC.to_string(),
            Arc::new(ViewSchema {
                views: Arc::clone(views),
                store: Arc::clone(store),
                tenant: tenant.to_string(),
                seq: None,
                loaded: cell,
            }),
        );
        for (name, seq) in snapshots {
            schemas.insert(
                format!("{SNAPSHOT_PREFIX}{name}"),
                Arc::new(ViewSchema {
                    views: Arc::clone(views),
                    store: Arc::clone(store),
                    tenant: tenant.to_string(),
                    seq: Some(*seq),
                    loaded: OnceCell::new(),
                }),
            );
        }
        Self { schemas }
    }
}

impl CatalogProvider for TenantCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.schemas.keys().cloned().collect();
        names.sort();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.get(name).cloned()
    }
}

/// The tables of one view, loaded when first used.
#[derive(Debug)]
struct ViewSchema {
    views: Arc<Views>,
    store: Arc<dyn ObjectStore>,
    tenant: String,
    /// The commit to load, for snapshots (`public` comes loaded).
    seq: Option<i64>,
    loaded: OnceCell<Arc<Loaded>>,
}

impl ViewSchema {
    async fn load(&self) -> DfResult<&Arc<Loaded>> {
        self.loaded
            .get_or_try_init(|| async {
                let seq = self.seq.ok_or_else(|| {
                    DataFusionError::Internal("schema has neither a view nor a commit".into())
                })?;
                self.views
                    .get(&self.tenant, seq)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            })
            .await
    }
}

#[async_trait]
impl SchemaProvider for ViewSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if !TABLES.contains(&name) {
            return Ok(None);
        }
        let loaded = self.load().await?;
        tables::table(name, loaded, &self.store)
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
