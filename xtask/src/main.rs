//! `cargo xtask`: the project's automation.
//!
//! - `cargo xtask demo`: builds, starts the embedded cluster, uploads sample recordings,
//!   imports a BIDS dataset, appends events, exports, and says what happened.
//! - `cargo xtask test`: fmt, clippy, the deploy checks, then every test (unit, catalog on SQLite
//!   and PostgreSQL, integration with real clients), after fetching what the tests need.
//! - `cargo xtask deploy-check`: the Helm chart, alert rules, Dockerfile and compose file, each
//!   checked by its real tool (helm, kubernetes-validate, promtool, hadolint, docker-compose).
//! - `cargo xtask bench`: the ingest benchmark, side by side with the Python pipelines.
//! - `cargo xtask bench-query`: fused queries beside DuckDB and polars.
//! - `cargo xtask bench-inference`: in-process ONNX Runtime, our node and a Python server.
//! - `cargo xtask bench-loop`: the closed loop's window-to-feedback latency.
//! - `cargo xtask local-cluster [up|down]`: every service its own process on PostgreSQL and
//!   SeaweedFS, in the foreground.
//! - `cargo xtask fuzz`: the parser fuzz target for a while.
//!
//! Everything fetched goes to a cache outside the clone (`$GBRAIN_CACHE`, default
//! `~/.cache/gbrain`), keyed by what was asked for, so a second run reuses it and a fresh
//! machine builds it from the package registries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod demo;
mod deploy;
mod env;

#[derive(Parser)]
#[command(name = "xtask")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the main job end to end on the embedded cluster.
    Demo,
    /// Runs every check and test.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for nextest (filters, --no-capture...).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Checks the Helm chart, alert rules, Dockerfile and compose file with helm,
    /// kubernetes-validate, promtool, hadolint and docker-compose.
    DeployCheck,
    /// Runs the ingest benchmark (release build) beside the Python pipelines.
    Bench {
        /// Minutes of the generated recording (64 channels at 512 Hz).
        #[arg(long, default_value_t = 60)]
        minutes: u32,
    },
    /// Runs the query benchmark (release build): our Flight SQL server beside DuckDB and polars.
    BenchQuery {
        /// Extra arguments for the benchmark (--recordings, --minutes, --runs...).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Runs the inference benchmark (release build): in-process ONNX Runtime, our KServe v2
    /// node and a Python grpcio + onnxruntime server, under one Rust load generator.
    BenchInference {
        /// Extra arguments for the benchmark (--seconds, --concurrency...).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Runs the closed-loop benchmark (release build): window-to-feedback latency with 1, 16,
    /// 64 and 256 concurrent loop sessions on the embedded cluster.
    BenchLoop {
        /// Extra arguments for the benchmark (--seconds, --sessions...).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Runs the local cluster (every service its own process, PostgreSQL, SeaweedFS) in the
    /// foreground: `local-cluster [up] [--dir D] [--inference-nodes N]`, `local-cluster down
    /// [--dir D]`. Fetches SeaweedFS and ONNX Runtime first.
    LocalCluster {
        /// Arguments for `gbrain local-cluster` (default: up).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Fuzzes the EDF/BDF and BIDS parsers (nightly toolchain and cargo-fuzz).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match args.command {
        Cmd::Demo => demo::demo(&root),
        Cmd::Test { no_lint, rest } => test(&root, no_lint, &rest),
        Cmd::DeployCheck => deploy::check(&root),
        Cmd::Bench { minutes } => bench(&root, minutes),
        Cmd::BenchQuery { rest } => bench_query(&root, &rest),
        Cmd::BenchInference { rest } => bench_bin(&root, "inference", &rest),
        Cmd::BenchLoop { rest } => bench_bin(&root, "closed_loop", &rest),
        Cmd::LocalCluster { rest } => local_cluster(&root, &rest),
        Cmd::Fuzz { seconds } => fuzz(&root, seconds),
    }
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (CI keeps it outside the clone) or
/// `target/`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// `gbrain local-cluster ...` with SeaweedFS and ONNX Runtime fetched, its state in
/// `target/local-cluster` unless --dir says otherwise.
fn local_cluster(root: &Path, rest: &[String]) -> anyhow::Result<()> {
    let mut args: Vec<String> = rest.to_vec();
    if !matches!(args.first().map(String::as_str), Some("up" | "down")) {
        args.insert(0, "up".into());
    }
    if !args.iter().any(|a| a == "--dir" || a.starts_with("--dir=")) {
        args.push("--dir".into());
        args.push(root.join("target/local-cluster").display().to_string());
    }
    let tools = if args[0] == "up" {
        let tools = env::prepare(root, env::Purpose::Test)?;
        run(cargo().args(["build", "-p", "gbrain-cli", "--bin", "gbrain"]))?;
        Some(tools)
    } else {
        None
    };
    let mut cmd = Command::new(target_dir(root).join("debug/gbrain"));
    cmd.arg("local-cluster").args(&args);
    if let Some(tools) = &tools {
        tools.apply(&mut cmd, root);
    }
    run(&mut cmd)
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    // `cargo run` names the manifest's folder when it starts xtask; the one compiled in is
    // only a fallback, since one build serves every checkout (worktrees) sharing a target
    // folder, and cargo reuses it across them.
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    Ok(here.parent().context("xtask has no parent")?.to_path_buf())
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(root: &Path, no_lint: bool, rest: &[String]) -> anyhow::Result<()> {
    let tools = env::prepare(root, env::Purpose::Test)?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    deploy::check(root)?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut cmd = if env::has_nextest() {
        let mut c = cargo();
        c.args(["nextest", "run", "--workspace", "--profile", "ci"]);
        c
    } else {
        eprintln!("xtask: cargo-nextest not found, using cargo test");
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        c
    };
    cmd.args(rest);
    tools.apply(&mut cmd, root);
    run(&mut cmd)
}

fn bench(root: &Path, minutes: u32) -> anyhow::Result<()> {
    let tools = env::prepare(root, env::Purpose::Bench)?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "gbrain-bench",
        "--bin",
        "ingest",
    ]))?;
    let mut cmd = Command::new(target_dir(root).join("release/ingest"));
    cmd.arg("--minutes").arg(minutes.to_string());
    tools.apply(&mut cmd, root);
    run(&mut cmd)
}

fn bench_query(root: &Path, rest: &[String]) -> anyhow::Result<()> {
    bench_bin(root, "query", rest)
}

/// Builds one of `bench`'s binaries in release mode and runs it with the fetched tools.
fn bench_bin(root: &Path, bin: &str, rest: &[String]) -> anyhow::Result<()> {
    let tools = env::prepare(root, env::Purpose::Bench)?;
    run(cargo().args(["build", "--release", "-p", "gbrain-bench", "--bin", bin]))?;
    let mut cmd = Command::new(target_dir(root).join("release").join(bin));
    cmd.args(rest);
    tools.apply(&mut cmd, root);
    run(&mut cmd)
}

fn fuzz(root: &Path, seconds: u32) -> anyhow::Result<()> {
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_fuzz {
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = root.join("fuzz/corpus/edf");
    std::fs::create_dir_all(&corpus)?;
    let data = env::test_data(root)?;
    for f in ["test_subsecond.edf", "test_generator.bdf"] {
        let _ = std::fs::copy(data.join("eeg_edf").join(f), corpus.join(f));
    }
    run(Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", "edf", "corpus/edf", "--"])
        .arg(format!("-max_total_time={seconds}")))
}
