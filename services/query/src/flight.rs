//! Arrow Flight SQL over the engine: statements, prepared statements with parameters, and the
//! metadata calls clients make on connect (SqlInfo, catalogs, schemas, tables).
//!
//! The server keeps no per-client state. A ticket carries the SQL, the catalog commit it was
//! planned on and any bound parameters; a prepared statement's handle carries the SQL and, once
//! bound, the parameters. Whatever a client sends back is checked again: the tenant always comes
//! from the caller's token, never from a ticket.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use gbrain_common::auth::{Principal, Role};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::context::{CATALOG, PUBLIC, SNAPSHOT_PREFIX};
use crate::engine::{Execution, Planned, QueryEngine};
use crate::error::Error;
use crate::tables::TABLES;

/// The request header that pins a statement to a named snapshot.
pub const SNAPSHOT_HEADER: &str = "x-gbrain-snapshot";

/// The request header that says where a statement runs: `auto` (the default: on Ballista when
/// its scans reach the service's threshold), `local` or `distributed`.
pub const EXECUTION_HEADER: &str = "x-gbrain-execution";

/// Largest FlightData message the server sends.
const MAX_FLIGHT_DATA_BYTES: usize = 4 << 20;

type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// What a ticket or a prepared statement handle holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Handle {
    sql: String,
    /// The commit, in tickets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
    /// Bound parameters as an Arrow IPC stream of one row, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<String>,
    /// The snapshot a prepared statement was created under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    /// Where it runs, in tickets (`local` or `distributed`; absent is auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    execution: Option<String>,
}

impl Handle {
    fn encode(&self) -> Result<Bytes, Status> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Status::internal(format!("encoding a handle: {e}")))
    }

    fn decode(bytes: &[u8], what: &str) -> Result<Self, Status> {
        serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!("{what}: not a handle this server made: {e}"))
        })
    }

    fn parameters(&self) -> Result<Vec<ScalarValue>, Status> {
        let Some(hex_ipc) = &self.params else {
            return Ok(Vec::new());
        };
        let bytes = hex::decode(hex_ipc)
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let batches: Vec<RecordBatch> = reader
            .collect::<Result<_, _>>()
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        match batches.as_slice() {
            [b] => row_values(b),
            _ => Err(Status::invalid_argument(
                "parameters: expected one batch of bound values",
            )),
        }
    }
}

fn row_values(batch: &RecordBatch) -> Result<Vec<ScalarValue>, Status> {
    if batch.num_rows() != 1 {
        return Err(Status::invalid_argument(format!(
            "parameters: expected one row of values, got {}",
            batch.num_rows()
        )));
    }
    batch
        .columns()
        .iter()
        .map(|c| {
            ScalarValue::try_from_array(c, 0)
                .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))
        })
        .collect()
}

fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| Status::internal(format!("parameters: {e}")))?;
    w.write(batch)
        .and_then(|_| w.finish())
        .map_err(|e| Status::internal(format!("parameters: {e}")))?;
    drop(w);
    Ok(out)
}

/// The schema clients receive: dictionaries are sent as plain values.
fn hydrated(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                f.as_ref().clone().with_data_type(value.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let options = IpcWriteOptions::default();
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("schema: {e}")))?;
    Ok(bytes)
}

/// Plans made by GetFlightInfo, kept for the DoGet that follows.
const PLAN_CACHE_ENTRIES: usize = 64;
const PLAN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Plans waiting for their DoGet: (tenant, ticket, made at, plan).
type PlanCache = std::sync::Mutex<std::collections::VecDeque<(String, Bytes, Instant, Planned)>>;

/// The Flight SQL service.
pub struct FlightSql {
    engine: Arc<QueryEngine>,
    sql_info: SqlInfoData,
    /// A cache only: a ticket that misses (another replica, expired) is planned again.
    plans: PlanCache,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlightSql")
    }
}

