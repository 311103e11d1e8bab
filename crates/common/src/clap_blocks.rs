//! Configuration blocks the binaries flatten into their commands. Every flag also reads a
//! `GBRAIN_*` environment variable, so that Helm values and compose files can set it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a server listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// gRPC address.
    #[arg(long, env = "GBRAIN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// HTTP address for Prometheus metrics (/metrics) and liveness (/healthz).
    #[arg(long, env = "GBRAIN_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// Seconds between reporting NOT_SERVING and closing the listener on shutdown, so that
    /// load balancers stop sending work first.
    #[arg(long, env = "GBRAIN_DRAIN_SECONDS", default_value_t = 0)]
    pub drain_seconds: u64,

    /// Address of a second gRPC listener, always plaintext and without a token, that serves
    /// only grpc.health.v1 (the same statuses as the main port): for Kubernetes' gRPC probes,
    /// which cannot speak TLS. Off by default.
    #[arg(long, env = "GBRAIN_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// TLS on a server's gRPC port. Without a certificate the port is plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain the gRPC port presents (the server's certificate first); with
    /// --tls-key it turns TLS on.
    #[arg(long, env = "GBRAIN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "GBRAIN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate one of them signed (mutual
    /// TLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = "GBRAIN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// TLS of a client's connections: to `https://` endpoints (the CLI's, and a coordinator's to
/// ingest and inference nodes). `http://` endpoints stay plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) to verify `https://` servers with (default: the system's roots).
    #[arg(long, env = "GBRAIN_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// PEM certificate chain presented to servers that require client certificates (mutual
    /// TLS); with --tls-client-key.
    #[arg(
        long,
        env = "GBRAIN_TLS_CLIENT_CERT",
        global = true,
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(
        long,
        env = "GBRAIN_TLS_CLIENT_KEY",
        global = true,
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
}

/// Who may call.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// TOML file of tokens (clear or SHA-256), tenants and roles; see the README.
    #[arg(long, env = "GBRAIN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
}

/// Where objects live.
#[derive(Debug, Clone, clap::Args)]
pub struct ObjectStoreArgs {
    /// `file:///path` or `s3://bucket/prefix` (with the usual AWS_* environment variables:
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
    #[arg(long = "object-store", env = "GBRAIN_OBJECT_STORE")]
    pub object_store: String,
}

/// Where the catalog lives.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// `sqlite:///path/catalog.db` or `postgres://user@host:5432/db` (add `?schema=NAME` to use
    /// a schema other than public).
    #[arg(long, env = "GBRAIN_CATALOG")]
    pub catalog: String,
}

/// Limits and housekeeping of the ingest service.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Largest recording file accepted, in bytes.
    #[arg(long, env = "GBRAIN_MAX_UPLOAD_BYTES", default_value_t = 4 << 30)]
    pub max_upload_bytes: u64,

    /// Hours an unfinished upload is kept for resuming before its bytes are collected.
    #[arg(long, env = "GBRAIN_UPLOAD_TTL_HOURS", default_value_t = 24)]
    pub upload_ttl_hours: u64,

    /// Seconds between garbage-collection passes over interrupted uploads and writes.
    #[arg(long, env = "GBRAIN_GC_INTERVAL_SECONDS", default_value_t = 600)]
    pub gc_interval_seconds: u64,

    /// Directory of the live streams' write-ahead log, on a local disk or a persistent volume
    /// (`gbrain up` uses DIR/wal). Without it the node takes no live streams.
    #[arg(long, env = "GBRAIN_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
}

/// Limits of the query service.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Memory one query's operators may hold, in bytes; past it they spill to disk, or fail
    /// with ResourceExhausted when they cannot spill.
    #[arg(long, env = "GBRAIN_QUERY_MEMORY_BYTES", default_value_t = 2 << 30)]
    pub query_memory_bytes: usize,

    /// Seconds a query may run, from planning to its last batch.
    #[arg(long, env = "GBRAIN_QUERY_TIMEOUT_SECONDS", default_value_t = 300)]
    pub query_timeout_seconds: u64,

    /// Arrow IPC bytes a query's result may have.
    #[arg(long, env = "GBRAIN_QUERY_MAX_RESULT_BYTES", default_value_t = 4 << 30)]
    pub query_max_result_bytes: u64,

    /// Threads that execute queries (0: one per core).
    #[arg(long, env = "GBRAIN_QUERY_THREADS", default_value_t = 0)]
    pub query_threads: usize,

    /// Directory spilled operators write to (default: the OS temporary directory).
    #[arg(long, env = "GBRAIN_QUERY_SPILL_DIR")]
    pub query_spill_dir: Option<PathBuf>,

    /// A Ballista scheduler (`df://host:port` or `http://host:port`, a `gbrain serve
    /// ballista-scheduler`) for queries larger than one node.
    #[arg(long, env = "GBRAIN_BALLISTA_SCHEDULER")]
    pub ballista_scheduler: Option<String>,

    /// With a scheduler: a query whose scans read at least this many bytes of stored files runs
    /// on Ballista, unless it asks otherwise (header `x-gbrain-execution: local|distributed`).
    #[arg(long, env = "GBRAIN_BALLISTA_THRESHOLD_BYTES", default_value_t = 1 << 30)]
    pub ballista_threshold_bytes: u64,
}

