//! SIGKILL the embedded cluster (`gbrain up`, the real binary) in the middle of a live stream,
//! twice, and restart it: the client resumes after the last chunk the server holds, no
//! acknowledged chunk is lost, and what Flight SQL reads back is every sample exactly once,
//! checked sample by sample.

use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use gbrain_integration_tests::binary::Server;
use gbrain_integration_tests::live_stream::{
    self as live, CHANNELS, Conn, SAMPLES, SUBJECT, chunk, layout, values,
};
use gbrain_proto::ingest::v1::{
    StreamClose, StreamRequest, StreamResponse, stream_request, stream_response,
};

const CHUNKS: u64 = 150;
const STREAM: &str = "crash-stream-1";

/// Opens (or resumes) the stream on `server`.
async fn open(server: &Server, layout: Option<gbrain_proto::ingest::v1::StreamLayout>) -> Conn {
    live::open(&server.endpoint(), &server.token, STREAM, layout).await
}

/// Sends chunks from `from` on, without waiting for acks, and reads acks until `kill_at` is
/// acknowledged; then SIGKILLs the server with chunks in flight. Returns the last ack seen.
async fn stream_until_killed(server: Server, from: u64, kill_at: u64) -> u64 {
    let Conn {
        tx,
        rx: mut responses,
        ..
    } = open(&server, None).await;
    let sender = tokio::spawn(async move {
        for seq in from..=CHUNKS {
            if tx.send(chunk(seq)).await.is_err() {
                return;
            }
            // Slow enough that a flush (every 500 ms) falls between the kills.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut last = from - 1;
    let mut server = Some(server);
    loop {
        match responses.message().await {
            Ok(Some(StreamResponse {
                kind: Some(stream_response::Kind::Ack(a)),
            })) => {
                assert_eq!(a.seq, last + 1, "acks come in order");
                assert_eq!(a.samples, a.seq * SAMPLES as u64);
                last = a.seq;
                if last >= kill_at
                    && let Some(s) = server.take()
                {
                    tokio::task::spawn_blocking(move || s.kill()).await.unwrap();
                }
            }
            Ok(other) => panic!("unexpected response {other:?}"),
            // The server is gone.
            Err(_) => break,
        }
    }
    assert!(server.is_none(), "the stream ended before the kill");
    sender.abort();
    last
}

/// Every sample of the recording as Flight SQL reads it, once the flushes have stored
/// `samples` per channel.
async fn stored(server: &Server, recording_id: &str, samples: usize) -> RecordBatch {
    let args = gbrain_common::clap_blocks::ClientArgs {
        server: server.endpoint(),
        token: Some(server.token.clone()),
        json: false,
        tls: Default::default(),
    };
    let sql = format!(
        "SELECT channel_index, sample_index, value FROM samples \
         WHERE recording_id = '{recording_id}' ORDER BY channel_index, sample_index"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut flight = gbrain_cli::sql::connect(&args, None).await.unwrap();
        let (schema, batches) = gbrain_cli::sql::collect(&mut flight, &sql).await.unwrap();
        let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert!(
            batch.num_rows() <= samples * CHANNELS,
            "more rows than samples sent: {}",
            batch.num_rows()
        );
        if batch.num_rows() == samples * CHANNELS {
            return batch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the samples never became queryable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_the_stream_with_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let log = dir.path().join("log");

    // Open the stream, then kill the server mid-stream twice.
    let server = Server::up(&data, &log, &[]);
    let Conn { tx, opened, .. } = open(&server, Some(layout())).await;
    assert_eq!(opened.last_seq, 0);
    drop(tx);
    let recording_id = opened.recording_id.clone();
    let mut next = 1;
    let mut resumes = Vec::new();
    let mut server = server;
    for kill_at in [40, 95] {
        let acked = stream_until_killed(server, next, kill_at).await;
        server = tokio::task::spawn_blocking({
            let (data, log) = (data.clone(), log.clone());
            move || Server::up(&data, &log, &[])
        })
        .await
        .unwrap();
        let Conn {
            opened: resumed, ..
        } = open(&server, None).await;
        assert_eq!(resumed.recording_id, recording_id);
        assert!(
            resumed.last_seq >= acked,
            "chunk {acked} was acknowledged, the server holds up to {}",
            resumed.last_seq
        );
        assert_eq!(resumed.samples, resumed.last_seq * SAMPLES as u64);
        resumes.push((acked, resumed.last_seq));
        next = resumed.last_seq + 1;
    }
    println!("(last ack seen, last chunk held) at each restart: {resumes:?}");

    // The rest, then close.
    let Conn {
        tx,
        rx: mut responses,
        ..
    } = open(&server, Some(layout())).await;
    for seq in next..=CHUNKS {
        tx.send(chunk(seq)).await.unwrap();
    }
    tx.send(StreamRequest {
        kind: Some(stream_request::Kind::Close(StreamClose {})),
    })
    .await
    .unwrap();
    loop {
        match responses.message().await.unwrap() {
            Some(StreamResponse {
                kind: Some(stream_response::Kind::Ack(_)),
            }) => {}
            Some(StreamResponse {
                kind: Some(stream_response::Kind::Closed(c)),
            }) => {
                assert_eq!(c.samples, CHUNKS * SAMPLES as u64);
                break;
            }
            other => panic!("unexpected response {other:?}"),
        }
    }
    drop(tx);
    drop(responses);

    // Sample by sample: every chunk once, in order, at its values.
    let total = CHUNKS as usize * SAMPLES;
    let batch = stored(&server, &recording_id, total).await;
    let channel = arrow::compute::cast(batch.column(0), &DataType::Int64).unwrap();
    let channel = channel.as_primitive::<Int64Type>();
    let index = batch.column(1).as_primitive::<Int64Type>();
    let value = batch.column(2).as_primitive::<Float64Type>();
    for row in 0..batch.num_rows() {
        let (c, n) = (row / total, row % total);
        assert_eq!(channel.value(row), c as i64);
        assert_eq!(
            index.value(row),
            n as i64,
            "channel {c}: no gap, no duplicate"
        );
        let (seq, s) = (n / SAMPLES + 1, n % SAMPLES);
        let want = f64::from(values(seq as u64)[s * CHANNELS + c]);
        assert_eq!(value.value(row), want, "channel {c} sample {n}");
    }
    // The subject is stored only as a pseudonym.
    let out = server.cli(&["recordings", "ls", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&recording_id), "{text}");
    assert!(!text.contains(SUBJECT), "{text}");
    server.stop();
}
