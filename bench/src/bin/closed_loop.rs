//! The closed loop's latency: window-to-feedback with 1, 16, 64 and 256 concurrent loop
//! sessions, each a synthetic subject (32 channels at 250 Hz, sent live at its own pace, a
//! chunk per 100 ms hop), 1 s windows, a small decoder (an LDA over 4 band-power features, as
//! ONNX). The embedded cluster runs in this process, as `gbrain up` runs it; the subjects run on
//! a runtime of their own, through `gbrain loop simulate`'s code. Prints the figures and the
//! target (p99 at most 10 ms at 64 sessions); asserts nothing.
//!
//! Run with `cargo xtask bench-loop` (release build, ONNX Runtime fetched).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gbrain_catalog::Catalog;
use gbrain_cli::cluster::{Services, serve_cluster};
use gbrain_cli::loop_sim;
use gbrain_common::auth::Authenticator;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_common::clock::{Clock, SystemClock};
use gbrain_ingest::{Ingest, IngestConfig, IngestDeps, IngestMetrics, Listeners};
use gbrain_proto::coordinator::v1::adaptation::Mode;
use gbrain_query::{Query, QueryConfig, QueryDeps, QueryMetrics};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-loop-token";

#[derive(Parser)]
struct Args {
    /// Seconds of signal per session at each point.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    sessions: Vec<usize>,
    /// A window's deadline.
    #[arg(long, default_value_t = 100.0)]
    deadline_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (endpoint, shutdown, handle) = server.block_on(start(dir.path()))?;
    let client = ClientArgs {
        server: endpoint,
        token: Some(TOKEN.to_string()),
        json: false,
        tls: Default::default(),
    };
    // The subjects run on their own runtime, so that their work does not queue behind the
    // cluster's on the same threads (both share this machine's cores all the same).
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "closed-loop benchmark: {cores} CPUs, release build; per session 32 channels at 250 Hz, \
         live, 1 s windows every 100 ms, LDA over 4 band powers; {} s per point",
        args.seconds
    );
    println!(
        "end to end = a window's last chunk sent to its feedback received (client); coordinator = \
         received by ingest to feedback sent\n"
    );
    let (model, _) = load.block_on(loop_sim::push_calibrated(&client, 7))?;
    println!(
        "{:>8} {:>8} {:>6} {:>26} {:>26} {:>20} {:>14}",
        "sessions",
        "windows",
        "errors",
        "end to end p50/p99/max ms",
        "coordinator p50/p99/max",
        "ack p50/p99 ms",
        "samples/s"
    );
    for &n in &args.sessions {
        let opts = loop_sim::Options {
            sessions: n,
            seconds: args.seconds,
            drift: 0.0,
            seed: 1,
            model: Some(model.clone()),
            adaptation: Mode::Unsupervised,
            rate: 0.01,
            realtime: true,
            deadline_ms: args.deadline_ms,
            evolve: None,
            coordinator: None,
        };
        let report = load.block_on(loop_sim::simulate(&client, &opts))?;
        let j = report.json();
        let ms = |k: &str, p: &str| j[k][p].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>8} {:>8} {:>6} {:>26} {:>26} {:>20} {:>14.0}",
            n,
            j["windows"],
            j["errors"],
            format!(
                "{:.2} / {:.2} / {:.2}",
                ms("end_to_end_ms", "p50"),
                ms("end_to_end_ms", "p99"),
                ms("end_to_end_ms", "max")
            ),
            format!(
                "{:.2} / {:.2} / {:.2}",
                ms("coordinator_ms", "p50"),
                ms("coordinator_ms", "p99"),
                ms("coordinator_ms", "max")
            ),
            format!("{:.2} / {:.2}", ms("ack_ms", "p50"), ms("ack_ms", "p99")),
            j["ingest_samples_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!("\ntarget: end-to-end p99 at most 10 ms at 64 sessions");
    shutdown.cancel();
    let _ = server.block_on(handle);
    Ok(())
}

/// The embedded cluster, as `gbrain up` builds it, on a port the OS picks.
async fn start(
    dir: &std::path::Path,
) -> anyhow::Result<(
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let store =
        gbrain_storage::store::open(&format!("file://{}", dir.join("objects").display()), &[])?;
    let catalog =
        Catalog::connect(&format!("sqlite://{}", dir.join("catalog.db").display())).await?;
    let auth = Arc::new(Authenticator::from_toml(&format!(
        "[[tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\ntenant = \"bench\"\nroles = [\"admin\"]\n"
    ))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut registry = Registry::default();
    let ingest = Ingest::new(
        IngestConfig {
            wal_dir: Some(dir.join("wal")),
            ..IngestConfig::default()
        },
        IngestDeps {
            store: Arc::clone(&store),
            catalog: catalog.clone(),
            auth: Arc::clone(&auth),
            clock: Arc::clone(&clock),
            metrics: IngestMetrics::register(&mut registry),
        },
    )
    .await?;
    let query = Query::new(
        QueryConfig::default(),
        QueryDeps {
            store: Arc::clone(&store),
            catalog,
            metrics: QueryMetrics::register(&mut registry),
        },
        Arc::clone(&clock),
    )?;
    let inference = gbrain_inference::Inference::new(
        gbrain_inference::InferenceConfig::default(),
        store,
        gbrain_inference::InferenceMetrics::register(&mut registry),
    )?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", grpc.local_addr()?);
    let coordinator = gbrain_coordinator::Coordinator::embedded(
        &ingest,
        vec![endpoint.clone()],
        gbrain_common::tls::ClientTls::default(),
        clock,
        gbrain_coordinator::CoordinatorMetrics::register(&mut registry),
    )?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(serve_cluster(
        Services {
            ingest,
            query,
            inference: Some(inference),
            coordinator: Some(coordinator),
        },
        auth,
        registry,
        Listeners::grpc(grpc),
        shutdown.clone(),
        Duration::ZERO,
    ));
    Ok((endpoint, shutdown, handle))
}
