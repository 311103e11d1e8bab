//! `gbrain-ingest`: the ingest service as its own process. `gbrain serve ingest` is the same.

use clap::Parser;
use gbrain_common::clap_blocks::IngestServeArgs;
use gbrain_common::server::{bind, cancel_on_signal, start_process};
use gbrain_ingest::ServeConfig;

#[derive(Debug, Parser)]
#[command(name = "gbrain-ingest", version, about = "Global Brain ingest service")]
struct Args {
    #[command(flatten)]
    serve: IngestServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().serve;
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    gbrain_ingest::run(config, listeners, cancel_on_signal()).await?;
    Ok(())
}
