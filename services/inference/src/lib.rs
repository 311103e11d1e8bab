//! Inference nodes: ONNX Runtime behind KServe v2 / Open Inference Protocol gRPC.
//!
//! Models come from each tenant's repository on the object store ([`repository`]), configured
//! by their `config.json` ([`config`]). [`models`] loads and unloads versions as the repository
//! changes or operators ask; a loaded version ([`model`]) holds its ONNX Runtime sessions and,
//! when configured, a dynamic batcher. [`service`] speaks `inference.GRPCInferenceService`;
//! [`tensor`] converts between its messages and ONNX Runtime values; [`admin`] pushes, lists and
//! removes models. The ONNX Runtime library is
//! loaded at run time ([`runtime`]).

pub mod admin;
pub mod config;
mod error;
pub mod metrics;
pub mod model;
pub mod models;
pub mod onnx;
pub mod repository;
pub mod runtime;
pub mod service;
pub mod tensor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gbrain_common::auth::Authenticator;
use gbrain_common::clap_blocks::{InferenceArgs, InferenceServeArgs};
use gbrain_common::metrics::GrpcMetrics;
use gbrain_common::server::{Listeners, ServeArgs, serve};
use object_store::ObjectStore;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use error::{Error, Result};
pub use metrics::InferenceMetrics;
pub use service::SERVICE_NAME;

#[derive(Clone, Debug, Default)]
pub struct InferenceConfig {
    /// The ONNX Runtime library; ORT_DYLIB_PATH when unset.
    pub ort_library: Option<PathBuf>,
    /// How often the repository is scanned; None for start-up and explicit loads only.
    pub poll: Option<Duration>,
}

impl InferenceConfig {
    pub fn from_args(args: &InferenceArgs) -> Self {
        Self {
            ort_library: args.ort_library.clone(),
            poll: (args.model_poll_seconds > 0)
                .then(|| Duration::from_secs(args.model_poll_seconds)),
        }
    }
}

/// The inference service's parts, for its own process or the embedded cluster.
#[derive(Debug)]
pub struct Inference {
    pub models: Arc<models::Models>,
    poll: Option<Duration>,
}

impl Inference {
    /// Loads ONNX Runtime; fails with a clear message when the library is missing or too old.
    pub fn new(
        config: InferenceConfig,
        store: Arc<dyn ObjectStore>,
        metrics: InferenceMetrics,
    ) -> Result<Self> {
        let env = runtime::environment(config.ort_library.as_deref())?;
        Ok(Self {
            models: Arc::new(models::Models::new(
                env,
                repository::Repository::new(store),
                metrics,
            )),
            poll: config.poll,
        })
    }

    pub fn service(
        &self,
        draining: CancellationToken,
    ) -> gbrain_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer<
        service::InferenceService,
    > {
        service::InferenceService::new(Arc::clone(&self.models), draining).into_server()
    }

    /// `globalbrain.models.v1.ModelRepositoryService`.
    pub fn admin_service(
        &self,
    ) -> gbrain_proto::models::v1::model_repository_service_server::ModelRepositoryServiceServer<
        admin::Admin,
    > {
        admin::Admin::new(Arc::clone(&self.models)).into_server()
    }

    /// Loads every model the repository holds, reports the service SERVING (and `""` too when
    /// `overall`), then keeps polling until `shutdown`, when it reports NOT_SERVING.
    pub fn start(
        &self,
        health: HealthReporter,
        overall: bool,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let models = Arc::clone(&self.models);
        let poll = self.poll;
        tokio::spawn(async move {
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            if overall {
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
            if let Err(e) = models.poll().await {
                tracing::error!(error = %e, "the model repository cannot be read");
            }
            models.set_ready(true);
            if !shutdown.is_cancelled() {
                health
                    .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                    .await;
                if overall {
                    health.set_service_status("", ServingStatus::Serving).await;
                }
                tracing::info!("inference ready");
            }
            loop {
                let tick = async {
                    match poll {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tick => {
                        if let Err(e) = models.poll().await {
                            tracing::warn!(error = %e, "polling the model repository failed");
                        }
                    }
                }
            }
            models.set_ready(false);
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
        })
    }
}

#[derive(Debug)]
pub struct ServeConfig {
    pub inference: InferenceConfig,
    pub object_store_url: String,
    pub object_store_options: Vec<(String, String)>,
    pub auth: Arc<Authenticator>,
    pub drain_delay: Duration,
}

impl ServeConfig {
    pub fn from_args(
        args: &InferenceServeArgs,
        auth: Arc<Authenticator>,
        object_store_options: Vec<(String, String)>,
    ) -> Self {
        Self {
            inference: InferenceConfig::from_args(&args.inference),
            object_store_url: args.store.object_store.clone(),
            object_store_options,
            auth,
            drain_delay: Duration::from_secs(args.server.drain_seconds),
        }
    }
}

/// Serves inference until `shutdown`.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let store: Arc<dyn ObjectStore> =
        gbrain_storage::store::open(&config.object_store_url, &config.object_store_options)
            .map_err(|e| Error::Startup(e.to_string()))?;
    let mut registry = Registry::default();
    let inference = Inference::new(
        config.inference,
        store,
        InferenceMetrics::register(&mut registry),
    )?;
    let health = HealthReporter::new();
    let loader = inference.start(health.clone(), true, shutdown.clone());
    let grpc_metrics = GrpcMetrics::register(&mut registry);
    serve(ServeArgs {
        routes: tonic::service::Routes::new(inference.service(shutdown.clone()))
            .add_service(inference.admin_service()),
        service_names: vec![admin::SERVICE_NAME],
        descriptor_sets: vec![gbrain_proto::inference::FILE_DESCRIPTOR_SET],
        extra_method_paths: Vec::new(),
        health,
        auth: config.auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        listeners,
        shutdown,
        drain_delay: config.drain_delay,
    })
    .await
    .map_err(|e| Error::Startup(e.to_string()))?;
    let _ = loader.await;
    Ok(())
}
