//! Log output for binaries. Libraries only emit `tracing` events; a binary calls [`init`] once.

use tracing_subscriber::EnvFilter;

use crate::clap_blocks::LogFormat;

/// Installs the global subscriber: `RUST_LOG` levels (default `info`, with ONNX Runtime's
/// chatter held at `warn`), text or JSON lines on stderr.
pub fn init(format: LogFormat, rust_log: Option<&str>) {
    let filter = EnvFilter::try_new(rust_log.unwrap_or("info,ort=warn"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call (tests, embedded use) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
