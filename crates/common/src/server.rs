//! Serving gRPC: the services, plus health, reflection, metrics and authentication, with
//! graceful shutdown; TLS or mutual TLS when configured, with a plaintext port for health
//! probes; and the HTTP endpoint for Prometheus.
//!
//! Shutdown runs in the order operators rely on: every health status goes to NOT_SERVING, the
//! drain delay passes so that load balancers stop sending work, then the listener closes and
//! in-flight calls finish.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::auth::{AuthLayer, Authenticator};
use crate::metrics::{GrpcMetrics, MetricsLayer};
use crate::tls::ServerTls;
use crate::{Error, Result};

/// Largest gRPC message a server decodes. Upload chunks are far smaller; sidecars ride in the
/// first upload message and may be a few MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 flow-control window of one stream, for servers and clients.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 flow-control window of one connection, for servers and clients.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Everything [`serve`] needs, built by the caller.
pub struct ServeArgs {
    /// The application services.
    pub routes: Routes,
    /// Names of the services in `routes`, for health and readiness.
    pub service_names: Vec<&'static str>,
    /// Encoded file descriptor sets of the services, for reflection.
    pub descriptor_sets: Vec<&'static [u8]>,
    /// Paths (`/package.Service/Method`) of served methods whose descriptors are not in
    /// `descriptor_sets`, so that metrics label them by name.
    pub extra_method_paths: Vec<String>,
    pub health: HealthReporter,
    pub auth: Arc<Authenticator>,
    pub metrics: GrpcMetrics,
    pub registry: Arc<Registry>,
    pub listeners: Listeners,
    pub shutdown: CancellationToken,
    pub drain_delay: Duration,
}

/// Where a server listens, and how its gRPC port speaks.
#[derive(Debug)]
pub struct Listeners {
    /// The services, health and reflection.
    pub grpc: TcpListener,
    /// `/metrics` and `/healthz`.
    pub http: Option<TcpListener>,
    /// `grpc.health.v1` alone, in plaintext and without a token, for probes that cannot speak
    /// TLS (Kubernetes' gRPC probes). It reports what the gRPC port reports.
    pub health: Option<TcpListener>,
    /// TLS of the gRPC port; None: plaintext.
    pub tls: Option<ServerTls>,
}

impl Listeners {
    /// A plaintext gRPC port and nothing else.
    pub fn grpc(grpc: TcpListener) -> Self {
        Self {
            grpc,
            http: None,
            health: None,
            tls: None,
        }
    }
}

