//! Distributed execution on Apache DataFusion Ballista.
//!
//! The query service plans a statement as always (guard, tenant catalog, bound parameters),
//! then hands the logical plan to a Ballista scheduler, which splits it into stages that the
//! executors run. Both are the project's own binary (`gbrain serve ballista-scheduler` and
//! `ballista-executor`), because the plan holds the project's own parts, which only [`Codec`]
//! knows how to move between processes:
//!
//! - the tables (`samples`, `events`, `predictions`, `outcomes`, the catalog tables) travel as
//!   the tenant's view as of the query's commit, so a scheduler or an executor reads exactly
//!   the files the query service would have, and nothing of another tenant;
//! - a table function travels as its call (name and bound arguments) with that view, and is
//!   planned again where it runs;
//! - `band_power`, the aggregate, by name.
//!
//! What stays on one node, and why, is in docs/ARCHITECTURE.md ("Distributed queries").

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::catalog::{Session, TableFunctionArgs, TableProvider};
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::datasource::MemTable;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::Serializeable;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use gbrain_catalog::TenantView;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::functions::{FunctionCall, FunctionEnv, FunctionExec, FunctionTable};
use crate::tables::{RowsTable, SamplesExec, SamplesTable};
use crate::view::{QueryView, RowTable};

/// Largest gRPC message between the query service, the scheduler and the executors: a plan
/// carries the tenant's view, which grows with its files (Ballista's default is 16 MiB).
pub const MAX_PLAN_BYTES: usize = 256 << 20;

/// Starts every encoding of ours, so that Ballista's own nodes are told apart.
const MAGIC: &[u8] = b"gbrain/1:";

/// What one of our nodes carries between processes.
#[derive(Debug, Serialize, Deserialize)]
enum Node<'a> {
    /// The `samples` table.
    Samples { view: Cow<'a, TenantView> },
    /// `events`, `predictions` or `outcomes` (by position in [`RowTable::ALL`]).
    Rows {
        view: Cow<'a, TenantView>,
        table: usize,
    },
    /// A catalog table (`recordings`, `channels`…): its rows, as Arrow IPC.
    Memory { ipc: Vec<u8> },
    /// A table function's output.
    Function {
        view: Cow<'a, TenantView>,
        name: String,
        /// Each argument, protobuf-encoded.
        args: Vec<Vec<u8>>,
    },
    /// The samples scan; its Parquet scans are its input.
    SamplesExec {
        view: Cow<'a, TenantView>,
        projection: Option<Vec<usize>>,
        files_pruned: usize,
        files_scanned: usize,
    },
    /// A table function's plan.
    FunctionExec {
        view: Cow<'a, TenantView>,
        name: String,
        args: Vec<Vec<u8>>,
        target_partitions: usize,
        partitions: usize,
        projection: Option<Vec<usize>>,
    },
}

impl Node<'_> {
    fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(buf, self)
            .map_err(|e| DataFusionError::Internal(format!("encoding a plan node: {e}")))
    }

    /// Ours, or `None` for a node of Ballista's or DataFusion's.
    fn decode(buf: &[u8]) -> Result<Option<Node<'static>>> {
        let Some(body) = buf.strip_prefix(MAGIC) else {
            return Ok(None);
        };
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| DataFusionError::Internal(format!("decoding a plan node: {e}")))
    }
}

/// The plan codec of the query service, the scheduler and the executors: the project's
/// tables, functions and plans, then Ballista's own nodes.
#[derive(Debug)]
pub struct Codec {
    store: Arc<dyn ObjectStore>,
    logical: ballista_core::serde::BallistaLogicalExtensionCodec,
    physical: ballista_core::serde::BallistaPhysicalExtensionCodec,
}

impl Codec {
    /// A codec whose decoded tables and functions read from `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            logical: Default::default(),
            physical: Default::default(),
        })
    }

    fn env(&self, view: TenantView) -> Arc<FunctionEnv> {
        Arc::new(FunctionEnv {
            view: Arc::new(QueryView::new(view)),
            store: Arc::clone(&self.store),
        })
    }

    /// The table a function call returns, planned here.
    fn function_table(
        &self,
        view: TenantView,
        name: &str,
        args: &[Vec<u8>],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let env = self.env(view);
        let f = crate::functions::table_function(name, &env).ok_or_else(|| {
            DataFusionError::Internal(format!("no table function {name:?} to decode"))
        })?;
        let args = args
            .iter()
            .map(|a| datafusion::logical_expr::Expr::from_bytes_with_ctx(a, ctx))
            .collect::<Result<Vec<_>>>()?;
        let session = SessionStateBuilder::new().build();
        f.call_with_args(TableFunctionArgs::new(&args, &session as &dyn Session))
    }
}

