//! `gbrain sql`: a query over Flight SQL, printed as a table or written to a file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::FlightDescriptor;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use futures::{StreamExt, TryStreamExt};
use gbrain_common::clap_blocks::ClientArgs;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client::{Bearer, status};

/// Rows printed to a terminal before the rest is only counted.
const MAX_PRINTED_ROWS: usize = 1000;

/// The request header that pins a statement to a named snapshot.
pub const SNAPSHOT_HEADER: &str = "x-gbrain-snapshot";

/// The request header that says where a statement runs: auto, local or distributed.
pub const EXECUTION_HEADER: &str = "x-gbrain-execution";

/// Adds the bearer token and the query's settings (snapshot, execution).
#[derive(Clone)]
pub struct Headers {
    bearer: Bearer,
    settings: Vec<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.bearer.call(req)?;
        for (name, value) in &self.settings {
            req.metadata_mut().insert(*name, value.clone());
        }
        Ok(req)
    }
}

pub type Flight = FlightServiceClient<InterceptedService<Channel, Headers>>;

pub async fn connect(args: &ClientArgs, snapshot: Option<&str>) -> anyhow::Result<Flight> {
    connect_with(args, snapshot, None).await
}

/// A client whose statements run on `snapshot` (latest when `None`) and where `execution`
/// says (`auto`, `local`, `distributed`; the service decides when `None`).
pub async fn connect_with(
    args: &ClientArgs,
    snapshot: Option<&str>,
    execution: Option<&str>,
) -> anyhow::Result<Flight> {
    let mut settings = Vec::new();
    if let Some(s) = snapshot {
        settings.push((
            SNAPSHOT_HEADER,
            s.parse().context("the snapshot name must be ASCII")?,
        ));
    }
    if let Some(e) = execution {
        settings.push((
            EXECUTION_HEADER,
            e.parse().context("--execution must be ASCII")?,
        ));
    }
    let headers = Headers {
        bearer: Bearer::new(args.token.as_deref())?,
        settings,
    };
    let channel = crate::client::connect_channel(&args.server, &args.tls).await?;
    Ok(FlightServiceClient::with_interceptor(channel, headers)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A query's result as a stream of batches: the schema first, then every endpoint's batches.
pub async fn query(
    client: &mut Flight,
    sql: &str,
) -> Result<(SchemaRef, Vec<FlightRecordBatchStream>), tonic::Status> {
    let cmd = CommandStatementQuery {
        query: sql.to_string(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
    let info = client.get_flight_info(descriptor).await?.into_inner();
    let schema = std::sync::Arc::new(
        info.clone()
            .try_decode_schema()
            .map_err(|e| tonic::Status::internal(format!("schema: {e}")))?,
    );
    let mut streams = Vec::new();
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let data = client.do_get(ticket).await?.into_inner();
        streams.push(FlightRecordBatchStream::new_from_flight_data(
            data.map_err(|s| FlightError::Tonic(Box::new(s))),
        ));
    }
    Ok((schema, streams))
}

fn flight_status(e: FlightError) -> tonic::Status {
    tonic::Status::from(e)
}

/// Where rows go.
enum Sink {
    Table(Vec<RecordBatch>, usize),
    Parquet(parquet::arrow::ArrowWriter<std::fs::File>),
    Csv(arrow::csv::Writer<std::fs::File>),
    Arrow(arrow::ipc::writer::FileWriter<std::fs::File>),
}

impl Sink {
    fn open(path: Option<&Path>, schema: &SchemaRef) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::Table(Vec::new(), 0));
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let file =
            || std::fs::File::create(path).with_context(|| format!("creating {}", path.display()));
        Ok(match ext.as_str() {
            "parquet" => Self::Parquet(parquet::arrow::ArrowWriter::try_new(
                file()?,
                std::sync::Arc::clone(schema),
                None,
            )?),
            "csv" => Self::Csv(arrow::csv::Writer::new(file()?)),
            "arrow" | "feather" | "ipc" => {
                Self::Arrow(arrow::ipc::writer::FileWriter::try_new(file()?, schema)?)
            }
            other => bail!(
                "--output {}: unknown extension {other:?}; use .parquet, .csv or .arrow",
                path.display()
            ),
        })
    }

    fn write(&mut self, batch: RecordBatch) -> anyhow::Result<()> {
        match self {
            Self::Table(kept, rows) => {
                if *rows < MAX_PRINTED_ROWS {
                    let take = batch.num_rows().min(MAX_PRINTED_ROWS - *rows);
                    kept.push(batch.slice(0, take));
                }
                *rows += batch.num_rows();
            }
            Self::Parquet(w) => w.write(&batch)?,
            Self::Csv(w) => w.write(&batch)?,
            Self::Arrow(w) => w.write(&batch)?,
        }
        Ok(())
    }

    fn finish(self, schema: &SchemaRef) -> anyhow::Result<Option<String>> {
        match self {
            Self::Table(kept, rows) => {
                let kept = if kept.is_empty() {
                    vec![RecordBatch::new_empty(std::sync::Arc::clone(schema))]
                } else {
                    kept
                };
                let mut text = arrow::util::pretty::pretty_format_batches(&kept)?.to_string();
                if rows > MAX_PRINTED_ROWS {
                    text.push_str(&format!(
                        "\n… {} more rows not shown; write them with --output FILE",
                        rows - MAX_PRINTED_ROWS
                    ));
                }
                text.push_str(&format!("\n{rows} row(s)"));
                Ok(Some(text))
            }
            Self::Parquet(w) => {
                w.close()?;
                Ok(None)
            }
            Self::Csv(w) => {
                drop(w);
                Ok(None)
            }
            Self::Arrow(mut w) => {
                w.finish()?;
                Ok(None)
            }
        }
    }
}

/// `gbrain sql`.
pub async fn command(
    sql: String,
    snapshot: Option<String>,
    execution: Option<String>,
    output: Option<PathBuf>,
    client: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let mut flight = connect_with(&client, snapshot.as_deref(), execution.as_deref()).await?;
    let (schema, streams) = match query(&mut flight, &sql).await {
        Ok(r) => r,
        Err(s) => {
            eprintln!("error: {}", status(&s));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut sink = Sink::open(output.as_deref(), &schema)?;
    let mut rows = 0usize;
    for mut stream in streams {
        while let Some(batch) = stream.next().await {
            match batch {
                Ok(b) => {
                    rows += b.num_rows();
                    sink.write(b)?;
                }
                Err(e) => {
                    eprintln!("error: {}", status(&flight_status(e)));
                    if let Some(path) = &output {
                        let _ = std::fs::remove_file(path);
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    match sink.finish(&schema)? {
        Some(text) => println!("{text}"),
        None => {
            if let Some(path) = &output {
                println!("{rows} row(s) written to {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Collects a query's batches (for tests and scripts).
pub async fn collect(
    client: &mut Flight,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>), tonic::Status> {
    let (schema, streams) = query(client, sql).await?;
    let mut out = Vec::new();
    for stream in streams {
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(flight_status)?;
        out.extend(batches);
    }
    Ok((schema, out))
}
