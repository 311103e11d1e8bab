//! `gbrain-inference`: an inference node as its own process. `gbrain serve inference` is the
//! same.

use clap::Parser;
use gbrain_common::clap_blocks::InferenceServeArgs;
use gbrain_common::server::{bind, cancel_on_signal, start_process};
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
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    gbrain_inference::run(config, listeners, cancel_on_signal()).await?;
    Ok(())
}
