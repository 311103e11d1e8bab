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
    /// None when no ONNX Runtime library was found.
    pub inference: Option<gbrain_inference::Inference>,
    /// The feedback-loop coordinator, decoding on `inference` (None without it).
    pub coordinator: Option<Arc<gbrain_coordinator::Coordinator>>,
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
    let flusher = gbrain_ingest::spawn_live_flusher(&services.ingest, shutdown.clone());
    let mut routes = tonic::service::Routes::new(services.ingest.grpc_service())
        .add_service(services.query.flight_service()?)
        .add_service(services.query.snapshot_service());
    let mut service_names = vec![
        gbrain_ingest::SERVICE_NAME,
        gbrain_query::FLIGHT_SERVICE_NAME,
        gbrain_query::snapshots::SERVICE_NAME,
    ];
    let mut descriptor_sets = vec![gbrain_proto::FILE_DESCRIPTOR_SET];
    let health = tonic_health::server::HealthReporter::new();
    let mut loader = None;
    if let Some(inference) = &services.inference {
        routes = routes
            .add_service(inference.service(shutdown.clone()))
            .add_service(inference.admin_service());
        service_names.push(gbrain_inference::admin::SERVICE_NAME);
        descriptor_sets.push(gbrain_proto::inference::FILE_DESCRIPTOR_SET);
        // The inference service reports SERVING once its models are loaded; the cluster as a
        // whole does not wait for it.
        loader = Some(inference.start(health.clone(), false, shutdown.clone()));
    }
    if let Some(coordinator) = &services.coordinator {
        routes = routes.add_service(coordinator.grpc_service());
        service_names.push(gbrain_coordinator::SERVICE_NAME);
    }
    serve(ServeArgs {
        routes,
        service_names,
        descriptor_sets,
        extra_method_paths: gbrain_query::flight_method_paths(),
        health,
        auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        listeners,
        shutdown,
        drain_delay,
    })
    .await?;
    if let Some(coordinator) = &services.coordinator {
        coordinator.drain(gbrain_coordinator::DRAIN_ROWS).await;
    }
    let _ = gc.await;
    if let Some(f) = flusher {
        let _ = f.await;
    }
    if let Some(loader) = loader {
        let _ = loader.await;
    }
    services.ingest.catalog().close().await;
    Ok(())
}
