//! The coordinator as its own process (`gbrain serve coordinator`): it follows a live stream
//! of `gbrain up` over the ingest service's `Tail`, decodes on that cluster's inference
//! service, and stores predictions and outcomes through the shared catalog and object store,
//! where Flight SQL finds them.

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use gbrain_cli::client::Bearer;
use gbrain_cli::loop_sim::{self, Options};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_integration_tests::binary::Server;
use gbrain_integration_tests::{ADMIN_TOKEN, OTHER_TENANT_TOKEN};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_of_its_own_follows_streams_over_tail_and_stores_its_rows() {
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
    let up = spawn(vec![
        "up".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--auth-file".into(),
        auth.display().to_string(),
    ])
    .await
    .unwrap();
    let coordinator = spawn(vec![
        "serve".into(),
        "coordinator".into(),
        "--auth-file".into(),
        auth.display().to_string(),
        "--catalog".into(),
        format!("sqlite://{}", data.join("catalog.db").display()),
        "--object-store".into(),
        format!("file://{}", data.join("objects").display()),
        "--ingest-endpoint".into(),
        up.endpoint(),
        "--inference-endpoints".into(),
        up.endpoint(),
    ])
    .await
    .unwrap();

    let admin = ClientArgs {
        server: up.endpoint(),
        token: Some(ADMIN_TOKEN.to_string()),
        json: false,
        tls: Default::default(),
    };
    let report = loop_sim::simulate(
        &admin,
        &Options {
            sessions: 1,
            seconds: 40.0,
            drift: 0.0,
            seed: 70,
            model: None,
            adaptation: pb::adaptation::Mode::Unsupervised,
            rate: 0.01,
            realtime: false,
            // Debug builds on a loaded machine.
            deadline_ms: 5000.0,
            evolve: None,
            coordinator: Some(coordinator.endpoint()),
        },
    )
    .await
    .unwrap();
    print!("{}", report.text());
    let s = &report.sessions[0];
    let expected = (40 * 250 - 250) / 25 + 1;
    assert_eq!((s.windows, s.errors), (expected, 0));
    assert!(report.accuracy() > 0.75, "{}", report.accuracy());

    // The rows are where the cluster's Flight SQL reads, every window's once the session's
    // last rows are written (they are written every second and when it stops).
    let mut flight = gbrain_cli::sql::connect(&admin, None).await.unwrap();
    let sql = format!(
        "SELECT (SELECT count(*) FROM predictions WHERE session_id = '{0}' AND role = 'live') \
         AS predictions, (SELECT count(*) FROM outcomes WHERE session_id = '{0}') AS outcomes",
        s.session_id
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (schema, batches) = gbrain_cli::sql::collect(&mut flight, &sql).await.unwrap();
        let r = arrow::compute::concat_batches(&schema, &batches).unwrap();
        let int = |c: usize| {
            arrow::compute::cast(r.column(c), &DataType::Int64)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0)
        };
        let (predictions, outcomes) = (int(0), int(1));
        assert!(predictions <= expected as i64, "each window once");
        if predictions == expected as i64 && outcomes > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{predictions} of {expected} predictions and {outcomes} outcomes stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A stream of another tenant is not there for this one: Tail answers per tenant.
    let mut other = LoopServiceClient::with_interceptor(
        tonic::transport::Endpoint::from_shared(coordinator.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
        Bearer::new(Some(OTHER_TENANT_TOKEN)).unwrap(),
    );
    let stream_id = "not-of-this-tenant";
    let e = other
        .start_session(loop_sim::motor_imagery_session(
            stream_id,
            loop_sim::DEFAULT_MODEL,
            pb::adaptation::Mode::Off,
            0.0,
            100.0,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let status = tokio::task::spawn_blocking(move || coordinator.stop())
        .await
        .unwrap();
    assert!(
        status.success(),
        "the coordinator stops cleanly on SIGTERM: {status:?}"
    );
    drop(up);
}
