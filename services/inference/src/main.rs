//! `gbrain-inference`: an inference node as its own process. `gbrain serve inference` is the
//! same.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gbrain_common::auth::Authenticator;
use gbrain_common::clap_blocks::InferenceServeArgs;
use gbrain_common::server::{bind, cancel_on_signal};
use gbrain_inference::ServeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "gbrain-inference",
    version,
    about = "Global Brain inference node (KServe v2 gRPC, ONNX Runtime)"
)]
struct Args {
    #[command(flatten)]
    serve: InferenceServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().serve;
    let rust_log = std::env::var("RUST_LOG").ok();
    gbrain_common::telemetry::init(args.log.log_format, rust_log.as_deref());
    let auth_file = args
        .auth
        .auth_file
        .clone()
        .context("--auth-file is required")?;
    let auth = Arc::new(Authenticator::from_file(&auth_file)?);
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = ServeConfig::from_args(&args, auth, aws);
    let (grpc, http) = bind(&args.server).await?;
    gbrain_inference::run(config, grpc, Some(http), cancel_on_signal()).await?;
    Ok(())
}
