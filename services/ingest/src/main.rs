//! `gbrain-ingest`: the ingest service as its own process. `gbrain serve ingest` is the same.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gbrain_common::auth::Authenticator;
use gbrain_common::clap_blocks::{
    AuthArgs, CatalogArgs, IngestArgs, LogArgs, ObjectStoreArgs, ServerArgs,
};
use gbrain_ingest::{IngestConfig, ServeConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "gbrain-ingest", version, about = "Global Brain ingest service")]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    store: ObjectStoreArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(flatten)]
    ingest: IngestArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gbrain_common::telemetry::init(
        args.log.log_format,
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let auth_file = args
        .auth
        .auth_file
        .context("--auth-file is required for a service process")?;
    let auth = Arc::new(Authenticator::from_file(&auth_file)?);
    let grpc = tokio::net::TcpListener::bind(args.server.listen).await?;
    let http = tokio::net::TcpListener::bind(args.server.http).await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        gbrain_common::server::shutdown_signal().await;
        signal.cancel();
    });
    let config = ServeConfig {
        ingest: IngestConfig::from_args(&args.ingest),
        object_store_url: args.store.object_store,
        object_store_options: gbrain_storage::store::aws_options(std::env::vars()),
        catalog_url: args.catalog.catalog,
        auth,
        drain_delay: Duration::from_secs(args.server.drain_seconds),
    };
    gbrain_ingest::run(config, grpc, Some(http), shutdown).await?;
    Ok(())
}
