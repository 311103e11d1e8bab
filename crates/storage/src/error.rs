/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("invalid object store url {url:?}: {reason}")]
    Url { url: String, reason: String },

    /// Stored data does not have the shape this code wrote: a bug or tampering, never the
    /// client's fault.
    #[error("corrupt stored data at {path}: {reason}")]
    Corrupt { path: String, reason: String },

    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
