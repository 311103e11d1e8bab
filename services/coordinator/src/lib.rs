//! The feedback-loop coordinator (issue 5, in progress).
//!
//! What exists: the signal side of the loop, as a library.
//! - [`synthetic`]: a seeded synthetic motor-imagery subject (1/f background, mu and beta
//!   rhythms with class-dependent desynchronisation on lateral channels, noise, slow drift),
//!   documented as synthetic. It drives the tests, the demo and the benchmark.
//! - [`dsp`]: the preprocessing a loop session can ask for: re-referencing, band-pass,
//!   band-power features and z-scoring.
//! - [`decoder`]: linear discriminant analysis, the adaptive decision layer on a decoder's
//!   output (unsupervised bias tracking after Vidaurre et al. 2011, supervised class means),
//!   and recalibrated decoders written as ONNX models.
//!
//! - [`session`]: loop sessions: a live stream's windows decoded on the inference nodes
//!   ([`kserve`]: round-robin, deadlines, retry on another node, ejection), adapted, and sent
//!   back as feedback; outcomes reported in.
//! - [`records`]: predictions and outcomes stored as tables, and decisions about models.
//! - [`evolution`]: refits pushed as model versions with their lineage, then shadow, canary,
//!   and promotion or rollback on the outcomes.
//! - [`service`]: the gRPC service `globalbrain.coordinator.v1.LoopService`.

pub mod decoder;
pub mod dsp;
mod error;
pub mod evolution;
pub mod feed;
pub mod kserve;
mod metrics;
pub mod offline;
pub mod records;
pub mod rng;
pub mod service;
pub mod session;
pub mod synthetic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gbrain_common::clock::Clock;
use gbrain_common::tls::ClientTls;
use gbrain_proto::coordinator::v1 as pb;

pub use error::{Error, Result};
pub use feed::{Feed, LocalStreams, RemoteStreams, SampleSource};
pub use metrics::CoordinatorMetrics;

/// The gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "globalbrain.coordinator.v1.LoopService";

/// How long shutdown waits for sessions' last rows.
pub const DRAIN_ROWS: std::time::Duration = std::time::Duration::from_secs(10);

/// The most sessions one coordinator runs.
pub const MAX_SESSIONS: usize = 4096;

/// The coordinator: its sessions, the inference nodes, and where samples come from.
#[derive(Debug)]
pub struct Coordinator {
    source: Arc<dyn SampleSource>,
    records: records::Records,
    pool: Arc<kserve::Pool>,
    clock: Arc<dyn Clock>,
    metrics: CoordinatorMetrics,
    sessions: Mutex<HashMap<String, Arc<session::Session>>>,
    /// Evolving models by (tenant, model).
    evolutions: Mutex<HashMap<(String, String), Arc<evolution::Evolution>>>,
}

/// What a coordinator is built from.
pub struct CoordinatorDeps {
    pub source: Arc<dyn SampleSource>,
    pub records: records::Records,
    /// The inference nodes' endpoints (`http://host:port`; see [`kserve::Pool::new`]).
    pub inference: Vec<String>,
    /// TLS of the connections to `https://` inference nodes.
    pub tls: ClientTls,
    pub clock: Arc<dyn Clock>,
    pub metrics: CoordinatorMetrics,
}

