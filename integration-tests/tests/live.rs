//! Live streams over gRPC against the in-process sandbox: acknowledgements, resuming after a
//! dropped connection, duplicates and gaps, Arrow IPC chunks, bad input and tenants.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use gbrain_cli::client::Ingest as IngestClient;
use gbrain_integration_tests::{ANALYST_TOKEN, OTHER_TENANT_TOKEN, SUBMITTER_TOKEN, Sandbox};
use gbrain_proto::ingest::v1::{
    PackedSamples, StreamChannel, StreamChunk, StreamClose, StreamLayout, StreamOpen,
    StreamRequest, StreamResponse, stream_chunk, stream_request, stream_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const LABELS: [&str; 4] = ["C3", "Cz", "C4", "EMG"];
const SAMPLES: usize = 25;

fn layout() -> StreamLayout {
    StreamLayout {
        sample_rate: 250.0,
        channels: LABELS
            .iter()
            .map(|l| StreamChannel {
                label: (*l).into(),
                r#type: if *l == "EMG" { "EMG" } else { "EEG" }.into(),
                unit: "uV".into(),
                resolution: 0.0,
            })
            .collect(),
    }
}

/// Chunk `seq`'s values, sample-major: distinct for every chunk, sample and channel.
fn values(seq: u64) -> Vec<f32> {
    (0..SAMPLES * LABELS.len())
        .map(|i| (seq as f32) * 100.0 + (i as f32) * 0.25 - 40.0)
        .collect()
}

fn open(stream_id: &str, layout: Option<StreamLayout>) -> StreamRequest {
    StreamRequest {
        kind: Some(stream_request::Kind::Open(StreamOpen {
            stream_id: stream_id.into(),
            layout,
            metadata: None,
        })),
    }
}

fn packed(seq: u64) -> StreamRequest {
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

fn arrow_chunk(seq: u64, names: [&str; 4]) -> StreamRequest {
    let v = values(seq);
    let columns: Vec<ArrayRef> = (0..LABELS.len())
        .map(|c| {
            Arc::new(Float32Array::from(
                (0..SAMPLES)
                    .map(|s| v[s * LABELS.len() + c])
                    .collect::<Vec<f32>>(),
            )) as ArrayRef
        })
        .collect();
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Float32, false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let mut bytes = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    StreamRequest {
        kind: Some(stream_request::Kind::Chunk(StreamChunk {
            seq,
            data: Some(stream_chunk::Data::ArrowIpc(bytes)),
            source_time_ns: None,
        })),
    }
}

/// One connection: what to send, and the responses as they come.
struct Conn {
    tx: mpsc::Sender<StreamRequest>,
    rx: Streaming<StreamResponse>,
}

impl Conn {
    async fn new(client: &mut IngestClient, first: StreamRequest) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client
            .stream(ReceiverStream::new(rx))
            .await
            .expect("stream starts")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, r: StreamRequest) {
        self.tx.send(r).await.unwrap();
    }

    async fn next(&mut self) -> Result<stream_response::Kind, Status> {
        match self.rx.message().await? {
            Some(StreamResponse { kind: Some(k) }) => Ok(k),
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// Polls Flight SQL until the recording's channels each hold `samples` (flushes run every
/// 500 ms), then returns each channel's values in sample order.
async fn stored(
    sandbox: &Sandbox,
    recording_id: &str,
    samples: usize,
) -> std::collections::HashMap<String, Vec<f64>> {
    let sql = format!(
        "SELECT channel, sample_index, value FROM samples WHERE recording_id = '{recording_id}' \
         ORDER BY channel_index, sample_index"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = sandbox.sql(ANALYST_TOKEN, &sql).await.unwrap();
        let channel = arrow::compute::cast(r.column(0), &DataType::Utf8).unwrap();
        let channel = channel.as_string::<i32>();
        let index = r.column(1).as_primitive::<Int64Type>();
        let value = r.column(2).as_primitive::<Float64Type>();
        let mut out: std::collections::HashMap<String, Vec<f64>> = Default::default();
        for i in 0..r.num_rows() {
            let v = out.entry(channel.value(i).to_string()).or_default();
            assert_eq!(index.value(i), v.len() as i64, "no gap and no duplicate");
            v.push(value.value(i));
        }
        if out.len() == LABELS.len() && out.values().all(|v| v.len() == samples) {
            return out;
        }
        assert!(
            out.values().all(|v| v.len() <= samples),
            "more samples stored than acknowledged"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{samples} samples per channel never became queryable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn ack(k: stream_response::Kind) -> (u64, u64) {
    match k {
        stream_response::Kind::Ack(a) => (a.seq, a.samples),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn chunks_are_acknowledged_resumed_and_held_exactly_once() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.client_with(Some(SUBMITTER_TOKEN)).await;

    let mut c = Conn::new(&mut client, open("stream-1", Some(layout()))).await;
    let stream_response::Kind::Opened(opened) = c.next().await.unwrap() else {
        panic!("expected opened");
    };
    assert_eq!((opened.last_seq, opened.samples), (0, 0));
    for seq in 1..=3 {
        c.send(packed(seq)).await;
        assert_eq!(ack(c.next().await.unwrap()), (seq, seq * SAMPLES as u64));
    }
    // The connection drops. The stream is open, and what was acknowledged is queryable.
    drop(c);
    let rows = stored(&sandbox, &opened.recording_id, 75).await;
    assert_eq!(rows.len(), LABELS.len());
    // The fusion functions read the flushes' files (each holding every channel) too: resampled
    // at the stream's own rate to the nearest sample, each channel is its samples.
    let r = sandbox
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT channel, sample_index, value FROM resample(250, NULL, '{}', 'nearest') \
                 ORDER BY channel_index, sample_index",
                opened.recording_id
            ),
        )
        .await
        .unwrap();
    let channel = arrow::compute::cast(r.column(0), &DataType::Utf8).unwrap();
    let channel = channel.as_string::<i32>();
    let index = r.column(1).as_primitive::<Int64Type>();
    let value = r.column(2).as_primitive::<Float64Type>();
    assert_eq!(r.num_rows(), 75 * LABELS.len());
    for i in 0..r.num_rows() {
        let want = rows[channel.value(i)][index.value(i) as usize];
        assert_eq!(
            value.value(i),
            want,
            "{} sample {}",
            channel.value(i),
            index.value(i)
        );
    }

    // A reconnect resumes after the last acknowledged chunk, in the same recording.
    let mut c = Conn::new(&mut client, open("stream-1", None)).await;
    let stream_response::Kind::Opened(resumed) = c.next().await.unwrap() else {
        panic!("expected opened");
    };
    assert_eq!(resumed.recording_id, opened.recording_id);
    assert_eq!((resumed.last_seq, resumed.samples), (3, 75));
    // The client resends its last chunk, unsure whether it arrived: acknowledged, not stored.
    c.send(packed(3)).await;
    assert_eq!(ack(c.next().await.unwrap()), (3, 75));
    // A gap is refused, naming what is missing.
    c.send(packed(5)).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("chunks 4 to 4 are missing"), "{e:?}");

    // Chunk 4 as Arrow IPC, then close.
    let mut c = Conn::new(&mut client, open("stream-1", Some(layout()))).await;
    assert!(matches!(
        c.next().await.unwrap(),
        stream_response::Kind::Opened(_)
    ));
    c.send(arrow_chunk(4, LABELS)).await;
    assert_eq!(ack(c.next().await.unwrap()), (4, 100));
    c.send(StreamRequest {
        kind: Some(stream_request::Kind::Close(StreamClose {})),
    })
    .await;
    let stream_response::Kind::Closed(closed) = c.next().await.unwrap() else {
        panic!("expected closed");
    };
    assert_eq!(closed.samples, 100);

    // What Flight SQL reads, sample by sample: every chunk once, at 1 nV steps.
    let rows = stored(&sandbox, &opened.recording_id, 100).await;
    for (ch, label) in LABELS.iter().enumerate() {
        let got = &rows[*label];
        for (i, v) in got.iter().enumerate() {
            let (seq, s) = (i / SAMPLES + 1, i % SAMPLES);
            let want = f64::from(values(seq as u64)[s * LABELS.len() + ch]);
            assert!(
                (v - (want / 1e-3).round() * 1e-3).abs() < 1e-9,
                "channel {label} sample {i}: {v} for {want}"
            );
        }
    }
    let r = sandbox
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT format, num_records, duration_s FROM recordings WHERE recording_id = '{}'",
                opened.recording_id
            ),
        )
        .await
        .unwrap();
    let format = r.column(0).as_string::<i32>().value(0).to_string();
    let records = r.column(1).as_primitive::<Int64Type>().value(0);
    let duration = r.column(2).as_primitive::<Float64Type>().value(0);
    assert_eq!(
        (format.as_str(), records, duration),
        ("LIVE", 100, 0.4),
        "a record per sample"
    );
    // A closed stream takes nothing more.
    let mut c = Conn::new(&mut client, open("stream-1", None)).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    sandbox.stop().await;
}

#[tokio::test]
async fn bad_streams_get_clear_errors_and_tenants_stay_apart() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.client_with(Some(SUBMITTER_TOKEN)).await;

    // The first message must open the stream.
    let mut c = Conn::new(&mut client, packed(1)).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("open"), "{e:?}");

    // A layout with a repeated label.
    let mut bad = layout();
    bad.channels[1].label = "C3".into();
    let mut c = Conn::new(&mut client, open("s", Some(bad))).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("layout.channels[1].label"), "{e:?}");

    // Values that are not a whole number of samples.
    let mut c = Conn::new(&mut client, open("s", Some(layout()))).await;
    c.next().await.unwrap();
    c.send(StreamRequest {
        kind: Some(stream_request::Kind::Chunk(StreamChunk {
            seq: 1,
            data: Some(stream_chunk::Data::Packed(PackedSamples {
                values: vec![1.0; 7],
            })),
            source_time_ns: None,
        })),
    })
    .await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("chunk.values"), "{e:?}");

    // Arrow columns named other than the channels.
    let mut c = Conn::new(&mut client, open("s", None)).await;
    c.next().await.unwrap();
    c.send(arrow_chunk(1, ["C3", "Cz", "EMG", "C4"])).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("columns[2]"), "{e:?}");

    // Nothing refused was stored: chunk 1 is still the next one.
    let mut c = Conn::new(&mut client, open("s", None)).await;
    let stream_response::Kind::Opened(o) = c.next().await.unwrap() else {
        panic!("expected opened");
    };
    assert_eq!((o.last_seq, o.samples), (0, 0));
    c.send(packed(1)).await;
    assert_eq!(ack(c.next().await.unwrap()), (1, 25));
    drop(c);

    // Another tenant's stream of the same id is its own.
    let mut other = sandbox.client_with(Some(OTHER_TENANT_TOKEN)).await;
    let mut c = Conn::new(&mut other, open("s", None)).await;
    let e = c.next().await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "no layout: new to this tenant"
    );
    let mut c = Conn::new(&mut other, open("s", Some(layout()))).await;
    let stream_response::Kind::Opened(o) = c.next().await.unwrap() else {
        panic!("expected opened");
    };
    assert_eq!(o.last_seq, 0);
    drop(c);

    // Without a token, nothing.
    let mut anon = sandbox.client_with(None).await;
    let (tx, rx) = mpsc::channel::<StreamRequest>(1);
    tx.send(open("s", Some(layout()))).await.unwrap();
    drop(tx);
    let e = anon.stream(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    sandbox.stop().await;
}

#[tokio::test]
async fn a_draining_node_ends_open_streams_with_unavailable() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.client_with(Some(SUBMITTER_TOKEN)).await;
    let mut c = Conn::new(&mut client, open("drain-1", Some(layout()))).await;
    assert!(matches!(
        c.next().await.unwrap(),
        stream_response::Kind::Opened(_)
    ));
    c.send(packed(1)).await;
    assert_eq!(ack(c.next().await.unwrap()), (1, SAMPLES as u64));
    // Shutdown starts: the open stream ends at once, telling the client to resume.
    let stop = tokio::spawn(sandbox.stop());
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("resume"), "{e:?}");
    drop(c);
    drop(client);
    stop.await.unwrap();
}
