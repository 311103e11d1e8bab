//! Inference throughput and latency, side by side: ONNX Runtime called in-process (the limit),
//! our node over KServe v2 gRPC, and the server a user would otherwise write (Python grpcio +
//! onnxruntime, `bench/python/kserve_server.py`). A Rust load generator drives both servers the
//! same way: N concurrent callers, each sending its next request when the last one returns,
//! raw FP32 inputs, on a runtime of its own (the node runs on the main one). Prints the figures
//! and the targets; asserts nothing.
//!
//! Models: `sigmoid.onnx` ([3,4,5], no batch dimension); `tiny`, a sigmoid over [batch, 60]
//! written by `gbrain_inference::onnx` (the same 60 elements with a batch dimension), served with
//! and without dynamic batching; and the spindle detector (two inputs, [batch,1,7500] and
//! [batch,15,7500]), with and without dynamic batching.
//!
//! Run with `cargo xtask bench-inference` (release build, ONNX Runtime and Python fetched).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use gbrain_cli::client::Bearer;
use gbrain_common::auth::Authenticator;
use gbrain_inference::onnx;
use gbrain_proto::inference as pb;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ort::session::{Session, SessionInputs};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const TENANT: &str = "bench";
const TOKEN: &str = "bench-inference-token";

#[derive(Parser)]
struct Args {
    /// Seconds measured per point (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Seconds per point for the spindle detector.
    #[arg(long, default_value_t = 6.0)]
    heavy_seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    concurrency: Vec<usize>,
    /// The ONNX files (sigmoid.onnx, spindle-detector-eeg.onnx).
    #[arg(long, env = "GBRAIN_TEST_DATA")]
    data: PathBuf,
    #[arg(long, env = "GBRAIN_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Only the models whose name contains one of these (sigmoid, tiny, tiny_batched, spindle).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

type Client = GrpcInferenceServiceClient<InterceptedService<Channel, Bearer>>;

/// One input: name, shape, f32 values.
#[derive(Clone)]
struct Input {
    name: &'static str,
    shape: Vec<i64>,
    values: Vec<f32>,
}

fn inputs_of(model: &str, rows: i64) -> Vec<Input> {
    let fill = |n: usize, seed: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * 0.013 + seed).sin()).collect()
    };
    match model {
        "sigmoid" => vec![Input {
            name: "x",
            shape: vec![3, 4, 5],
            values: fill(60, 0.3),
        }],
        m if m.starts_with("tiny") => vec![Input {
            name: "x",
            shape: vec![rows, 60],
            values: fill(rows as usize * 60, 0.7),
        }],
        _ => vec![
            Input {
                name: "raw_signal",
                shape: vec![rows, 1, 7500],
                values: fill(rows as usize * 7500, 0.1),
            },
            Input {
                name: "spectrogram",
                shape: vec![rows, 15, 7500],
                values: fill(rows as usize * 15 * 7500, 0.9),
            },
        ],
    }
}

