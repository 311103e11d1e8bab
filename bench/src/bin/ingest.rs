//! Ingest throughput and storage: EDF to a committed recording, side by side with the Python
//! pipelines a data scientist would otherwise write (MNE, and a hand-written numpy decode with
//! pyarrow zstd Parquet), on a generated 64-channel 512 Hz recording of 1/f noise and on the
//! real files. Prints the figures; asserts nothing.
//!
//! Run with `cargo xtask bench` (release build, the Python packages installed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use gbrain_catalog::Catalog;
use gbrain_common::auth::Authenticator;
use gbrain_common::clock::SystemClock;
use gbrain_common::tenant::TenantId;
use gbrain_ingest::pipeline::{IngestRequest, Source};
use gbrain_ingest::{Ingest, IngestConfig, IngestDeps, IngestMetrics};
use gbrain_proto::ingest::v1::RecordingMetadata;
use prometheus_client::registry::Registry;

#[derive(Parser)]
struct Args {
    /// Minutes of the generated recording.
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    /// Runs of each pipeline; the best and the median are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where generated files and outputs go.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
}

struct Row {
    name: String,
    samples: u64,
    source_bytes: u64,
    gbrain: Vec<f64>,
    grpc: Vec<f64>,
    stored_bytes: u64,
    mne: Vec<f64>,
    numpy: Vec<f64>,
    pyarrow_zstd_bytes: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// A 64-channel EDF+C of 1/f noise: about 25 uV standard deviation at 0.1 uV per bit.
fn generate(path: &Path, minutes: u32) -> anyhow::Result<()> {
    gbrain_bench::synth::write_edf(path, 64, 512, minutes as usize * 60, 1)
}

async fn gbrain_once(path: &Path, work: &Path, run: usize) -> anyhow::Result<(f64, u64)> {
    let dir = work.join(format!("gbrain-run-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let store =
        gbrain_storage::store::open(&format!("file://{}", dir.join("objects").display()), &[])?;
    let catalog =
        Catalog::connect(&format!("sqlite://{}", dir.join("catalog.db").display())).await?;
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
    let size = std::fs::metadata(path)?.len();
    let start = Instant::now();
    let outcome = ingest
        .ingest(IngestRequest {
            tenant: TenantId::new("bench")?,
            metadata: RecordingMetadata::default(),
            source: Source::File(path.to_path_buf()),
            source_bytes: size,
            source_sha256: None,
            upload_id: None,
        })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    ingest.catalog().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((secs, outcome.recording.stored_bytes as u64))
}

/// The same file through the service: `gbrain upload`'s client code over loopback gRPC,
/// staging, conversion and commit.
async fn grpc_once(path: &Path, work: &Path, run: usize) -> anyhow::Result<f64> {
    let dir = work.join(format!("grpc-run-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let store =
        gbrain_storage::store::open(&format!("file://{}", dir.join("objects").display()), &[])?;
    let catalog =
        Catalog::connect(&format!("sqlite://{}", dir.join("catalog.db").display())).await?;
    let mut registry = Registry::default();
    let token = "bench-token";
    let auth = Arc::new(Authenticator::single(token, TenantId::new("bench")?));
    let ingest = Ingest::new(
        IngestConfig::default(),
        IngestDeps {
            store,
            catalog,
            auth: Arc::clone(&auth),
            clock: Arc::new(SystemClock),
            metrics: IngestMetrics::register(&mut registry),
        },
    )
    .await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(gbrain_ingest::serve_ingest(
        Arc::clone(&ingest),
        auth,
        registry,
        gbrain_ingest::Listeners::grpc(grpc),
        shutdown.clone(),
        std::time::Duration::ZERO,
    ));
    let args = gbrain_common::clap_blocks::ClientArgs {
        server: format!("http://{addr}"),
        token: Some(token.into()),
        json: true,
        tls: Default::default(),
    };
    let mut client = gbrain_cli::client::ingest(&args).await?;
    let start = Instant::now();
    gbrain_cli::upload::upload_file(
        &mut client,
        path,
        RecordingMetadata::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(secs)
}

fn python(which: &str, path: &Path, work: &Path) -> anyhow::Result<(f64, u64)> {
    let py = std::env::var("GBRAIN_PYTHON").context("GBRAIN_PYTHON: run with cargo xtask bench")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/pipelines.py");
    let out = work.join(format!("{which}.parquet"));
    let o = Command::new(py)
        .arg(script)
        .arg(which)
        .arg(path)
        .arg(&out)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "{which} pipeline failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok((
        v["seconds"].as_f64().context("seconds")?,
        v["parquet_bytes"].as_u64().context("bytes")?,
    ))
}

async fn measure(name: &str, path: &Path, work: &Path, runs: usize) -> anyhow::Result<Row> {
    let bytes = std::fs::metadata(path)?.len();
    let file = std::fs::File::open(path)?;
    let mut reader = gbrain_formats::edf::EdfReader::open(std::io::BufReader::new(file), bytes)?;
    let header = reader.header().clone();
    let mut samples = 0u64;
    let mut buf = Vec::new();
    while let Some(block) = reader.read_block(&mut buf, 1024)? {
        for i in header.data_signals() {
            samples += (header.signals[i].samples_per_record * block.num_records) as u64;
        }
    }
    let mut row = Row {
        name: name.to_string(),
        samples,
        source_bytes: bytes,
        gbrain: Vec::new(),
        grpc: Vec::new(),
        stored_bytes: 0,
        mne: Vec::new(),
        numpy: Vec::new(),
        pyarrow_zstd_bytes: 0,
    };
    for run in 0..runs {
        let (s, stored) = gbrain_once(path, work, run).await?;
        row.gbrain.push(s);
        row.stored_bytes = stored;
        row.grpc.push(grpc_once(path, work, run).await?);
        let (s, _) = python("mne", path, work)?;
        row.mne.push(s);
        let (s, pq) = python("numpy", path, work)?;
        row.numpy.push(s);
        row.pyarrow_zstd_bytes = pq;
    }
    Ok(row)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    args.dir = args.dir.canonicalize()?;
    let generated = args
        .dir
        .join(format!("pink-64ch-512hz-{}min.edf", args.minutes));
    if !generated.exists() {
        eprintln!("generating {}", generated.display());
        generate(&generated, args.minutes)?;
    }
    let data = std::env::var_os("GBRAIN_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let mut files = vec![(
        format!("generated 64ch 512Hz {} min", args.minutes),
        generated,
    )];
    for f in [
        "test_generator.edf",
        "test_generator.bdf",
        "test_subsecond.edf",
        "test_utf8.edf",
    ] {
        files.push((f.to_string(), data.join("eeg_edf").join(f)));
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "ingest benchmark: EDF file on disk to a committed recording, samples per second, best (median) of {} runs, {cpus} CPUs",
        args.runs
    );
    println!();
    println!(
        "{:<30} {:>11} | {:>17} {:>17} {:>17} | {:>7} {:>7}",
        "file", "samples", "gbrain Msamp/s", "MNE Msamp/s", "numpy+pa Msamp/s", "vs MNE", "vs np"
    );
    let mut rows = Vec::new();
    for (name, path) in &files {
        let row = measure(name, path, &args.dir, args.runs).await?;
        let m = |v: &[f64]| row.samples as f64 / best(v) / 1e6;
        let md = |v: &[f64]| row.samples as f64 / median(v) / 1e6;
        println!(
            "{:<30} {:>11} | {:>8.1} ({:>6.1}) {:>8.1} ({:>6.1}) {:>8.1} ({:>6.1}) | {:>6.2}x {:>6.2}x",
            row.name,
            row.samples,
            m(&row.gbrain),
            md(&row.gbrain),
            m(&row.mne),
            md(&row.mne),
            m(&row.numpy),
            md(&row.numpy),
            median(&row.mne) / median(&row.gbrain),
            median(&row.numpy) / median(&row.gbrain),
        );
        rows.push(row);
    }
    println!();
    println!(
        "through the service (gbrain upload over loopback gRPC: transfer, staging, conversion, commit):"
    );
    for r in &rows {
        println!(
            "  {:<30} {:>8.1} ({:>6.1}) Msamples/s",
            r.name,
            r.samples as f64 / best(&r.grpc) / 1e6,
            r.samples as f64 / median(&r.grpc) / 1e6
        );
    }
    println!();
    println!("seconds per run (gbrain | gbrain via gRPC | MNE | numpy+pyarrow):");
    for r in &rows {
        let f = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {:<30} {} | {} | {} | {}",
            r.name,
            f(&r.gbrain),
            f(&r.grpc),
            f(&r.mne),
            f(&r.numpy)
        );
    }
    println!();
    println!(
        "storage: bytes stored per source byte (gbrain: signals, events and all; pyarrow: zstd Parquet of the digital values)"
    );
    println!(
        "{:<30} {:>12} {:>12} {:>7} {:>14} {:>7}",
        "file", "source", "gbrain", "ratio", "pyarrow zstd", "ratio"
    );
    let (mut src, mut gb) = (0u64, 0u64);
    for r in &rows {
        src += r.source_bytes;
        gb += r.stored_bytes;
        println!(
            "{:<30} {:>12} {:>12} {:>7.3} {:>14} {:>7.3}",
            r.name,
            r.source_bytes,
            r.stored_bytes,
            r.stored_bytes as f64 / r.source_bytes as f64,
            r.pyarrow_zstd_bytes,
            r.pyarrow_zstd_bytes as f64 / r.source_bytes as f64
        );
    }
    println!(
        "{:<30} {:>12} {:>12} {:>7.3}",
        "all files",
        src,
        gb,
        gb as f64 / src as f64
    );
    Ok(())
}
