//! The closed loop on the embedded cluster: a synthetic subject streams live EEG, a loop
//! session decodes every window on the inference service with a decoder fitted here (an LDA
//! written as ONNX), adapts, and sends feedback; outcomes come back per trial.

use std::time::Duration;

use gbrain_cli::client::Bearer;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_coordinator::offline::{Windowing, fit, windows};
use gbrain_coordinator::synthetic::{Subject, SubjectConfig};
use gbrain_integration_tests::{ANALYST_TOKEN, OTHER_TENANT_TOKEN, SUBMITTER_TOKEN, Sandbox};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use gbrain_proto::ingest::v1::{
    PackedSamples, StreamChunk, StreamRequest, StreamResponse, stream_chunk, stream_request,
    stream_response,
};
use tonic::Code;

const HOP: usize = 25;
const SECONDS: usize = 120;

fn start_request(stream_id: &str, model: &str) -> pb::StartSessionRequest {
    // Debug builds on a loaded machine: a generous deadline.
    gbrain_cli::loop_sim::motor_imagery_session(
        stream_id,
        model,
        pb::adaptation::Mode::Unsupervised,
        0.01,
        5000.0,
    )
}

async fn loop_client(
    sb: &Sandbox,
    token: &str,
) -> LoopServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
> {
    LoopServiceClient::with_interceptor(sb.channel().await, Bearer::new(Some(token)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_subject_is_decoded_window_by_window_with_feedback() {
    let sb = Sandbox::start().await;
    assert!(
        sb.models.is_some(),
        "the closed loop needs inference (ORT_DYLIB_PATH, which `cargo xtask test` sets)"
    );

    // The decoder: an LDA fitted on a calibration session, pushed as an ONNX model.
    let mut calibration = Subject::new(SubjectConfig {
        seed: 100,
        ..SubjectConfig::default()
    })
    .unwrap();
    let w = Windowing::motor_imagery(calibration.channels()).unwrap();
    let lda = fit(&windows(&mut calibration, &w, 240.0), 0.1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mi.onnx");
    std::fs::write(&path, lda.to_onnx()).unwrap();
    let mut models = gbrain_cli::models::connect(&ClientArgs {
        server: sb.endpoint(),
        token: Some(gbrain_integration_tests::ADMIN_TOKEN.to_string()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    gbrain_cli::models::push_file(&mut models, &path, "mi-lda", 0, None)
        .await
        .unwrap();

    // The subject's stream.
    let mut subject = Subject::new(SubjectConfig {
        seed: 300,
        drift: 0.05,
        ..SubjectConfig::default()
    })
    .unwrap();
    let width = subject.channels().len();
    let layout = gbrain_cli::loop_sim::stream_layout(&subject);
    let mut ingest = sb.client_with(Some(SUBMITTER_TOKEN)).await;
    let (tx, mut acks, _) =
        gbrain_cli::loop_sim::open_stream(&mut ingest, "subject-300", Some(layout), None)
            .await
            .unwrap();

    // Bad sessions get clear errors.
    let mut analyst = loop_client(&sb, ANALYST_TOKEN).await;
    let mut bad = start_request("subject-300", "mi-lda");
    bad.windowing.as_mut().unwrap().channels = vec!["C9".into()];
    let e = analyst.start_session(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("windowing.channels[0]"), "{e:?}");
    let e = analyst
        .start_session(start_request("no-such-stream", "mi-lda"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = loop_client(&sb, OTHER_TENANT_TOKEN)
        .await
        .start_session(start_request("subject-300", "mi-lda"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::FailedPrecondition | Code::PermissionDenied),
        "another tenant cannot use the stream: {e:?}"
    );

    let session = analyst
        .start_session(start_request("subject-300", "mi-lda"))
        .await
        .unwrap()
        .into_inner();
    let mut feedback = loop_client(&sb, SUBMITTER_TOKEN)
        .await
        .feedback(pb::FeedbackRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // Stream two minutes, a hop at a time, each acknowledged before the next.
    let hops = SECONDS * 250 / HOP;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let expected = (hops * HOP - 250) / HOP + 1;
        while got.len() < expected {
            match tokio::time::timeout(Duration::from_secs(60), feedback.message()).await {
                Ok(Ok(Some(m))) => got.push(m),
                other => panic!("feedback stopped after {} windows: {other:?}", got.len()),
            }
        }
        got
    });
    for seq in 1..=hops as u64 {
        let values = subject.generate(HOP);
        assert_eq!(values.len(), HOP * width);
        tx.send(StreamRequest {
            kind: Some(stream_request::Kind::Chunk(StreamChunk {
                seq,
                data: Some(stream_chunk::Data::Packed(PackedSamples { values })),
                source_time_ns: None,
            })),
        })
        .await
        .unwrap();
        let Some(StreamResponse {
            kind: Some(stream_response::Kind::Ack(a)),
        }) = acks.message().await.unwrap()
        else {
            panic!("expected an ack");
        };
        assert_eq!(a.seq, seq);
    }
    let got = reader.await.unwrap();

    // Every window once, in order, each with a prediction (or an error within its deadline).
    let mut latencies = Vec::new();
    let (mut hits, mut labelled, mut errors) = (0, 0, 0);
    let mut trial_windows: std::collections::BTreeMap<u64, (u64, u64, u8)> = Default::default();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.window, i as u64 + 1, "windows in order, none missing");
        assert_eq!(m.end_sample - m.first_sample, 250);
        let stamps = m.stamps.unwrap();
        assert!(stamps.received_ns <= stamps.inferred_ns && stamps.inferred_ns <= stamps.sent_ns);
        latencies.push(stamps.sent_ns - stamps.received_ns);
        match &m.result {
            Some(pb::feedback_message::Result::Prediction(p)) => {
                assert_eq!(p.probabilities.len(), 2);
                assert_eq!(p.model, "mi-lda");
                let first = subject.label_at(m.first_sample);
                if let Some(label) =
                    first.filter(|l| subject.label_at(m.end_sample - 1) == Some(*l))
                {
                    labelled += 1;
                    hits += usize::from(p.class == u32::from(label));
                    let trial = subject
                        .trials()
                        .iter()
                        .find(|t| t.start <= m.first_sample && m.end_sample <= t.end)
                        .unwrap();
                    let e = trial_windows
                        .entry(trial.index)
                        .or_insert((m.window, m.window, label));
                    e.1 = m.window;
                }
            }
            Some(pb::feedback_message::Result::Error(e)) => {
                errors += 1;
                println!("window {} error: {e}", m.window);
            }
            None => panic!("window {} has neither a prediction nor an error", m.window),
        }
    }
    latencies.sort_unstable();
    let accuracy = hits as f64 / labelled as f64;
    println!(
        "{} windows, {errors} errors, accuracy {:.1}% over {labelled} labelled windows; \
         window-to-feedback p50 {:.2} ms, max {:.2} ms (debug build)",
        got.len(),
        100.0 * accuracy,
        latencies[latencies.len() / 2] as f64 / 1e6,
        latencies[latencies.len() - 1] as f64 / 1e6
    );
    assert_eq!(errors, 0);
    assert!(accuracy > 0.75, "{accuracy}");

    // Outcomes per trial: the session counts them against its predictions.
    let mut reported = (0, 0);
    for (first, last, label) in trial_windows.values() {
        let r = analyst
            .report_outcome(pb::ReportOutcomeRequest {
                session_id: session.session_id.clone(),
                first_window: *first,
                last_window: *last,
                label: u32::from(*label),
            })
            .await
            .unwrap()
            .into_inner();
        reported.0 += r.windows;
        reported.1 += r.correct;
    }
    assert_eq!(reported, (labelled as u64, hits as u64));
    // Predictions and outcomes are tables, fused with each other and the recording; an
    // acknowledged outcome is stored, and so is every window's prediction before it.
    let sid = &session.session_id;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT count(*) AS n, count(DISTINCT window_number) AS w, min(model) AS m \
                 FROM predictions WHERE session_id = '{sid}' AND role = 'live' \
                 AND window_number <= {}",
                got.len()
            ),
        )
        .await
        .unwrap();
    let int = |r: &arrow::array::RecordBatch, c: usize| {
        arrow::compute::cast(r.column(c), &arrow::datatypes::DataType::Int64)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(
        int(&r, 0),
        got.len() as i64,
        "one live prediction per window"
    );
    assert_eq!(int(&r, 1), got.len() as i64);
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT count(*), sum(windows), sum(correct) FROM outcomes \
                 WHERE session_id = '{sid}'"
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (int(&r, 0), int(&r, 1), int(&r, 2)),
        (trial_windows.len() as i64, labelled as i64, hits as i64)
    );
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT count(*) AS n, \
                 sum(CASE WHEN p.class = o.label THEN 1 ELSE 0 END) AS correct, \
                 count(DISTINCT r.format) AS formats, min(r.format) AS format \
                 FROM predictions p \
                 JOIN outcomes o ON p.session_id = o.session_id \
                 AND p.window_number BETWEEN o.first_window AND o.last_window \
                 JOIN recordings r ON r.recording_id = p.recording_id \
                 WHERE p.role = 'live' AND p.session_id = '{sid}'"
            ),
        )
        .await
        .unwrap();
    assert_eq!((int(&r, 0), int(&r, 1)), (labelled as i64, hits as i64));
    assert_eq!(
        arrow::compute::cast(r.column(3), &arrow::datatypes::DataType::Utf8)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0),
        "LIVE"
    );
    let other = sb
        .sql(OTHER_TENANT_TOKEN, "SELECT count(*) FROM predictions")
        .await
        .unwrap();
    assert_eq!(int(&other, 0), 0, "another tenant sees no predictions");

    let e = analyst
        .report_outcome(pb::ReportOutcomeRequest {
            session_id: session.session_id.clone(),
            first_window: 1,
            last_window: 1,
            label: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let state = analyst
        .get_session(pb::GetSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.windows, got.len() as u64);
    assert_eq!(state.outcomes, labelled as u64);
    assert!((state.accuracy - accuracy).abs() < 1e-9);
    let metrics = sb.metrics_text().await;
    assert!(
        metrics.contains(&format!("gbrain_coordinator_windows_total {}", got.len())),
        "{metrics}"
    );
    assert!(metrics.contains("gbrain_coordinator_window_duration_seconds_bucket"));
    // The live stream's log syncs and flushes are metered.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("gbrain_ingest_wal_sync_duration_seconds_count") >= 1.0);
    assert!(value("gbrain_ingest_live_flush_duration_seconds_count") >= 1.0);
    assert!(value("gbrain_ingest_live_files_written_total") >= 1.0);
    // Another tenant does not see the session.
    let e = loop_client(&sb, OTHER_TENANT_TOKEN)
        .await
        .get_session(pb::GetSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Code::NotFound | Code::PermissionDenied));
    analyst
        .stop_session(pb::StopSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap();
    drop(tx);
    drop(acks);
    sb.stop().await;
}
