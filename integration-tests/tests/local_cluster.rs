//! The local cluster (`gbrain local-cluster`, what `cargo xtask local-cluster` runs): every
//! service its own `gbrain serve` process, the catalog in a PostgreSQL database of its own,
//! objects on SeaweedFS over S3. Real clients drive it, and it stops cleanly.

use std::process::Command;
use std::time::Duration;

use gbrain_cli::client::Bearer;
use gbrain_cli::local_cluster::{LocalCluster, Spec, drop_database};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_integration_tests::binary::metric_sum;
use gbrain_integration_tests::live_stream as live;
use gbrain_integration_tests::tools::{data_dir, gbrain_bin, grpcurl, python, weed_bin};
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

/// The server URL of the tests' PostgreSQL, with its database.
fn postgres_admin() -> String {
    gbrain_integration_tests::postgres_url()
}

/// A cluster in a temporary folder with a database of its own (dropped by the guard).
struct Started {
    cluster: Option<LocalCluster>,
    database: String,
    _dir: tempfile::TempDir,
}

impl Started {
    fn new(inference_nodes: usize) -> Self {
        Self::with_ballista(inference_nodes, 0)
    }

    fn with_ballista(inference_nodes: usize, ballista_executors: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("gblc_{}", uuid::Uuid::new_v4().simple());
        let cluster = LocalCluster::start(Spec {
            dir: dir.path().to_path_buf(),
            gbrain: gbrain_bin(),
            weed: weed_bin(),
            postgres: postgres_admin(),
            database: database.clone(),
            inference_nodes,
            ballista_executors,
            log_level: "info".into(),
        })
        .unwrap_or_else(|e| panic!("the local cluster did not start: {e:#}"));
        Self {
            cluster: Some(cluster),
            database,
            _dir: dir,
        }
    }

    fn get(&self) -> &LocalCluster {
        self.cluster.as_ref().unwrap()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        drop(self.cluster.take());
        let _ = drop_database(&postgres_admin(), &self.database);
    }
}

fn client(server: String, token: &str) -> ClientArgs {
    ClientArgs {
        server,
        token: Some(token.to_string()),
        json: false,
        tls: Default::default(),
    }
}

/// `gbrain <args>` against `server`.
fn cli(server: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(gbrain_bin())
        .args(args)
        .env("GBRAIN_SERVER", server)
        .env("GBRAIN_TOKEN", token)
        .output()
        .unwrap()
}

