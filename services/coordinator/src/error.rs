//! Coordinator errors.

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's request is wrong: names the field and the reason.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// The request is sound but the state is not (the stream is not open, say).
    #[error("{field}: {reason}")]
    FailedPrecondition { field: String, reason: String },

    /// Not enough data for what was asked (a fit with too few labelled windows, say).
    #[error("{0}")]
    NotEnoughData(String),

    /// No inference node decoded a window.
    #[error("inference: {0}")]
    Inference(String),

    /// The sample source failed.
    #[error("live stream: {0}")]
    Source(String),

    /// A limit is reached.
    #[error("{0}")]
    Exhausted(String),

    /// Storing rows failed.
    #[error("storing loop rows: {0}")]
    Records(String),

    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] gbrain_catalog::Error),

    /// The caller may not do this (say, follow a stream through ingest).
    #[error("{0}")]
    Denied(String),

    /// The model repository refused or failed a push.
    #[error("model repository: {0}")]
    Models(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Self::invalid_argument(msg),
            Error::FailedPrecondition { .. } | Error::NotEnoughData(_) => {
                Self::failed_precondition(msg)
            }
            Error::Inference(_) | Error::Source(_) => Self::unavailable(msg),
            Error::Exhausted(_) => Self::resource_exhausted(msg),
            Error::Records(_) | Error::Catalog(_) | Error::Models(_) => Self::unavailable(msg),
            Error::Denied(_) => Self::permission_denied(msg),
        }
    }
}

impl Error {
    pub fn precondition(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
