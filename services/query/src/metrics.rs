//! Query metrics, with units in their names. Labels never carry SQL text or tenant data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// How a query ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Bad SQL or a refused statement.
    Rejected,
    /// Past a limit: memory, time or result size.
    Limited,
    /// The client went away before the end.
    Cancelled,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Limited => "limited",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn of_status(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => Self::Ok,
            tonic::Code::ResourceExhausted => Self::Limited,
            tonic::Code::Cancelled => Self::Cancelled,
            tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unauthenticated
            | tonic::Code::AlreadyExists
            | tonic::Code::OutOfRange => Self::Rejected,
            tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss => Self::Failed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueryMetrics {
    pub queries: Family<OutcomeLabels, Counter>,
    pub active: Gauge,
    pub duration_seconds: Histogram,
    pub result_rows: Counter,
    pub result_bytes: Counter,
    /// Queries sent to Ballista.
    pub distributed: Counter,
}

impl QueryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("gbrain_query");
        r.register(
            "queries",
            "Finished queries by outcome (ok, rejected, limited, cancelled, failed)",
            m.queries.clone(),
        );
        r.register("active", "Queries executing now", m.active.clone());
        r.register(
            "duration_seconds",
            "Time from planning to the last batch sent",
            m.duration_seconds.clone(),
        );
        r.register("result_rows", "Rows sent to clients", m.result_rows.clone());
        r.register(
            "result_bytes",
            "Arrow IPC bytes sent to clients",
            m.result_bytes.clone(),
        );
        r.register(
            "distributed",
            "Queries sent to the Ballista scheduler",
            m.distributed.clone(),
        );
        m
    }

    pub fn finished(&self, outcome: Outcome) {
        self.queries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

impl Default for QueryMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            active: Gauge::default(),
            duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            result_rows: Counter::default(),
            result_bytes: Counter::default(),
            distributed: Counter::default(),
        }
    }
}
