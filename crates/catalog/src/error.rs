/// Catalog errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalog database: {0}")]
    Database(#[from] sqlx::Error),

    #[error("invalid catalog url {url:?}: {reason}")]
    Url { url: String, reason: String },

    /// A commit came after garbage collection had taken its pending write (and its objects):
    /// nothing was committed, and the work must be done again.
    #[error("write {0} was collected before it committed; nothing was committed")]
    WriteCollected(String),

    /// A snapshot of that name exists already.
    #[error("snapshot {0:?} exists already")]
    SnapshotExists(String),

    /// A row does not have the shape this code wrote.
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
