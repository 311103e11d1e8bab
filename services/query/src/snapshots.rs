//! `globalbrain.query.v1.SnapshotService`: named snapshots of a tenant's catalog.

use std::sync::Arc;

use gbrain_common::auth::{Principal, Role};
use gbrain_common::clock::Clock;
use gbrain_proto::query::v1::snapshot_service_server::{SnapshotService, SnapshotServiceServer};
use gbrain_proto::query::v1::{
    CreateSnapshotRequest, DeleteSnapshotRequest, DeleteSnapshotResponse, ListSnapshotsRequest,
    ListSnapshotsResponse, Snapshot,
};
use tonic::{Request, Response, Status};

use crate::context::SNAPSHOT_PREFIX;
use crate::engine::{QueryEngine, check_snapshot_name};
use crate::error::Error;

pub const SERVICE_NAME: &str = "globalbrain.query.v1.SnapshotService";

pub struct Snapshots {
    engine: Arc<QueryEngine>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

impl Snapshots {
    pub fn new(engine: Arc<QueryEngine>, clock: Arc<dyn Clock>) -> Self {
        Self { engine, clock }
    }

    pub fn into_server(self) -> SnapshotServiceServer<Self> {
        SnapshotServiceServer::new(self)
    }
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn snapshot(name: String, seq: i64, created_ns: i64) -> Snapshot {
    Snapshot {
        schema: format!("{SNAPSHOT_PREFIX}{name}"),
        name,
        commit: seq,
        created_at: rfc3339(created_ns),
    }
}

fn analyst<T>(request: &Request<T>) -> Result<Principal, Status> {
    let p = Principal::from_request(request)?.clone();
    p.require(Role::Analyst)?;
    Ok(p)
}

#[tonic::async_trait]
impl SnapshotService for Snapshots {
    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let p = analyst(&request)?;
        let name = request.into_inner().name;
        check_snapshot_name(&name)?;
        let now = self.clock.now_ns();
        let seq = self
            .engine
            .catalog()
            .create_snapshot(p.tenant.as_str(), &name, now)
            .await
            .map_err(Error::from)?;
        tracing::info!(token = %p.token_name, snapshot = %name, commit = seq, "snapshot created");
        Ok(Response::new(snapshot(name, seq, now)))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let p = analyst(&request)?;
        let rows = self
            .engine
            .catalog()
            .snapshots(p.tenant.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(ListSnapshotsResponse {
            snapshots: rows
                .into_iter()
                .map(|(name, seq, created)| snapshot(name, seq, created))
                .collect(),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let p = analyst(&request)?;
        let name = request.into_inner().name;
        check_snapshot_name(&name)?;
        let deleted = self
            .engine
            .catalog()
            .delete_snapshot(p.tenant.as_str(), &name)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(DeleteSnapshotResponse { deleted }))
    }
}
