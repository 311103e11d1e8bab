//! The test sandbox: real services started in-process on `127.0.0.1:0`, typed clients, test
//! files, and the paths of the real binary and third-party tools.

pub mod binary;
pub mod faults;
pub mod files;
pub mod fusion;
pub mod live_stream;
pub mod pki;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gbrain_catalog::Catalog;
use gbrain_cli::client::{Bearer, Ingest as IngestClient};
use gbrain_cli::cluster::{Services, serve_cluster};
use gbrain_common::auth::Authenticator;
use gbrain_common::clock::{Clock, SystemClock};
use gbrain_ingest::{Ingest, IngestConfig, IngestDeps, IngestMetrics, Listeners};
use gbrain_query::{Query, QueryConfig, QueryDeps, QueryMetrics};
use object_store::ObjectStore;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Tokens of the sandbox's auth file.
pub const ADMIN_TOKEN: &str = "sandbox-admin-token";
pub const SUBMITTER_TOKEN: &str = "sandbox-submitter-token";
pub const ANALYST_TOKEN: &str = "sandbox-analyst-token";
pub const OTHER_TENANT_TOKEN: &str = "sandbox-other-tenant-token";

/// The auth file every sandbox uses: tenant `demo` with an admin, a submitter and an analyst,
/// and tenant `other` with an admin.
pub fn auth_toml() -> String {
    format!(
        r#"
[[tokens]]
name = "admin"
token = "{ADMIN_TOKEN}"
tenant = "demo"
roles = ["admin"]

[[tokens]]
name = "submitter"
sha256 = "{}"
tenant = "demo"
roles = ["submitter"]

[[tokens]]
name = "analyst"
token = "{ANALYST_TOKEN}"
tenant = "demo"
roles = ["analyst"]

[[tokens]]
name = "other-admin"
token = "{OTHER_TENANT_TOKEN}"
tenant = "other"
roles = ["admin"]
"#,
        gbrain_common::auth::hash_token(SUBMITTER_TOKEN)
    )
}

/// Where the catalog lives.
#[derive(Clone, Debug)]
pub enum CatalogKind {
    Sqlite,
    /// The real PostgreSQL, in a schema of the test's own.
    Postgres,
}

/// How to start a sandbox.
pub struct Options {
    pub config: IngestConfig,
    pub query: QueryConfig,
    pub catalog: CatalogKind,
    /// An object store to use instead of the local directory.
    pub store: Option<Arc<dyn ObjectStore>>,
    pub clock: Arc<dyn Clock>,
    /// Serve inference (needs ORT_DYLIB_PATH, which `cargo xtask test` sets).
    pub inference: bool,
    /// How often inference polls the model repository; None: at start and on request only.
    pub model_poll: Option<Duration>,
    /// TLS of the gRPC port; None: plaintext.
    pub tls: Option<gbrain_common::tls::ServerTls>,
    /// What the embedded coordinator trusts and presents when the port speaks TLS.
    pub coordinator_tls: gbrain_common::tls::ClientTls,
    /// Also serve grpc.health.v1 alone, in plaintext, on a port of its own.
    pub health_port: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: IngestConfig {
                cpu_threads: 2,
                gc_interval: Duration::from_secs(3600),
                ..IngestConfig::default()
            },
            query: QueryConfig {
                threads: 2,
                ..QueryConfig::default()
            },
            catalog: CatalogKind::Sqlite,
            store: None,
            clock: Arc::new(SystemClock),
            inference: gbrain_inference::runtime::library_path(None).is_some(),
            model_poll: None,
            tls: None,
            coordinator_tls: gbrain_common::tls::ClientTls::default(),
            health_port: false,
        }
    }
}