impl FlightSql {
    pub fn new(engine: Arc<QueryEngine>) -> Result<Self, Error> {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "Global Brain");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(
            SqlInfo::FlightSqlServerStatementTimeout,
            engine.limits().timeout.as_millis().min(i32::MAX as u128) as i32,
        );
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let sql_info = b
            .build()
            .map_err(|e| Error::Startup(format!("flight sql info: {e}")))?;
        Ok(Self {
            engine,
            sql_info,
            plans: PlanCache::default(),
        })
    }

    fn keep_plan(&self, tenant: &str, ticket: Bytes, planned: Planned) {
        let mut plans = match self.plans.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        plans.retain(|(_, _, at, _)| at.elapsed() < PLAN_CACHE_TTL);
        if plans.len() >= PLAN_CACHE_ENTRIES {
            plans.pop_front();
        }
        plans.push_back((tenant.to_string(), ticket, Instant::now(), planned));
    }

    fn take_plan(&self, tenant: &str, ticket: &[u8]) -> Option<Planned> {
        let mut plans = match self.plans.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let i = plans.iter().position(|(t, k, at, _)| {
            t == tenant && k.as_ref() == ticket && at.elapsed() < PLAN_CACHE_TTL
        })?;
        plans.remove(i).map(|(_, _, _, p)| p)
    }

    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
    }

    fn analyst<T>(request: &Request<T>) -> Result<Principal, Status> {
        let p = Principal::from_request(request)?.clone();
        p.require(Role::Analyst)?;
        Ok(p)
    }

    fn snapshot_of<T>(request: &Request<T>) -> Result<Option<String>, Status> {
        match request.metadata().get(SNAPSHOT_HEADER) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
                .map_err(|_| Status::invalid_argument(format!("{SNAPSHOT_HEADER}: not text"))),
        }
    }

    fn execution_of<T>(request: &Request<T>) -> Result<Option<String>, Status> {
        match request.metadata().get(EXECUTION_HEADER) {
            None => Ok(None),
            Some(v) => {
                let text = v.to_str().map_err(|_| {
                    Status::invalid_argument(format!("{EXECUTION_HEADER}: not text"))
                })?;
                let execution: Execution = text
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("{EXECUTION_HEADER}: {e}")))?;
                Ok(match execution {
                    Execution::Auto => None,
                    Execution::Local => Some("local".into()),
                    Execution::Distributed => Some("distributed".into()),
                })
            }
        }
    }

    /// Plans a statement and describes where to fetch its result.
    async fn flight_info(
        &self,
        principal: &Principal,
        handle: Handle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let tenant = principal.tenant.as_str();
        let seq = self
            .engine
            .resolve(tenant, handle.snapshot.as_deref())
            .await
            .map_err(|e| logged(principal, e))?;
        let params = handle
            .params
            .is_some()
            .then(|| handle.parameters())
            .transpose()?;
        let sql = handle.sql.clone();
        let ticket = Handle {
            sql: handle.sql,
            seq: Some(seq),
            params: handle.params,
            snapshot: None,
            execution: handle.execution,
        };
        let ticket = TicketStatementQuery {
            statement_handle: ticket.encode()?,
        };
        // A prepared statement created a moment ago planned this already.
        let schema = match self.take_plan(tenant, &ticket.statement_handle) {
            Some(planned) => {
                let schema = planned.schema();
                self.keep_plan(tenant, ticket.statement_handle.clone(), planned);
                schema
            }
            None => {
                let (described, planned) = self
                    .engine
                    .prepare(tenant, seq, &sql, params)
                    .await
                    .map_err(|e| logged(principal, e))?;
                if let Some(planned) = planned {
                    self.keep_plan(tenant, ticket.statement_handle.clone(), planned);
                }
                described.schema
            }
        };
        let endpoint = FlightEndpoint::new().with_ticket(Ticket {
            ticket: ticket.as_any().encode_to_vec().into(),
        });
        FlightInfo::new()
            .try_with_schema(&hydrated(&schema))
            .map_err(|e| Status::internal(format!("schema: {e}")))
            .map(|info| {
                info.with_endpoint(endpoint)
                    .with_descriptor(descriptor)
                    .with_ordered(true)
            })
    }

    /// Streams a batch as Flight data.
    fn batch_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> FlightStream {
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream)
            .map_err(Status::from)
            .boxed()
    }

    /// A FlightInfo whose ticket is the command itself (metadata calls).
    fn command_info(
        command: impl ProstMessageExt,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket {
            ticket: command.as_any().encode_to_vec().into(),
        });
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    async fn schema_names(&self, tenant: &str) -> Result<Vec<String>, Status> {
        let mut names = vec![PUBLIC.to_string()];
        let snapshots = self
            .engine
            .catalog()
            .snapshots(tenant)
            .await
            .map_err(|e| Status::from(Error::from(e)))?;
        names.extend(
            snapshots
                .into_iter()
                .map(|(n, _, _)| format!("{SNAPSHOT_PREFIX}{n}")),
        );
        Ok(names)
    }
}

