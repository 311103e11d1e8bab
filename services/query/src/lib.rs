//! The query service: what the hospitals submitted, queried with SQL over Arrow Flight SQL.
//!
//! DataFusion plans and runs the SQL. The tables ([`tables`]) and fusion functions
//! ([`functions`]) are built per query from the caller's tenant view as of one catalog commit
//! ([`context`]), so isolation and consistency hold below SQL. [`guard`] keeps SQL read-only;
//! [`engine`] runs it on a dedicated executor within memory, time and size limits; [`flight`]
//! speaks Flight SQL and [`snapshots`] manages named snapshots.

pub mod context;
pub mod distributed;
pub mod engine;
mod error;
pub mod flight;
pub mod functions;
pub mod guard;
pub mod metrics;
pub mod snapshots;
pub mod tables;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use gbrain_catalog::Catalog;
use gbrain_common::auth::Authenticator;
use gbrain_common::clap_blocks::QueryServeArgs;
use gbrain_common::clock::{Clock, SystemClock};
use gbrain_common::metrics::GrpcMetrics;
use gbrain_common::server::{Listeners, ServeArgs, serve};
use gbrain_proto::query::v1::snapshot_service_server::SnapshotServiceServer;
use object_store::ObjectStore;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use engine::{
    DistributedConfig, Execution, QueryConfig, QueryDeps, QueryEngine, QueryLimits, QueryStream,
};
pub use error::{Error, Result, datafusion_status};
pub use metrics::QueryMetrics;

/// The Flight service's gRPC name.
pub const FLIGHT_SERVICE_NAME: &str = "arrow.flight.protocol.FlightService";

/// Every Flight method, for metric labels (Flight's descriptors are not compiled in).
pub fn flight_method_paths() -> Vec<String> {
    [
        "Handshake",
        "ListFlights",
        "GetFlightInfo",
        "PollFlightInfo",
        "GetSchema",
        "DoGet",
        "DoPut",
        "DoExchange",
        "DoAction",
        "ListActions",
    ]
    .iter()
    .map(|m| format!("/{FLIGHT_SERVICE_NAME}/{m}"))
    .collect()
}

impl QueryConfig {
    pub fn from_args(args: &gbrain_common::clap_blocks::QueryArgs) -> Self {
        let defaults = Self::default();
        Self {
            limits: QueryLimits {
                memory_bytes: args.query_memory_bytes,
                timeout: Duration::from_secs(args.query_timeout_seconds.max(1)),
                max_result_bytes: args.query_max_result_bytes,
                ..defaults.limits
            },
            threads: if args.query_threads == 0 {
                defaults.threads
            } else {
                args.query_threads
            },
            spill_dir: args.query_spill_dir.clone(),
            distributed: args
                .ballista_scheduler
                .as_deref()
                .map(|s| DistributedConfig {
                    scheduler: s.to_string(),
                    threshold_bytes: args.ballista_threshold_bytes,
                }),
            ..defaults
        }
    }
}

