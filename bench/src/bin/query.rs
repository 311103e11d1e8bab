//! Fused queries over neural and behavioural data, side by side: our Flight SQL server, DuckDB
//! and polars, on the same generated dataset. Prints the figures; asserts nothing.
//!
//! The dataset: `--recordings` recordings × `--channels` channels × `--rate` Hz × `--minutes`,
//! 1/f noise, with task events every ~2 s of two trial types (`left`, `right`) with reaction
//! times. It is generated reproducibly (fixed seeds) and ingested through the real pipeline;
//! the peers get the same samples and events as Parquet, hive-partitioned by recording and
//! sorted by channel and sample, the layout most natural to them.
//!
//! The queries:
//! 1. event-related average per trial type and channel over −0.2…0.8 s epochs;
//! 2. alpha (8–13 Hz) and beta (13–30 Hz) Welch band power per epoch (0…1 s) and channel;
//! 3. event counts and mean reaction time per recording;
//! 4. one channel of one recording over 60 s.
//!
//! Our server-side time runs the SQL in-process through the same engine the server uses; the
//! end-to-end time is ADBC's Python Flight SQL driver fetching an Arrow table. Their difference
//! is the Flight SQL transfer overhead.
//!
//! Run with `cargo xtask bench-query` (release build, the Python packages installed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Parser;
use gbrain_catalog::Catalog;
use gbrain_common::auth::Authenticator;
use gbrain_common::clock::SystemClock;
use gbrain_common::tenant::TenantId;
use gbrain_ingest::pipeline::{IngestRequest, Source};
use gbrain_ingest::{Ingest, IngestConfig, IngestDeps, IngestMetrics};
use gbrain_proto::ingest::v1::{AppendEventsRequest, Event, RecordingMetadata};
use gbrain_query::{QueryConfig, QueryDeps, QueryEngine, QueryMetrics};
use prometheus_client::registry::Registry;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

const TENANT: &str = "bench";
const TOKEN: &str = "bench-analyst-token";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    recordings: usize,
    #[arg(long, default_value_t = 32)]
    channels: usize,
    #[arg(long, default_value_t = 256)]
    rate: usize,
    #[arg(long, default_value_t = 10)]
    minutes: usize,
    /// Runs of each fast query (3 and 4); medians are reported.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Runs of each slow query (1 and 2).
    #[arg(long, default_value_t = 3)]
    slow_runs: usize,
    /// Where the dataset and the peers' Parquet go (kept between runs).
    #[arg(long, default_value = "target/bench-query")]
    dir: PathBuf,
}