impl Coordinator {
    pub fn new(deps: CoordinatorDeps) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            source: deps.source,
            records: deps.records,
            pool: Arc::new(kserve::Pool::new(&deps.inference, deps.tls)?),
            clock: deps.clock,
            metrics: deps.metrics,
            sessions: Mutex::new(HashMap::new()),
            evolutions: Mutex::new(HashMap::new()),
        }))
    }

    /// A coordinator in the same process as its ingest node: its streams, its catalog and
    /// object store. It reaches the inference nodes over gRPC, with `tls` for `https://` ones.
    pub fn embedded(
        ingest: &Arc<gbrain_ingest::Ingest>,
        inference: Vec<String>,
        tls: ClientTls,
        clock: Arc<dyn Clock>,
        metrics: CoordinatorMetrics,
    ) -> Result<Arc<Self>> {
        Self::new(CoordinatorDeps {
            source: Arc::new(LocalStreams(Arc::clone(ingest))),
            records: records::Records::new(
                ingest.catalog().clone(),
                Arc::clone(ingest.store()),
                Arc::clone(&clock),
            ),
            inference,
            tls,
            clock,
            metrics,
        })
    }

    fn evolutions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<evolution::Evolution>>> {
        self.evolutions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `model` of `tenant` evolve from `current`, replacing an evolution it had (whose
    /// running sessions keep following the old one until they stop).
    pub fn evolve(
        &self,
        tenant: &str,
        request: &pb::EvolveRequest,
        authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> Result<Arc<evolution::Evolution>> {
        if request.model.is_empty() {
            return Err(Error::invalid("model", "is required"));
        }
        if request.current_version == 0 {
            return Err(Error::invalid(
                "current_version",
                "name the version sessions decode with until a refit is promoted",
            ));
        }
        let policy = evolution::Policy::from_request(request.policy.as_ref())?;
        let e = Arc::new(evolution::Evolution::new(
            tenant.to_string(),
            request.model.clone(),
            request.current_version,
            policy,
            authorization,
            self.records.clone(),
            Arc::clone(&self.pool),
        ));
        self.evolutions()
            .insert((tenant.to_string(), request.model.clone()), Arc::clone(&e));
        tracing::info!(tenant, model = %request.model, current = request.current_version, "model evolves");
        Ok(e)
    }

    /// The evolution of `model` of `tenant`, if it has one.
    pub fn evolution(&self, tenant: &str, model: &str) -> Option<Arc<evolution::Evolution>> {
        self.evolutions()
            .get(&(tenant.to_string(), model.to_string()))
            .cloned()
    }

    /// The tonic service.
    pub fn grpc_service(
        self: &Arc<Self>,
    ) -> pb::loop_service_server::LoopServiceServer<service::GrpcLoop> {
        pb::loop_service_server::LoopServiceServer::new(service::GrpcLoop::new(Arc::clone(self)))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<session::Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `tenant`.
    pub fn session(&self, tenant: &str, id: &str) -> Option<Arc<session::Session>> {
        self.sessions()
            .get(id)
            .filter(|s| s.tenant == tenant)
            .cloned()
    }

    /// Starts a session on a live stream of `tenant`.
    pub async fn start(
        &self,
        tenant: &str,
        request: &pb::StartSessionRequest,
        authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> Result<Arc<session::Session>> {
        let spec = session::Spec::from_request(request)?;
        let feed = self
            .source
            .subscribe(tenant, &spec.stream_id, &authorization)
            .await?;
        session::check(&spec, &feed)?;
        {
            let mut sessions = self.sessions();
            sessions.retain(|_, s| !s.stop.is_cancelled());
            if sessions.len() >= MAX_SESSIONS {
                return Err(Error::Exhausted(format!(
                    "this coordinator runs {MAX_SESSIONS} sessions, the most it runs"
                )));
            }
        }
        let evolution = if spec.version.is_empty() {
            self.evolution(tenant, &spec.model)
        } else {
            None
        };
        let session = Arc::new(session::Session::new(
            spec,
            session::Parts {
                id: uuid::Uuid::new_v4().to_string(),
                tenant: tenant.to_string(),
                recording_id: feed.recording_id.clone(),
                rate: feed.layout.sample_rate,
                evolution,
                records: self.records.clone(),
                authorization,
                metrics: self.metrics.clone(),
            },
        ));
        self.sessions()
            .insert(session.id.clone(), Arc::clone(&session));
        tracing::info!(
            tenant, session = %session.id, stream = %session.spec.stream_id,
            model = %session.spec.model, "loop session started"
        );
        tokio::spawn(Arc::clone(&session).write_rows());
        tokio::spawn(session::run(
            Arc::clone(&session),
            feed,
            Arc::clone(&self.pool),
            Arc::clone(&self.clock),
        ));
        Ok(session)
    }

    /// Stops every session (at shutdown).
    pub fn stop_all(&self) {
        for s in self.sessions().values() {
            s.stop.cancel();
        }
    }

    /// Stops every session and waits, at most `within`, for their last rows to be stored.
    pub async fn drain(&self, within: std::time::Duration) {
        let sessions: Vec<Arc<session::Session>> = self.sessions().values().cloned().collect();
        for s in &sessions {
            s.stop.cancel();
        }
        let all = futures::future::join_all(sessions.iter().map(|s| s.written.cancelled()));
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("loop sessions' last rows not all stored before shutdown");
        }
    }
}

/// What a coordinator of its own needs.
#[derive(Debug)]
pub struct ServeConfig {
    pub catalog_url: String,
    pub object_store_url: String,
    pub object_store_options: Vec<(String, String)>,
    pub ingest_endpoint: String,
    pub inference_endpoints: Vec<String>,
    /// TLS of the connections to ingest and the inference nodes (`https://` endpoints).
    pub tls: ClientTls,
    pub auth: Arc<gbrain_common::auth::Authenticator>,
    pub drain_delay: std::time::Duration,
}

impl ServeConfig {
    pub fn from_args(
        args: &gbrain_common::clap_blocks::CoordinatorServeArgs,
        auth: Arc<gbrain_common::auth::Authenticator>,
        object_store_options: Vec<(String, String)>,
        tls: ClientTls,
    ) -> Self {
        Self {
            catalog_url: args.catalog.catalog.clone(),
            object_store_url: args.store.object_store.clone(),
            object_store_options,
            ingest_endpoint: args.ingest_endpoint.clone(),
            inference_endpoints: args.coordinator.inference_endpoints.clone(),
            tls,
            auth,
            drain_delay: std::time::Duration::from_secs(args.server.drain_seconds),
        }
    }
}

/// Serves the coordinator as its own process until `shutdown`: sessions follow streams over
/// the ingest service's `Tail`, decode on the inference nodes, and store their rows through
/// the catalog and object store the other services share.
pub async fn run(
    config: ServeConfig,
    listeners: gbrain_common::server::Listeners,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::result::Result<(), String> {
    let catalog = gbrain_catalog::Catalog::connect(&config.catalog_url)
        .await
        .map_err(|e| format!("catalog: {e}"))?;
    let store = gbrain_storage::store::open(&config.object_store_url, &config.object_store_options)
        .map_err(|e| format!("object store: {e}"))?;
    let clock: Arc<dyn Clock> = Arc::new(gbrain_common::clock::SystemClock);
    let mut registry = prometheus_client::registry::Registry::default();
    let coordinator = Coordinator::new(CoordinatorDeps {
        source: Arc::new(
            RemoteStreams::new(&config.ingest_endpoint, &config.tls).map_err(|e| e.to_string())?,
        ),
        records: records::Records::new(catalog.clone(), store, Arc::clone(&clock)),
        inference: config.inference_endpoints,
        tls: config.tls,
        clock,
        metrics: CoordinatorMetrics::register(&mut registry),
    })
    .map_err(|e| e.to_string())?;
    let grpc_metrics = gbrain_common::metrics::GrpcMetrics::register(&mut registry);
    let stopping = {
        let (c, s) = (Arc::clone(&coordinator), shutdown.clone());
        tokio::spawn(async move {
            s.cancelled().await;
            c.stop_all();
        })
    };
    let served = gbrain_common::server::serve(gbrain_common::server::ServeArgs {
        routes: tonic::service::Routes::new(coordinator.grpc_service()),
        service_names: vec![SERVICE_NAME],
        descriptor_sets: vec![gbrain_proto::FILE_DESCRIPTOR_SET],
        extra_method_paths: Vec::new(),
        health: tonic_health::server::HealthReporter::new(),
        auth: config.auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        listeners,
        shutdown,
        drain_delay: config.drain_delay,
    })
    .await
    .map_err(|e| e.to_string());
    stopping.abort();
    coordinator.drain(DRAIN_ROWS).await;
    catalog.close().await;
    served
}
