//! Where a session's samples come from: a live stream's chunks as received, from the ingest
//! node that takes the stream. The embedded cluster subscribes in-process ([`LocalStreams`]);
//! a coordinator of its own follows the stream over the ingest service's `Tail` RPC
//! ([`RemoteStreams`]). Both give a [`Feed`], so a session runs the same code either way.

use std::sync::Arc;

use gbrain_common::tls::ClientTls;
use gbrain_ingest::live::{Layout, LiveChunk, Subscription, TAIL_CHUNKS};
use gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use gbrain_proto::ingest::v1::{TailRequest, TailResponse, tail_response};
use tokio::sync::{broadcast, mpsc};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::{Error, Result};

/// Where a loop session's samples come from.
#[async_trait::async_trait]
pub trait SampleSource: Send + Sync + std::fmt::Debug {
    /// Follows a live stream of `tenant` from now on. `authorization` is the session owner's,
    /// for a source that asks another service.
    async fn subscribe(
        &self,
        tenant: &str,
        stream_id: &str,
        authorization: &MetadataValue<Ascii>,
    ) -> Result<Feed>;
}

enum Chunks {
    Local(broadcast::Receiver<Arc<LiveChunk>>),
    /// A chunk, or how many chunks were missed.
    Remote(mpsc::Receiver<std::result::Result<Arc<LiveChunk>, u64>>),
}

/// A stream's chunks from now on.
pub struct Feed {
    pub recording_id: String,
    pub layout: Layout,
    chunks: Chunks,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("recording_id", &self.recording_id)
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub fn local(sub: Subscription) -> Self {
        Self {
            recording_id: sub.recording_id,
            layout: sub.layout,
            chunks: Chunks::Local(sub.chunks),
        }
    }

    /// A feed whose chunks (or gaps: chunks missed) come from the returned sender.
    pub fn channel(
        recording_id: String,
        layout: Layout,
    ) -> (mpsc::Sender<std::result::Result<Arc<LiveChunk>, u64>>, Self) {
        let (tx, rx) = mpsc::channel(TAIL_CHUNKS);
        (
            tx,
            Self {
                recording_id,
                layout,
                chunks: Chunks::Remote(rx),
            },
        )
    }

    /// The next chunk; `Lagged` when chunks were missed, `Closed` when the stream ended.
    pub async fn recv(
        &mut self,
    ) -> std::result::Result<Arc<LiveChunk>, broadcast::error::RecvError> {
        use broadcast::error::RecvError;
        match &mut self.chunks {
            Chunks::Local(rx) => rx.recv().await,
            Chunks::Remote(rx) => match rx.recv().await {
                Some(Ok(c)) => Ok(c),
                Some(Err(missed)) => Err(RecvError::Lagged(missed)),
                None => Err(RecvError::Closed),
            },
        }
    }
}

/// The live streams of an ingest service in the same process.
#[derive(Debug)]
pub struct LocalStreams(pub Arc<gbrain_ingest::Ingest>);

#[async_trait::async_trait]
impl SampleSource for LocalStreams {
    async fn subscribe(
        &self,
        tenant: &str,
        stream_id: &str,
        _authorization: &MetadataValue<Ascii>,
    ) -> Result<Feed> {
        let live = self.0.live().ok_or_else(|| {
            Error::precondition("stream_id", "the ingest node takes no live streams")
        })?;
        live.subscribe(tenant, stream_id)
            .map(Feed::local)
            .map_err(|e| match e {
                gbrain_ingest::Error::NotFound(m) => Error::precondition("stream_id", m),
                other => Error::Source(other.to_string()),
            })
    }
}

/// The live streams of an ingest service in another process, followed over `Tail`.
#[derive(Debug)]
pub struct RemoteStreams {
    endpoint: String,
    channel: Channel,
}

impl RemoteStreams {
    /// Connects lazily to the ingest service at `endpoint` (`http://host:port`, or
    /// `https://host:port` with `tls`).
    pub fn new(endpoint: &str, tls: &ClientTls) -> Result<Self> {
        let channel = tls
            .endpoint(endpoint)
            .map_err(|e| Error::invalid("ingest_endpoint", e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            endpoint: endpoint.to_string(),
            channel,
        })
    }
}

fn from_status(s: &tonic::Status, endpoint: &str) -> Error {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument => Error::invalid("stream_id", s.message()),
        Code::FailedPrecondition | Code::NotFound => Error::precondition("stream_id", s.message()),
        Code::PermissionDenied | Code::Unauthenticated => Error::Denied(s.message().to_string()),
        _ => Error::Source(format!("{endpoint}: {}: {}", s.code(), s.message())),
    }
}

#[async_trait::async_trait]
impl SampleSource for RemoteStreams {
    async fn subscribe(
        &self,
        _tenant: &str,
        stream_id: &str,
        authorization: &MetadataValue<Ascii>,
    ) -> Result<Feed> {
        let mut client = IngestServiceClient::new(self.channel.clone());
        let mut request = tonic::Request::new(TailRequest {
            stream_id: stream_id.to_string(),
        });
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
        let mut stream = client
            .tail(request)
            .await
            .map_err(|s| from_status(&s, &self.endpoint))?
            .into_inner();
        let opened = match stream.message().await {
            Ok(Some(TailResponse {
                kind: Some(tail_response::Kind::Opened(o)),
            })) => o,
            Ok(_) => {
                return Err(Error::Source(format!(
                    "{}: the tail did not start with opened",
                    self.endpoint
                )));
            }
            Err(s) => return Err(from_status(&s, &self.endpoint)),
        };
        let layout = gbrain_ingest::grpc::layout_from_proto(opened.layout.unwrap_or_default());
        let (tx, feed) = Feed::channel(opened.recording_id, layout);
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            loop {
                // Ends when the session drops its feed, even on a quiet stream.
                let message = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => break,
                };
                let next = match message {
                    Ok(Some(TailResponse { kind: Some(k) })) => k,
                    Ok(_) => break,
                    Err(s) => {
                        tracing::warn!(endpoint, code = ?s.code(), error = s.message(), "stream tail ended");
                        break;
                    }
                };
                let item = match next {
                    tail_response::Kind::Chunk(c) => Ok(Arc::new(LiveChunk {
                        seq: c.seq,
                        first_sample: c.first_sample,
                        samples: c.samples as usize,
                        values: c.values,
                        received_ns: c.received_ns,
                        source_time_ns: c.source_time_ns,
                    })),
                    tail_response::Kind::Missed(n) => Err(n),
                    tail_response::Kind::Opened(_) => continue,
                };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(feed)
    }
}
