//! The query engine: plans a tenant's read-only SQL against one catalog commit and runs it on
//! the dedicated executor, within the query's memory, time and cancellation limits.
//!
//! Flight SQL, the CLI and the benchmark all come through here, so every path gets the same
//! guard, the same tenant isolation and the same limits.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::common::ScalarValue;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value, visit_expressions_mut};
use futures::{Stream, StreamExt};
use gbrain_catalog::Catalog;
use object_store::ObjectStore;
use tokio::sync::mpsc;

use crate::context::{CATALOG, PUBLIC, SNAPSHOT_PREFIX, TenantCatalog, Views};
use crate::error::{Error, Result};
use crate::metrics::{Outcome, QueryMetrics};
use crate::tables::STORE_URL;
use gbrain_common::executor::Executor;

/// Per-query limits.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Memory a query's operators may hold; past it they spill to disk, or fail with
    /// ResourceExhausted when they cannot spill.
    pub memory_bytes: usize,
    /// Wall-clock time from planning to the last batch.
    pub timeout: Duration,
    /// Arrow IPC bytes a result may have.
    pub max_result_bytes: u64,
    /// Partitions a query's scans and operators use.
    pub target_partitions: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(300),
            max_result_bytes: 4 << 30,
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueryConfig {
    pub limits: QueryLimits,
    /// Threads of the dedicated executor.
    pub threads: usize,
    /// Where spilled operators write; the OS temporary directory when `None`.
    pub spill_dir: Option<PathBuf>,
    /// Tenant views kept in memory.
    pub view_cache: usize,
    /// Ballista, for queries larger than one node; `None` runs everything here.
    pub distributed: Option<DistributedConfig>,
}

/// Where large queries go.
#[derive(Clone, Debug)]
pub struct DistributedConfig {
    /// The Ballista scheduler: `df://host:port`, `http://host:port` or `host:port`.
    pub scheduler: String,
    /// Queries left to the service (`x-gbrain-execution: auto`, the default) go to Ballista
    /// when their scans read at least this many bytes of stored files.
    pub threshold_bytes: u64,
}

/// Where one query runs: a per-query setting (`x-gbrain-execution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Execution {
    /// On Ballista when a scheduler is configured and the query's scans reach the threshold.
    #[default]
    Auto,
    /// On this node.
    Local,
    /// On Ballista, whatever its size.
    Distributed,
}

impl std::str::FromStr for Execution {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "local" => Ok(Self::Local),
            "distributed" | "ballista" => Ok(Self::Distributed),
            other => Err(format!("{other:?} is not auto, local or distributed")),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            limits: QueryLimits::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            spill_dir: None,
            view_cache: 64,
            distributed: None,
        }
    }
}

pub struct QueryDeps {
    pub store: Arc<dyn ObjectStore>,
    pub catalog: Catalog,
    pub metrics: QueryMetrics,
}

pub struct QueryEngine {
    store: Arc<dyn ObjectStore>,
    catalog: Catalog,
    views: Arc<Views>,
    /// Shared by every query: the object store, the spill directory and the file metadata
    /// cache. Each query gets its own memory pool on top.
    runtime: Arc<RuntimeEnv>,
    /// The session every query's starts from.
    template: SessionState,
    executor: Executor,
    config: QueryConfig,
    metrics: QueryMetrics,
    /// Moves plans to Ballista.
    codec: Arc<crate::distributed::Codec>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish()
    }
}

/// A statement planned in its session, ready to run.
pub struct Planned {
    ctx: SessionContext,
    plan: LogicalPlan,
    execution: Execution,
}

impl Planned {
    /// Where it is to run.
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// The schema of the statement's result.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Planned")
    }
}

/// A planned statement: its result and parameter types.
#[derive(Clone, Debug)]
pub struct Described {
    pub schema: SchemaRef,
    /// `$1`, `$2`, … in order, with their types where the plan fixes them.
    pub parameters: Vec<(String, Option<DataType>)>,
}

