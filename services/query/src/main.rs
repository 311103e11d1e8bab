//! `gbrain-query`: the query service as its own process. `gbrain serve query` is the same.

use clap::Parser;
use gbrain_common::clap_blocks::QueryServeArgs;
use gbrain_common::server::{bind, cancel_on_signal, start_process};
use gbrain_query::ServeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "gbrain-query",
    version,
    about = "Global Brain query service (Flight SQL)"
)]
struct Args {
    #[command(flatten)]
    serve: QueryServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().serve;
    let auth = start_process(&args.log, &args.auth)?;
    let aws = gbrain_storage::store::aws_options(std::env::vars());
    let config = ServeConfig::from_args(&args, auth, aws);
    let listeners = bind(&args.server).await?;
    gbrain_query::run(config, listeners, cancel_on_signal()).await?;
    Ok(())
}
