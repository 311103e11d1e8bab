//! `gbrain up` and `gbrain serve <role>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gbrain_catalog::Catalog;
use gbrain_cli::output::write_private;
use gbrain_common::auth::{Authenticator, generate_token};
use gbrain_common::clap_blocks::{
    AuthArgs, BallistaExecutorServeArgs, BallistaSchedulerServeArgs, ClientTlsArgs,
    CoordinatorArgs, CoordinatorServeArgs, InferenceArgs, InferenceServeArgs, IngestArgs,
    IngestServeArgs, LogArgs, QueryArgs, QueryServeArgs, ServerArgs,
};
use gbrain_common::clock::{Clock, SystemClock};
use gbrain_common::server::{Listeners, bind, cancel_on_signal, describe, start_process};
use gbrain_common::tenant::TenantId;
use gbrain_common::tls::ClientTls;
use gbrain_ingest::{Ingest, IngestConfig, IngestDeps, IngestMetrics, ServeConfig};
use gbrain_query::{Query, QueryConfig, QueryDeps, QueryMetrics};
use prometheus_client::registry::Registry;

use gbrain_cli::cluster::{Services, serve_cluster};

/// The tenant of the development token.
const DEV_TENANT: &str = "demo";

/// The embedded cluster: every service that exists, in this process, on one gRPC port, with
/// objects under `DIR/objects` and the catalog in `DIR/catalog.db`.
/// Everything `gbrain up` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where objects, the catalog and the development token live.
    #[arg(long, env = "GBRAIN_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
    /// TLS of the coordinator's connections to the inference service (with TLS on, to this
    /// process's own gRPC port: --tls-ca must verify its certificate for its address).
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let UpArgs {
        data_dir,
        server,
        auth,
        ingest,
        query,
        inference,
        coordinator: coordinator_args,
        client_tls,
        log,
    } = args;
    gbrain_common::telemetry::init(log.log_format, std::env::var("RUST_LOG").ok().as_deref());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    // TLS files are checked before anything is opened.
    let client_tls = ClientTls::from_args(&client_tls)?;
    let listeners = bind(&server).await?;
    let authenticator = match &auth.auth_file {
        Some(path) => Authenticator::from_file(path)?,
        None => {
            let (token, path) = dev_token(&data_dir)?;
            println!("development token for tenant '{DEV_TENANT}' (every role): {token}");
            println!("  saved in {} (mode 0600); use it with:", path.display());
            println!("  export GBRAIN_TOKEN=$(cat {})", path.display());
            Authenticator::single(&token, TenantId::new(DEV_TENANT)?)
        }
    };
    let store = gbrain_storage::store::open(
        &format!("file://{}", data_dir.join("objects").display()),
        &[],
    )?;
    let catalog = Catalog::connect(&format!(
        "sqlite://{}",
        data_dir.join("catalog.db").display()
    ))
    .await?;
    let auth = Arc::new(authenticator);
    auth.watch(gbrain_common::auth::AUTH_FILE_CHECK_EVERY)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut registry = Registry::default();
    let mut ingest_config = IngestConfig::from_args(&ingest);
    ingest_config
        .wal_dir
        .get_or_insert_with(|| data_dir.join("wal"));
    let ingest = Ingest::new(
        ingest_config,
        IngestDeps {
            store: Arc::clone(&store),
            catalog: catalog.clone(),
            auth: Arc::clone(&auth),
            clock: Arc::clone(&clock),
            metrics: IngestMetrics::register(&mut registry),
        },
    )
    .await?;
    let mut query_config = QueryConfig::from_args(&query);
    if query_config.spill_dir.is_none() {
        query_config.spill_dir = Some(data_dir.join("spill"));
    }
    let query = Query::new(
        query_config,
        QueryDeps {
            store: Arc::clone(&store),
            catalog,
            metrics: QueryMetrics::register(&mut registry),
        },
        clock,
    )?;
    let inference =
        if gbrain_inference::runtime::library_path(inference.ort_library.as_deref()).is_some() {
            Some(gbrain_inference::Inference::new(
                gbrain_inference::InferenceConfig::from_args(&inference),
                store,
                gbrain_inference::InferenceMetrics::register(&mut registry),
            )?)
        } else {
            println!(
                "inference: off: no ONNX Runtime library (pass --ort-library or set ORT_DYLIB_PATH \
             to libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel)"
            );
            None
        };
    // The coordinator decodes on the nodes named, or on this process's inference service,
    // over gRPC like any node.
    let endpoints = match (&inference, coordinator_args.inference_endpoints.is_empty()) {
        (_, false) => Ok(coordinator_args.inference_endpoints.clone()),
        (Some(_), true) => own_endpoint(&listeners, &client_tls),
        (None, true) => Err("no inference service to decode on".to_string()),
    };
    let coordinator = match endpoints {
        Ok(endpoints) => Some(gbrain_coordinator::Coordinator::embedded(
            &ingest,
            endpoints,
            client_tls,
            Arc::new(SystemClock),
            gbrain_coordinator::CoordinatorMetrics::register(&mut registry),
        )?),
        Err(why) => {
            println!("coordinator: off: {why}");
            None
        }
    };
    println!(
        "embedded cluster: {} (ingest, Flight SQL, snapshots and KServe v2 inference share \
         the gRPC port)",
        describe(&listeners)?
    );
    serve_cluster(
        Services {
            ingest,
            query,
            inference,
            coordinator,
        },
        auth,
        registry,
        listeners,
        cancel_on_signal(),
        Duration::from_secs(server.drain_seconds),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The endpoint of this process's own gRPC port for its coordinator: over a loopback address
/// when it listens on every address, and over TLS when the port speaks it, which needs the CA
/// to verify the port's certificate with (and a client certificate, when the port asks).
fn own_endpoint(listeners: &Listeners, tls: &ClientTls) -> Result<Vec<String>, String> {
    let mut addr = listeners.grpc.local_addr().map_err(|e| e.to_string())?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match &listeners.tls {
        None => Ok(vec![format!("http://{addr}")]),
        Some(_) if !tls.has_ca() => Err(format!(
            "the gRPC port speaks TLS and no --tls-ca (GBRAIN_TLS_CA) was given to verify its \
             certificate (for {}) with; or name the nodes with --inference-endpoints",
            addr.ip()
        )),
        Some(server) if server.mutual() && !tls.has_identity() => Err(
            "the gRPC port requires client certificates and no --tls-client-cert \
             (GBRAIN_TLS_CLIENT_CERT) was given to present"
                .to_string(),
        ),
        Some(_) => Ok(vec![format!("https://{addr}")]),
    }
}

/// The ingest service as its own process.
pub async fn ingest(args: IngestServeArgs) -> anyhow::Result<ExitCode> {
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    println!("ingest: {}", describe(&listeners)?);
    gbrain_ingest::run(config, listeners, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The query service as its own process.
pub async fn query(args: QueryServeArgs) -> anyhow::Result<ExitCode> {
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = gbrain_query::ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    println!(
        "query: {} (Flight SQL and snapshots)",
        describe(&listeners)?
    );
    gbrain_query::run(config, listeners, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// An inference node as its own process.
pub async fn inference(args: InferenceServeArgs) -> anyhow::Result<ExitCode> {
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = gbrain_inference::ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    println!(
        "inference: {} (KServe v2 and the model repository)",
        describe(&listeners)?
    );
    gbrain_inference::run(config, listeners, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The feedback-loop coordinator as its own process.
pub async fn coordinator(args: CoordinatorServeArgs) -> anyhow::Result<ExitCode> {
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let tls = ClientTls::from_args(&args.client_tls)?;
    let config = gbrain_coordinator::ServeConfig::from_args(&args, auth, aws, tls);
    let listeners = bind(&args.server).await?;
    println!(
        "coordinator: {} (streams from {}, decoding on {})",
        describe(&listeners)?,
        args.ingest_endpoint,
        args.coordinator.inference_endpoints.join(", ")
    );
    gbrain_coordinator::run(config, listeners, cancel_on_signal())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the development token, or creates it (mode 0600) on first start.
fn dev_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join("dev-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.trim().to_string();
        if !token.is_empty() {
            return Ok((token, path));
        }
    }
    let token = generate_token();
    write_private(&path, &token)?;
    Ok((token, path))
}

/// The host a Ballista role tells others to reach it at: `--advertise-host`, or the listen
/// address when it names one (listening on every address, others cannot guess which).
fn advertised_host(given: &Option<String>, listen: std::net::SocketAddr) -> anyhow::Result<String> {
    match given {
        Some(h) if !h.trim().is_empty() => Ok(h.trim().to_string()),
        _ if listen.ip().is_unspecified() => Err(anyhow::anyhow!(
            "--advertise-host (GBRAIN_ADVERTISE_HOST) is needed with --listen {listen}: the \
             address others reach this process at"
        )),
        _ => Ok(match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }),
    }
}

/// A Ballista scheduler as its own process: Ballista's scheduler with the project's plan codec.
pub async fn ballista_scheduler(args: BallistaSchedulerServeArgs) -> anyhow::Result<ExitCode> {
    gbrain_common::telemetry::init(
        args.log.log_format,
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let store = gbrain_storage::store::open(&args.store.object_store, &aws)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let host = advertised_host(&args.advertise_host, addr)?;
    println!("ballista-scheduler: grpc://{addr} (Ballista scheduler API, grpc.health.v1)");
    gbrain_query::distributed::run_scheduler(
        listener,
        (host, addr.port()),
        store,
        cancel_on_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A Ballista executor as its own process: Ballista's executor with the project's plan codec,
/// functions and object store, and grpc.health.v1 on `--listen`.
pub async fn ballista_executor(args: BallistaExecutorServeArgs) -> anyhow::Result<ExitCode> {
    gbrain_common::telemetry::init(
        args.log.log_format,
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let store = gbrain_storage::store::open(&args.store.object_store, &aws)?;
    let health = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = health.local_addr()?;
    let host = advertised_host(&args.advertise_host, addr)?;
    let scheduler = gbrain_query::scheduler_host_port(&args.scheduler)?;
    // Ballista binds "{host}:{port}": the listen address's IP, bracketed when IPv6.
    let bind_host = match addr.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let options = gbrain_query::distributed::ExecutorOptions {
        scheduler,
        bind_host,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        external_host: Some(host),
        concurrent_tasks: args.concurrent_tasks,
        work_dir: args.work_dir.clone(),
    };
    println!(
        "ballista-executor: grpc://{addr} (grpc.health.v1), Ballista flight port {}, task port {}",
        args.flight_port, args.grpc_port
    );
    gbrain_query::distributed::run_executor(options, store, health, cancel_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