/// Running services.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The plaintext health port, when asked for.
    pub health_addr: Option<SocketAddr>,
    /// Whether the gRPC port speaks TLS.
    pub tls: bool,
    pub dir: tempfile::TempDir,
    pub ingest: Arc<Ingest>,
    pub query: Query,
    /// The inference node's models, when it serves inference.
    pub models: Option<Arc<gbrain_inference::models::Models>>,
    pub store: Arc<dyn ObjectStore>,
    pub catalog: Catalog,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pg_schema: Option<(String, String)>,
}

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("GBRAIN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

impl Sandbox {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(mut options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        options
            .config
            .wal_dir
            .get_or_insert_with(|| dir.path().join("wal"));
        let store = match options.store {
            Some(s) => s,
            None => gbrain_storage::store::open(
                &format!("file://{}", dir.path().join("objects").display()),
                &[],
            )
            .expect("local store"),
        };
        let (catalog_url, pg_schema) = match options.catalog {
            CatalogKind::Sqlite => (
                format!("sqlite://{}", dir.path().join("catalog.db").display()),
                None,
            ),
            CatalogKind::Postgres => {
                let schema = format!("gbit_{}", uuid::Uuid::new_v4().simple());
                (
                    format!("{}?schema={schema}", postgres_url()),
                    Some((postgres_url(), schema)),
                )
            }
        };
        let catalog = Catalog::connect(&catalog_url).await.expect("catalog");
        let auth = Arc::new(Authenticator::from_toml(&auth_toml()).expect("auth"));
        let mut registry = Registry::default();
        let metrics = IngestMetrics::register(&mut registry);
        let ingest = Ingest::new(
            options.config,
            IngestDeps {
                store: Arc::clone(&store),
                catalog: catalog.clone(),
                auth: Arc::clone(&auth),
                clock: Arc::clone(&options.clock),
                metrics,
            },
        )
        .await
        .expect("ingest");
        let query = Query::new(
            options.query,
            QueryDeps {
                store: Arc::clone(&store),
                catalog: catalog.clone(),
                metrics: QueryMetrics::register(&mut registry),
            },
            options.clock,
        )
        .expect("query");
        let inference = options.inference.then(|| {
            gbrain_inference::Inference::new(
                gbrain_inference::InferenceConfig {
                    ort_library: None,
                    poll: options.model_poll,
                },
                Arc::clone(&store),
                gbrain_inference::InferenceMetrics::register(&mut registry),
            )
            .expect("inference (is ORT_DYLIB_PATH set? `cargo xtask test` sets it)")
        });
        let models = inference.as_ref().map(|i| Arc::clone(&i.models));
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let health = match options.health_port {
            true => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            ),
            false => None,
        };
        let addr = grpc.local_addr().expect("addr");
        let http_addr = http.local_addr().expect("addr");
        let health_addr = health.as_ref().map(|h| h.local_addr().expect("addr"));
        let tls = options.tls.is_some();
        let scheme = if tls { "https" } else { "http" };
        let coordinator = inference.as_ref().map(|_| {
            gbrain_coordinator::Coordinator::embedded(
                &ingest,
                vec![format!("{scheme}://{addr}")],
                options.coordinator_tls.clone(),
                Arc::new(SystemClock),
                gbrain_coordinator::CoordinatorMetrics::register(&mut registry),
            )
            .expect("coordinator")
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_cluster(
            Services {
                ingest: Arc::clone(&ingest),
                query: query.clone(),
                inference,
                coordinator,
            },
            auth,
            registry,
            Listeners {
                grpc,
                http: Some(http),
                health,
                tls: options.tls,
            },
            shutdown.clone(),
            Duration::ZERO,
        ));
        let sandbox = Self {
            addr,
            http_addr,
            health_addr,
            tls,
            dir,
            ingest,
            query,
            models,
            store,
            catalog,
            shutdown,
            server: Some(server),
            pg_schema,
        };
        sandbox.wait_ready().await;
        sandbox
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sandbox did not start");
    }

    /// `http://ADDR`, or `https://ADDR` when the port speaks TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A plaintext channel; a sandbox with TLS needs `ClientTls::endpoint` instead.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// A client with the given token (or none).
    pub async fn client_with(&self, token: Option<&str>) -> IngestClient {
        let bearer = Bearer::new(token).expect("token");
        gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient::with_interceptor(
            self.channel().await,
            bearer,
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    /// A client of tenant `demo` with every role.
    pub async fn client(&self) -> IngestClient {
        self.client_with(Some(ADMIN_TOKEN)).await
    }

    /// A Flight SQL client with the given token, pinned to a snapshot when one is named.
    pub async fn flight(&self, token: &str, snapshot: Option<&str>) -> gbrain_cli::sql::Flight {
        let args = gbrain_common::clap_blocks::ClientArgs {
            server: self.endpoint(),
            token: Some(token.to_string()),
            json: false,
            tls: Default::default(),
        };
        gbrain_cli::sql::connect(&args, snapshot)
            .await
            .expect("flight client")
    }

    /// Runs `sql` over Flight SQL as `token` and returns its rows as one batch.
    pub async fn sql(
        &self,
        token: &str,
        sql: &str,
    ) -> Result<arrow::array::RecordBatch, tonic::Status> {
        self.sql_at(token, None, sql).await
    }

    /// Runs `sql` over Flight SQL, pinned to `snapshot`.
    pub async fn sql_at(
        &self,
        token: &str,
        snapshot: Option<&str>,
        sql: &str,
    ) -> Result<arrow::array::RecordBatch, tonic::Status> {
        let mut client = self.flight(token, snapshot).await;
        let (schema, batches) = gbrain_cli::sql::collect(&mut client, sql).await?;
        arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    /// The Prometheus text of the metrics endpoint.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http_addr)
            .await
            .expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response");
        out
    }

    /// Every byte stored under the sandbox's directory, file by file.
    pub fn stored_files(&self) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// Stops the services and drops a PostgreSQL schema if one was made.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.catalog.close().await;
        if let Some((url, schema)) = self.pg_schema.take() {
            drop_schema(&url, &schema).await;
        }
    }
}

/// Uploads a file with no labels, as `gbrain upload` does (resuming on transient errors).
pub async fn upload(
    client: &mut IngestClient,
    path: &std::path::Path,
) -> Result<gbrain_proto::ingest::v1::UploadResponse, gbrain_cli::upload::UploadError> {
    gbrain_cli::upload::upload_file(
        client,
        path,
        gbrain_proto::ingest::v1::RecordingMetadata::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .await
}

/// The bytes of an export, read to the end of the stream.
pub async fn export_bytes(client: &mut IngestClient, recording_id: &str) -> Vec<u8> {
    use gbrain_proto::ingest::v1::{ExportRecordingRequest, export_recording_response};
    let mut stream = client
        .export_recording(ExportRecordingRequest {
            recording_id: recording_id.into(),
            format: 0,
        })
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("export stream") {
        if let Some(export_recording_response::Kind::Data(d)) = m.kind {
            out.extend_from_slice(&d);
        }
    }
    out
}

async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for e in read.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
