//! Inference errors and the one place they become gRPC statuses.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: the field and the reason.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// An unknown model or version.
    #[error("{0}")]
    NotFound(String),

    /// The model exists but cannot serve: not loaded yet, failed to load, or unloaded.
    #[error("{0}")]
    Unavailable(String),

    /// The queue is full, or a request waited past its deadline.
    #[error("{0}")]
    ResourceExhausted(String),

    #[error("{0}")]
    DeadlineExceeded(String),

    /// A model file or configuration that cannot be served.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("object store: {0}")]
    Store(#[from] object_store::Error),

    #[error("onnx runtime: {0}")]
    Runtime(String),

    #[error("internal: {0}")]
    Internal(String),

    /// The service could not start (bad configuration, no ONNX Runtime library).
    #[error("startup: {0}")]
    Startup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Error {
    /// The same error again, for each request of a batch that failed.
    pub fn replicate(&self) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::invalid(field, reason),
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::ResourceExhausted(m) => Self::ResourceExhausted(m.clone()),
            Self::DeadlineExceeded(m) => Self::DeadlineExceeded(m.clone()),
            Self::FailedPrecondition(m) => Self::FailedPrecondition(m.clone()),
            Self::Store(e) => Self::Unavailable(format!("object store: {e}")),
            Self::Runtime(m) => Self::Runtime(m.clone()),
            Self::Internal(m) => Self::Internal(m.clone()),
            Self::Startup(m) => Self::Startup(m.clone()),
        }
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Self::Runtime(e.to_string())
    }
}

impl From<&Error> for Status {
    fn from(e: &Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::Unavailable(_) => Status::unavailable(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Store(_) => Status::unavailable(message),
            Error::Runtime(_) | Error::Internal(_) | Error::Startup(_) => Status::internal(message),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::from(&e)
    }
}

impl From<gbrain_storage::Error> for Error {
    fn from(e: gbrain_storage::Error) -> Self {
        match e {
            gbrain_storage::Error::ObjectStore(e) => Self::Store(e),
            other => Self::Internal(other.to_string()),
        }
    }
}
