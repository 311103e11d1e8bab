//! Query errors and the one place they become gRPC statuses.

use datafusion::error::DataFusionError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request field (not SQL: SQL errors come as [`Error::DataFusion`]).
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// A statement that would write or touch files, or a caller without the analyst role.
    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    NotFound(String),

    /// A request this service cannot serve as configured (say, Ballista without a scheduler).
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0}")]
    AlreadyExists(String),

    /// A query past one of its limits: memory, time or result size.
    #[error("{0}")]
    ResourceExhausted(String),

    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    #[error("catalog: {0}")]
    Catalog(#[from] gbrain_catalog::Error),

    /// The client went away or the server is shutting down.
    #[error("cancelled: {0}")]
    Cancelled(String),

    #[error("internal: {0}")]
    Internal(String),

    /// The service could not start (bad configuration, unreachable store or catalog).
    #[error("startup: {0}")]
    Startup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::DataFusion(DataFusionError::from(e))
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// True when the client caused it (logged at info, not warn).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            Status::from(self).code(),
            tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::Unknown
        )
    }
}

impl From<&Error> for Status {
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::PermissionDenied(m) => Status::permission_denied(m.clone()),
            Error::NotFound(m) => Status::not_found(m.clone()),
            Error::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            Error::AlreadyExists(m) => Status::already_exists(m.clone()),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
            Error::DataFusion(d) => datafusion_status(d),
            Error::Catalog(c) => match c {
                gbrain_catalog::Error::SnapshotExists(_) => Status::already_exists(c.to_string()),
                gbrain_catalog::Error::Database(_) => Status::unavailable(e.to_string()),
                gbrain_catalog::Error::Url { .. }
                | gbrain_catalog::Error::WriteCollected(_)
                | gbrain_catalog::Error::Corrupt(_) => Status::internal(e.to_string()),
            },
            Error::Cancelled(_) => Status::cancelled(e.to_string()),
            Error::Internal(_) | Error::Startup(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::from(&e)
    }
}

/// The status of a DataFusion error, by its root cause.
/// The status of a Ballista job that failed, from its text: lost executors, shuffle fetches,
/// I/O and storage are Unavailable (running it again can work), memory ResourceExhausted,
/// plans the cluster could not read Internal, the rest (errors in the query itself)
/// InvalidArgument.
fn ballista_job_status(message: &str) -> Status {
    let has = |words: &[&str]| words.iter().any(|w| message.contains(w));
    if has(&["ResourcesExhausted", "Resources exhausted"]) {
        Status::resource_exhausted(format!("on Ballista: {message}"))
    } else if has(&[
        "ExecutorLost",
        "FetchPartitionError",
        "IoError",
        "IOError",
        "ObjectStore",
        "ResultLost",
        "TaskKilled",
    ]) {
        Status::unavailable(format!("on Ballista: {message}"))
    } else if has(&["Could not parse plan", "Internal(", "ParquetError"]) {
        Status::internal(format!("on Ballista: {message}"))
    } else {
        Status::invalid_argument(message.to_string())
    }
}

pub fn datafusion_status(e: &DataFusionError) -> Status {
    let root = e.find_root();
    let message = root.to_string();
    // Ballista reports a scheduler or executor it cannot reach as text of tonic's error.
    if message.contains("tonic::transport::Error") {
        return Status::unavailable(format!("Ballista could not be reached: {message}"));
    }
    // And a failed job as text: what failed is in it.
    if message.contains("Job failed due to") || message.contains("Could not parse plan") {
        return ballista_job_status(&message);
    }
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => Status::invalid_argument(message),
        DataFusionError::ResourcesExhausted(m) => {
            Status::resource_exhausted(format!("query exceeded its memory limit: {m}"))
        }
        DataFusionError::External(inner) => {
            if let Some(ours) = inner.downcast_ref::<Error>() {
                Status::from(ours)
            } else if let Some(status) = inner.downcast_ref::<Status>() {
                status.clone()
            } else if inner.downcast_ref::<object_store::Error>().is_some() {
                Status::unavailable(format!("storage: {message}"))
            } else {
                Status::internal(message)
            }
        }
        DataFusionError::ObjectStore(_) => Status::unavailable(format!("storage: {message}")),
        DataFusionError::ParquetError(_)
        | DataFusionError::IoError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Substrait(_)
        | DataFusionError::Ffi(_)
        | DataFusionError::Collection(_) => Status::internal(message),
        // find_root unwraps these; a root never is one.
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_status(inner)
        }
        DataFusionError::Shared(inner) => datafusion_status(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_datafusion_errors_by_root_cause() {
        let plan = DataFusionError::Context(
            "planning".into(),
            Box::new(DataFusionError::Plan("no column x".into())),
        );
        assert_eq!(
            datafusion_status(&plan).code(),
            tonic::Code::InvalidArgument
        );
        let memory = DataFusionError::Shared(std::sync::Arc::new(
            DataFusionError::ResourcesExhausted("sort needs 1 GB".into()),
        ));
        assert_eq!(
            datafusion_status(&memory).code(),
            tonic::Code::ResourceExhausted
        );
        let ours = DataFusionError::External(Box::new(Error::PermissionDenied("no".into())));
        assert_eq!(
            datafusion_status(&ours).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            datafusion_status(&DataFusionError::Internal("bug".into())).code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn tells_failed_ballista_jobs_apart() {
        let job = |why: &str| {
            datafusion_status(&DataFusionError::Execution(format!(
                "Job 038HAXX4KM000 failed: Job failed due to stage 0 failed: {why}"
            )))
            .code()
        };
        // The texts Ballista 55 writes for these failures.
        assert_eq!(
            job(
                "Task failed due to runtime execution error: DataFusionError(Shared(Execution(\"band_power takes 5 arguments\")))"
            ),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            job("Stage 2 has failed 4 times, most recent failure reason: FetchPartitionError"),
            tonic::Code::Unavailable
        );
        assert_eq!(job("ExecutorLost: executor-2"), tonic::Code::Unavailable);
        assert_eq!(
            job("DataFusionError(ResourcesExhausted(\"sort\"))"),
            tonic::Code::ResourceExhausted
        );
        let unreachable = DataFusionError::Execution(
            "tonic::transport::Error(Transport, ConnectError(\"tcp connect error\"))".into(),
        );
        assert_eq!(
            datafusion_status(&unreachable).code(),
            tonic::Code::Unavailable
        );
    }
}