impl QueryEngine {
    pub fn new(mut config: QueryConfig, deps: QueryDeps) -> Result<Arc<Self>> {
        if let Some(d) = &mut config.distributed {
            d.scheduler =
                crate::scheduler_url(&d.scheduler).map_err(|e| Error::Startup(e.to_string()))?;
        }
        let mode = match &config.spill_dir {
            Some(dir) => DiskManagerMode::Directories(vec![dir.clone()]),
            None => DiskManagerMode::OsTmpDirectory,
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(mode))
            .build_arc()
            .map_err(|e| Error::Startup(format!("query runtime: {e}")))?;
        let url = url::Url::parse(STORE_URL).map_err(|e| Error::Startup(e.to_string()))?;
        runtime.register_object_store(&url, Arc::clone(&deps.store));
        let executor = Executor::new("query", config.threads)
            .map_err(|e| Error::Startup(format!("query executor: {e}")))?;
        let mut session_config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, PUBLIC)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .with_target_partitions(config.limits.target_partitions.max(1));
        // Each sort partition keeps this much back for merging its runs before it spills. The
        // merge needs about as much as the sort held, so the pool is split evenly between the
        // two: with DataFusion's fixed 10 MiB, sorts racing under a tight limit fail their
        // merge instead of spilling.
        let partitions = config.limits.target_partitions.max(1);
        let reserve = config.limits.memory_bytes / (2 * partitions);
        session_config
            .options_mut()
            .execution
            .sort_spill_reservation_bytes = reserve;
        // Scans here choose their own partitions (files per channel, functions per channel);
        // what comes as one partition is small (catalog tables, in-memory events), where
        // spreading rows round-robin over threads costs more than it saves.
        session_config
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = false;
        // Every query's session starts as a copy of this one: building DataFusion's function
        // registry afresh per query would cost more than many queries.
        let template = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(Arc::clone(&runtime))
            .with_default_features()
            .build();
        Ok(Arc::new(Self {
            template,
            views: Arc::new(Views::new(deps.catalog.clone(), config.view_cache)),
            codec: crate::distributed::Codec::new(Arc::clone(&deps.store)),
            store: deps.store,
            catalog: deps.catalog,
            runtime,
            executor,
            config,
            metrics: deps.metrics,
        }))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.config.limits
    }

    pub fn metrics(&self) -> &QueryMetrics {
        &self.metrics
    }

    /// The commit a query runs on: the named snapshot's, or the latest.
    pub async fn resolve(&self, tenant: &str, snapshot: Option<&str>) -> Result<i64> {
        match snapshot.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(self.catalog.current_seq().await?),
            Some(name) => self
                .catalog
                .snapshot(tenant, name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("snapshot {name:?} does not exist"))),
        }
    }

    /// Checks that `seq` names a commit that exists (tickets come back from clients).
    pub async fn check_seq(&self, seq: i64) -> Result<()> {
        let current = self.catalog.current_seq().await?;
        if seq < 0 || seq > current {
            return Err(Error::invalid(
                "ticket",
                format!("commit {seq} does not exist (latest is {current})"),
            ));
        }
        Ok(())
    }

    /// A session over the tenant's data as of `seq`, with a schema per named snapshot when
    /// `snapshots` is set (looking them up costs a catalog query, so only SQL that names one
    /// pays for it).
    pub async fn session(&self, tenant: &str, seq: i64, snapshots: bool) -> Result<SessionContext> {
        let current = self.views.get(tenant, seq).await?;
        let snapshots: Vec<(String, i64)> = if snapshots {
            self.catalog
                .snapshots(tenant)
                .await?
                .into_iter()
                .map(|(name, seq, _)| (name, seq))
                .collect()
        } else {
            Vec::new()
        };
        let runtime = RuntimeEnvBuilder::from_runtime_env(&self.runtime)
            .with_memory_pool(Arc::new(FairSpillPool::new(
                self.config.limits.memory_bytes,
            )))
            .build_arc()?;
        // A fresh catalog list: the template's must never hold a tenant's catalog.
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_runtime_env(runtime)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let view = Arc::clone(&current.view);
        ctx.register_catalog(
            CATALOG,
            Arc::new(TenantCatalog::new(
                &self.views,
                &self.store,
                tenant,
                current,
                &snapshots,
            )),
        );
        crate::functions::register(&ctx, &view, &self.store);
        Ok(ctx)
    }

    /// Plans `sql`; with `params`, their values replace its placeholders first, so that they
    /// reach table function arguments too.
    async fn logical(
        &self,
        tenant: &str,
        seq: i64,
        sql: &str,
        params: Option<&[ScalarValue]>,
    ) -> Result<(SessionContext, LogicalPlan)> {
        let mut statement = crate::guard::read_only(sql)?;
        let placeholders = number_placeholders(&mut statement);
        if let Some(values) = params {
            if values.len() != placeholders {
                return Err(Error::invalid(
                    "parameters",
                    format!(
                        "the statement has {placeholders} placeholders but {} values are bound",
                        values.len()
                    ),
                ));
            }
            bind_parameters(&mut statement, values)?;
        }
        let names_snapshot = sql.to_ascii_lowercase().contains(SNAPSHOT_PREFIX);
        let ctx = self.session(tenant, seq, names_snapshot).await?;
        let plan = ctx.state().statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| Error::PermissionDenied(e.find_root().to_string()))?;
        Ok((ctx, plan))
    }

    /// Plans `sql` without running it. With `params` (or when it has no placeholders) the
    /// plan comes back ready to run, so that a Flight SQL GetFlightInfo's planning serves the
    /// DoGet that follows.
    pub async fn prepare(
        self: &Arc<Self>,
        tenant: &str,
        seq: i64,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<(Described, Option<Planned>)> {
        let this = Arc::clone(self);
        let (tenant, sql) = (tenant.to_string(), sql.to_string());
        self.on_executor(async move {
            let (ctx, plan) = this.logical(&tenant, seq, &sql, params.as_deref()).await?;
            let mut parameters: Vec<(String, Option<DataType>)> =
                plan.get_parameter_types()?.into_iter().collect();
            parameters.sort_by_key(|(name, _)| placeholder_index(name));
            let described = Described {
                schema: Arc::new(plan.schema().as_arrow().clone()),
                parameters,
            };
            let planned = described.parameters.is_empty().then_some(Planned {
                ctx,
                plan,
                execution: Execution::Auto,
            });
            Ok((described, planned))
        })
        .await
    }

    /// Plans `sql` without running it.
    pub async fn describe(
        self: &Arc<Self>,
        tenant: &str,
        seq: i64,
        sql: &str,
    ) -> Result<Described> {
        Ok(self.prepare(tenant, seq, sql, None).await?.0)
    }

    async fn on_executor<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.executor
            .spawn(fut)
            .await
            .map_err(|e| Error::Internal(format!("query task: {e}")))?
    }

    /// Runs `sql` as of `seq` with `params` bound to its placeholders, in order.
    pub async fn run(
        self: &Arc<Self>,
        tenant: &str,
        seq: i64,
        sql: &str,
        params: Vec<ScalarValue>,
        execution: Execution,
    ) -> Result<QueryStream> {
        let started = Instant::now();
        let limit = self.config.limits.timeout;
        let planned =
            match tokio::time::timeout(limit, self.prepare(tenant, seq, sql, Some(params))).await {
                Ok(Ok((_, Some(p)))) => p.with_execution(execution),
                Ok(Ok((d, None))) => {
                    self.metrics.finished(Outcome::Rejected);
                    return Err(Error::invalid(
                        "parameters",
                        format!("{} placeholders have no values bound", d.parameters.len()),
                    ));
                }
                Ok(Err(e)) => {
                    self.metrics
                        .finished(Outcome::of_status(tonic::Status::from(&e).code()));
                    return Err(e);
                }
                Err(_) => {
                    self.metrics.finished(Outcome::Limited);
                    return Err(timed_out(limit));
                }
            };
        self.run_planned(planned, limit.saturating_sub(started.elapsed()))
            .await
    }

    /// Runs a planned statement within what is left of its time limit.
    pub async fn run_planned(
        self: &Arc<Self>,
        planned: Planned,
        remaining: Duration,
    ) -> Result<QueryStream> {
        let started = Instant::now();
        let limit = self.config.limits.timeout;
        let Planned {
            ctx,
            plan,
            execution,
        } = planned;
        let this = Arc::clone(self);
        let physical = tokio::time::timeout(
            remaining,
            self.on_executor(async move {
                let physical = ctx.state().create_physical_plan(&plan).await?;
                let distributed = match (execution, &this.config.distributed) {
                    (Execution::Local, _) | (Execution::Auto, None) => None,
                    (Execution::Distributed, None) => {
                        return Err(Error::FailedPrecondition(
                            "x-gbrain-execution: distributed, but this query service has no \
                             Ballista scheduler (--ballista-scheduler)"
                                .into(),
                        ));
                    }
                    (Execution::Distributed, Some(d)) => Some(d),
                    (Execution::Auto, Some(d)) => (crate::distributed::scan_bytes(&physical)
                        >= d.threshold_bytes)
                        .then_some(d),
                };
                match distributed {
                    None => Ok((physical, ctx.task_ctx(), None)),
                    Some(d) => {
                        let state =
                            crate::distributed::ballista_state(&ctx.state(), d, &this.codec)?;
                        let remote = state.create_physical_plan(&plan).await?;
                        // Ballista answers a plan that reads nothing (`WHERE false`) with an
                        // empty schema: such a plan runs here, where its columns are kept.
                        if remote.schema().fields() != physical.schema().fields() {
                            return Ok((physical, ctx.task_ctx(), None));
                        }
                        this.metrics.distributed.inc();
                        Ok((remote, state.task_ctx(), Some(d.scheduler.clone())))
                    }
                }
            }),
        )
        .await;
        let (plan, task_ctx, scheduler) = match physical {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.metrics
                    .finished(Outcome::of_status(tonic::Status::from(&e).code()));
                return Err(e);
            }
            Err(_) => {
                self.metrics.finished(Outcome::Limited);
                return Err(timed_out(limit));
            }
        };
        let schema = plan.schema();
        let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
        let metrics = self.metrics.clone();
        let remaining = remaining.saturating_sub(started.elapsed());
        self.metrics.active.inc();
        self.executor.spawn(async move {
            let outcome = forward(Arc::clone(&plan), task_ctx, &tx, remaining, limit).await;
            // Dropping Ballista's stream leaves its job running: stop it.
            if let Some(scheduler) = scheduler
                && outcome != Outcome::Ok
            {
                crate::distributed::cancel_job(&plan, &scheduler).await;
            }
            metrics.active.dec();
            metrics.finished(outcome);
            metrics
                .duration_seconds
                .observe(started.elapsed().as_secs_f64());
            if outcome == Outcome::Cancelled {
                tracing::info!("client went away: query cancelled");
            }
        });
        Ok(QueryStream { schema, rx })
    }

    /// Runs `sql` and collects its batches.
    pub async fn collect(
        self: &Arc<Self>,
        tenant: &str,
        seq: i64,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let stream = self
            .run(tenant, seq, sql, Vec::new(), Execution::Auto)
            .await?;
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
        Ok((schema, batches))
    }
}