fn encode_call(call: &FunctionCall) -> Result<(Cow<'_, TenantView>, String, Vec<Vec<u8>>)> {
    let args = call
        .args
        .iter()
        .map(|a| a.to_bytes().map(|b| b.to_vec()))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        Cow::Borrowed(&call.env.view.view),
        call.name.to_string(),
        args,
    ))
}

fn ipc(batches: &[RecordBatch], schema: &arrow::datatypes::SchemaRef) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

fn from_ipc(bytes: &[u8]) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

/// An aggregate function of this project, by name.
fn our_aggregate(name: &str) -> Option<Arc<AggregateUDF>> {
    crate::functions::aggregate_functions()
        .into_iter()
        .find(|f| f.name() == name)
}

fn not_distributable(what: &str) -> DataFusionError {
    DataFusionError::NotImplemented(format!(
        "{what} cannot run on Ballista; run the query on one node (x-gbrain-execution: local)"
    ))
}

impl LogicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.logical.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.logical.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match Node::decode(buf)? {
            None => self
                .logical
                .try_decode_table_provider(buf, table_ref, schema, ctx),
            Some(Node::Samples { view }) => Ok(Arc::new(SamplesTable::new(Arc::new(
                QueryView::new(view.into_owned()),
            )))),
            Some(Node::Rows { view, table }) => {
                let table = RowTable::ALL
                    .get(table)
                    .copied()
                    .ok_or_else(|| DataFusionError::Internal(format!("no row table at {table}")))?;
                Ok(Arc::new(RowsTable::new(
                    table,
                    Arc::new(QueryView::new(view.into_owned())),
                    Arc::clone(&self.store),
                )))
            }
            Some(Node::Memory { ipc }) => {
                let (schema, batches) = from_ipc(&ipc)?;
                Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
            }
            Some(Node::Function { view, name, args }) => {
                self.function_table(view.into_owned(), &name, &args, ctx)
            }
            Some(other) => Err(DataFusionError::Internal(format!(
                "{other:?} is not a table"
            ))),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let any: &dyn std::any::Any = node.as_ref();
        let ours = if let Some(t) = any.downcast_ref::<SamplesTable>() {
            Node::Samples {
                view: Cow::Borrowed(&t.view().view),
            }
        } else if let Some(t) = any.downcast_ref::<RowsTable>() {
            let (table, view) = t.parts();
            Node::Rows {
                view: Cow::Borrowed(&view.view),
                table: table.index(),
            }
        } else if let Some(t) = any.downcast_ref::<MemTable>() {
            let mut batches = Vec::new();
            for partition in &t.batches {
                let guard = partition.try_read().map_err(|_| {
                    DataFusionError::Internal(format!("{table_ref} is being written"))
                })?;
                batches.extend(guard.iter().cloned());
            }
            Node::Memory {
                ipc: ipc(&batches, &t.schema())?,
            }
        } else if let Some(t) = any.downcast_ref::<FunctionTable>() {
            let call = t
                .call
                .as_ref()
                .ok_or_else(|| not_distributable(&format!("{} with unbound parameters", t.name)))?;
            let (view, name, args) = encode_call(call)?;
            Node::Function { view, name, args }
        } else {
            return self.logical.try_encode_table_provider(table_ref, node, buf);
        };
        ours.encode(buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match our_aggregate(name) {
            Some(f) => Ok(f),
            None => self.logical.try_decode_udaf(name, buf),
        }
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match Node::decode(buf)? {
            None => self.physical.try_decode(buf, inputs, ctx, converter),
            Some(Node::SamplesExec {
                view,
                projection,
                files_pruned,
                files_scanned,
            }) => Ok(Arc::new(SamplesExec::rebuilt(
                Arc::new(QueryView::new(view.into_owned())),
                inputs.first().cloned(),
                projection,
                files_pruned,
                files_scanned,
            )?)),
            Some(Node::FunctionExec {
                view,
                name,
                args,
                target_partitions,
                partitions,
                projection,
            }) => {
                let table = self.function_table(view.into_owned(), &name, &args, ctx)?;
                let table = (table.as_ref() as &dyn std::any::Any)
                    .downcast_ref::<FunctionTable>()
                    .ok_or_else(|| {
                        DataFusionError::Internal(format!("{name} did not return a function table"))
                    })?;
                Ok(Arc::new(FunctionExec::deferred(
                    table,
                    target_partitions,
                    partitions,
                    projection,
                )?))
            }
            Some(other) => Err(DataFusionError::Internal(format!(
                "{other:?} is not an execution plan"
            ))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let any: &dyn std::any::Any = node.as_ref();
        let ours = if let Some(e) = any.downcast_ref::<SamplesExec>() {
            let (files_scanned, files_pruned) = e.file_counts();
            Node::SamplesExec {
                view: Cow::Borrowed(&e.view().view),
                projection: e.projection().map(<[usize]>::to_vec),
                files_pruned,
                files_scanned,
            }
        } else if let Some(e) = any.downcast_ref::<FunctionExec>() {
            let (name, _, partitions, projection) = e.parts();
            let (call, target_partitions) = e
                .call()
                .ok_or_else(|| not_distributable(&format!("{name} with unbound parameters")))?;
            let (view, name, args) = encode_call(call)?;
            Node::FunctionExec {
                view,
                name,
                args,
                target_partitions: *target_partitions,
                partitions,
                projection: projection.map(<[usize]>::to_vec),
            }
        } else {
            return self.physical.try_encode(node, buf, converter);
        };
        ours.encode(buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match our_aggregate(name) {
            Some(f) => Ok(f),
            None => self.physical.try_decode_udaf(name, buf),
        }
    }
}

/// Bytes of stored files a local plan's scans read: the Parquet files its scans chose (of a
/// live flush's file of every channel, the share of row groups a channel's scan reads), and
/// for a table function every signal file of its view once (it reads only the windows it
/// needs, so this is an upper bound).
pub fn scan_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
    use datafusion::datasource::source::DataSourceExec;
    let any: &dyn std::any::Any = plan.as_ref();
    let own = if let Some(e) = any.downcast_ref::<DataSourceExec>() {
        (e.data_source().as_ref() as &dyn std::any::Any)
            .downcast_ref::<FileScanConfig>()
            .map_or(0, |c| {
                c.file_groups
                    .iter()
                    .flat_map(|g| g.iter())
                    .map(|f| match f.extension::<ParquetAccessPlan>() {
                        Some(p) if !p.is_empty() => {
                            f.object_meta.size * p.row_group_indexes().len() as u64 / p.len() as u64
                        }
                        _ => f.object_meta.size,
                    })
                    .sum()
            })
    } else if let Some(e) = any.downcast_ref::<FunctionExec>() {
        e.call().map_or(0, |(call, _)| {
            let mut seen = std::collections::HashSet::new();
            call.env
                .view
                .channels
                .iter()
                .flat_map(|c| c.files.iter())
                .filter(|f| seen.insert(f.path.as_str()))
                .map(|f| f.size)
                .sum()
        })
    } else {
        0
    };
    own + plan.children().into_iter().map(scan_bytes).sum::<u64>()
}

/// Cancels the Ballista job of `plan` (a query that stopped early: its time limit, its client
/// gone, an error), which Ballista's client leaves running when its stream is dropped.
pub async fn cancel_job(plan: &Arc<dyn ExecutionPlan>, scheduler: &str) {
    use ballista_core::execution_plans::DistributedQueryExec;
    use ballista_core::serde::protobuf::CancelJobParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let Some(exec) = (plan.as_ref() as &dyn std::any::Any)
        .downcast_ref::<DistributedQueryExec<datafusion_proto::protobuf::LogicalPlanNode>>()
    else {
        return;
    };
    let Some(job) = exec.job_id() else {
        return;
    };
    let job = job.to_string();
    let cancelled = async {
        let mut client = SchedulerGrpcClient::connect(scheduler.to_string()).await?;
        client
            .cancel_job(CancelJobParams {
                job_id: job.clone(),
            })
            .await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), cancelled).await {
        Ok(Ok(())) => tracing::info!(job = %job, "cancelled the Ballista job of a stopped query"),
        Ok(Err(e)) => tracing::warn!(job = %job, error = %e, "cancelling a Ballista job"),
        Err(_) => tracing::warn!(job = %job, "cancelling a Ballista job: no answer in 10 s"),
    }
}

/// `state` (a query's session: its tenant catalog and functions) planning on Ballista.
pub fn ballista_state(
    state: &datafusion::execution::session_state::SessionState,
    config: &crate::engine::DistributedConfig,
    codec: &Arc<Codec>,
) -> Result<datafusion::execution::session_state::SessionState> {
    use ballista_core::extension::{SessionConfigExt, SessionStateExt};
    let session =
        state
            .config()
            .clone()
            .with_ballista_logical_extension_codec(
                Arc::clone(codec) as Arc<dyn LogicalExtensionCodec>
            )
            .with_ballista_physical_extension_codec(
                Arc::clone(codec) as Arc<dyn PhysicalExtensionCodec>
            )
            .with_ballista_job_name("gbrain query")
            .with_ballista_grpc_client_max_message_size(MAX_PLAN_BYTES);
    SessionStateBuilder::new_from_existing(state.clone())
        .with_config(session)
        .build()
        .upgrade_for_ballista(config.scheduler.clone())
}

/// A Ballista scheduler with the project's codec, serving its gRPC API (and grpc.health.v1)
/// on `listener` until `shutdown`. `advertised` is the address executors and clients reach it
/// at (`host:port`).
pub async fn run_scheduler(
    listener: tokio::net::TcpListener,
    advertised: (String, u16),
    store: Arc<dyn ObjectStore>,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::Result<()> {
    use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
    let startup = |e: ballista_core::error::BallistaError| crate::Error::Startup(e.to_string());
    let codec = Codec::new(store);
    let mut config = SchedulerConfig::default()
        .with_hostname(advertised.0)
        .with_port(advertised.1)
        .with_grpc_server_max_decoding_message_size(MAX_PLAN_BYTES as u32)
        .with_grpc_server_max_encoding_message_size(MAX_PLAN_BYTES as u32)
        .with_grpc_client_max_message_size(MAX_PLAN_BYTES as u32);
    config.override_logical_codec = Some(Arc::clone(&codec) as Arc<dyn LogicalExtensionCodec>);
    config.override_physical_codec = Some(codec as Arc<dyn PhysicalExtensionCodec>);
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(startup)?;
    let scheduler = ballista_scheduler::scheduler_process::create_scheduler::<
        LogicalPlanNode,
        PhysicalPlanNode,
    >(cluster, Arc::clone(&config))
    .await
    .map_err(startup)?;
    let grpc = SchedulerGrpcServer::new(scheduler)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status(
            "ballista.protobuf.SchedulerGrpc",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let drained = shutdown.clone();
    probe_server(health_service)?
        .add_service(grpc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { drained.cancelled().await },
        )
        .await
        .map_err(|e| crate::Error::Startup(format!("scheduler: {e}")))
}

/// The health service name an executor reports SERVING under while the scheduler answers
/// its heartbeats (its readiness).
pub const EXECUTOR_READY: &str = "gbrain.ballista.executor";

/// A server with grpc.health.v1 and reflection of it (Ballista's own services publish no
/// descriptors).
fn probe_server(
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> crate::Result<tonic::transport::server::Router> {
    let reflection =
        |e: tonic_reflection::server::Error| crate::Error::Startup(format!("reflection: {e}"));
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection)?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection)?;
    Ok(tonic::transport::Server::builder()
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha))
}

/// What a Ballista executor needs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: (String, u16),
    /// Where to bind: the Flight port (shuffle data and results) and the gRPC port (tasks).
    pub bind_host: String,
    pub flight_port: u16,
    pub grpc_port: u16,
    /// The host the scheduler and other executors reach this one at.
    pub external_host: Option<String>,
    /// Tasks run at once (0: one per CPU).
    pub concurrent_tasks: usize,
    /// Shuffle files.
    pub work_dir: Option<std::path::PathBuf>,
}

