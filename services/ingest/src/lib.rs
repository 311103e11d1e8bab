//! The ingest service, `globalbrain.ingest.v1`: hospital networks submit recordings and
//! behavioural events; Global Brain stores them de-identified, losslessly, as Parquet on
//! object storage, and makes each recording visible atomically when its catalog commit lands.
//!
//! The path of an upload:
//! 1. [`upload`]: chunks are staged on the object store in parts, so that an upload resumes
//!    after a dropped connection and survives a restarted server; the SHA-256 is computed on
//!    the way and decides idempotency.
//! 2. [`pipeline`]: the staged bytes stream through the EDF/BDF reader on the CPU pool
//!    ([`convert`]), header fields are de-identified ([`deid`]), signal files and events are
//!    written, and the catalog commit makes the recording visible.
//! 3. [`gc`]: uploads and writes that never finish are collected.
//!
//! [`export`] writes a recording back as de-identified EDF+/BDF+.

pub mod convert;
pub mod deid;
mod error;
pub mod events;
pub mod export;
pub mod gc;
pub mod grpc;
/// Live streams over the write-ahead log (sessions; the gRPC stream and flushing come next).
pub mod live;
pub mod metrics;
pub mod participants;
pub mod pipeline;
pub mod upload;
pub mod wal;

use std::sync::Arc;
use std::time::Duration;

use gbrain_catalog::Catalog;
use gbrain_common::auth::Authenticator;
use gbrain_common::clock::{Clock, SystemClock};
use gbrain_common::metrics::GrpcMetrics;
pub use gbrain_common::server::Listeners;
use gbrain_common::server::{ServeArgs, serve};
use gbrain_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use gbrain_storage::staging::Staging;
use object_store::ObjectStore;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};
pub use grpc::GrpcIngest;
pub use metrics::IngestMetrics;

/// The gRPC service name, for health and readiness.
pub const SERVICE_NAME: &str = "globalbrain.ingest.v1.IngestService";

/// Settings of the ingest service.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Largest source file accepted.
    pub max_upload_bytes: u64,
    /// How long an unfinished upload or write may sit before it is collected.
    pub upload_ttl: Duration,
    pub gc_interval: Duration,
    /// Bytes buffered from an upload stream before they are staged as one part.
    pub part_bytes: usize,
    /// Threads of the CPU pool that decodes and encodes recordings.
    pub cpu_threads: usize,
    /// Conversions running at once; each holds up to `convert.flush_bytes` of encoded data.
    pub max_concurrent_conversions: usize,
    pub convert: convert::ConvertOptions,
    /// Where live streams keep their write-ahead log; without one the node takes no streams.
    pub wal_dir: Option<std::path::PathBuf>,
    /// When live streams' held samples go to Parquet.
    pub live_flush: live::FlushPolicy,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(600),
            part_bytes: 8 << 20,
            cpu_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_concurrent_conversions: 2,
            convert: convert::ConvertOptions::default(),
            wal_dir: None,
            live_flush: live::FlushPolicy::default(),
        }
    }
}

impl IngestConfig {
    /// The settings from the command line; the rest keep their defaults.
    pub fn from_args(args: &gbrain_common::clap_blocks::IngestArgs) -> Self {
        Self {
            max_upload_bytes: args.max_upload_bytes,
            upload_ttl: Duration::from_secs(args.upload_ttl_hours * 3600),
            gc_interval: Duration::from_secs(args.gc_interval_seconds),
            wal_dir: args.wal_dir.clone(),
            ..Self::default()
        }
    }
}

/// What the service is built from.
pub struct IngestDeps {
    pub store: Arc<dyn ObjectStore>,
    pub catalog: Catalog,
    pub auth: Arc<Authenticator>,
    pub clock: Arc<dyn Clock>,
    pub metrics: IngestMetrics,
}

/// The ingest service's state, shared by the gRPC handlers, the garbage collector and
/// library callers (benchmarks, tests).
pub struct Ingest {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) staging: Staging,
    pub(crate) catalog: Catalog,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: IngestMetrics,
    pub(crate) cpu: rayon::ThreadPool,
    pub(crate) config: IngestConfig,
    pub(crate) conversions: Semaphore,
    pub(crate) sessions: upload::Sessions,
    pub(crate) live: Option<live::Live>,
    /// Cancelled when the node starts to drain: open live streams end with Unavailable, so
    /// that their clients resume (after the restart, or on another node) instead of holding
    /// the shutdown open.
    pub(crate) draining: CancellationToken,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("config", &self.config)
            .finish()
    }
}

