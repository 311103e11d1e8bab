//! TLS and mutual TLS on the gRPC servers, with certificates made by each test: plaintext and
//! untrusted clients are refused, clients without a certificate (or with another CA's) are
//! refused under mutual TLS, tokens are still checked inside TLS, the plaintext health port
//! answers probes and nothing else, and the coordinator decodes on inference nodes over
//! mutual TLS. In-process first, then the real binary with grpcurl, the CLI and ADBC.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gbrain_cli::client::Bearer;
use gbrain_cli::loop_sim::{self, Options as LoopOptions};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_common::tls::ClientTls;
use gbrain_coordinator::kserve::Pool;
use gbrain_integration_tests::binary::Server;
use gbrain_integration_tests::pki::Pki;
use gbrain_integration_tests::tools::{gbrain_bin, grpcurl, python, script};
use gbrain_integration_tests::{ADMIN_TOKEN, Options, Sandbox};
use gbrain_proto::coordinator::v1 as loop_pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use gbrain_proto::inference as kserve_pb;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gbrain_proto::ingest::v1::ListRecordingsRequest;
use gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVING: i32 = ServingStatus::Serving as i32;

/// The health status of `service` over `endpoint`, or why there is none.
async fn health(endpoint: Endpoint, service: &str) -> Result<i32, String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{s:?}"))
}