/// `gbrain serve ballista-scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct BallistaSchedulerServeArgs {
    /// The scheduler's gRPC port (Ballista's scheduler API and grpc.health.v1).
    #[arg(long, env = "GBRAIN_LISTEN", default_value = "127.0.0.1:50050")]
    pub listen: SocketAddr,
    /// The host executors and query services reach it at (default: the listen address).
    #[arg(long, env = "GBRAIN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `gbrain serve ballista-executor`.
#[derive(Debug, Clone, clap::Args)]
pub struct BallistaExecutorServeArgs {
    /// The scheduler, `host:port` (or `df://host:port`).
    #[arg(long, env = "GBRAIN_BALLISTA_SCHEDULER")]
    pub scheduler: String,
    /// grpc.health.v1 for probes: SERVING once the scheduler has the executor.
    #[arg(long, env = "GBRAIN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Ballista's Flight port: shuffle data and results.
    #[arg(long, env = "GBRAIN_BALLISTA_FLIGHT_PORT", default_value_t = 50060)]
    pub flight_port: u16,
    /// Ballista's task port.
    #[arg(long, env = "GBRAIN_BALLISTA_GRPC_PORT", default_value_t = 50061)]
    pub grpc_port: u16,
    /// The host the scheduler, other executors and query services reach it at (default: the
    /// listen address).
    #[arg(long, env = "GBRAIN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Tasks run at once (0: one per CPU).
    #[arg(long, env = "GBRAIN_CONCURRENT_TASKS", default_value_t = 0)]
    pub concurrent_tasks: usize,
    /// Shuffle files (default: a temporary directory).
    #[arg(long, env = "GBRAIN_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Log output.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `text` or `json`. Levels come from RUST_LOG (default info).
    #[arg(long, env = "GBRAIN_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a client command reaches the cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// gRPC endpoint of the cluster.
    #[arg(
        long,
        env = "GBRAIN_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    /// Bearer token.
    #[arg(long, env = "GBRAIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Everything `gbrain serve query` and `gbrain-query` take.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Everything `gbrain serve ingest` and `gbrain-ingest` take.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// ONNX Runtime and the model repository of an inference node.
#[derive(Debug, Clone, clap::Args)]
pub struct InferenceArgs {
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1` from the onnxruntime==1.31.1
    /// wheel, or from onnxruntime-gpu for CUDA). Defaults to ORT_DYLIB_PATH.
    #[arg(long, env = "GBRAIN_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Seconds between scans of the model repository for new, changed and removed versions;
    /// 0 loads models only at start-up and through RepositoryModelLoad.
    #[arg(long, env = "GBRAIN_MODEL_POLL_SECONDS", default_value_t = 10)]
    pub model_poll_seconds: u64,
}

/// The feedback-loop coordinator's settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoordinatorArgs {
    /// Inference nodes the coordinator decodes on, comma-separated: `http://host:port` for a
    /// node, `dns://host:port` for every address of a name, resolved again every 5 s (a
    /// headless Service); `https://host:port` and `dns+https://host:port` are the same over
    /// TLS (a resolved address's certificate is verified for the name). In `gbrain up` the
    /// default is the cluster's own inference service.
    #[arg(long, env = "GBRAIN_INFERENCE_ENDPOINTS", value_delimiter = ',')]
    pub inference_endpoints: Vec<String>,
}

/// Everything `gbrain serve coordinator` and `gbrain-coordinator` take.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where predictions, outcomes and model decisions are committed.
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    /// The ingest service whose live streams sessions follow (`http://host:port`, or
    /// `https://host:port` over TLS).
    #[arg(long, env = "GBRAIN_INGEST_ENDPOINT")]
    pub ingest_endpoint: String,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
    /// TLS of the connections to ingest and the inference nodes.
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Everything `gbrain serve inference` and `gbrain-inference` take.
#[derive(Debug, Clone, clap::Args)]
pub struct InferenceServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub store: ObjectStoreArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
