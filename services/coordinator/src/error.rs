//! Coordinator errors.

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's request is wrong: names the field and the reason.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// Not enough data for what was asked (a fit with too few labelled windows, say).
    #[error("{0}")]
    NotEnoughData(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