/// The four queries in our SQL; query 4 reads 60 s from a sixth into the recording.
fn queries(recording: &str, channel: &str, seconds: usize) -> Vec<(&'static str, String)> {
    let from = seconds / 6;
    let to = from + 60.min(seconds / 3);
    vec![
        (
            "1 ERP per type and channel",
            "SELECT event_type, channel, t_rel, value, epochs FROM erp('left,right', -0.2, 0.8)"
                .to_string(),
        ),
        (
            "2 alpha/beta power per epoch",
            "SELECT recording_id, epoch, onset, event_type, channel, band, power \
             FROM epoch_band_power('left,right', 0, 1, 'alpha,beta')"
                .to_string(),
        ),
        (
            "3 events and mean RT per rec",
            "SELECT recording_id, count(*) AS events, avg(response_time) AS mean_rt \
             FROM events GROUP BY recording_id"
                .to_string(),
        ),
        (
            "4 one channel, 60 s",
            format!(
                "SELECT t, value FROM samples WHERE recording_id = '{recording}' \
                 AND channel = '{channel}' AND t BETWEEN {from} AND {to}"
            ),
        ),
    ]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

/// Task events of one recording: a cue every 2 s ± 0.3 s, left or right, with a reaction time.
fn task_events(seconds: usize, seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = 1.0;
    while t + 1.0 < seconds as f64 {
        let ty = if rng.random::<bool>() {
            "left"
        } else {
            "right"
        };
        out.push(Event {
            onset: Some((t * 1000.0f64).round() / 1000.0),
            duration: Some(0.1),
            r#type: ty.into(),
            value: String::new(),
            sample: None,
            response_time: Some(0.3 + 0.4 * rng.random::<f64>()),
            extra: Default::default(),
        });
        t += 2.0 + 0.6 * (rng.random::<f64>() - 0.5);
    }
    out
}

struct Dataset {
    data: PathBuf,
    peers: PathBuf,
}

async fn open_engine(data: &Path) -> anyhow::Result<(Arc<QueryEngine>, i64)> {
    let store =
        gbrain_storage::store::open(&format!("file://{}", data.join("objects").display()), &[])?;
    let catalog =
        Catalog::connect(&format!("sqlite://{}", data.join("catalog.db").display())).await?;
    let seq = catalog.current_seq().await?;
    let mut registry = Registry::default();
    let engine = QueryEngine::new(
        QueryConfig::default(),
        QueryDeps {
            store,
            catalog,
            metrics: QueryMetrics::register(&mut registry),
        },
    )?;
    Ok((engine, seq))
}

/// Generates and ingests the dataset, and writes the peers' Parquet, unless a previous run
/// with the same parameters left them.
async fn prepare(args: &Args) -> anyhow::Result<Dataset> {
    let key = format!(
        "r{}-c{}-{}hz-{}min",
        args.recordings, args.channels, args.rate, args.minutes
    );
    let root = args.dir.join(&key);
    let data = root.join("data");
    let peers = root.join("peers");
    let done = root.join(".complete");
    if done.exists() {
        println!("dataset: reusing {}", root.display());
        return Ok(Dataset { data, peers });
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&data)?;
    let seconds = args.minutes * 60;
    let store =
        gbrain_storage::store::open(&format!("file://{}", data.join("objects").display()), &[])?;
    let catalog =
        Catalog::connect(&format!("sqlite://{}", data.join("catalog.db").display())).await?;
    let mut registry = Registry::default();
    let ingest = Ingest::new(
        IngestConfig::default(),
        IngestDeps {
            store,
            catalog,
            auth: Arc::new(Authenticator::default()),
            clock: Arc::new(SystemClock),
            metrics: IngestMetrics::register(&mut registry),
        },
    )
    .await?;
    let tenant = TenantId::new(TENANT)?;
    let edf = root.join("tmp.edf");
    let started = Instant::now();
    for r in 0..args.recordings {
        gbrain_bench::synth::write_edf(
            &edf,
            args.channels,
            args.rate,
            seconds,
            1000 * (r as u64 + 1),
        )?;
        let size = std::fs::metadata(&edf)?.len();
        let outcome = ingest
            .ingest(IngestRequest {
                tenant: tenant.clone(),
                metadata: RecordingMetadata {
                    subject: format!("sub-{r:02}"),
                    task: "cue".into(),
                    ..RecordingMetadata::default()
                },
                source: Source::File(edf.clone()),
                source_bytes: size,
                source_sha256: None,
                upload_id: None,
            })
            .await?;
        ingest
            .append_events(
                &tenant,
                AppendEventsRequest {
                    recording_id: outcome.recording.recording_id.clone(),
                    events: task_events(seconds, 7 + r as u64),
                    source: "task".into(),
                    idempotency_key: String::new(),
                    events_tsv: None,
                },
            )
            .await?;
        eprint!("\ringested {}/{} recordings", r + 1, args.recordings);
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&edf);
    ingest.catalog().close().await;

    // The peers' copy, read back through the engine: the same values to the last bit.
    let (engine, seq) = open_engine(&data).await?;
    let tenant = TENANT;
    let (_, recs) = engine
        .collect(
            tenant,
            seq,
            "SELECT recording_id FROM recordings ORDER BY recording_id",
        )
        .await?;
    let ids: Vec<String> = recs
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &DataType::Utf8)
                .unwrap_or_else(|_| b.column(0).clone());
            let s = c
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .cloned();
            s.map(|s| {
                (0..s.len())
                    .map(|i| s.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        })
        .collect();
    let samples_schema = Arc::new(Schema::new(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("t", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    for (i, id) in ids.iter().enumerate() {
        let dir = peers.join("samples").join(format!("recording_id={id}"));
        std::fs::create_dir_all(&dir)?;
        let sql = format!(
            "SELECT CAST(channel AS VARCHAR) AS channel, sample_index, t, value FROM samples \
             WHERE recording_id = '{id}' ORDER BY channel, sample_index"
        );
        let (_, batches) = engine.collect(tenant, seq, &sql).await?;
        write_parquet(&dir.join("data.parquet"), &samples_schema, &batches)?;
        eprint!("\rwrote peers' Parquet {}/{}", i + 1, ids.len());
    }
    eprintln!();
    let (schema, events) = engine
        .collect(
            tenant,
            seq,
            "SELECT recording_id, onset, type, response_time FROM events ORDER BY recording_id, onset",
        )
        .await?;
    write_parquet(&peers.join("events.parquet"), &schema, &events)?;
    engine.catalog().close().await;
    std::fs::write(&done, "")?;
    Ok(Dataset { data, peers })
}

fn write_parquet(path: &Path, schema: &Arc<Schema>, batches: &[RecordBatch]) -> anyhow::Result<()> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(schema), Some(props))?;
    for b in batches {
        let cast: Vec<arrow::array::ArrayRef> = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<_, _>>()?;
        w.write(&RecordBatch::try_new(Arc::clone(schema), cast)?)?;
    }
    w.close()?;
    Ok(())
}

/// Our server-side times: the engine in-process, no transfer.
async fn server_side(
    engine: &Arc<QueryEngine>,
    seq: i64,
    sql: &str,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, usize)> {
    // One warm-up run, as for every peer.
    let (_, b) = engine.collect(TENANT, seq, sql).await?;
    let rows = b.iter().map(RecordBatch::num_rows).sum();
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let (_, b) = engine.collect(TENANT, seq, sql).await?;
        times.push(start.elapsed().as_secs_f64());
        drop(b);
    }
    Ok((times, rows))
}

fn python() -> PathBuf {
    std::env::var_os("GBRAIN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Object store URLs need an absolute path.
    args.dir = std::path::absolute(&args.dir)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let ds = prepare(&args).await?;
    let total = args.recordings * args.channels * args.rate * args.minutes * 60;
    println!(
        "query benchmark: {} recordings × {} channels × {} Hz × {} min = {:.1} M samples, {} CPUs",
        args.recordings,
        args.channels,
        args.rate,
        args.minutes,
        total as f64 / 1e6,
        cpus
    );

    // The Flight SQL server, as `gbrain serve query` runs it.
    let auth_file = args.dir.join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\ntenant = \"{TENANT}\"\nroles = [\"analyst\"]\n"
        ),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = gbrain_query::ServeConfig {
        query: QueryConfig::default(),
        object_store_url: format!(
            "file://{}",
            ds.data.join("objects").canonicalize()?.display()
        ),
        object_store_options: Vec::new(),
        catalog_url: format!("sqlite://{}", ds.data.join("catalog.db").display()),
        auth: Arc::new(Authenticator::from_file(&auth_file)?),
        drain_delay: Duration::ZERO,
    };
    let server = tokio::spawn(gbrain_query::run(
        config,
        gbrain_common::server::Listeners::grpc(listener),
        shutdown.clone(),
    ));

    let (engine, seq) = open_engine(&ds.data).await?;
    let (_, first) = engine
        .collect(TENANT, seq, "SELECT min(recording_id) FROM recordings")
        .await?;
    let recording = arrow::compute::cast(first[0].column(0), &DataType::Utf8)?
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .context("recording id")?
        .value(0)
        .to_string();
    let channel = "EEG 07";
    let qs = queries(&recording, channel, args.minutes * 60);

    let (select_1, _) = server_side(&engine, seq, "SELECT 1", args.runs).await?;
    let mut ours = Vec::new();
    for (i, (name, sql)) in qs.iter().enumerate() {
        let runs = if i < 2 { args.slow_runs } else { args.runs };
        let (t, rows) = server_side(&engine, seq, sql, runs).await?;
        eprintln!(
            "ours server-side {name}: median {:.4} s, {rows} rows",
            median(&t)
        );
        ours.push((t, rows));
    }

    // End to end through Flight SQL with a Rust client (arrow-flight, as `gbrain sql` uses):
    // GetFlightInfo, then DoGet, over loopback.
    let mut client = gbrain_cli::sql::connect(
        &gbrain_common::clap_blocks::ClientArgs {
            server: format!("http://{addr}"),
            token: Some(TOKEN.to_string()),
            json: false,
            tls: Default::default(),
        },
        None,
    )
    .await?;
    let mut flight_times = Vec::new();
    for (i, sql) in std::iter::once("SELECT 1")
        .chain(qs.iter().map(|(_, s)| s.as_str()))
        .enumerate()
    {
        let runs = if (1..=2).contains(&i) {
            args.slow_runs
        } else {
            args.runs
        };
        gbrain_cli::sql::collect(&mut client, sql).await?;
        let mut t = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let r = gbrain_cli::sql::collect(&mut client, sql).await?;
            t.push(start.elapsed().as_secs_f64());
            drop(r);
        }
        flight_times.push(t);
    }
    drop(client);

    let spec = json!({
        "flight": addr.to_string(),
        "token": TOKEN,
        "peers": ds.peers.canonicalize()?,
        "rate": args.rate,
        "recording": recording,
        "channel": channel,
        "runs": args.runs,
        "slow_runs": args.slow_runs,
        "ours_sql": qs.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(),
        "q4_range": [args.minutes * 60 / 6, args.minutes * 60 / 6 + 60.min(args.minutes * 60 / 3)],
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/query_peers.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(spec.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "the peers' script failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let peers: Value = serde_json::from_slice(&out.stdout).context("peers' report")?;
    shutdown.cancel();
    let _ = server.await;

    let times = |system: &str, q: usize| -> Vec<f64> {
        peers["times"][system][q]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    println!();
    println!(
        "median seconds ({} runs of queries 1-2, {} of 3-4, after one warm-up run each)",
        args.slow_runs, args.runs
    );
    println!(
        "ours srv: the engine in-process. e2e Flight: a Rust Flight SQL client (GetFlightInfo + \
         DoGet over loopback); transfer = e2e Flight - srv. e2e ADBC: ADBC's Python driver, \
         fetch_arrow_table."
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8}",
        "query",
        "ours srv",
        "e2e Fl.",
        "transfer",
        "e2e ADBC",
        "DuckDB",
        "polars",
        "srv/duck",
        "Fl./duck",
        "ADBC/dk",
        "Fl./pol"
    );
    let fixed: Vec<f64> = peers["times"]["ours_select_1"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    println!(
        "{:<30} {:>9.4} {:>9.4} {:>9.4} {:>9.4}   (the fixed cost of any query)",
        "0 SELECT 1",
        median(&select_1),
        median(&flight_times[0]),
        median(&flight_times[0]) - median(&select_1),
        median(&fixed),
    );
    for (q, (name, _)) in qs.iter().enumerate() {
        let srv = median(&ours[q].0);
        let fl = median(&flight_times[q + 1]);
        let adbc = median(&times("ours", q));
        let duck = median(&times("duckdb", q));
        let pol = median(&times("polars", q));
        println!(
            "{:<30} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} | {:>7.3}x {:>7.3}x {:>7.3}x {:>7.3}x",
            name,
            srv,
            fl,
            fl - srv,
            adbc,
            duck,
            pol,
            srv / duck,
            fl / duck,
            adbc / duck,
            fl / pol
        );
    }
    println!();
    println!(
        "targets: queries 1-2 end to end at most 0.2x DuckDB; queries 3-4 server-side at most 1x \
         DuckDB and end to end at most 2x (end to end: the Flight SQL client; ADBC shown beside)"
    );
    for (q, (name, _)) in qs.iter().enumerate() {
        let srv = median(&ours[q].0);
        let e2e = median(&flight_times[q + 1]);
        let duck = median(&times("duckdb", q));
        let met = if q < 2 {
            e2e <= 0.2 * duck
        } else {
            srv <= duck && e2e <= 2.0 * duck
        };
        println!("  {name}: {}", if met { "met" } else { "NOT met" });
    }
    println!();
    println!(
        "rows: ours {:?}",
        ours.iter().map(|o| o.1).collect::<Vec<_>>()
    );
    println!("checks: {}", peers["checks"]);
    println!(
        "every time (s): ours server {:?}",
        ours.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    println!("                ours Flight (SELECT 1, then 1-4) {flight_times:?}");
    println!("                peers {}", peers["times"]);
    Ok(())
}