impl Ingest {
    pub async fn new(config: IngestConfig, deps: IngestDeps) -> Result<Arc<Self>> {
        let cpu = rayon::ThreadPoolBuilder::new()
            .num_threads(config.cpu_threads.max(1))
            .thread_name(|i| format!("gbrain-ingest-cpu-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cpu pool: {e}")))?;
        // Replays the streams' log: every acknowledged chunk not yet in Parquet is held again
        // before the node serves anything.
        let live = match &config.wal_dir {
            Some(dir) => Some(
                live::Live::open(
                    wal::WalConfig {
                        sync_seconds: Some(deps.metrics.live.wal_sync_seconds.clone()),
                        ..wal::WalConfig::new(dir)
                    },
                    live::LiveDeps {
                        catalog: deps.catalog.clone(),
                        store: Arc::clone(&deps.store),
                        clock: Arc::clone(&deps.clock),
                        metrics: deps.metrics.live.clone(),
                    },
                    config.live_flush,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            live,
            staging: Staging::new(Arc::clone(&deps.store)),
            store: deps.store,
            catalog: deps.catalog,
            auth: deps.auth,
            clock: deps.clock,
            metrics: deps.metrics,
            cpu,
            conversions: Semaphore::new(config.max_concurrent_conversions.max(1)),
            config,
            sessions: upload::Sessions::default(),
            draining: CancellationToken::new(),
        }))
    }

    /// The tonic service, with message limits for upload chunks and sidecars.
    pub fn grpc_service(self: &Arc<Self>) -> IngestServiceServer<GrpcIngest> {
        IngestServiceServer::new(GrpcIngest::new(Arc::clone(self)))
            .max_decoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
    }

    /// The live streams, when the node has a write-ahead log.
    pub fn live(&self) -> Option<&live::Live> {
        self.live.as_ref()
    }

    /// Ends open live streams with Unavailable: the node is shutting down.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// The catalog, for read paths that other services share.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The object store the node writes to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Runs a closure on the CPU pool and awaits it without blocking the IO runtime.
    pub(crate) async fn on_cpu<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cpu.spawn(move || {
            // A panic here must fail this request, not abort the process (rayon aborts on an
            // unwinding task).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(Error::Internal("a conversion task panicked".into())));
            let _ = tx.send(result);
        });
        rx.await
            .map_err(|_| Error::Internal("cpu task ended without a result".into()))?
    }

    /// The tenant's pseudonym key, created on first use.
    pub(crate) async fn tenant_key(&self, tenant: &str) -> Result<Vec<u8>> {
        let hex_key = self
            .catalog
            .tenant_key(tenant, self.clock.now_ns(), || {
                gbrain_common::auth::generate_token()
                    .trim_start_matches("gb_")
                    .to_string()
            })
            .await?;
        hex::decode(hex_key).map_err(|e| Error::Internal(format!("tenant key: {e}")))
    }
}

/// What [`run`] needs to serve the ingest service as its own process.
#[derive(Debug)]
pub struct ServeConfig {
    pub ingest: IngestConfig,
    pub object_store_url: String,
    /// Object store settings (`aws_*`), collected from the environment by the binary.
    pub object_store_options: Vec<(String, String)>,
    pub catalog_url: String,
    pub auth: Arc<Authenticator>,
    pub drain_delay: Duration,
}

impl ServeConfig {
    /// The configuration of a service process from its command line. `object_store_options`
    /// are the `aws_*` settings the binary collected from its environment.
    pub fn from_args(
        args: &gbrain_common::clap_blocks::IngestServeArgs,
        auth: Arc<Authenticator>,
        object_store_options: Vec<(String, String)>,
    ) -> Self {
        Self {
            ingest: IngestConfig::from_args(&args.ingest),
            object_store_url: args.store.object_store.clone(),
            object_store_options,
            catalog_url: args.catalog.catalog.clone(),
            auth,
            drain_delay: Duration::from_secs(args.server.drain_seconds),
        }
    }
}

/// Runs the ingest service until `shutdown`: opens the store and catalog, serves gRPC and
/// metrics on `listeners`, and collects garbage in the background.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let store =
        gbrain_storage::store::open(&config.object_store_url, &config.object_store_options)?;
    let catalog = Catalog::connect(&config.catalog_url).await?;
    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let ingest = Ingest::new(
        config.ingest.clone(),
        IngestDeps {
            store,
            catalog,
            auth: Arc::clone(&config.auth),
            clock: Arc::new(SystemClock),
            metrics,
        },
    )
    .await?;
    serve_ingest(
        ingest,
        config.auth,
        registry,
        listeners,
        shutdown,
        config.drain_delay,
    )
    .await
}

/// Where a server listens.
/// Starts garbage collection of interrupted uploads and writes, until `shutdown`.
pub fn spawn_gc(ingest: &Arc<Ingest>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(gc::run_gc(
        Arc::clone(ingest),
        ingest.config.gc_interval,
        shutdown,
    ))
}

/// Starts flushing live streams to Parquet, when the node takes them, until `shutdown` (and
/// once more after).
pub fn spawn_live_flusher(
    ingest: &Arc<Ingest>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    ingest.live.as_ref()?;
    let ingest = Arc::clone(ingest);
    Some(tokio::spawn(async move {
        if let Some(live) = ingest.live() {
            let drain = {
                let (ingest, shutdown) = (Arc::clone(&ingest), shutdown.clone());
                async move {
                    shutdown.cancelled().await;
                    ingest.drain();
                }
            };
            tokio::join!(live.run_flusher(shutdown), drain);
        }
    }))
}

/// Serves a built [`Ingest`] until `shutdown`, with garbage collection in the background.
/// `registry` holds the ingest metrics; the gRPC request metrics are added here.
pub async fn serve_ingest(
    ingest: Arc<Ingest>,
    auth: Arc<Authenticator>,
    mut registry: Registry,
    listeners: Listeners,
    shutdown: CancellationToken,
    drain_delay: Duration,
) -> Result<()> {
    let grpc_metrics = GrpcMetrics::register(&mut registry);
    let gc = spawn_gc(&ingest, shutdown.clone());
    let flusher = spawn_live_flusher(&ingest, shutdown.clone());
    serve(ServeArgs {
        routes: tonic::service::Routes::new(ingest.grpc_service()),
        service_names: vec![SERVICE_NAME],
        descriptor_sets: vec![gbrain_proto::FILE_DESCRIPTOR_SET],
        extra_method_paths: Vec::new(),
        health: tonic_health::server::HealthReporter::new(),
        auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        listeners,
        shutdown,
        drain_delay,
    })
    .await
    .map_err(|e| Error::Startup(e.to_string()))?;
    let _ = gc.await;
    if let Some(f) = flusher {
        let _ = f.await;
    }
    ingest.catalog.close().await;
    Ok(())
}