/// `(host, port)` of a Ballista scheduler given as `df://host:port`, `http://host:port` or
/// `host:port` (port 50050 when none is given; an IPv6 host keeps its brackets).
pub fn scheduler_host_port(s: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::invalid(
            "ballista-scheduler",
            format!("{s:?}: {why}; expected df://host:port (Ballista's ports speak plain gRPC)"),
        )
    };
    let t = s.trim();
    let rest = t
        .strip_prefix("df://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t)
        .trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains("://") || rest.contains('/') {
        return Err(bad("not a host and port"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("text after the address")),
        };
        (format!("[{inner}]"), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match port {
        None => 50050,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number"))?,
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    Ok((host, port))
}

/// `http://host:port` of a scheduler given as for [`scheduler_host_port`].
pub fn scheduler_url(s: &str) -> Result<String> {
    let (host, port) = scheduler_host_port(s)?;
    Ok(format!("http://{host}:{port}"))
}

/// The query service's parts, for its own process or the embedded cluster.
#[derive(Clone, Debug)]
pub struct Query {
    pub engine: Arc<QueryEngine>,
    clock: Arc<dyn Clock>,
}

impl Query {
    pub fn new(config: QueryConfig, deps: QueryDeps, clock: Arc<dyn Clock>) -> Result<Self> {
        Ok(Self {
            engine: QueryEngine::new(config, deps)?,
            clock,
        })
    }

    pub fn flight_service(&self) -> Result<FlightServiceServer<flight::FlightSql>> {
        Ok(flight::FlightSql::new(Arc::clone(&self.engine))?.into_server())
    }

    pub fn snapshot_service(&self) -> SnapshotServiceServer<snapshots::Snapshots> {
        snapshots::Snapshots::new(Arc::clone(&self.engine), Arc::clone(&self.clock)).into_server()
    }

    pub fn catalog(&self) -> &Catalog {
        self.engine.catalog()
    }
}

#[derive(Debug)]
pub struct ServeConfig {
    pub query: QueryConfig,
    pub object_store_url: String,
    pub object_store_options: Vec<(String, String)>,
    pub catalog_url: String,
    pub auth: Arc<Authenticator>,
    pub drain_delay: Duration,
}

impl ServeConfig {
    pub fn from_args(
        args: &QueryServeArgs,
        auth: Arc<Authenticator>,
        object_store_options: Vec<(String, String)>,
    ) -> Self {
        Self {
            query: QueryConfig::from_args(&args.query),
            object_store_url: args.store.object_store.clone(),
            object_store_options,
            catalog_url: args.catalog.catalog.clone(),
            auth,
            drain_delay: Duration::from_secs(args.server.drain_seconds),
        }
    }
}

/// Serves queries until `shutdown`.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let store: Arc<dyn ObjectStore> =
        gbrain_storage::store::open(&config.object_store_url, &config.object_store_options)
            .map_err(|e| Error::Startup(e.to_string()))?;
    let catalog = Catalog::connect(&config.catalog_url).await?;
    let mut registry = Registry::default();
    let metrics = QueryMetrics::register(&mut registry);
    let query = Query::new(
        config.query,
        QueryDeps {
            store,
            catalog: catalog.clone(),
            metrics,
        },
        Arc::new(SystemClock),
    )?;
    let grpc_metrics = GrpcMetrics::register(&mut registry);
    serve(ServeArgs {
        routes: tonic::service::Routes::new(query.flight_service()?)
            .add_service(query.snapshot_service()),
        service_names: vec![FLIGHT_SERVICE_NAME, snapshots::SERVICE_NAME],
        descriptor_sets: vec![gbrain_proto::FILE_DESCRIPTOR_SET],
        extra_method_paths: flight_method_paths(),
        health: tonic_health::server::HealthReporter::new(),
        auth: config.auth,
        metrics: grpc_metrics,
        registry: Arc::new(registry),
        listeners,
        shutdown,
        drain_delay: config.drain_delay,
    })
    .await
    .map_err(|e| Error::Startup(e.to_string()))?;
    catalog.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scheduler_addresses() {
        for (given, want) in [
            ("df://sched:50050", ("sched", 50050)),
            ("http://10.0.0.7:80", ("10.0.0.7", 80)),
            ("sched", ("sched", 50050)),
            ("df://[::1]:7000/", ("[::1]", 7000)),
            ("[fe80::2]", ("[fe80::2]", 50050)),
        ] {
            let (host, port) = scheduler_host_port(given).unwrap();
            assert_eq!((host.as_str(), port), want, "{given}");
        }
        assert_eq!(scheduler_url("df://s:1").unwrap(), "http://s:1");
        for bad in [
            "",
            "https://s:50050",
            "grpc://s",
            "s:port",
            "df://s:1/x",
            "[::1",
        ] {
            let e = scheduler_host_port(bad).unwrap_err().to_string();
            assert!(e.starts_with("ballista-scheduler"), "{bad}: {e}");
        }
    }
}
