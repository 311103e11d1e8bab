//! Inference over KServe v2 gRPC: pushing models, metadata, typed and raw tensors, bad input,
//! tenants and roles, dynamic batching, statistics and metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gbrain_cli::client::Bearer;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_inference::onnx;
use gbrain_integration_tests::{
    ADMIN_TOKEN, ANALYST_TOKEN, OTHER_TENANT_TOKEN, Options, SUBMITTER_TOKEN, Sandbox,
};
use gbrain_proto::inference as pb;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Kserve = GrpcInferenceServiceClient<InterceptedService<Channel, Bearer>>;

async fn kserve(sb: &Sandbox, token: &str) -> Kserve {
    GrpcInferenceServiceClient::with_interceptor(
        sb.channel().await,
        Bearer::new(Some(token)).unwrap(),
    )
    .max_decoding_message_size(64 << 20)
    .max_encoding_message_size(64 << 20)
}

fn onnx_file(name: &str) -> PathBuf {
    gbrain_integration_tests::tools::data_dir()
        .join("onnx")
        .join(name)
}

async fn push_bytes(
    sb: &Sandbox,
    token: &str,
    name: &str,
    bytes: &[u8],
    config: Option<&str>,
) -> Result<gbrain_proto::models::v1::PushModelResponse, tonic::Status> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    push_path(sb, token, name, &path, config).await
}

