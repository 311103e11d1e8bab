//! The embedded cluster: every service on one gRPC port, in one process. `gbrain up` and the
//! integration tests' sandbox both serve through here, so tests run what users run.

use std::sync::Arc;
use std::time::Duration;

use gbrain_common::auth::Authenticator;
use gbrain_common::metrics::GrpcMetrics;
use gbrain_common::server::{ServeArgs, serve};
use gbrain_ingest::{Ingest, Listeners};
use gbrain_query::Query;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The services to serve together.
pub struct Services {
    pub ingest: Arc<Ingest>,
    pub query: Query,
}

/// Serves `services` until `shutdown`, then drains and closes the catalog.
pub async fn serve_cluster(
    services: Services,
    auth: Arc<Authenticator>,
    mut registry: Registry,
    listeners: Listeners,
    shutdown: CancellationToken,
    drain_delay: Duration,
) -> anyhow::Result<()> {
    let grpc_metrics = GrpcMetrics::register(&mut registry);
    let gc = gbrain_ingest::spawn_gc(&services.ingest, shutdown.clone());
    let routes = tonic::service::Routes::new(services.ingest.grpc_service())
        .add_service(services.query.flight_service()?)
        .add_service(services.query.snapshot_service());
    serve(ServeArgs {
        routes,
        service_names: vec![
            gbrain_ingest::SERVICE_NAME,
            gbrain_query::FLIGHT_SERVICE_NAME,
            gbrain_query::snapshots::SERVICE_NAME,
        ],
        descriptor_sets: vec![gbrain_proto::FILE_DESCRIPTOR_SET],
        extra_method_paths: gbrain_query::flight_method_paths(),
        health: tonic_health::server::HealthReporter::new(),
        auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        grpc_listener: listeners.grpc,
        http_listener: listeners.http,
        shutdown,
        drain_delay,
    })
    .await?;
    let _ = gc.await;
    services.ingest.catalog().close().await;
    Ok(())
}
