//! Faults of the closed loop with the real binary: one of two inference nodes is killed
//! (SIGKILL) while a loop session runs. Every window still gets feedback, a prediction or an
//! explicit error, in order, and every outcome reported is counted.

use std::time::Duration;

use gbrain_cli::client::Bearer;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_coordinator::offline::{Windowing, fit, windows};
use gbrain_coordinator::synthetic::{Subject, SubjectConfig};
use gbrain_integration_tests::binary::Server;
use gbrain_integration_tests::{ADMIN_TOKEN, ANALYST_TOKEN, SUBMITTER_TOKEN};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use gbrain_proto::ingest::v1::{
    PackedSamples, StreamChunk, StreamRequest, StreamResponse, stream_chunk, stream_request,
    stream_response,
};

const HOP: usize = 25;
const SECONDS: usize = 60;

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_inference_node_leaves_no_window_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, gbrain_integration_tests::auth_toml()).unwrap();
    let data = dir.path().join("d");
    let objects = format!("file://{}", data.join("objects").display());
    let log = dir.path().join("log");

    // Two inference nodes on one model repository, and the embedded cluster decoding on them.
    let spawn = |args: Vec<String>| {
        let (log, data) = (log.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
            std::fs::create_dir_all(&data).unwrap();
            Server::spawn(&args, &log, &data)
        })
    };
    let node_args = || {
        vec![
            "serve".to_string(),
            "inference".into(),
            "--auth-file".into(),
            auth.display().to_string(),
            "--object-store".into(),
            objects.clone(),
            "--model-poll-seconds".into(),
            "1".into(),
        ]
    };
    let n1 = spawn(node_args()).await.unwrap();
    let n2 = spawn(node_args()).await.unwrap();
    let mut up = spawn(vec![
        "up".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--auth-file".into(),
        auth.display().to_string(),
        "--inference-endpoints".into(),
        format!("{},{}", n1.endpoint(), n2.endpoint()),
    ])
    .await
    .unwrap();
    up.token = ADMIN_TOKEN.into();

    // The decoder, pushed through node 1; node 2 finds it in the repository.
    let mut calibration = Subject::new(SubjectConfig {
        seed: 100,
        ..SubjectConfig::default()
    })
    .unwrap();
    let w = Windowing::motor_imagery(calibration.channels()).unwrap();
    let lda = fit(&windows(&mut calibration, &w, 240.0), 0.1).unwrap();
    let path = dir.path().join("mi.onnx");
    std::fs::write(&path, lda.to_onnx()).unwrap();
    let mut models = gbrain_cli::models::connect(&ClientArgs {
        server: n1.endpoint(),
        token: Some(ADMIN_TOKEN.into()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    gbrain_cli::models::push_file(&mut models, &path, "mi-lda", 0, None)
        .await
        .unwrap();
    let mut kserve = GrpcInferenceServiceClient::with_interceptor(
        channel(&n2.endpoint()).await,
        Bearer::new(Some(ANALYST_TOKEN)).unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = kserve
            .model_ready(gbrain_proto::inference::ModelReadyRequest {
                name: "mi-lda".into(),
                version: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().ready);
        if ready {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never loaded the model"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The subject's stream and its loop session.
    let mut subject = Subject::new(SubjectConfig {
        seed: 400,
        ..SubjectConfig::default()
    })
    .unwrap();
    let layout = gbrain_cli::loop_sim::stream_layout(&subject);
    let mut ingest = IngestServiceClient::with_interceptor(
        channel(&up.endpoint()).await,
        Bearer::new(Some(SUBMITTER_TOKEN)).unwrap(),
    );
    let (tx, mut acks, _) =
        gbrain_cli::loop_sim::open_stream(&mut ingest, "fault-subject", Some(layout), None)
            .await
            .unwrap();
    let mut looping = LoopServiceClient::with_interceptor(
        channel(&up.endpoint()).await,
        Bearer::new(Some(ANALYST_TOKEN)).unwrap(),
    );
    let session = looping
        .start_session(gbrain_cli::loop_sim::motor_imagery_session(
            "fault-subject",
            "mi-lda",
            pb::adaptation::Mode::Supervised,
            0.01,
            2000.0,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut feedback = looping
        .feedback(pb::FeedbackRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let hops = SECONDS * 250 / HOP;
    let expected = (hops * HOP - 250) / HOP + 1;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < expected {
            match tokio::time::timeout(Duration::from_secs(60), feedback.message()).await {
                Ok(Ok(Some(m))) => got.push(m),
                other => panic!("feedback stopped after {} windows: {other:?}", got.len()),
            }
        }
        got
    });

    // Stream, and kill node 1 half way.
    let mut n1 = Some(n1);
    for seq in 1..=hops as u64 {
        if seq == hops as u64 / 2
            && let Some(n) = n1.take()
        {
            tokio::task::spawn_blocking(move || n.kill()).await.unwrap();
        }
        let values = subject.generate(HOP);
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
            kind: Some(stream_response::Kind::Ack(_)),
        }) = acks.message().await.unwrap()
        else {
            panic!("expected an ack");
        };
    }
    let got = reader.await.unwrap();

    let mut errors = Vec::new();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.window, i as u64 + 1, "every window, in order");
        match &m.result {
            Some(pb::feedback_message::Result::Prediction(p)) => {
                assert_eq!(p.probabilities.len(), 2)
            }
            Some(pb::feedback_message::Result::Error(e)) => {
                assert!(!e.is_empty(), "an error says what went wrong");
                errors.push(e.clone());
            }
            None => panic!("window {} has no result", m.window),
        }
    }
    println!(
        "{} windows with node 1 killed half way: {} predictions, {} errors {:?}",
        got.len(),
        got.len() - errors.len(),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        errors.len() * 10 < got.len(),
        "the other node answers: {} errors of {}",
        errors.len(),
        got.len()
    );

    // Every outcome reported is counted.
    let mut reported = 0;
    for t in subject
        .trials()
        .iter()
        .filter(|t| t.end <= subject.position())
    {
        let first = t.start.div_ceil(HOP as u64) + 1;
        let last = (t.end - 250) / HOP as u64 + 1;
        let r = looping
            .report_outcome(pb::ReportOutcomeRequest {
                session_id: session.session_id.clone(),
                first_window: first,
                last_window: last,
                label: u32::from(t.class),
            })
            .await
            .unwrap()
            .into_inner();
        reported += r.windows;
    }
    let state = looping
        .get_session(pb::GetSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reported > 0);
    assert_eq!(state.outcomes, reported, "no outcome lost");
    assert_eq!(state.windows + state.errors, got.len() as u64);
    drop(tx);
    drop(acks);
    up.stop();
    n2.stop();
}