fn timed_out(limit: Duration) -> Error {
    Error::ResourceExhausted(format!(
        "query exceeded its time limit of {:.1} s",
        limit.as_secs_f64()
    ))
}

/// Streams a plan's batches into `tx` until the end, an error, the time limit, or the receiver
/// going away, whichever comes first; dropping the plan's stream stops its work.
async fn forward(
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    tx: &mpsc::Sender<Result<RecordBatch>>,
    remaining: Duration,
    limit: Duration,
) -> Outcome {
    let work = async {
        let mut stream = match execute_stream(plan, task_ctx) {
            Ok(s) => s,
            Err(e) => {
                let e = Error::from(e);
                let outcome = Outcome::of_status(tonic::Status::from(&e).code());
                let _ = tx.send(Err(e)).await;
                return outcome;
            }
        };
        while let Some(batch) = stream.next().await {
            match batch {
                Ok(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return Outcome::Cancelled;
                    }
                }
                Err(e) => {
                    let e = Error::from(e);
                    let outcome = Outcome::of_status(tonic::Status::from(&e).code());
                    let _ = tx.send(Err(e)).await;
                    return outcome;
                }
            }
        }
        Outcome::Ok
    };
    tokio::select! {
        _ = tx.closed() => Outcome::Cancelled,
        r = tokio::time::timeout(remaining, work) => match r {
            Ok(outcome) => outcome,
            Err(_) => {
                let _ = tx.send(Err(timed_out(limit))).await;
                Outcome::Limited
            }
        },
    }
}

