//! `globalbrain.coordinator.v1.LoopService` over the coordinator's sessions.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use gbrain_common::auth::{Principal, Role};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_server::LoopService;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::Coordinator;
use crate::session::Session;

/// Starting and stopping sessions uses models: the inference roles.
const USE: [Role; 2] = [Role::Analyst, Role::Operator];
/// Feedback and outcomes also go to the application that streams (a submitter).
const FOLLOW: [Role; 3] = [Role::Submitter, Role::Analyst, Role::Operator];

fn principal<T>(req: &Request<T>, roles: &[Role], action: &str) -> Result<Principal, Status> {
    let p = Principal::from_request(req)?.clone();
    p.require_any(roles)?;
    tracing::info!(target: "audit", tenant = %p.tenant, token = %p.token_name, action, "access");
    Ok(p)
}

/// The gRPC face of a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct GrpcLoop {
    coordinator: Arc<Coordinator>,
}

impl GrpcLoop {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    fn session(&self, p: &Principal, id: &str) -> Result<Arc<Session>, Status> {
        if id.is_empty() {
            return Err(crate::Error::invalid("session_id", "is required").into());
        }
        self.coordinator
            .session(p.tenant.as_str(), id)
            .ok_or_else(|| Status::not_found(format!("no loop session {id}")))
    }
}

pub type FeedbackStream = Pin<Box<dyn Stream<Item = Result<pb::FeedbackMessage, Status>> + Send>>;

#[tonic::async_trait]
impl LoopService for GrpcLoop {
    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::LoopSession>, Status> {
        let p = principal(&request, &USE, "loop.start")?;
        let authorization = request
            .metadata()
            .get("authorization")
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authorization header"))?;
        let session = self
            .coordinator
            .start(p.tenant.as_str(), request.get_ref(), authorization)
            .await?;
        Ok(Response::new(session.describe()))
    }

    async fn stop_session(
        &self,
        request: Request<pb::StopSessionRequest>,
    ) -> Result<Response<pb::LoopSession>, Status> {
        let p = principal(&request, &USE, "loop.stop")?;
        let session = self.session(&p, &request.get_ref().session_id)?;
        session.stop.cancel();
        Ok(Response::new(session.describe()))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::LoopSession>, Status> {
        let p = principal(&request, &FOLLOW, "loop.get")?;
        let session = self.session(&p, &request.get_ref().session_id)?;
        Ok(Response::new(session.describe()))
    }

    type FeedbackStream = FeedbackStream;

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<Self::FeedbackStream>, Status> {
        let p = principal(&request, &FOLLOW, "loop.feedback")?;
        let session = self.session(&p, &request.get_ref().session_id)?;
        let done = session.done.clone();
        let stream = BroadcastStream::new(session.subscribe()).filter_map(|m| match m {
            Ok(m) => Some(Ok(m)),
            // A reader too slow for its session misses messages; the window numbers show
            // the gap.
            Err(_) => None,
        });
        // The stream ends with the session, once its last windows are sent.
        let stream = futures::StreamExt::take_until(stream, async move { done.cancelled().await });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let p = principal(&request, &FOLLOW, "loop.outcome")?;
        let r = request.get_ref();
        let session = self.session(&p, &r.session_id)?;
        if r.first_window == 0 || r.last_window < r.first_window {
            return Err(crate::Error::invalid(
                "first_window",
                "windows are numbered from 1, first_window <= last_window",
            )
            .into());
        }
        if r.label > 1 {
            return Err(crate::Error::invalid(
                "label",
                format!("{} is not a class of a two-class decoder (0 or 1)", r.label),
            )
            .into());
        }
        let (windows, correct) = session
            .report(r.first_window, r.last_window, r.label as u8)
            .await?;
        Ok(Response::new(pb::ReportOutcomeResponse {
            windows,
            correct,
        }))
    }

    async fn evolve(
        &self,
        request: Request<pb::EvolveRequest>,
    ) -> Result<Response<pb::Evolution>, Status> {
        // Refits are pushed to the model repository with these credentials.
        let p = principal(&request, &[Role::Operator], "loop.evolve")?;
        let authorization = request
            .metadata()
            .get("authorization")
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authorization header"))?;
        let e = self
            .coordinator
            .evolve(p.tenant.as_str(), request.get_ref(), authorization)?;
        Ok(Response::new(e.describe()))
    }

    async fn get_evolution(
        &self,
        request: Request<pb::GetEvolutionRequest>,
    ) -> Result<Response<pb::Evolution>, Status> {
        let p = principal(&request, &USE, "loop.evolution")?;
        let model = &request.get_ref().model;
        let e = self
            .coordinator
            .evolution(p.tenant.as_str(), model)
            .ok_or_else(|| Status::not_found(format!("model {model} does not evolve")))?;
        Ok(Response::new(e.describe()))
    }
}