async fn push_path(
    sb: &Sandbox,
    token: &str,
    name: &str,
    path: &std::path::Path,
    config: Option<&str>,
) -> Result<gbrain_proto::models::v1::PushModelResponse, tonic::Status> {
    let mut admin = gbrain_cli::models::connect(&ClientArgs {
        server: sb.endpoint(),
        token: Some(token.to_string()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    gbrain_cli::models::push_file(&mut admin, path, name, 0, config.map(str::to_string)).await
}

fn fp32_input(name: &str, shape: &[i64], values: &[f32]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: Some(pb::InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        }),
    }
}

fn raw_f32(values: &[f32]) -> Bytes {
    Bytes::from(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn request(model: &str, inputs: Vec<InferInputTensor>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs,
        ..Default::default()
    }
}

/// 60 values in -3..3.
fn sigmoid_input(seed: u32) -> Vec<f32> {
    (0..60)
        .map(|i| ((i as f32 * 0.37 + seed as f32 * 1.3).sin()) * 3.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_describe_and_infer_typed_and_raw() {
    let sb = Sandbox::start().await;
    let pushed = push_path(
        &sb,
        ADMIN_TOKEN,
        "sigmoid",
        &onnx_file("sigmoid.onnx"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (pushed.version, pushed.state.as_str()),
        (1, "READY"),
        "{pushed:?}"
    );
    let mut c = kserve(&sb, ANALYST_TOKEN).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "sigmoid".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "sigmoid".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1"]);
    assert_eq!(meta.platform, "onnxruntime_onnx");
    assert_eq!(
        (
            meta.inputs[0].name.as_str(),
            meta.inputs[0].datatype.as_str(),
            meta.inputs[0].shape.clone()
        ),
        ("x", "FP32", vec![3, 4, 5])
    );
    assert_eq!(meta.outputs[0].name, "y");

    // Typed in, typed out.
    let x = sigmoid_input(1);
    let r = c
        .model_infer(request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.raw_output_contents.is_empty());
    assert_eq!(r.model_version, "1");
    let y = &r.outputs[0].contents.as_ref().unwrap().fp32_contents;
    assert_eq!(r.outputs[0].shape, vec![3, 4, 5]);
    for (a, b) in x.iter().zip(y) {
        assert!((sigmoid(*a) - b).abs() < 1e-6, "{a} → {b}");
    }
    // Raw in, raw out, with the request id echoed.
    let mut raw = request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &[])]);
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![raw_f32(&x)];
    raw.id = "req-7".into();
    let r = c.model_infer(raw).await.unwrap().into_inner();
    assert_eq!(r.id, "req-7");
    assert!(r.outputs[0].contents.is_none());
    assert_eq!(f32s(&r.raw_output_contents[0]), *y);
    // Typed in, but raw asked for.
    let mut asked = request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]);
    let mut params = HashMap::new();
    params.insert(
        "binary_data".to_string(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    asked.outputs = vec![InferRequestedOutputTensor {
        name: "y".into(),
        parameters: params,
    }];
    let r = c.model_infer(asked).await.unwrap().into_inner();
    assert_eq!(f32s(&r.raw_output_contents[0]), *y);

    // Statistics count what ran.
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "sigmoid".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!((s.inference_count, s.execution_count), (3, 3));
    assert_eq!(
        s.inference_stats
            .as_ref()
            .unwrap()
            .success
            .as_ref()
            .unwrap()
            .count,
        3
    );
    // The repository index shows it ready.
    let index = c
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].name.as_str(),
            index.models[0].version.as_str(),
            index.models[0].state.as_str()
        ),
        ("sigmoid", "1", "READY")
    );
    let metrics = sb.metrics_text().await;
    assert!(
        metrics
            .contains("gbrain_inference_requests_total{model=\"sigmoid\",outcome=\"success\"} 3"),
        "{metrics}"
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_field_and_the_reason() {
    let sb = Sandbox::start().await;
    push_path(
        &sb,
        ADMIN_TOKEN,
        "sigmoid",
        &onnx_file("sigmoid.onnx"),
        None,
    )
    .await
    .unwrap();
    let mut c = kserve(&sb, ANALYST_TOKEN).await;
    let x = sigmoid_input(2);
    let cases: Vec<(pb::ModelInferRequest, Code, &str)> = vec![
        (
            request("sigmoid", vec![fp32_input("z", &[3, 4, 5], &x)]),
            Code::InvalidArgument,
            "inputs[z]",
        ),
        (
            request(
                "sigmoid",
                vec![InferInputTensor {
                    datatype: "FP64".into(),
                    contents: Some(pb::InferTensorContents {
                        fp64_contents: x.iter().map(|v| f64::from(*v)).collect(),
                        ..Default::default()
                    }),
                    ..fp32_input("x", &[3, 4, 5], &[])
                }],
            ),
            Code::InvalidArgument,
            "inputs[x].datatype",
        ),
        (
            request("sigmoid", vec![fp32_input("x", &[4, 3, 5], &x)]),
            Code::InvalidArgument,
            "inputs[x].shape",
        ),
        (
            request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x[..59])]),
            Code::InvalidArgument,
            "59 values",
        ),
        (
            request(
                "sigmoid",
                vec![
                    fp32_input("x", &[3, 4, 5], &x),
                    fp32_input("x", &[3, 4, 5], &x),
                ],
            ),
            Code::InvalidArgument,
            "more than once",
        ),
        (
            request("nope", vec![fp32_input("x", &[3, 4, 5], &x)]),
            Code::NotFound,
            "nope",
        ),
        (
            pb::ModelInferRequest {
                model_version: "9".into(),
                ..request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)])
            },
            Code::NotFound,
            "version 9",
        ),
        (
            pb::ModelInferRequest {
                model_version: "latest".into(),
                ..request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)])
            },
            Code::InvalidArgument,
            "model_version",
        ),
        (
            pb::ModelInferRequest {
                outputs: vec![InferRequestedOutputTensor {
                    name: "w".into(),
                    parameters: HashMap::new(),
                }],
                ..request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)])
            },
            Code::InvalidArgument,
            "outputs[w]",
        ),
    ];
    for (req, code, needle) in cases {
        let e = c.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{needle}: {e:?}");
        assert!(e.message().contains(needle), "{needle}: {e:?}");
    }
    // Raw bytes that do not match the shape.
    let mut raw = request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &[])]);
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![raw_f32(&x[..50])];
    let e = c.model_infer(raw.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("200 bytes") && e.message().contains("240 bytes"),
        "{e:?}"
    );
    raw.raw_input_contents = vec![raw_f32(&x), raw_f32(&x)];
    let e = c.model_infer(raw).await.unwrap_err();
    assert!(
        e.message()
            .contains("raw_input_contents: 2 entries for 1 inputs"),
        "{e:?}"
    );

    // Files that are not models, and a model whose output is not a tensor.
    let e = push_bytes(&sb, ADMIN_TOKEN, "junk", b"this is not onnx", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("file:") && e.message().contains("does not load"),
        "{e:?}"
    );
    let e = push_path(
        &sb,
        ADMIN_TOKEN,
        "iris",
        &onnx_file("logreg_iris.onnx"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("'probabilities'") && e.message().contains("not a tensor"),
        "{e:?}"
    );
    // Nothing of them was stored.
    let mut admin = gbrain_cli::models::connect(&ClientArgs {
        server: sb.endpoint(),
        token: Some(ADMIN_TOKEN.into()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    let listed = admin
        .list_models(gbrain_proto::models::v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.versions.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["sigmoid"]);
    // A bad configuration names its field.
    let e = push_path(
        &sb,
        ADMIN_TOKEN,
        "sigmoid2",
        &onnx_file("sigmoid.onnx"),
        Some(r#"{"instance_count": 0}"#),
    )
    .await
    .unwrap_err();
    assert!(
        e.message().contains("config_json") && e.message().contains("instance_count"),
        "{e:?}"
    );
    // A batch size on a model without a batch dimension.
    let e = push_path(
        &sb,
        ADMIN_TOKEN,
        "sigmoid3",
        &onnx_file("sigmoid.onnx"),
        Some(r#"{"max_batch_size": 8}"#),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("dynamic first dimension"), "{e:?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_roles_are_enforced() {
    let sb = Sandbox::start().await;
    let e = push_path(
        &sb,
        ANALYST_TOKEN,
        "sigmoid",
        &onnx_file("sigmoid.onnx"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    push_path(
        &sb,
        ADMIN_TOKEN,
        "sigmoid",
        &onnx_file("sigmoid.onnx"),
        None,
    )
    .await
    .unwrap();
    // Another tenant sees no such model.
    let mut other = kserve(&sb, OTHER_TENANT_TOKEN).await;
    let x = sigmoid_input(3);
    let e = other
        .model_infer(request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let index = other
        .repository_index(pb::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(index.models.is_empty());
    // A submitter cannot run models; an analyst cannot unload them.
    let mut submitter = kserve(&sb, SUBMITTER_TOKEN).await;
    let e = submitter
        .model_infer(request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut analyst = kserve(&sb, ANALYST_TOKEN).await;
    let e = analyst
        .repository_model_unload(pb::RepositoryModelUnloadRequest {
            model_name: "sigmoid".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // No token, no answer (health aside).
    let mut anonymous = GrpcInferenceServiceClient::new(sb.channel().await);
    let e = anonymous
        .server_live(pb::ServerLiveRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Unload and load again.
    let mut admin = kserve(&sb, ADMIN_TOKEN).await;
    admin
        .repository_model_unload(pb::RepositoryModelUnloadRequest {
            model_name: "sigmoid".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = analyst
        .model_infer(request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        !analyst
            .model_ready(pb::ModelReadyRequest {
                name: "sigmoid".into(),
                version: String::new()
            })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    admin
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "sigmoid".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    analyst
        .model_infer(request("sigmoid", vec![fp32_input("x", &[3, 4, 5], &x)]))
        .await
        .unwrap();
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fp16_and_bf16_travel_raw() {
    let sb = Sandbox::start().await;
    push_bytes(
        &sb,
        ADMIN_TOKEN,
        "from_half",
        &onnx::cast(onnx::elem::FLOAT16, onnx::elem::FLOAT, 4),
        None,
    )
    .await
    .unwrap();
    push_bytes(
        &sb,
        ADMIN_TOKEN,
        "from_bf16",
        &onnx::cast(onnx::elem::BFLOAT16, onnx::elem::FLOAT, 4),
        None,
    )
    .await
    .unwrap();
    push_bytes(
        &sb,
        ADMIN_TOKEN,
        "to_half",
        &onnx::cast(onnx::elem::FLOAT, onnx::elem::FLOAT16, 4),
        None,
    )
    .await
    .unwrap();
    let mut c = kserve(&sb, ANALYST_TOKEN).await;
    let values = [0.5f32, -2.0, 1024.0, 0.25, 3.0, -0.125, 7.5, 100.0];
    for (model, dtype, bytes) in [
        (
            "from_half",
            "FP16",
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "from_bf16",
            "BF16",
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    ] {
        let mut r = request(
            model,
            vec![InferInputTensor {
                name: "x".into(),
                datatype: dtype.into(),
                shape: vec![2, 4],
                parameters: HashMap::new(),
                contents: None,
            }],
        );
        r.raw_input_contents = vec![Bytes::from(bytes)];
        let out = c.model_infer(r).await.unwrap().into_inner();
        assert_eq!(out.outputs[0].datatype, "FP32");
        assert_eq!(f32s(&out.raw_output_contents[0]), values, "{model}");
    }
    // FP16 has no typed contents: it comes back raw even for a typed request.
    let out = c
        .model_infer(request("to_half", vec![fp32_input("x", &[2, 4], &values)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.outputs[0].datatype, "FP16");
    let back: Vec<f32> = out.raw_output_contents[0]
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(back, values);
    // And typed FP16 input is refused with the reason.
    let e = c
        .model_infer(request(
            "from_half",
            vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP16".into(),
                shape: vec![1, 4],
                parameters: HashMap::new(),
                contents: Some(pb::InferTensorContents {
                    fp32_contents: vec![1.0; 4],
                    ..Default::default()
                }),
            }],
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("raw_input_contents"), "{e:?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_batching_combines_requests_and_answers_each_its_own() {
    let sb = Sandbox::start().await;
    let config = r#"{"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_us": 20000, "max_queue_size": 1000}}"#;
    push_bytes(
        &sb,
        ADMIN_TOKEN,
        "batched",
        &onnx::batched_sigmoid(4),
        Some(config),
    )
    .await
    .unwrap();
    let c = kserve(&sb, ANALYST_TOKEN).await;
    let mut tasks = Vec::new();
    for i in 0..48u32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Each request has its own rows (1 to 3) and values.
            let rows = 1 + (i % 3) as usize;
            let x: Vec<f32> = (0..rows * 4)
                .map(|k| (i as f32) * 0.1 - k as f32 * 0.05)
                .collect();
            let r = c
                .model_infer(request(
                    "batched",
                    vec![fp32_input("x", &[rows as i64, 4], &x)],
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.outputs[0].shape, vec![rows as i64, 4]);
            let y = &r.outputs[0].contents.as_ref().unwrap().fp32_contents;
            for (a, b) in x.iter().zip(y) {
                assert!((sigmoid(*a) - b).abs() < 1e-6, "request {i}: {a} → {b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = c;
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "batched".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    // 48 requests, 96 rows, in fewer executions than requests.
    assert_eq!(s.inference_count, 96);
    assert!(s.execution_count < 48, "{s:?}");
    assert!(s.batch_stats.iter().any(|b| b.batch_size > 3), "{s:?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_resource_exhausted_and_a_timeout_is_deadline_exceeded() {
    let sb = Sandbox::start().await;
    // One session and room for two waiting: the rest of a burst is refused.
    let roomy = r#"{"max_batch_size": 1, "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 2, "timeout_us": 60000000}}"#;
    // Nothing runs within a millisecond.
    let hasty = r#"{"max_batch_size": 1, "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 100, "timeout_us": 1000}}"#;
    for (name, config) in [("spindle", roomy), ("hasty", hasty)] {
        push_path(
            &sb,
            ADMIN_TOKEN,
            name,
            &onnx_file("spindle-detector-eeg.onnx"),
            Some(config),
        )
        .await
        .unwrap();
    }
    let c = kserve(&sb, ANALYST_TOKEN).await;
    let window = |model: &str| {
        let mut r = request(
            model,
            vec![
                fp32_input("raw_signal", &[1, 1, 7500], &[]),
                fp32_input("spectrogram", &[1, 15, 7500], &[]),
            ],
        );
        r.inputs.iter_mut().for_each(|i| i.contents = None);
        r.raw_input_contents = vec![raw_f32(&[0.1; 7500]), raw_f32(&[0.2; 15 * 7500])];
        r
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut c = c.clone();
        let r = window("spindle");
        tasks.push(tokio::spawn(async move {
            c.model_infer(r)
                .await
                .map(|_| ())
                .map_err(|e| (e.code(), e.message().to_string()))
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full: Vec<&String> = results
        .iter()
        .filter_map(|r| match r {
            Err((Code::ResourceExhausted, m)) => Some(m),
            _ => None,
        })
        .collect();
    assert!(
        ok >= 1 && !full.is_empty() && ok + full.len() == 12,
        "{results:?}"
    );
    assert!(full[0].contains("the most it holds is 2"), "{full:?}");
    let mut c2 = c.clone();
    let e = c2.model_infer(window("hasty")).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("1000 µs"), "{e:?}");
    // The node goes on serving.
    c2.model_infer(window("spindle")).await.unwrap();
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_picks_up_new_versions_and_readiness_follows_loading() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> =
        gbrain_storage::store::open(&format!("file://{}", dir.path().display()), &[]).unwrap();
    // A model stored before the node starts is loaded before it is ready.
    let repo = gbrain_inference::repository::Repository::new(Arc::clone(&store));
    repo.put(
        "demo",
        "sig",
        1,
        Bytes::from(onnx::batched_sigmoid(4)),
        None,
    )
    .await
    .unwrap();
    let sb = Sandbox::start_with(Options {
        store: Some(Arc::clone(&store)),
        model_poll: Some(Duration::from_millis(100)),
        ..Options::default()
    })
    .await;
    let mut c = kserve(&sb, ANALYST_TOKEN).await;
    let mut ready = false;
    for _ in 0..100 {
        if c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "sig".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1"]);
    // Version 2 appears in the store; the default policy serves only the newest.
    repo.put(
        "demo",
        "sig",
        2,
        Bytes::from(onnx::batched_sigmoid(4)),
        None,
    )
    .await
    .unwrap();
    let mut versions = Vec::new();
    for _ in 0..100 {
        versions = c
            .model_metadata(pb::ModelMetadataRequest {
                name: "sig".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .versions;
        if versions == vec!["2"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(versions, vec!["2"]);
    let r = c
        .model_infer(request(
            "sig",
            vec![fp32_input("x", &[1, 4], &[0.0, 1.0, 2.0, 3.0])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "2");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_from_pypi_matches_python_onnxruntime() {
    use gbrain_integration_tests::tools::{python, script};
    let sb = Sandbox::start().await;
    for (name, file) in [
        ("sigmoid", "sigmoid.onnx"),
        ("spindle", "spindle-detector-eeg.onnx"),
    ] {
        let r = push_path(&sb, ADMIN_TOKEN, name, &onnx_file(file), None)
            .await
            .unwrap();
        assert_eq!(r.state, "READY", "{r:?}");
    }
    let addr = sb.addr.to_string();
    let onnx_dir = onnx_file("").display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(script("check_kserve.py"))
            .args([&addr, ANALYST_TOKEN, &onnx_dir])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{r:#}");
    for key in ["live", "ready", "sigmoid_ready", "spindle_ready"] {
        assert_eq!(r[key], true, "{key}: {r}");
    }
    assert_eq!(r["missing_ready"], false, "{r}");
    assert_eq!(r["server"], "gbrain-inference");
    assert_eq!(
        r["spindle_inputs"],
        serde_json::json!([
            ["raw_signal", "FP32", [-1, 1, 7500]],
            ["spectrogram", "FP32", [-1, 15, 7500]]
        ])
    );
    assert!(r["sigmoid_raw_max_diff"].as_f64().unwrap() <= 1e-5, "{r}");
    assert!(r["sigmoid_typed_max_diff"].as_f64().unwrap() <= 1e-5, "{r}");
    assert_eq!(
        r["sigmoid_typed_raw_outputs"], 0,
        "typed in, typed out: {r}"
    );
    for (name, diff) in r["spindle_max_diff"].as_object().unwrap() {
        assert!(diff.as_f64().unwrap() <= 1e-5, "{name}: {r}");
    }
    assert_eq!(
        r["spindle_shapes"]["detection"],
        serde_json::json!([2, 30, 3])
    );
    assert_eq!(
        r["spindle_shapes"]["segmentation"],
        serde_json::json!([2, 7500, 1])
    );
    let bad = r["bad_shape"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(bad[0], "StatusCode.INVALID_ARGUMENT", "{r}");
    assert!(bad[1].as_str().unwrap().contains("inputs[x].shape"), "{r}");
    assert_eq!(r["sigmoid_inference_count"], 2);
    assert_eq!(
        r["index"],
        serde_json::json!([["sigmoid", "1", "READY"], ["spindle", "1", "READY"]])
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_client_deadline_is_dropped_unrun() {
    let sb = Sandbox::start().await;
    // Requests wait up to 1.5 s for company: far past the client's deadline.
    let config = r#"{"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_us": 1500000}}"#;
    push_bytes(
        &sb,
        ADMIN_TOKEN,
        "slow",
        &onnx::batched_sigmoid(4),
        Some(config),
    )
    .await
    .unwrap();
    let mut c = kserve(&sb, ANALYST_TOKEN).await;
    let mut req = tonic::Request::new(request(
        "slow",
        vec![fp32_input("x", &[1, 4], &[0.0, 1.0, 2.0, 3.0])],
    ));
    req.set_timeout(Duration::from_millis(100));
    let e = c.model_infer(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{e:?}"
    );
    // Once the batch would have run, nothing ran.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "slow".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.model_stats[0].execution_count, 0, "{stats:?}");
    let metrics = sb.metrics_text().await;
    assert!(
        metrics.contains("gbrain_inference_pending_requests{model=\"slow\"} 0"),
        "{metrics}"
    );
    sb.stop().await;
}
