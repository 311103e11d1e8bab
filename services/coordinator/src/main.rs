//! `gbrain-coordinator`: the feedback-loop coordinator as its own process. `gbrain serve
//! coordinator` is the same.

use clap::Parser;
use gbrain_common::clap_blocks::CoordinatorServeArgs;
use gbrain_common::server::{bind, cancel_on_signal, start_process};
use gbrain_common::tls::ClientTls;
use gbrain_coordinator::ServeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "gbrain-coordinator",
    version,
    about = "Global Brain feedback-loop coordinator"
)]
struct Args {
    #[command(flatten)]
    serve: CoordinatorServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().serve;
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let tls = ClientTls::from_args(&args.client_tls)?;
    let config = ServeConfig::from_args(&args, auth, aws, tls);
    let listeners = bind(&args.server).await?;
    gbrain_coordinator::run(config, listeners, cancel_on_signal())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}