/// Logs an error at the level its cause deserves and turns it into a status.
fn logged(principal: &Principal, e: Error) -> Status {
    if e.is_client_error() {
        tracing::info!(token = %principal.token_name, error = %e, "query rejected");
    } else {
        tracing::warn!(token = %principal.token_name, error = %e, "query failed");
    }
    Status::from(e)
}

fn read_only() -> Status {
    Status::permission_denied(
        "the query service is read-only: statements that write are not allowed",
    )
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The auth layer has checked the bearer token; there is nothing to exchange.
        Self::analyst(&request)?;
        let out = futures::stream::once(async {
            Ok(HandshakeResponse {
                protocol_version: 0,
                payload: Bytes::new(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let p = Self::analyst(&request)?;
        let handle = Handle {
            sql: query.query,
            snapshot: Self::snapshot_of(&request)?,
            execution: Self::execution_of(&request)?,
            ..Handle::default()
        };
        let descriptor = request.into_inner();
        Ok(Response::new(
            self.flight_info(&p, handle, descriptor).await?,
        ))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let p = Self::analyst(&request)?;
        let mut handle = Handle::decode(&query.prepared_statement_handle, "prepared statement")?;
        if let Some(s) = Self::snapshot_of(&request)? {
            handle.snapshot = Some(s);
        }
        if let Some(e) = Self::execution_of(&request)? {
            handle.execution = Some(e);
        }
        let descriptor = request.into_inner();
        Ok(Response::new(
            self.flight_info(&p, handle, descriptor).await?,
        ))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let p = Self::analyst(&request)?;
        let tenant = p.tenant.as_str();
        let handle = Handle::decode(&ticket.statement_handle, "ticket")?;
        // The ticket's setting, or this request's header.
        let execution: Execution = match Self::execution_of(&request)? {
            Some(e) => e,
            None => handle.execution.clone().unwrap_or_default(),
        }
        .parse()
        .map_err(|e: String| Status::invalid_argument(format!("ticket: {e}")))?;
        let stream = match self.take_plan(tenant, &ticket.statement_handle) {
            Some(planned) => self
                .engine
                .run_planned(
                    planned.with_execution(execution),
                    self.engine.limits().timeout,
                )
                .await
                .map_err(|e| logged(&p, e))?,
            None => {
                let Some(seq) = handle.seq else {
                    return Err(Status::invalid_argument("ticket: no commit"));
                };
                self.engine
                    .check_seq(seq)
                    .await
                    .map_err(|e| logged(&p, e))?;
                let params = handle.parameters()?;
                self.engine
                    .run(tenant, seq, &handle.sql, params, execution)
                    .await
                    .map_err(|e| logged(&p, e))?
            }
        };
        let schema = Arc::new(hydrated(&stream.schema()));
        let limit = self.engine.limits().max_result_bytes;
        let metrics = self.engine.metrics().clone();
        let token = p.token_name.clone();
        let batches = stream.map(move |b| {
            b.inspect(|b| {
                metrics.result_rows.inc_by(b.num_rows() as u64);
            })
            .map_err(|e| FlightError::Tonic(Box::new(logged_named(&token, e))))
        });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(MAX_FLIGHT_DATA_BYTES)
            .build(batches);
        let metrics = self.engine.metrics().clone();
        let mut sent: u64 = 0;
        let limited = data.map(move |d| {
            let d = d.map_err(Status::from)?;
            sent += (d.data_body.len() + d.data_header.len()) as u64;
            metrics.result_bytes.inc_by((d.data_body.len() + d.data_header.len()) as u64);
            if sent > limit {
                metrics.finished(crate::metrics::Outcome::Limited);
                return Err(Status::resource_exhausted(format!(
                    "the result exceeds the limit of {limit} bytes: aggregate, filter or add a LIMIT"
                )));
            }
            Ok(d)
        });
        // Stop at the first error: nothing follows a failed or limited result.
        let mut failed = false;
        let stream = limited.take_while(move |r| {
            let go = !failed;
            failed |= r.is_err();
            futures::future::ready(go)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        Self::analyst(&request)?;
        let mut handle = Handle::decode(&query.prepared_statement_handle, "prepared statement")?;
        let flight = request
            .into_inner()
            .map_err(|e| FlightError::Tonic(Box::new(e)));
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight)
                .try_collect()
                .await
                .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        let batch = match batches.as_slice() {
            [b] => b.clone(),
            [] => return Err(Status::invalid_argument("parameters: no values were bound")),
            _ => {
                return Err(Status::invalid_argument(
                    "parameters: bind one row of values per execution",
                ));
            }
        };
        row_values(&batch)?;
        handle.params = Some(hex::encode(ipc_bytes(&batch)?));
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode()?),
        })
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let p = Self::analyst(&request)?;
        let snapshot = Self::snapshot_of(&request)?;
        let execution = Self::execution_of(&request)?;
        let tenant = p.tenant.as_str();
        let seq = self
            .engine
            .resolve(tenant, snapshot.as_deref())
            .await
            .map_err(|e| logged(&p, e))?;
        let (described, planned) = self
            .engine
            .prepare(tenant, seq, &query.query, None)
            .await
            .map_err(|e| logged(&p, e))?;
        if let Some(planned) = planned {
            // ADBC prepares every statement, then asks for its FlightInfo: plan once.
            let key = Handle {
                sql: query.query.clone(),
                seq: Some(seq),
                params: None,
                snapshot: None,
                execution: execution.clone(),
            };
            self.keep_plan(tenant, key.encode()?, planned);
        }
        let params = Schema::new(
            described
                .parameters
                .iter()
                .map(|(name, ty)| Field::new(name, ty.clone().unwrap_or(DataType::Null), true))
                .collect::<Vec<_>>(),
        );
        let handle = Handle {
            sql: query.query,
            snapshot,
            execution,
            ..Handle::default()
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode()?,
            dataset_schema: schema_bytes(&hydrated(&described.schema))?,
            parameter_schema: schema_bytes(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles hold no server state.
        Self::analyst(&request)?;
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::analyst(&request)?;
        Self::command_info(query, &self.sql_info.schema(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        Self::analyst(&request)?;
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(format!("sql info: {e}")))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::analyst(&request)?;
        let schema = query.into_builder().schema();
        Self::command_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        Self::analyst(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(format!("catalogs: {e}")))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::analyst(&request)?;
        let schema = query.clone().into_builder().schema();
        Self::command_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let p = Self::analyst(&request)?;
        let mut builder = query.into_builder();
        for name in self.schema_names(p.tenant.as_str()).await? {
            builder.append(CATALOG, name);
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(format!("schemas: {e}")))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::analyst(&request)?;
        let schema = query.clone().into_builder().schema();
        Self::command_info(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let p = Self::analyst(&request)?;
        let tenant = p.tenant.as_str();
        let seq = self
            .engine
            .resolve(tenant, None)
            .await
            .map_err(|e| logged(&p, e))?;
        let ctx = self
            .engine
            .session(tenant, seq, true)
            .await
            .map_err(|e| logged(&p, e))?;
        let schemas = self.schema_names(tenant).await?;
        let mut builder = query.into_builder();
        for schema_name in &schemas {
            for table in TABLES {
                let reference = format!("{CATALOG}.{schema_name}.{table}");
                let provider = ctx
                    .table_provider(reference.as_str())
                    .await
                    .map_err(|e| Status::from(Error::from(e)))?;
                builder
                    .append(
                        CATALOG,
                        schema_name,
                        table,
                        "TABLE",
                        &hydrated(&provider.schema()),
                    )
                    .map_err(|e| Status::internal(format!("tables: {e}")))?;
            }
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(format!("tables: {e}")))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Self::analyst(&request)?;
        let schema = query.into_builder().schema();
        Self::command_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        Self::analyst(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(format!("table types: {e}")))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Self::analyst(&request)?;
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Self::analyst(&request)?;
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Self::analyst(&request)?;
        Err(read_only())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Self::analyst(&request)?;
        Err(Status::unimplemented(
            "substrait plans are not supported; send SQL",
        ))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn logged_named(token: &str, e: Error) -> Status {
    if e.is_client_error() {
        tracing::info!(token = %token, error = %e, "query stopped");
    } else {
        tracing::warn!(token = %token, error = %e, "query failed while running");
    }
    Status::from(e)
}
