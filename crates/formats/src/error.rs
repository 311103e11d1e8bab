use std::fmt;

/// Errors of the format readers.
///
/// `Invalid` is the client's fault: the input does not follow the format. `Io` is a failure of
/// the byte source underneath the reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is malformed: `field` names where, `reason` says what is wrong.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },

    /// The input is well formed but uses something this reader does not support.
    #[error("{field}: unsupported: {reason}")]
    Unsupported { field: String, reason: String },

    /// Reading the underlying bytes failed.
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn unsupported(field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Self::Unsupported {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The field this error names, if it is about the input rather than IO.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Unsupported { field, .. } => Some(field),
            Self::Io(_) => None,
        }
    }
}
