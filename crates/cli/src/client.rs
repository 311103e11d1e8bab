//! Connecting to the cluster with a bearer token.

use anyhow::Context;
use gbrain_common::clap_blocks::{ClientArgs, ClientTlsArgs};
use gbrain_common::tls::ClientTls;
use gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self(match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token must be printable ASCII")?,
            ),
            None => None,
        }))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Ingest = IngestServiceClient<InterceptedService<Channel, Bearer>>;

/// A connection to `server`: `http://host:port`, or `https://host:port` over TLS, trusting
/// and presenting what `tls` names.
pub async fn connect_channel(server: &str, tls: &ClientTlsArgs) -> anyhow::Result<Channel> {
    ClientTls::from_args(tls)?
        .endpoint(server)
        .with_context(|| format!("invalid server address {server:?}"))?
        .initial_stream_window_size(gbrain_common::server::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(gbrain_common::server::CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach {server}"))
}

pub async fn ingest(args: &ClientArgs) -> anyhow::Result<Ingest> {
    let bearer = Bearer::new(args.token.as_deref())?;
    let channel = connect_channel(&args.server, &args.tls).await?;
    Ok(IngestServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A gRPC status as a one-line error. A status the client made itself (the connection failed)
/// carries its cause, such as the TLS alert of a server that refused the certificate: it is
/// added, since the status alone says only "operation was canceled".
pub fn status(s: &tonic::Status) -> String {
    let mut line = format!("{:?}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    line
}