/// A running query's batches.
pub struct QueryStream {
    schema: SchemaRef,
    rx: mpsc::Receiver<Result<RecordBatch>>,
}

impl QueryStream {
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The SQL statement inside a (possibly explained) statement.
fn inner_sql(statement: &mut Statement) -> Option<&mut datafusion::sql::sqlparser::ast::Statement> {
    match statement {
        Statement::Statement(s) => Some(s),
        Statement::Explain(e) => inner_sql(e.statement.as_mut()),
        Statement::CreateExternalTable(_) | Statement::CopyTo(_) | Statement::Reset(_) => None,
    }
}

/// Turns `?` placeholders (ADBC's and JDBC's style) into DataFusion's `$1`, `$2`, … in the
/// order they appear; returns the highest placeholder number.
fn number_placeholders(statement: &mut Statement) -> usize {
    let Some(s) = inner_sql(statement) else {
        return 0;
    };
    let mut n = 0;
    let mut highest = 0;
    let _ = visit_expressions_mut(s, |e| {
        if let SqlExpr::Value(v) = e
            && let Value::Placeholder(p) = &mut v.value
        {
            if p == "?" {
                n += 1;
                *p = format!("${n}");
            }
            highest = highest.max(placeholder_index(p).min(u64::from(u32::MAX)) as usize);
        }
        ControlFlow::<()>::Continue(())
    });
    highest
}

/// Replaces each `$n` with the SQL literal of `values[n - 1]`.
fn bind_parameters(statement: &mut Statement, values: &[ScalarValue]) -> Result<()> {
    let Some(s) = inner_sql(statement) else {
        return Ok(());
    };
    let literals: Vec<SqlExpr> = values
        .iter()
        .map(|v| {
            datafusion::sql::unparser::expr_to_sql(&datafusion::logical_expr::Expr::Literal(
                v.clone(),
                None,
            ))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid("parameters", e.to_string()))?;
    let mut missing = None;
    let _ = visit_expressions_mut(s, |e| {
        if let SqlExpr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
        {
            let i = placeholder_index(p) as usize;
            match i.checked_sub(1).and_then(|i| literals.get(i)) {
                Some(lit) => *e = SqlExpr::Nested(Box::new(lit.clone())),
                None => missing = Some(p.clone()),
            }
        }
        ControlFlow::<()>::Continue(())
    });
    match missing {
        Some(p) => Err(Error::invalid(
            "parameters",
            format!("no value is bound to {p}"),
        )),
        None => Ok(()),
    }
}

fn placeholder_index(name: &str) -> u64 {
    name.trim_start_matches('$').parse().unwrap_or(u64::MAX)
}

/// Snapshot names: 1-64 of a-z, 0-9 and _, starting with a letter.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "snapshot name {name:?} must be 1-64 of a-z, 0-9 and _, starting with a letter"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_question_mark_placeholders_in_order() {
        let mut s = crate::guard::read_only(
            "SELECT * FROM events WHERE type = ? AND onset > ? AND value = $3",
        )
        .unwrap();
        assert_eq!(number_placeholders(&mut s), 3);
        let text = s.to_string();
        assert!(text.contains("type = $1 AND onset > $2"), "{text}");
        bind_parameters(
            &mut s,
            &[
                ScalarValue::Utf8(Some("left".into())),
                ScalarValue::Float64(Some(-1.5)),
                ScalarValue::Utf8(Some("it's".into())),
            ],
        )
        .unwrap();
        let text = s.to_string();
        assert!(
            text.contains("type = ('left') AND onset > (-1.5) AND value = ('it''s')"),
            "{text}"
        );
    }

    #[test]
    fn checks_snapshot_names() {
        assert!(check_snapshot_name("before_rerun_2").is_ok());
        for bad in ["", "Upper", "1st", "with-dash", "a/b", &"x".repeat(65)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}