fn plaintext(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plaintext_and_untrusting_clients_keeps_tokens_and_probes_in_plaintext() {
    let pki = Pki::generate();
    let sb = Sandbox::start_with(Options {
        tls: Some(pki.server_tls(false)),
        health_port: true,
        inference: false,
        ..Options::default()
    })
    .await;
    let https = sb.endpoint();
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");

    // A plaintext client gets nothing, nor does a client that trusts another CA.
    let e = health(plaintext(sb.addr), "").await.unwrap_err();
    assert!(!e.is_empty());
    let untrusting = ClientTls::from_pem(Some(pki.other_ca.as_bytes()), None).unwrap();
    let e = health(untrusting.endpoint(&https).unwrap(), "")
        .await
        .unwrap_err();
    assert!(e.contains("connect"), "the handshake fails: {e}");

    // A client that trusts the CA: health needs no token, every other call still does.
    let tls = pki.client_tls(None);
    assert_eq!(
        health(
            tls.endpoint(&https).unwrap(),
            "globalbrain.ingest.v1.IngestService"
        )
        .await,
        Ok(SERVING)
    );
    let channel = tls.endpoint(&https).unwrap().connect().await.unwrap();
    let mut anonymous =
        IngestServiceClient::with_interceptor(channel.clone(), Bearer::new(None).unwrap());
    let e = anonymous
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut admin =
        IngestServiceClient::with_interceptor(channel, Bearer::new(Some(ADMIN_TOKEN)).unwrap());
    let listed = admin
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.recordings.is_empty());
    // Flight SQL through the CLI's client code, trusting the CA by flag.
    let analyst = ClientArgs {
        server: https.clone(),
        token: Some(gbrain_integration_tests::ANALYST_TOKEN.to_string()),
        json: false,
        tls: pki.client_args(None),
    };
    let mut flight = gbrain_cli::sql::connect(&analyst, None).await.unwrap();
    let (_, batches) = gbrain_cli::sql::collect(&mut flight, "SELECT count(*) FROM recordings")
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    // The plaintext health port reports what the TLS port reports, and serves nothing else.
    let port = sb.health_addr.expect("health port");
    assert_eq!(health(plaintext(port), "").await, Ok(SERVING));
    for service in [
        "globalbrain.ingest.v1.IngestService",
        "arrow.flight.protocol.FlightService",
    ] {
        assert_eq!(
            health(plaintext(port), service).await,
            Ok(SERVING),
            "{service}"
        );
    }
    let e = health(plaintext(port), "no.such.Service")
        .await
        .unwrap_err();
    assert!(e.contains("NotFound"), "{e}");
    let channel = plaintext(port).connect().await.unwrap();
    let e = IngestServiceClient::with_interceptor(channel, Bearer::new(Some(ADMIN_TOKEN)).unwrap())
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_its_cas_certificates_and_the_coordinator_decodes_over_it() {
    let pki = Pki::generate();
    let sb = Sandbox::start_with(Options {
        tls: Some(pki.server_tls(true)),
        coordinator_tls: pki.client_tls(Some(&pki.client)),
        ..Options::default()
    })
    .await;
    assert!(
        sb.models.is_some(),
        "the coordinator's test needs inference (ORT_DYLIB_PATH, which `cargo xtask test` sets)"
    );
    let https = sb.endpoint();

    // No certificate, or another CA's: refused. A certificate of the CA: admitted.
    let e = health(pki.client_tls(None).endpoint(&https).unwrap(), "")
        .await
        .unwrap_err();
    assert!(!e.is_empty());
    let e = health(
        pki.client_tls(Some(&pki.foreign_client))
            .endpoint(&https)
            .unwrap(),
        "",
    )
    .await
    .unwrap_err();
    assert!(!e.is_empty());
    assert_eq!(
        health(
            pki.client_tls(Some(&pki.client)).endpoint(&https).unwrap(),
            ""
        )
        .await,
        Ok(SERVING)
    );

    // A decoder pushed with the CLI's client code over mutual TLS.
    let admin = ClientArgs {
        server: https.clone(),
        token: Some(ADMIN_TOKEN.to_string()),
        json: false,
        tls: pki.client_args(Some(&pki.client)),
    };
    let (model, version) = loop_sim::push_calibrated(&admin, 11).await.unwrap();

    // The coordinator's KServe client, presenting the client certificate.
    let pool = Arc::new(
        Pool::new(
            std::slice::from_ref(&https),
            pki.client_tls(Some(&pki.client)),
        )
        .unwrap(),
    );
    let authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
    fn call<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        request
    }
    let mut kserve = GrpcInferenceServiceClient::new(pool.channels()[0].clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kserve
        .server_ready(call(kserve_pb::ServerReadyRequest {}))
        .await
        .unwrap()
        .into_inner()
        .ready
    {
        assert!(
            Instant::now() < deadline,
            "the inference node never got ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metadata = kserve
        .model_metadata(call(kserve_pb::ModelMetadataRequest {
            name: model.clone(),
            version: version.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    let features = *metadata.inputs[0].shape.last().unwrap() as usize;
    let inferred = pool
        .infer(
            &model,
            &version.to_string(),
            &vec![0.5; features],
            &authorization,
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(inferred.node, https);
    assert_eq!(inferred.model_version, version.to_string());
    assert_eq!(inferred.probabilities.len(), 2, "{inferred:?}");
    let total: f32 = inferred.probabilities.iter().sum();
    assert!((total - 1.0).abs() < 1e-4, "{inferred:?}");
    assert!(
        kserve
            .model_ready(call(kserve_pb::ModelReadyRequest {
                name: model.clone(),
                version: version.to_string(),
            }))
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    // Without its certificate the coordinator is refused by the node.
    let bare = Arc::new(Pool::new(&[https], pki.client_tls(None)).unwrap());
    let e = bare
        .infer(
            &model,
            "",
            &vec![0.5; features],
            &authorization,
            Instant::now() + Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no inference node answered"), "{e}");
    sb.stop().await;
}

fn text(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().expect("run")
}

fn stderr(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Half of a server identity stops the process at start, whether given by flag or by
/// environment variable, naming what is missing.
#[test]
fn a_certificate_without_its_key_is_refused_at_start() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(gbrain_bin())
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&pki.server.cert_path));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, gbrain_integration_tests::auth_toml()).unwrap();
    let out = run(Command::new(gbrain_bin())
        .args(["serve", "ingest", "--auth-file"])
        .arg(&auth)
        .args([
            "--catalog",
            "sqlite::memory:",
            "--object-store",
            "file:///nonexistent",
        ])
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env("GBRAIN_TLS_KEY", &pki.server.key_path));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));
    // A key that is not the certificate's.
    let out = run(Command::new(gbrain_bin())
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&pki.server.cert_path)
        .arg("--tls-key")
        .arg(&pki.client.key_path)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
}

/// `gbrain up` with mutual TLS and a plaintext health port, driven by grpcurl, the CLI and
/// ADBC's Flight SQL driver.
#[test]
fn gbrain_up_over_mutual_tls_with_grpcurl_the_cli_and_adbc() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--tls-cert".to_string(),
        text(&pki.server.cert_path),
        "--tls-key".into(),
        text(&pki.server.key_path),
        "--tls-client-ca".into(),
        text(&pki.ca_path),
        // What the embedded coordinator presents to the port it decodes on.
        "--tls-ca".into(),
        text(&pki.ca_path),
        "--tls-client-cert".into(),
        text(&pki.client.cert_path),
        "--tls-client-key".into(),
        text(&pki.client.key_path),
        "--health-listen".into(),
        "127.0.0.1:0".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::up(&dir.path().join("d"), &dir.path().join("log"), &args);
    let addr = server.addr.to_string();
    let health_addr = server
        .health
        .expect("the health port is reported")
        .to_string();
    let auth = format!("authorization: Bearer {}", server.token);
    let (ca, cert, key) = (
        text(&pki.ca_path),
        text(&pki.client.cert_path),
        text(&pki.client.key_path),
    );
    let mtls = ["-cacert", &ca, "-cert", &cert, "-key", &key];

    let list = run(Command::new(grpcurl())
        .args(mtls)
        .args(["-H", &auth, &addr, "list"]));
    assert!(list.status.success(), "{}", stderr(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    for s in [
        "globalbrain.ingest.v1.IngestService",
        "inference.GRPCInferenceService",
        // The embedded coordinator is on: it reaches the inference service over mutual TLS.
        "globalbrain.coordinator.v1.LoopService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(s), "{s} not in {listed}");
    }
    let call = run(Command::new(grpcurl()).args(mtls).args([
        "-H",
        &auth,
        "-d",
        "{}",
        &addr,
        "globalbrain.ingest.v1.IngestService/ListRecordings",
    ]));
    assert!(call.status.success(), "{}", stderr(&call));
    // Tokens are still checked inside TLS.
    let anonymous = run(Command::new(grpcurl()).args(mtls).args([&addr, "list"]));
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("Unauthenticated"),
        "{}",
        stderr(&anonymous)
    );
    // Plaintext, no client certificate, another CA's certificate: refused.
    let foreign_cert = text(&pki.foreign_client.cert_path);
    let foreign_key = text(&pki.foreign_client.key_path);
    // (grpc-go keeps dialling a port that hangs up until its timeout: 10 s unless told.)
    for refused in [
        vec!["-plaintext"],
        vec!["-cacert", &ca],
        vec!["-cacert", &ca, "-cert", &foreign_cert, "-key", &foreign_key],
    ] {
        let out = run(Command::new(grpcurl())
            .args(["-connect-timeout", "3"])
            .args(&refused)
            .args(["-H", &auth, &addr, "list"]));
        assert!(!out.status.success(), "{refused:?} was admitted");
        assert!(
            !stderr(&out).contains("Unauthenticated"),
            "{refused:?}: {}",
            stderr(&out)
        );
    }

    // Probes: the health port answers in plaintext, without a token, for the server and each
    // service (the health proto comes from the TLS port's reflection); nothing else is there.
    let protoset = dir.path().join("health.protoset");
    let ps = run(Command::new(grpcurl()).args(mtls).args([
        "-H",
        &auth,
        "-protoset-out",
        &text(&protoset),
        &addr,
        "describe",
        "grpc.health.v1.Health",
    ]));
    assert!(ps.status.success(), "{}", stderr(&ps));
    for service in ["", "globalbrain.ingest.v1.IngestService"] {
        let check = run(Command::new(grpcurl()).args([
            "-plaintext",
            "-protoset",
            &text(&protoset),
            "-d",
            &format!("{{\"service\":\"{service}\"}}"),
            &health_addr,
            "grpc.health.v1.Health/Check",
        ]));
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("\"SERVING\""),
            "{service}: {}",
            stderr(&check)
        );
    }
    let nothing_else = run(Command::new(grpcurl()).args(["-plaintext", &health_addr, "list"]));
    assert!(!nothing_else.status.success(), "{}", stderr(&nothing_else));

    // The CLI, configured by environment variables as a deployment would.
    let cli = |with_certificate: bool| {
        let mut cmd = Command::new(gbrain_bin());
        cmd.args(["recordings", "ls", "--json"])
            .env("GBRAIN_SERVER", server.https_endpoint())
            .env("GBRAIN_TOKEN", &server.token)
            .env("GBRAIN_TLS_CA", &pki.ca_path);
        if with_certificate {
            cmd.env("GBRAIN_TLS_CLIENT_CERT", &pki.client.cert_path)
                .env("GBRAIN_TLS_CLIENT_KEY", &pki.client.key_path);
        }
        run(&mut cmd)
    };
    let ok = cli(true);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let refused = cli(false);
    assert!(!refused.status.success(), "{}", stderr(&refused));

    // ADBC's Flight SQL driver over grpc+tls://.
    let out = run(Command::new(python()).arg(script("check_tls.py")).args([
        &addr,
        &server.token,
        &ca,
        &cert,
        &key,
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&out)));
    assert_eq!(report["with_certificate"]["count"], 0, "{report}");
    let error = |case: &str| {
        report[case]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        error("without_certificate").contains("Unavailable"),
        "{report}"
    );
    assert!(
        error("without_the_ca").contains("certificate signed by unknown authority"),
        "{report}"
    );

    let status = server.stop();
    assert!(status.success(), "SIGTERM shuts down cleanly: {status:?}");
}

/// `gbrain serve coordinator` over mutual TLS on both sides: it follows a live stream of
/// `gbrain up` over Tail and decodes on its inference service, each over mutual TLS, and
/// serves its own loop sessions over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_process_decodes_over_mutual_tls() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, gbrain_integration_tests::auth_toml()).unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let log = dir.path().join("log");
    let spawn = |args: Vec<String>| {
        let (log, data) = (log.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
            Server::spawn(&args, &log, &data)
        })
    };
    let server_tls = vec![
        "--auth-file".to_string(),
        text(&auth),
        "--tls-cert".into(),
        text(&pki.server.cert_path),
        "--tls-key".into(),
        text(&pki.server.key_path),
        "--tls-client-ca".into(),
        text(&pki.ca_path),
    ];
    let mut up_args = vec!["up".to_string(), "--data-dir".into(), text(&data)];
    up_args.extend(server_tls.clone());
    let up = spawn(up_args).await.unwrap();
    let mut coordinator_args = vec![
        "serve".to_string(),
        "coordinator".into(),
        "--catalog".into(),
        format!("sqlite://{}", data.join("catalog.db").display()),
        "--object-store".into(),
        format!("file://{}", data.join("objects").display()),
        "--ingest-endpoint".into(),
        up.https_endpoint(),
        "--inference-endpoints".into(),
        up.https_endpoint(),
        "--tls-ca".into(),
        text(&pki.ca_path),
        "--tls-client-cert".into(),
        text(&pki.client.cert_path),
        "--tls-client-key".into(),
        text(&pki.client.key_path),
    ];
    coordinator_args.extend(server_tls);
    let coordinator = spawn(coordinator_args).await.unwrap();

    let admin = ClientArgs {
        server: up.https_endpoint(),
        token: Some(ADMIN_TOKEN.to_string()),
        json: false,
        tls: pki.client_args(Some(&pki.client)),
    };
    let seconds = 12;
    let report = loop_sim::simulate(
        &admin,
        &LoopOptions {
            sessions: 1,
            seconds: seconds as f64,
            drift: 0.0,
            seed: 71,
            model: None,
            adaptation: loop_pb::adaptation::Mode::Unsupervised,
            rate: 0.01,
            realtime: false,
            // Debug builds on a loaded machine.
            deadline_ms: 5000.0,
            evolve: None,
            coordinator: Some(coordinator.https_endpoint()),
        },
    )
    .await
    .unwrap();
    print!("{}", report.text());
    let s = &report.sessions[0];
    let expected = (seconds * 250 - 250) / 25 + 1;
    assert_eq!((s.windows, s.errors), (expected, 0), "{}", report.text());

    // The coordinator's own port asks for a certificate too.
    let bare = pki
        .client_tls(None)
        .endpoint(&coordinator.https_endpoint())
        .unwrap();
    let refused = match bare.connect().await {
        Err(e) => format!("{e:?}"),
        Ok(channel) => {
            let mut client = LoopServiceClient::with_interceptor(
                channel,
                Bearer::new(Some(ADMIN_TOKEN)).unwrap(),
            );
            let e = client
                .get_session(loop_pb::GetSessionRequest {
                    session_id: "no-such-session".into(),
                })
                .await
                .unwrap_err();
            // Admitted, it would say NotFound.
            assert!(
                !matches!(e.code(), Code::NotFound | Code::Unauthenticated),
                "refused before the call: {e:?}"
            );
            format!("{e:?}")
        }
    };
    assert!(!refused.is_empty());

    let status = tokio::task::spawn_blocking(move || coordinator.stop())
        .await
        .unwrap();
    assert!(
        status.success(),
        "the coordinator stops cleanly: {status:?}"
    );
    let status = tokio::task::spawn_blocking(move || up.stop())
        .await
        .unwrap();
    assert!(status.success(), "gbrain up stops cleanly: {status:?}");
}