/// A Ballista executor with the project's codec, functions and object store, until SIGTERM
/// (Ballista's executor stops on the signal itself, telling the scheduler first), and
/// grpc.health.v1 on `health`: SERVING while the scheduler answers its heartbeats.
pub async fn run_executor(
    options: ExecutorOptions,
    store: Arc<dyn ObjectStore>,
    health: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::Result<()> {
    let ready = ballista_executor::health::ExecutorHealth::new();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // "" (liveness) is SERVING while the process runs; EXECUTOR_READY (readiness) while the
    // scheduler answers heartbeats, so that a scheduler restart does not restart executors.
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let watched = ready.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut last = None;
        while !stop.is_cancelled() {
            let now = watched.is_ready();
            if last != Some(now) {
                let status = if now {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(EXECUTOR_READY, status).await;
                last = Some(now);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        for service in ["", EXECUTOR_READY] {
            reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let drained = shutdown.clone();
    let probes = probe_server(health_service)?.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(health),
        async move { drained.cancelled().await },
    );
    tokio::spawn(async move {
        if let Err(e) = probes.await {
            tracing::warn!(error = %e, "executor health port stopped");
        }
    });
    let result = start_executor(options, store, ready).await;
    shutdown.cancel();
    result
}

async fn start_executor(
    options: ExecutorOptions,
    store: Arc<dyn ObjectStore>,
    health: ballista_executor::health::ExecutorHealth,
) -> crate::Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let codec = Codec::new(Arc::clone(&store));
    let work_dir = options
        .work_dir
        .as_ref()
        .map(|d| d.to_string_lossy().into_owned());
    let temp = work_dir.clone().map(std::path::PathBuf::from);
    let url = url::Url::parse(crate::tables::STORE_URL)
        .map_err(|e| crate::Error::Startup(e.to_string()))?;
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_| {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(dir) = &temp {
            builder = builder.with_temp_file_path(dir.clone());
        }
        let env = builder.build()?;
        env.register_object_store(&url, Arc::clone(&store));
        Ok(Arc::new(env))
    });
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host,
        external_host: options.external_host,
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.0,
        scheduler_port: options.scheduler.1,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrent_tasks,
        work_dir,
        print_thread_info: false,
        executor_heartbeat_interval_seconds: 5,
        grpc_max_decoding_message_size: MAX_PLAN_BYTES as u32,
        grpc_max_encoding_message_size: MAX_PLAN_BYTES as u32,
        override_logical_codec: Some(Arc::clone(&codec) as Arc<dyn LogicalExtensionCodec>),
        override_physical_codec: Some(codec as Arc<dyn PhysicalExtensionCodec>),
        override_runtime_producer: Some(runtime),
        health,
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| crate::Error::Startup(format!("executor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view decodes to the same bits it was encoded from (a sample's time comes from these
    /// floats, so an executor must see what the query node saw), and buffers of Ballista's own
    /// are left to Ballista.
    #[test]
    fn views_travel_exactly() {
        let onsets = [
            0.1 + 0.2,
            1.0 / 3.0,
            599.995,
            f64::MIN_POSITIVE,
            1e300 / 7.0,
        ];
        let view = TenantView {
            seq: 42,
            segments: onsets
                .iter()
                .enumerate()
                .map(|(i, &onset_s)| {
                    (
                        "rec".to_string(),
                        gbrain_catalog::SegmentRow {
                            segment_index: i as i64,
                            first_record: i as i64 * 10,
                            num_records: 10,
                            onset_s,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        Node::Samples {
            view: Cow::Borrowed(&view),
        }
        .encode(&mut buf)
        .unwrap();
        let Some(Node::Samples { view: back }) = Node::decode(&buf).unwrap() else {
            panic!("not decoded as the samples table");
        };
        assert_eq!(back.seq, 42);
        let bits = |v: &TenantView| -> Vec<u64> {
            v.segments
                .iter()
                .map(|(_, s)| s.onset_s.to_bits())
                .collect()
        };
        assert_eq!(bits(&back), bits(&view));
        assert!(Node::decode(b"\x0a\x02ballista's own").unwrap().is_none());
        assert!(Node::decode(b"gbrain/1:{not json").is_err());
    }
}
