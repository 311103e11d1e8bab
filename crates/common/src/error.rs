/// Errors of the shared building blocks: configuration that cannot be loaded or used, and
/// servers that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("auth file {path}: {reason}")]
    AuthFile { path: String, reason: String },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