fn request(model: &str, inputs: &[Input]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs: inputs
            .iter()
            .map(|i| pb::model_infer_request::InferInputTensor {
                name: i.name.into(),
                datatype: "FP32".into(),
                shape: i.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs
            .iter()
            .map(|i| {
                Bytes::from(
                    i.values
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>(),
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// What one point measured.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn clients(endpoint: &str, token: Option<&str>, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .tcp_nodelay(true)
            .initial_stream_window_size(gbrain_common::server::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(gbrain_common::server::CONNECTION_WINDOW_BYTES)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        out.push(
            GrpcInferenceServiceClient::with_interceptor(channel, Bearer::new(token)?)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        );
    }
    Ok(out)
}

/// `concurrency` callers for `warm + seconds`; completions after the warm-up count.
async fn load(
    endpoint: &str,
    token: Option<&str>,
    req: pb::ModelInferRequest,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Point> {
    drive(
        endpoint,
        token,
        concurrency,
        seconds,
        move |mut c: Client| {
            let req = req.clone();
            async move { c.model_infer(req).await.map(drop) }
        },
    )
    .await
}

/// The gRPC floor: ServerLive round trips through the same client, token and server stack.
async fn floor(endpoint: &str, token: Option<&str>, seconds: f64) -> anyhow::Result<Point> {
    drive(endpoint, token, 1, seconds, |mut c: Client| async move {
        c.server_live(pb::ServerLiveRequest {}).await.map(drop)
    })
    .await
}

/// Runs the callers on a runtime of their own, on their own threads (one at concurrency 1,
/// two above), as a separate client process would: the node's runtime does not run them.
async fn drive<F, Fut>(
    endpoint: &str,
    token: Option<&str>,
    concurrency: usize,
    seconds: f64,
    call: F,
) -> anyhow::Result<Point>
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let endpoint = endpoint.to_string();
    let token = token.map(str::to_string);
    let thread = std::thread::spawn(move || -> anyhow::Result<Point> {
        let mut builder = if concurrency == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        };
        let rt = builder.enable_all().build()?;
        rt.block_on(drive_here(
            &endpoint,
            token.as_deref(),
            concurrency,
            seconds,
            call,
        ))
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
}

async fn drive_here<F, Fut>(
    endpoint: &str,
    token: Option<&str>,
    concurrency: usize,
    seconds: f64,
    call: F,
) -> anyhow::Result<Point>
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let conns = clients(endpoint, token, concurrency.div_ceil(32).clamp(1, 8)).await?;
    let start = Instant::now();
    let warm = start + Duration::from_secs_f64(seconds / 4.0);
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let c = conns[i % conns.len()].clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = tokio::time::timeout_at(end.into(), call(c.clone())).await;
                let t1 = Instant::now();
                match r {
                    Err(_) => break,
                    Ok(Ok(())) if t1 >= warm => lat.push((t1 - t0).as_secs_f64() * 1e6),
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    Ok(Point {
        rps: all.len() as f64 / seconds,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
        errors,
    })
}

/// ONNX Runtime in-process: one session run in a loop on this thread; calls per second.
fn in_process(bytes: &[u8], inputs: &[Input], threads: usize, seconds: f64) -> anyhow::Result<f64> {
    let env = gbrain_inference::runtime::environment(None)?;
    let mut session = Session::builder(env)?
        .with_intra_threads(threads)
        .map_err(ort::Error::<()>::from)?
        .commit_from_memory(bytes)?;
    let values = inputs
        .iter()
        .map(|i| {
            Ok(ort::value::Tensor::from_array((i.shape.clone(), i.values.clone()))?.into_dyn())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let run = |s: &mut Session| -> anyhow::Result<()> {
        let feed: Vec<(String, &ort::value::DynValue)> = inputs
            .iter()
            .zip(&values)
            .map(|(i, v)| (i.name.to_string(), v))
            .collect();
        let out = s.run(SessionInputs::from(feed))?;
        std::hint::black_box(out.len());
        Ok(())
    };
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < seconds / 4.0 {
        run(&mut session)?;
    }
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        run(&mut session)?;
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn python_server(python: &Path, dir: &Path, port: u16) -> anyhow::Result<Child> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kserve_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the Python server")?;
    let mut line = String::new();
    use std::io::BufRead;
    let stdout = child.stdout.take().context("python stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the Python server said {line:?}");
    Ok(child)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.1}")
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{us:.0}µs")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let onnx_dir = args.data.join("onnx");
    let sigmoid = std::fs::read(onnx_dir.join("sigmoid.onnx")).context("sigmoid.onnx")?;
    let spindle = std::fs::read(onnx_dir.join("spindle-detector-eeg.onnx"))
        .context("spindle-detector-eeg.onnx")?;
    let tiny = onnx::batched_sigmoid(60);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    // Our node, on a local repository.
    let dir = tempfile::tempdir()?;
    let store = gbrain_storage::store::open(
        &format!("file://{}", dir.path().join("objects").display()),
        &[],
    )?;
    let repo = gbrain_inference::repository::Repository::new(Arc::clone(&store));
    let parse = |s: &str| gbrain_inference::config::ModelConfig::parse(s.as_bytes());
    let heavy_threads = cores;
    let models: Vec<(&str, &[u8], String)> = vec![
        ("sigmoid", &sigmoid, "{}".into()),
        ("tiny", &tiny, r#"{"max_batch_size": 1024}"#.into()),
        (
            "tiny_batched",
            &tiny,
            r#"{"max_batch_size": 1024, "dynamic_batching": {"max_queue_delay_us": 100, "max_queue_size": 8192}}"#.into(),
        ),
        (
            "spindle",
            &spindle,
            format!(r#"{{"max_batch_size": 32, "intra_op_threads": {heavy_threads}}}"#),
        ),
        (
            "spindle_batched",
            &spindle,
            format!(
                r#"{{"max_batch_size": 32, "intra_op_threads": {heavy_threads}, "dynamic_batching": {{"max_queue_delay_us": 2000, "max_queue_size": 8192}}}}"#
            ),
        ),
    ];
    for (name, bytes, config) in &models {
        repo.put(
            TENANT,
            name,
            1,
            Bytes::copy_from_slice(bytes),
            Some(&parse(config)?),
        )
        .await?;
    }
    let auth = Arc::new(Authenticator::from_toml(&format!(
        "[[tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\ntenant = \"{TENANT}\"\nroles = [\"analyst\"]\n"
    ))?);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ours = format!("http://{}", grpc.local_addr()?);
    let shutdown = CancellationToken::new();
    let node = tokio::spawn(gbrain_inference::run(
        gbrain_inference::ServeConfig {
            inference: gbrain_inference::InferenceConfig::default(),
            object_store_url: format!("file://{}", dir.path().join("objects").display()),
            object_store_options: Vec::new(),
            auth,
            drain_delay: Duration::ZERO,
        },
        gbrain_common::server::Listeners::grpc(grpc),
        shutdown.clone(),
    ));
    let mut c = clients(&ours, Some(TOKEN), 1).await?.remove(0);
    loop {
        if c.server_ready(pb::ServerReadyRequest {})
            .await?
            .into_inner()
            .ready
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The Python server, on the same files.
    let pydir = tempfile::tempdir()?;
    std::fs::write(pydir.path().join("sigmoid.onnx"), &sigmoid)?;
    std::fs::write(pydir.path().join("tiny.onnx"), &tiny)?;
    std::fs::write(pydir.path().join("spindle.onnx"), &spindle)?;
    let port = free_port()?;
    let mut py = python_server(&args.python, pydir.path(), port)?;
    let python = format!("http://127.0.0.1:{port}");

    println!(
        "inference benchmark: {cores} CPUs, ONNX Runtime 1.31.1 (in-process, ours) and onnxruntime 1.31.1 (Python)"
    );
    println!(
        "rps = requests/s; items/s = rows/s; latency p50 / p99 from the client; errors in brackets\n"
    );

    let wanted = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let f = floor(&ours, Some(TOKEN), args.seconds).await?;
    println!(
        "gRPC floor: ServerLive through the same client and server stack, concurrency 1: p50 {} p99 {}",
        fmt_us(f.p50_us),
        fmt_us(f.p99_us)
    );

    // The tiny models.
    let mut table = Vec::new();
    let sig_inputs = inputs_of("sigmoid", 1);
    let ort_sigmoid = in_process(&sigmoid, &sig_inputs, 1, args.seconds)?;
    println!(
        "in-process ORT, sigmoid [3,4,5], 1 thread: {} calls/s ({:.1} µs a call)",
        fmt_rate(ort_sigmoid),
        1e6 / ort_sigmoid
    );
    for rows in [1i64, 32] {
        let r = in_process(&tiny, &inputs_of("tiny", rows), 1, args.seconds)?;
        println!(
            "in-process ORT, tiny [{rows},60], 1 thread: {} calls/s",
            fmt_rate(r)
        );
    }
    println!();
    println!(
        "{:<16} {:>4} {:>5} | {:>9} {:>9} {:>8} {:>8} | {:>9} {:>9} {:>8} {:>8} | {:>6}",
        "model",
        "rows",
        "conc",
        "ours rps",
        "items/s",
        "p50",
        "p99",
        "py rps",
        "items/s",
        "p50",
        "p99",
        "ours/py"
    );
    for (model, rows_list) in [
        ("sigmoid", vec![1i64]),
        ("tiny", vec![1, 32]),
        ("tiny_batched", vec![1, 32]),
    ] {
        if !wanted(model) {
            continue;
        }
        for &rows in &rows_list {
            for &conc in &args.concurrency {
                let inputs = inputs_of(model, rows);
                let o = load(
                    &ours,
                    Some(TOKEN),
                    request(model, &inputs),
                    conc,
                    args.seconds,
                )
                .await?;
                let p = if model == "tiny_batched" {
                    None
                } else {
                    Some(load(&python, None, request(model, &inputs), conc, args.seconds).await?)
                };
                let items = if model == "sigmoid" { 1.0 } else { rows as f64 };
                print_row(model, rows, conc, &o, p.as_ref(), items);
                table.push((model, rows, conc, o, p));
            }
        }
    }

    // The spindle detector.
    let mut ort_spindle: Vec<(i64, f64)> = Vec::new();
    let heavy = wanted("spindle") || wanted("spindle_batched");
    for rows in [1i64, 8].into_iter().filter(|_| heavy) {
        let r = in_process(
            &spindle,
            &inputs_of("spindle", rows),
            heavy_threads,
            args.heavy_seconds,
        )?;
        ort_spindle.push((rows, r * rows as f64));
        println!(
            "\nin-process ORT, spindle batch {rows}, {heavy_threads} threads: {:.1} windows/s",
            r * rows as f64
        );
    }
    let ort_best = ort_spindle.iter().map(|(_, w)| *w).fold(0.0, f64::max);
    for (model, rows) in [("spindle", 1i64), ("spindle_batched", 1), ("spindle", 32)] {
        if !wanted(model) {
            continue;
        }
        for &conc in &args.concurrency {
            if rows == 32 && conc > 1 {
                continue;
            }
            let inputs = inputs_of(model, rows);
            // The warm-up (a quarter of the window) must outlast one round of every caller,
            // or the point measures the start (all callers uploading at once), not the
            // steady state.
            let cycle = conc as f64 * rows as f64 / ort_best.max(1.0);
            let seconds = args.heavy_seconds.max(4.0 * cycle);
            let o = load(&ours, Some(TOKEN), request(model, &inputs), conc, seconds).await?;
            let p = if model == "spindle_batched" {
                None
            } else {
                Some(load(&python, None, request("spindle", &inputs), conc, seconds).await?)
            };
            print_row(model, rows, conc, &o, p.as_ref(), rows as f64);
            table.push((model, rows, conc, o, p));
        }
    }

    // Targets.
    println!("\ntargets");
    let find = |m: &str, rows: i64, conc: usize| {
        table
            .iter()
            .find(|(tm, tr, tc, _, _)| *tm == m && *tr == rows && *tc == conc)
            .map(|(_, _, _, o, p)| (*o, *p))
    };
    if let Some((o, _)) = find("sigmoid", 1, 1) {
        let overhead = o.p50_us - 1e6 / ort_sigmoid;
        println!(
            "  sigmoid, concurrency 1: p50 {:.0} µs end to end, {:.1} µs of it ONNX Runtime: overhead {:.0} µs (target ≤ 100 µs: {})",
            o.p50_us,
            1e6 / ort_sigmoid,
            overhead,
            if overhead <= 100.0 { "met" } else { "NOT met" }
        );
    }
    if let Some((o, Some(p))) = find("sigmoid", 1, 64) {
        let x = o.rps / p.rps;
        println!(
            "  sigmoid, concurrency 64: ours {} rps, Python {} rps: {x:.1}× (target ≥ 10×: {})",
            fmt_rate(o.rps),
            fmt_rate(p.rps),
            if x >= 10.0 { "met" } else { "NOT met" }
        );
    }
    if let (Some((b, _)), Some((u, _))) = (find("tiny_batched", 1, 64), find("tiny", 1, 64)) {
        let x = b.rps / u.rps;
        println!(
            "  tiny, concurrency 64: batched {} rps, unbatched {} rps: {x:.1}× (target ≥ 3×: {})",
            fmt_rate(b.rps),
            fmt_rate(u.rps),
            if x >= 3.0 { "met" } else { "NOT met" }
        );
    }
    for &conc in &args.concurrency {
        if let Some((o, _)) = find("spindle_batched", 1, conc) {
            let x = o.rps / ort_best;
            println!(
                "  spindle, batching on, concurrency {conc}: {:.1} windows/s, {:.0}% of in-process ORT's best {:.1} (target ≥ 90%: {})",
                o.rps,
                x * 100.0,
                ort_best,
                if x >= 0.9 { "met" } else { "NOT met" }
            );
        }
    }
    let _ = py.kill();
    shutdown.cancel();
    let _ = node.await;
    Ok(())
}

fn print_row(model: &str, rows: i64, conc: usize, o: &Point, p: Option<&Point>, items: f64) {
    let err = |e: usize| {
        if e > 0 {
            format!(" [{e}]")
        } else {
            String::new()
        }
    };
    let (prps, pitems, p50, p99, ratio) = match p {
        Some(p) => (
            format!("{}{}", fmt_rate(p.rps), err(p.errors)),
            fmt_rate(p.rps * items),
            fmt_us(p.p50_us),
            fmt_us(p.p99_us),
            format!("{:.1}×", o.rps / p.rps),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "{:<16} {:>4} {:>5} | {:>9} {:>9} {:>8} {:>8} | {:>9} {:>9} {:>8} {:>8} | {:>6}",
        model,
        rows,
        conc,
        format!("{}{}", fmt_rate(o.rps), err(o.errors)),
        fmt_rate(o.rps * items),
        fmt_us(o.p50_us),
        fmt_us(o.p99_us),
        prps,
        pitems,
        p50,
        p99,
        ratio
    );
}