/// Serves until `shutdown` is cancelled, then drains.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        routes,
        service_names,
        descriptor_sets,
        extra_method_paths,
        health,
        auth,
        metrics,
        registry,
        listeners,
        shutdown,
        drain_delay,
    } = args;
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        health: health_listener,
        tls,
    } = listeners;

    for name in &service_names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(health.clone()),
    );

    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in &descriptor_sets {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection_v1
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection_v1alpha
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut all_sets = vec![
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    all_sets.extend(descriptor_sets.iter().copied());
    let mut known = crate::metrics::method_paths(&all_sets);
    known.extend(extra_method_paths);

    // TLS first: a configuration that does not build fails before anything is spawned.
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.config())?;
    }

    let http = http_listener
        .map(|listener| tokio::spawn(serve_http(listener, registry, shutdown.clone())));

    // The plaintext health port answers until the main server has stopped, so that probes
    // see NOT_SERVING through the drain.
    let health_stop = CancellationToken::new();
    let health_port = match health_listener {
        Some(listener) => {
            tracing::info!(
                addr = %listener.local_addr()?,
                "grpc health listening (plaintext, grpc.health.v1 only)"
            );
            let service = tonic_health::pb::health_server::HealthServer::new(
                HealthService::from_health_reporter(health.clone()),
            );
            let stop = health_stop.clone();
            Some(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        stop.cancelled_owned(),
                    )
                    .await
            }))
        }
        None => None,
    };

    let local = grpc_listener.local_addr()?;
    tracing::info!(
        addr = %local,
        services = ?service_names,
        tls = tls.as_ref().map_or("off", ServerTls::mode),
        "grpc server listening"
    );
    let signal = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: reporting NOT_SERVING");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for name in &service_names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            tokio::time::sleep(drain_delay).await;
            tracing::info!("closing the listener and draining in-flight calls");
        }
    };
    let served = builder
        // Uploads stream gigabytes: HTTP/2's default 64 KiB windows would cap them at one
        // window per round trip.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .layer(MetricsLayer::new(metrics, known))
        .layer(AuthLayer::new(auth))
        .add_routes(routes)
        // A listener handed in does not get the builder's TCP settings: set them here, or
        // every small response waits out the client's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            signal,
        )
        .await;
    health_stop.cancel();
    if let Some(port) = health_port {
        match port.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "grpc health port failed"),
            Err(e) => tracing::warn!(error = %e, "grpc health port panicked"),
        }
    }
    served?;
    if let Some(http) = http {
        // The HTTP server stops on the same token; a panic there is not worth a second one.
        let _ = http.await;
    }
    tracing::info!("grpc server stopped");
    Ok(())
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` until `shutdown` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (
                            http::StatusCode::OK,
                            [(
                                http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "encoding metrics failed");
                            (
                                http::StatusCode::INTERNAL_SERVER_ERROR,
                                [(http::header::CONTENT_TYPE, "text/plain")],
                                String::from("encoding metrics failed"),
                            )
                        }
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!(addr = %listener.local_addr()?, "http server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// What every service process does first: logging (level from RUST_LOG, format from the
/// flags) and the tokens of its auth file, which a service process cannot run without (and
/// watches, so that rotated tokens take effect without a restart).
pub fn start_process(
    log: &crate::clap_blocks::LogArgs,
    auth: &crate::clap_blocks::AuthArgs,
) -> Result<Arc<Authenticator>> {
    crate::telemetry::init(log.log_format, std::env::var("RUST_LOG").ok().as_deref());
    let path = auth.auth_file.as_deref().ok_or_else(|| {
        Error::Config("--auth-file (or GBRAIN_AUTH_FILE) is required for a service process".into())
    })?;
    let auth = Arc::new(Authenticator::from_file(path)?);
    // Rotated tokens take effect without a restart.
    auth.watch(crate::auth::AUTH_FILE_CHECK_EVERY)
        .map_err(|e| Error::Config(format!("watching the auth file: {e}")))?;
    Ok(auth)
}

/// Binds the listeners of a server process (gRPC, HTTP, and the plaintext health port when
/// asked for), with the gRPC port's TLS loaded from the files the flags name.
pub async fn bind(server: &crate::clap_blocks::ServerArgs) -> Result<Listeners> {
    let tls = ServerTls::from_args(&server.tls)?;
    let grpc = TcpListener::bind(server.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {} for gRPC: {e}", server.listen)))?;
    let http = TcpListener::bind(server.http)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {} for HTTP: {e}", server.http)))?;
    let health =
        match server.health_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!("cannot listen on {addr} for gRPC health: {e}"))
            })?),
            None => None,
        };
    Ok(Listeners {
        grpc,
        http: Some(http),
        health,
        tls,
    })
}

/// How a process reports its listeners on stdout, which tests and scripts read: `gRPC on
/// ADDR, metrics on http://ADDR/metrics`, then `, health on ADDR` and `, TLS` or
/// `, mutual TLS` when they apply.
pub fn describe(listeners: &Listeners) -> Result<String> {
    let mut text = format!("gRPC on {}", listeners.grpc.local_addr()?);
    if let Some(http) = &listeners.http {
        text.push_str(&format!(
            ", metrics on http://{}/metrics",
            http.local_addr()?
        ));
    }
    if let Some(health) = &listeners.health {
        text.push_str(&format!(", health on {}", health.local_addr()?));
    }
    match &listeners.tls {
        Some(tls) if tls.mutual() => text.push_str(", mutual TLS"),
        Some(_) => text.push_str(", TLS"),
        None => {}
    }
    Ok(text)
}

/// A token cancelled on SIGTERM or SIGINT, for binaries.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let signal = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    token
}

/// Waits for SIGTERM or SIGINT (Ctrl-C), for binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
