//! Ingest errors and the one place they become gRPC statuses.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The submitted bytes or fields are malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// The request is well formed but does not fit the state it addresses (wrong offset,
    /// unknown upload, a format an export cannot produce).
    #[error("{field}: {reason}")]
    FailedPrecondition { field: String, reason: String },

    #[error("{0}")]
    NotFound(String),

    /// A size limit.
    #[error("{field}: {reason}")]
    TooLarge { field: String, reason: String },

    /// The file is malformed.
    #[error("{0}")]
    Format(gbrain_formats::Error),

    #[error("storage: {0}")]
    Storage(#[from] gbrain_storage::Error),

    #[error("catalog: {0}")]
    Catalog(#[from] gbrain_catalog::Error),

    /// The client went away or the server is shutting down.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// Another call holds what this one needs; retrying later works.
    #[error("{0}")]
    Conflict(String),

    /// The node is draining: the client should resume elsewhere or after the restart.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The request stream itself failed (a message that did not decode or was too large, or a
    /// client that went away): its status, unchanged.
    #[error("request stream: {}", .0.message())]
    Stream(tonic::Status),

    #[error("internal: {0}")]
    Internal(String),

    /// The service could not start (bad configuration, unreachable store or catalog).
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

    pub fn precondition(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn too_large(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::TooLarge {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// True when the client caused it.
    pub fn is_client_error(&self) -> bool {
        match self {
            Self::InvalidArgument { .. }
            | Self::FailedPrecondition { .. }
            | Self::NotFound(_)
            | Self::TooLarge { .. }
            | Self::Cancelled(_)
            | Self::Conflict(_)
            | Self::Unavailable(_)
            | Self::Stream(_) => true,
            Self::Format(e) => !matches!(e, gbrain_formats::Error::Io(_)),
            Self::Storage(_) | Self::Catalog(_) | Self::Internal(_) | Self::Startup(_) => false,
        }
    }
}

impl From<gbrain_formats::Error> for Error {
    fn from(e: gbrain_formats::Error) -> Self {
        Self::Format(e)
    }
}

/// Every ingest error becomes a status here and nowhere else. The match is exhaustive, so a
/// new variant cannot slip through as Internal. Client errors are logged at info, server faults
/// at error; neither message carries personal data (the format crate never echoes header text).
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        if e.is_client_error() {
            tracing::info!(error = %e, "request rejected");
        } else {
            tracing::error!(error = %e, "request failed");
        }
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::FailedPrecondition { .. } => Status::failed_precondition(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::TooLarge { .. } => Status::resource_exhausted(msg),
            Error::Format(f) => match f {
                gbrain_formats::Error::Invalid { .. }
                | gbrain_formats::Error::Unsupported { .. } => Status::invalid_argument(msg),
                gbrain_formats::Error::Io(_) => Status::unavailable(msg),
            },
            // The object store failing may pass; stored files that do not decode will not.
            Error::Storage(
                gbrain_storage::Error::ObjectStore(_) | gbrain_storage::Error::Io(_),
            ) => Status::unavailable(msg),
            Error::Storage(gbrain_storage::Error::Corrupt { .. }) => Status::data_loss(msg),
            Error::Storage(_) => Status::internal(msg),
            Error::Catalog(_) => Status::unavailable(msg),
            Error::Cancelled(_) => Status::cancelled(msg),
            Error::Conflict(_) => Status::aborted(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Stream(status) => status,
            Error::Internal(_) | Error::Startup(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn storage_errors_say_whether_a_retry_can_help() {
        let code = |e: gbrain_storage::Error| Status::from(Error::Storage(e)).code();
        let store = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        assert_eq!(code(store.into()), Code::Unavailable);
        assert_eq!(
            code(std::io::Error::other("disk gone").into()),
            Code::Unavailable
        );
        let corrupt = gbrain_storage::Error::Corrupt {
            path: "p".into(),
            reason: "no gbrain.first_sample metadata".into(),
        };
        assert_eq!(code(corrupt), Code::DataLoss);
        let url = gbrain_storage::Error::Url {
            url: "x://".into(),
            reason: "unknown scheme".into(),
        };
        assert_eq!(code(url), Code::Internal);
    }
}
