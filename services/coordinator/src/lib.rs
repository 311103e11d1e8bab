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
use gbrain_proto::coordinator::v1 as pb;

pub use error::{Error, Result};
pub use metrics::CoordinatorMetrics;

/// The gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "globalbrain.coordinator.v1.LoopService";

/// The most sessions one coordinator runs.
pub const MAX_SESSIONS: usize = 4096;

/// Where a loop session's samples come from: the ingest node that takes its stream. The
/// embedded cluster subscribes in-process.
pub trait SampleSource: Send + Sync + std::fmt::Debug {
    fn subscribe(&self, tenant: &str, stream_id: &str)
    -> Result<gbrain_ingest::live::Subscription>;
}

/// The live streams of an ingest service in the same process.
#[derive(Debug)]
pub struct LocalStreams(pub Arc<gbrain_ingest::Ingest>);

impl SampleSource for LocalStreams {
    fn subscribe(
        &self,
        tenant: &str,
        stream_id: &str,
    ) -> Result<gbrain_ingest::live::Subscription> {
        let live = self.0.live().ok_or_else(|| {
            Error::precondition("stream_id", "the ingest node takes no live streams")
        })?;
        live.subscribe(tenant, stream_id).map_err(|e| match e {
            gbrain_ingest::Error::NotFound(m) => Error::precondition("stream_id", m),
            other => Error::Source(other.to_string()),
        })
    }
}

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
    /// The inference nodes' endpoints (`http://host:port`).
    pub inference: Vec<String>,
    pub clock: Arc<dyn Clock>,
    pub metrics: CoordinatorMetrics,
}

impl Coordinator {
    pub fn new(deps: CoordinatorDeps) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            source: deps.source,
            records: deps.records,
            pool: Arc::new(kserve::Pool::new(&deps.inference)?),
            clock: deps.clock,
            metrics: deps.metrics,
            sessions: Mutex::new(HashMap::new()),
            evolutions: Mutex::new(HashMap::new()),
        }))
    }

    /// A coordinator in the same process as its ingest node: its streams, its catalog and
    /// object store.
    pub fn embedded(
        ingest: &Arc<gbrain_ingest::Ingest>,
        inference: Vec<String>,
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
        let feed = self.source.subscribe(tenant, &spec.stream_id)?;
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
}
