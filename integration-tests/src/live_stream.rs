//! A live stream for tests: 8 channels at 250 Hz, 50 samples per chunk, every value a distinct
//! multiple of the resolution, so that what is stored can be checked sample by sample.

use gbrain_cli::client::Bearer;
use gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use gbrain_proto::ingest::v1::{
    PackedSamples, RecordingMetadata, StreamChannel, StreamChunk, StreamLayout, StreamOpen,
    StreamOpened, StreamRequest, StreamResponse, stream_chunk, stream_request, stream_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub const CHANNELS: usize = 8;
/// Samples per channel in a chunk: 0.2 s at 250 Hz.
pub const SAMPLES: usize = 50;
/// The subject label the stream opens with (stored only as a pseudonym).
pub const SUBJECT: &str = "sub-07";

pub fn layout() -> StreamLayout {
    StreamLayout {
        sample_rate: 250.0,
        channels: (0..CHANNELS)
            .map(|c| StreamChannel {
                label: format!("E{c}"),
                r#type: "EEG".into(),
                unit: "uV".into(),
                resolution: 0.5,
            })
            .collect(),
    }
}

/// Chunk `seq`'s values, sample-major, each a distinct multiple of the resolution.
pub fn values(seq: u64) -> Vec<f32> {
    (0..SAMPLES * CHANNELS)
        .map(|i| {
            let (s, c) = (i / CHANNELS, i % CHANNELS);
            let n = (seq - 1) as usize * SAMPLES + s;
            (n as f32) * 0.5 - (c as f32) * 1000.0
        })
        .collect()
}

pub fn chunk(seq: u64) -> StreamRequest {
    StreamRequest {
        kind: Some(stream_request::Kind::Chunk(StreamChunk {
            seq,
            data: Some(stream_chunk::Data::Packed(PackedSamples {
                values: values(seq),
            })),
            source_time_ns: None,
        })),
    }
}

pub struct Conn {
    pub tx: mpsc::Sender<StreamRequest>,
    pub rx: Streaming<StreamResponse>,
    pub opened: StreamOpened,
}

/// Opens (or resumes) stream `id` on `endpoint`.
pub async fn open(endpoint: &str, token: &str, id: &str, layout: Option<StreamLayout>) -> Conn {
    let channel = gbrain_cli::client::connect_channel(endpoint, &Default::default())
        .await
        .unwrap();
    let mut client =
        IngestServiceClient::with_interceptor(channel, Bearer::new(Some(token)).unwrap());
    let (tx, rx) = mpsc::channel(256);
    tx.send(StreamRequest {
        kind: Some(stream_request::Kind::Open(StreamOpen {
            stream_id: id.into(),
            layout,
            metadata: Some(RecordingMetadata {
                subject: SUBJECT.into(),
                task: "motor".into(),
                ..Default::default()
            }),
        })),
    })
    .await
    .unwrap();
    let mut rx = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(StreamResponse {
        kind: Some(stream_response::Kind::Opened(opened)),
    }) = rx.message().await.unwrap()
    else {
        panic!("expected opened");
    };
    Conn { tx, rx, opened }
}

/// The next ack's sequence number, or None when the stream ended.
pub async fn ack(rx: &mut Streaming<StreamResponse>) -> Option<u64> {
    match rx.message().await {
        Ok(Some(StreamResponse {
            kind: Some(stream_response::Kind::Ack(a)),
        })) => {
            assert_eq!(a.samples, a.seq * SAMPLES as u64);
            Some(a.seq)
        }
        Ok(Some(StreamResponse {
            kind: Some(stream_response::Kind::Closed(_)),
        })) => None,
        Ok(other) => panic!("unexpected response {other:?}"),
        Err(_) => None,
    }
}