async fn model_ready(endpoint: &str, token: &str, model: &str) -> bool {
    let Ok(channel) = gbrain_cli::client::connect_channel(endpoint, &Default::default()).await
    else {
        return false;
    };
    let mut kserve =
        GrpcInferenceServiceClient::with_interceptor(channel, Bearer::new(Some(token)).unwrap());
    kserve
        .model_ready(gbrain_proto::inference::ModelReadyRequest {
            name: model.into(),
            version: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_runs_in_its_own_process_and_the_cluster_stops_cleanly() {
    let started = tokio::task::spawn_blocking(|| Started::with_ballista(2, 2))
        .await
        .unwrap();
    let c = started.get();
    let ingest = c.process("ingest").endpoint();
    let query = c.process("query").endpoint();

    // Upload to the ingest process; the recording lands on S3 and in PostgreSQL.
    let file = data_dir().join("eeg_edf/test_subsecond.edf");
    let out = cli(
        &ingest,
        &c.submitter_token,
        &["upload", "--json", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uploaded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(uploaded[0]["samples"], 89344);

    // The query process reads it, through ADBC's Flight SQL driver from PyPI.
    let addr = query.trim_start_matches("http://").to_string();
    let token = c.analyst_token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args([
                "-c",
                "import sys\n\
                 import adbc_driver_flightsql.dbapi as f\n\
                 from adbc_driver_flightsql import DatabaseOptions\n\
                 kw = {DatabaseOptions.AUTHORIZATION_HEADER.value: 'Bearer ' + sys.argv[2]}\n\
                 for where in ['local', 'distributed']:\n\
                 \x20   kw['adbc.flight.sql.rpc.call_header.x-gbrain-execution'] = where\n\
                 \x20   with f.connect('grpc://' + sys.argv[1], db_kwargs=kw) as conn:\n\
                 \x20       cur = conn.cursor()\n\
                 \x20       cur.execute('SELECT count(*) FROM samples')\n\
                 \x20       print(cur.fetchone()[0])\n",
                &addr,
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["89344", "89344"],
        "on the query node, then on Ballista"
    );
    same_results_on_ballista(c).await;

    // A decoder pushed to one inference node is served by both (one repository on S3).
    let nodes = [
        c.process("inference-1").endpoint(),
        c.process("inference-2").endpoint(),
    ];
    // Two pushes at once, one to each node, of the next version of the same model: the
    // repository on S3 takes each number once (exclusive create), so they get two versions.
    // Whether the two actually collide depends on timing (each node checks the file first);
    // the create-only write they rely on is checked on its own in storage.rs.
    let (to_a, to_b) = (
        client(nodes[0].clone(), &c.admin_token),
        client(nodes[1].clone(), &c.admin_token),
    );
    let (a, b) = tokio::join!(
        gbrain_cli::loop_sim::push_calibrated(&to_a, 9),
        gbrain_cli::loop_sim::push_calibrated(&to_b, 9),
    );
    let ((model, va), (_, vb)) = (a.unwrap(), b.unwrap());
    let mut versions = [va, vb];
    versions.sort();
    assert_eq!(versions, [1, 2], "two pushes at once, two versions");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    for node in &nodes {
        while !model_ready(node, &c.analyst_token, &model).await {
            assert!(
                std::time::Instant::now() < deadline,
                "{node} never loaded {model}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // A synthetic subject streams to ingest; the coordinator follows the stream over Tail,
    // decodes each window on the inference nodes and sends feedback.
    let report = gbrain_cli::loop_sim::simulate(
        &client(ingest.clone(), &c.admin_token),
        &gbrain_cli::loop_sim::Options {
            sessions: 1,
            seconds: 12.0,
            drift: 0.0,
            seed: 5,
            model: Some(model.clone()),
            adaptation: gbrain_proto::coordinator::v1::adaptation::Mode::Unsupervised,
            rate: 0.01,
            realtime: false,
            // Debug builds on a loaded machine.
            deadline_ms: 5000.0,
            evolve: None,
            coordinator: Some(c.process("coordinator").endpoint()),
        },
    )
    .await
    .unwrap();
    let windows: u64 = report.sessions.iter().map(|s| s.windows).sum();
    let errors: u64 = report.sessions.iter().map(|s| s.errors).sum();
    println!("{}", report.text());
    assert!(windows > 50, "{windows} windows decoded");
    assert_eq!(errors, 0, "no window went unanswered");

    // Predictions are stored and queryable next to the samples.
    let mut flight = gbrain_cli::sql::connect(&client(query.clone(), &c.analyst_token), None)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = scalar(&mut flight, "SELECT count(*) FROM predictions").await;
        if n as u64 >= windows {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} predictions stored of {windows}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The catalog is the cluster's own PostgreSQL database.
    let catalog = c.catalog.clone();
    assert!(
        catalog.ends_with(&format!("/{}", started.database)),
        "{catalog}"
    );
    {
        use sqlx::Connection;
        let mut pg = sqlx::PgConnection::connect(&catalog).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recordings")
            .fetch_one(&mut pg)
            .await
            .unwrap();
        assert_eq!(
            n, 5,
            "three uploads, the stream compared on Ballista, the loop's stream"
        );
    }

    // Every process drains and exits 0 on SIGTERM, the coordinator first.
    let mut started = started;
    let cluster = started.cluster.take().unwrap();
    let report = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    print!("{report}");
    assert!(report.clean(), "{report}");
    let names: Vec<&str> = report.exits.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "coordinator",
            "inference-2",
            "inference-1",
            "query",
            "ingest",
            "ballista-executor-2",
            "ballista-executor-1",
            "ballista-scheduler",
            "seaweedfs"
        ]
    );
}

/// Queries of every kind give the same rows on the query node and on the Ballista scheduler
/// and executors (each its own process, reading S3), and really run there.
async fn same_results_on_ballista(c: &LocalCluster) {
    let ingest = c.process("ingest").endpoint();
    let query = c.process("query").endpoint();
    // Ballista's roles answer health checks, with reflection.
    for role in ["ballista-scheduler", "ballista-executor-1"] {
        let addr = c.process(role).grpc.to_string();
        let list = Command::new(grpcurl())
            .args(["-plaintext", &addr, "list"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&list.stdout);
        assert!(listed.contains("grpc.health.v1.Health"), "{role}: {listed}");
        let check = Command::new(grpcurl())
            .args(["-plaintext", &addr, "grpc.health.v1.Health/Check"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("SERVING"),
            "{role}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    for (file, subject) in [
        ("eeg_edf/test_generator.edf", "sub-g1"),
        ("eeg_edf/test_generator.bdf", "sub-g2"),
    ] {
        let path = data_dir().join(file);
        let out = cli(
            &ingest,
            &c.submitter_token,
            &["upload", "--subject", subject, path.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A live stream left open: its flushes are files of every channel, each channel its own
    // row groups, which an executor must read alone.
    const CHUNKS: u64 = 20;
    let mut conn = live::open(
        &ingest,
        &c.submitter_token,
        "ballista-1",
        Some(live::layout()),
    )
    .await;
    for seq in 1..=CHUNKS {
        conn.tx.send(live::chunk(seq)).await.unwrap();
        assert_eq!(live::ack(&mut conn.rx).await, Some(seq));
    }
    let live_id = conn.opened.recording_id.clone();
    let want = (CHUNKS as usize * live::SAMPLES * live::CHANNELS) as i64;
    let mut flight = gbrain_cli::sql::connect(&client(query.clone(), &c.analyst_token), None)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = scalar(
            &mut flight,
            &format!("SELECT count(*) FROM samples WHERE recording_id = '{live_id}'"),
        )
        .await;
        if n == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {want} live samples flushed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let live_samples = format!(
        "SELECT channel, sample_index, t, value FROM samples WHERE recording_id = '{live_id}'"
    );
    let live_resampled =
        format!("SELECT channel, t, value FROM resample(100.0, '', '{live_id}') WHERE t < 2");
    let queries = [
        live_samples.as_str(),
        live_resampled.as_str(),
        // Scans of every channel of three recordings, aggregated across stages.
        "SELECT recording_id, channel, count(*) AS n, sum(value) AS s, min(t) AS t0, \
         max(time) AS t1 FROM samples GROUP BY recording_id, channel",
        // Filters pushed into the scan; a join of signal with catalog tables.
        "SELECT c.label, r.format, count(*) AS n, avg(s.value) AS m FROM samples s \
         JOIN channels c ON s.recording_id = c.recording_id AND s.channel = c.label \
         JOIN recordings r ON r.recording_id = s.recording_id \
         WHERE s.t BETWEEN 1.5 AND 7.25 GROUP BY c.label, r.format",
        // The aggregate of this project.
        "SELECT recording_id, channel, band_power(value, t, sample_rate, 8, 13) AS alpha \
         FROM samples WHERE t < 20 GROUP BY recording_id, channel",
        // Table functions, planned again on the executors.
        "SELECT recording_id, channel, count(*) AS n, sum(value) AS s \
         FROM epochs('Recording starts', 0, 0.5) GROUP BY recording_id, channel",
        "SELECT event_type, channel, t_rel, value FROM erp('Recording starts', 0, 0.25)",
        "SELECT band, channel, power FROM epoch_band_power('Recording starts', 0, 2, 'alpha,beta')",
        "SELECT channel, count(*) AS n, sum(value) AS s FROM resample(50.0) GROUP BY channel",
        "SELECT * FROM asof_events('Recording starts', 'Recording ends', 'forward')",
        "SELECT e.type, e.onset, count(*) AS n FROM events e JOIN samples s \
         ON s.recording_id = e.recording_id AND s.t BETWEEN e.onset AND e.onset + 1 \
         GROUP BY e.type, e.onset",
    ];
    let metrics = c.process("query").http;
    let before = metric_sum(metrics, "gbrain_query_distributed_total", "");
    let server = client(query.clone(), &c.analyst_token);
    let mut local = gbrain_cli::sql::connect_with(&server, None, Some("local"))
        .await
        .unwrap();
    let mut ballista = gbrain_cli::sql::connect_with(&server, None, Some("distributed"))
        .await
        .unwrap();
    for sql in queries {
        let (_, a) = gbrain_cli::sql::collect(&mut local, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let (_, b) = gbrain_cli::sql::collect(&mut ballista, sql)
            .await
            .unwrap_or_else(|e| panic!("on Ballista: {sql}: {e}"));
        let (a, b) = (sorted_rows(&a), sorted_rows(&b));
        assert!(!a.is_empty(), "{sql}: no rows to compare");
        assert_eq!(a, b, "{sql}: one node and Ballista differ");
        println!("same on Ballista ({} rows): {sql}", a.len());
    }
    let after = metric_sum(metrics, "gbrain_query_distributed_total", "");
    assert_eq!(
        after - before,
        queries.len() as u64,
        "every query with the header went to the scheduler"
    );
    // The executors ran tasks.
    for e in ["ballista-executor-1", "ballista-executor-2"] {
        let log = std::fs::read_to_string(&c.process(e).log).unwrap();
        println!("{e}: {} tasks", log.matches("Finished task").count());
    }
    let ran: usize = ["ballista-executor-1", "ballista-executor-2"]
        .iter()
        .map(|e| {
            std::fs::read_to_string(&c.process(e).log)
                .unwrap()
                .matches("Finished task")
                .count()
        })
        .sum();
    assert!(
        ran >= queries.len(),
        "{ran} tasks finished on the executors"
    );

    // A client that goes away mid-result: the query service cancels the job on the scheduler
    // (Ballista's client would leave it running).
    let mut flight = gbrain_cli::sql::connect_with(&server, None, Some("distributed"))
        .await
        .unwrap();
    let (_, mut streams) = gbrain_cli::sql::query(&mut flight, "SELECT * FROM samples")
        .await
        .unwrap();
    use futures::StreamExt;
    assert!(streams[0].next().await.is_some(), "a first batch");
    drop(streams);
    drop(flight);
    let scheduler_log = &c.process("ballista-scheduler").log;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(scheduler_log)
        .unwrap()
        .contains("Received cancellation request for job")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the job of a query whose client left was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first column of the first row of `sql`'s result, an int64.
async fn scalar(flight: &mut gbrain_cli::sql::Flight, sql: &str) -> i64 {
    use arrow::array::AsArray;
    let (_, batches) = gbrain_cli::sql::collect(flight, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

/// Each row as text, floats rounded to 9 significant digits (Ballista sums partitions in
/// another order), sorted.
fn sorted_rows(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        return "NULL".to_string();
                    }
                    match c.data_type() {
                        arrow::datatypes::DataType::Float64 => {
                            let v = c.as_primitive::<arrow::datatypes::Float64Type>().value(i);
                            format!("{v:.9e}")
                        }
                        _ => arrow::util::display::array_value_to_string(c, i).unwrap_or_default(),
                    }
                })
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// kill -9 of the ingest process mid-stream, SeaweedFS stopped for 10 s while a stream and an
/// upload go on, every PostgreSQL connection dropped: the client resumes, and everything
/// acknowledged is stored once, checked sample by sample through the query process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_acknowledged() {
    use live::{CHANNELS, SAMPLES};
    const CHUNKS: u64 = 120;
    let mut started = tokio::task::spawn_blocking(|| Started::new(0))
        .await
        .unwrap();
    let token = started.get().admin_token.clone();
    let ingest = started.get().process("ingest").endpoint();
    let query = started.get().process("query").endpoint();

    // 1. kill -9 the ingest process with chunks in flight, after chunk 30 is acknowledged.
    let mut conn = live::open(&ingest, &token, "fault-1", Some(live::layout())).await;
    let recording_id = conn.opened.recording_id.clone();
    for seq in 1..=40 {
        conn.tx.send(live::chunk(seq)).await.unwrap();
    }
    let mut acked = 0;
    while acked < 30 {
        acked = live::ack(&mut conn.rx).await.expect("acks up to 30");
    }
    let cluster = started.cluster.as_mut().unwrap();
    cluster.kill("ingest").unwrap();
    while let Some(seq) = live::ack(&mut conn.rx).await {
        acked = seq;
    }
    tokio::task::block_in_place(|| cluster.restart("ingest")).unwrap();
    let mut conn = live::open(&ingest, &token, "fault-1", None).await;
    assert_eq!(conn.opened.recording_id, recording_id);
    assert!(
        conn.opened.last_seq >= acked,
        "chunk {acked} was acknowledged; the restarted ingest holds up to {}",
        conn.opened.last_seq
    );
    let mut next = conn.opened.last_seq + 1;
    let resumed = (acked, conn.opened.last_seq);

    // 2. Stop SeaweedFS for 10 s while the stream goes on and a file is uploaded: acks come
    // from the log (local disk), flushes wait for S3; the upload is slowed or refused with
    // Unavailable, never acknowledged and lost.
    let cluster = started.cluster.as_mut().unwrap();
    tokio::task::block_in_place(|| cluster.stop_weed());
    let upload = {
        let ingest = ingest.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            let file = data_dir().join("eeg_edf/test_generator.edf");
            cli(
                &ingest,
                &token,
                &["upload", "--json", file.to_str().unwrap()],
            )
        })
    };
    let outage = std::time::Instant::now();
    let before_outage = next;
    while outage.elapsed() < Duration::from_secs(10) && next <= 80 {
        conn.tx.send(live::chunk(next)).await.unwrap();
        assert_eq!(live::ack(&mut conn.rx).await, Some(next));
        next += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    let cluster = started.cluster.as_mut().unwrap();
    tokio::task::block_in_place(|| cluster.start_weed()).unwrap();
    let upload = upload.await.unwrap();
    let uploaded = if upload.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&upload.stdout).unwrap();
        Some((
            v[0]["recording_id"].as_str().unwrap().to_string(),
            v[0]["samples"].as_u64().unwrap(),
        ))
    } else {
        let err = String::from_utf8_lossy(&upload.stderr);
        assert!(err.contains("Unavailable"), "{err}");
        None
    };
    println!("upload during the object store's outage: {uploaded:?}");

    // 3. Drop every PostgreSQL connection of the cluster: the services reconnect.
    {
        use sqlx::Connection;
        let mut pg = sqlx::PgConnection::connect(&postgres_admin())
            .await
            .unwrap();
        let dropped: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&started.database)
        .fetch_all(&mut pg)
        .await
        .unwrap();
        assert!(!dropped.is_empty(), "the services hold connections");
        println!("dropped {} PostgreSQL connections", dropped.len());
    }

    // The rest of the stream, then close.
    for seq in next..=CHUNKS {
        conn.tx.send(live::chunk(seq)).await.unwrap();
    }
    for seq in next..=CHUNKS {
        assert_eq!(live::ack(&mut conn.rx).await, Some(seq));
    }
    conn.tx
        .send(gbrain_proto::ingest::v1::StreamRequest {
            kind: Some(gbrain_proto::ingest::v1::stream_request::Kind::Close(
                gbrain_proto::ingest::v1::StreamClose {},
            )),
        })
        .await
        .unwrap();
    assert_eq!(live::ack(&mut conn.rx).await, None, "closed");

    // Sample by sample, through the query process: every chunk once, at its values.
    let total = CHUNKS as usize * SAMPLES;
    let sql = format!(
        "SELECT channel_index, sample_index, value FROM samples \
         WHERE recording_id = '{recording_id}' ORDER BY channel_index, sample_index"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let batch = loop {
        let got = async {
            let mut flight = gbrain_cli::sql::connect(&client(query.clone(), &token), None).await?;
            let (schema, batches) = gbrain_cli::sql::collect(&mut flight, &sql).await?;
            anyhow::Ok(arrow::compute::concat_batches(&schema, &batches)?)
        }
        .await;
        match got {
            Ok(b) if b.num_rows() == total * CHANNELS => break b,
            Ok(b) => assert!(b.num_rows() < total * CHANNELS, "{} rows", b.num_rows()),
            // The query process's first catalog call after the drop may fail once.
            Err(e) => println!("query: {e:#}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the samples never became queryable"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
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
        let want = f64::from(live::values(seq as u64)[s * CHANNELS + c]);
        assert_eq!(value.value(row), want, "channel {c} sample {n}");
    }
    // What the upload acknowledged is there too.
    if let Some((id, samples)) = uploaded {
        let mut flight = gbrain_cli::sql::connect(&client(query.clone(), &token), None)
            .await
            .unwrap();
        let n = scalar(
            &mut flight,
            &format!("SELECT count(*) FROM samples WHERE recording_id = '{id}'"),
        )
        .await;
        assert_eq!(n as u64, samples);
    }
    println!(
        "kill -9 ingest: last ack seen {}, the restarted ingest held up to chunk {}; \
         SeaweedFS down 10 s: chunks {before_outage} to {} acknowledged meanwhile; lost: nothing \
         ({CHUNKS} chunks, {total} samples x {CHANNELS} channels, each once)",
        resumed.0,
        resumed.1,
        next - 1
    );
    let cluster = started.cluster.take().unwrap();
    let report = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    assert!(report.clean(), "{report}");
}

/// Inference requests a node has answered with success, from its Prometheus endpoint.
fn answered(http: std::net::SocketAddr) -> u64 {
    metric_sum(http, "gbrain_inference_requests_total{", "success")
}

/// Where the closed-loop load goes: ingest, the coordinator, and a token.
#[derive(Clone)]
struct Target {
    ingest: String,
    coordinator: String,
    token: String,
}

impl Target {
    fn of(c: &LocalCluster) -> Self {
        Self {
            ingest: c.process("ingest").endpoint(),
            coordinator: c.process("coordinator").endpoint(),
            token: c.admin_token.clone(),
        }
    }
}

/// Windows decoded per second by `sessions` synthetic subjects of `seconds` each, sent as
/// fast as acks come or (`realtime`) at their own pace, the windows, and the errors (windows
/// without a prediction by their deadline).
async fn load(
    t: Target,
    model: String,
    sessions: usize,
    seconds: f64,
    seed: u64,
    realtime: bool,
) -> (f64, u64, u64) {
    let report = gbrain_cli::loop_sim::simulate(
        &client(t.ingest, &t.token),
        &gbrain_cli::loop_sim::Options {
            sessions,
            seconds,
            drift: 0.0,
            seed,
            model: Some(model),
            adaptation: gbrain_proto::coordinator::v1::adaptation::Mode::Off,
            rate: 0.0,
            realtime,
            // Debug builds on a loaded machine.
            deadline_ms: 5000.0,
            evolve: None,
            coordinator: Some(t.coordinator),
        },
    )
    .await
    .unwrap();
    let windows: u64 = report.sessions.iter().map(|s| s.windows).sum();
    let errors: u64 = report.sessions.iter().map(|s| s.errors).sum();
    (windows as f64 / report.wall.as_secs_f64(), windows, errors)
}

async fn wait_model(c: &LocalCluster, node: &str, model: &str) {
    let endpoint = c.process(node).endpoint();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !model_ready(&endpoint, &c.analyst_token, model).await {
        assert!(
            std::time::Instant::now() < deadline,
            "{node} never loaded {model}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A node's health, or None when it does not answer.
async fn health(endpoint: &str) -> Option<i32> {
    let channel = gbrain_cli::client::connect_channel(endpoint, &Default::default())
        .await
        .ok()?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .ok()
    .map(|r| r.into_inner().status)
}

/// Inference scaled from 1 to 3 nodes under load: the coordinator finds the new nodes and
/// they answer (throughput before and after is printed; this 2-CPU machine runs every node on
/// the same two cores). Then, under load, one node gets SIGTERM (health NOT_SERVING first, then
/// it drains and exits 0) and another kill -9: every window still gets its prediction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_scales_out_drains_and_fails_under_load() {
    let mut started = tokio::task::spawn_blocking(|| Started::new(1))
        .await
        .unwrap();
    let c = started.get();
    let (model, _) = gbrain_cli::loop_sim::push_calibrated(
        &client(c.process("inference-1").endpoint(), &c.admin_token),
        21,
    )
    .await
    .unwrap();
    wait_model(c, "inference-1", &model).await;
    // Sixteen streams at once: flushes, prediction files and stream opens commit together
    // (they once deadlocked in PostgreSQL).
    const SESSIONS: usize = 16;
    let target = Target::of(c);
    let (one, windows, errors) =
        load(target.clone(), model.clone(), SESSIONS, 30.0, 30, false).await;
    assert_eq!(errors, 0);
    assert!(windows > 0);

    // Scale to 3 nodes.
    let cluster = started.cluster.as_mut().unwrap();
    let added = tokio::task::block_in_place(|| {
        [
            cluster.add_inference().unwrap(),
            cluster.add_inference().unwrap(),
        ]
    });
    let c = started.get();
    for node in &added {
        wait_model(c, node, &model).await;
    }
    // The coordinator reads its endpoints file again when a window comes and the last read
    // is 5 s old: wait that long, let a short run trigger it, then measure.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = load(target.clone(), model.clone(), 1, 3.0, 33, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<u64> = added.iter().map(|n| answered(c.process(n).http)).collect();
    let (three, windows, errors) =
        load(target.clone(), model.clone(), SESSIONS, 30.0, 31, false).await;
    assert_eq!(errors, 0);
    assert!(windows > 0);
    for (node, before) in added.iter().zip(before) {
        let after = answered(c.process(node).http);
        assert!(
            after > before,
            "{node} answered no window after the scale-out"
        );
    }
    println!(
        "{SESSIONS} sessions as fast as acks come: {one:.0} windows/s on 1 inference node, \
         {three:.0} windows/s on 3 (every node on the same 2 CPUs)"
    );

    // Under load: SIGTERM inference-2 (it reports NOT_SERVING, drains, exits 0), then kill -9
    // inference-3. The coordinator moves their windows to the nodes left.
    let busy = tokio::spawn(load(target.clone(), model.clone(), 2, 14.0, 32, true));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cluster = started.cluster.as_mut().unwrap();
    let draining = cluster.process("inference-2").endpoint();
    cluster.signal_term("inference-2").unwrap();
    let mut seen = Vec::new();
    loop {
        let h = health(&draining).await;
        if seen.last() != Some(&h) {
            seen.push(h);
        }
        if h.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert!(
        seen.contains(&Some(not_serving)),
        "health went NOT_SERVING before the node closed: {seen:?}"
    );
    let (status, in_time) = tokio::task::block_in_place(|| cluster.wait("inference-2")).unwrap();
    assert!(in_time && status.is_some_and(|s| s.success()), "{status:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.kill("inference-3")).unwrap();
    let (_, windows, errors) = busy.await.unwrap();
    println!(
        "SIGTERM inference-2 (health {seen:?}, exit 0) and kill -9 inference-3 under load: \
         {windows} windows, {errors} without a prediction by their deadline; lost: nothing"
    );
    assert!(windows > 0);
    assert_eq!(errors, 0, "every window answered within its deadline");
    let cluster = started.cluster.take().unwrap();
    let report = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    // The nodes already stopped are reported as not running; the rest stop cleanly.
    assert!(
        report
            .exits
            .iter()
            .all(|(_, s, in_time)| *in_time && s.is_none_or(|s| s.success())),
        "{report}"
    );
}

/// kill -9 the ingest process in the middle of an upload and start it again: the client
/// resumes from what the server staged (on S3) and the recording is stored once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_mid_upload_resumes_the_upload() {
    let mut started = tokio::task::spawn_blocking(|| Started::new(0))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = gbrain_integration_tests::files::Spec::eeg(64, 512, 600);
    let file = dir.path().join("long.edf");
    std::fs::write(&file, spec.bytes()).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    let samples = 64 * 512 * 600u64;

    let (ingest, http, token) = {
        let c = started.get();
        let p = c.process("ingest");
        (p.endpoint(), p.http, c.submitter_token.clone())
    };
    let upload = Command::new(gbrain_bin())
        .args(["upload", "--json", file.to_str().unwrap()])
        .env("GBRAIN_SERVER", &ingest)
        .env("GBRAIN_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once a part (8 MiB, staged on S3 when full) is on S3: what a resume starts after.
    let store = {
        let c = started.get();
        gbrain_storage::store::open(&c.object_store, &c.weed.options()).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let received = loop {
        use futures::TryStreamExt;
        let staged: Vec<_> = store
            .list(Some(&object_store::path::Path::from("staging")))
            .try_collect()
            .await
            .unwrap_or_default();
        if !staged.is_empty() {
            break metric_sum(http, "gbrain_ingest_upload_bytes_total", "");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no part was ever staged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cluster = started.cluster.as_mut().unwrap();
    tokio::task::block_in_place(|| cluster.kill("ingest")).unwrap();
    assert!(
        received < size,
        "the upload ({size} bytes) was whole before the kill; nothing to resume"
    );
    tokio::task::block_in_place(|| cluster.restart("ingest")).unwrap();
    let out = tokio::task::spawn_blocking(move || upload.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["samples"].as_u64(), Some(samples));
    let resumed_from = metric_sum(
        started.get().process("ingest").http,
        "gbrain_ingest_upload_bytes_total",
        "",
    );
    println!(
        "kill -9 ingest with {received} of {size} bytes received; the restarted ingest took \
         {resumed_from} more (resumed, not sent again from the start); lost: nothing"
    );
    assert!(
        resumed_from <= size - (8 << 20),
        "the upload did not resume after the staged part"
    );

    // One recording, every sample.
    let c = started.get();
    let mut flight = gbrain_cli::sql::connect(
        &client(c.process("query").endpoint(), &c.analyst_token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        scalar(
            &mut flight,
            "SELECT count(*) AS recordings, sum(num_records) FROM recordings"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&mut flight, "SELECT count(*) FROM samples").await as u64,
        samples
    );
    let cluster = started.cluster.take().unwrap();
    let report = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    assert!(report.clean(), "{report}");
}
