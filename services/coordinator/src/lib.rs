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
//! - [`service`]: the gRPC service `globalbrain.coordinator.v1.LoopService`.
//!
//! Not here yet: predictions and outcomes stored as tables, recalibration pushed as model
//! versions with lineage, shadow and canary promotion (see docs/ARCHITECTURE.md, "Feedback
//! loop").

pub mod decoder;
pub mod dsp;
mod error;
pub mod kserve;
mod metrics;
pub mod offline;
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
    pool: Arc<kserve::Pool>,
    clock: Arc<dyn Clock>,
    metrics: CoordinatorMetrics,
    sessions: Mutex<HashMap<String, Arc<session::Session>>>,
}

impl Coordinator {
    pub fn new(
        source: Arc<dyn SampleSource>,
        inference: &[String],
        clock: Arc<dyn Clock>,
        metrics: CoordinatorMetrics,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            source,
            pool: Arc::new(kserve::Pool::new(inference)?),
            clock,
            metrics,
            sessions: Mutex::new(HashMap::new()),
        }))
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
        let session = Arc::new(session::Session::new(
            uuid::Uuid::new_v4().to_string(),
            tenant.to_string(),
            feed.recording_id.clone(),
            spec,
            authorization,
            self.metrics.clone(),
        ));
        self.sessions()
            .insert(session.id.clone(), Arc::clone(&session));
        tracing::info!(
            tenant, session = %session.id, stream = %session.spec.stream_id,
            model = %session.spec.model, "loop session started"
        );
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
