//! The query service's fences: pruning, read-only SQL, roles, limits, cancellation, snapshots.

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use futures::StreamExt;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_integration_tests::files::Spec;
use gbrain_integration_tests::{
    ADMIN_TOKEN, ANALYST_TOKEN, OTHER_TENANT_TOKEN, Options, SUBMITTER_TOKEN, Sandbox,
};
use gbrain_proto::query::v1::{CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest};
use gbrain_query::QueryLimits;
use tonic::Code;

fn plan_text(b: &RecordBatch) -> String {
    let plans = b.column_by_name("plan").unwrap();
    let plans = arrow::compute::cast(plans, &arrow::datatypes::DataType::Utf8).unwrap();
    let s = plans.as_string::<i32>();
    (0..s.len())
        .map(|i| s.value(i).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(b: &RecordBatch) -> i64 {
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().value(0)
}

async fn upload(sb: &Sandbox, spec: Spec, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, spec.bytes()).unwrap();
    let mut client = sb.client().await;
    gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap()
        .recording_id
}

/// The number after `name=` in a plan line: `files_pruned=2`.
fn metric(plan: &str, name: &str) -> u64 {
    let at = plan
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in\n{plan}"));
    plan[at + name.len() + 1..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_prune_files_and_row_groups() {
    let sb = Sandbox::start().await;
    // 3 channels × 204,800 samples: each channel's file has four row groups of 65,536.
    let spec = Spec::eeg(3, 1024, 200);
    let id = upload(&sb, spec.clone(), "long.edf").await;
    let _other = upload(
        &sb,
        Spec {
            seed: 9,
            ..Spec::eeg(2, 128, 10)
        },
        "short.edf",
    )
    .await;
    let sql = format!(
        "SELECT count(*), sum(sample_index) FROM samples WHERE recording_id = '{id}' \
         AND channel = 'EEG C1' AND t BETWEEN 100 AND 101"
    );
    let plan = plan_text(
        &sb.sql(ANALYST_TOKEN, &format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap(),
    );
    // Of five channel files, only C1 of the long recording is opened...
    assert_eq!(metric(&plan, "files_scanned"), 1, "{plan}");
    assert_eq!(metric(&plan, "files_pruned"), 4, "{plan}");
    assert_eq!(metric(&plan, "files_opened"), 1, "{plan}");
    // ...and of its four row groups, only the one holding 100..101 s is read.
    let rg = plan
        .split("row_groups_pruned_statistics=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(rg, "4 total → 1 matched", "{plan}");
    // And the answer is the one the filter asks for: samples 102400..=103424.
    let r = sb.sql(ANALYST_TOKEN, &sql).await.unwrap();
    assert_eq!(count(&r), 1025);
    let sum = arrow::compute::cast(r.column(1), &arrow::datatypes::DataType::Int64).unwrap();
    assert_eq!(
        sum.as_primitive::<Int64Type>().value(0),
        (102_400..=103_424i64).sum::<i64>()
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_reads_run_and_only_for_analysts() {
    let sb = Sandbox::start().await;
    upload(&sb, Spec::eeg(2, 128, 10), "a.edf").await;
    for sql in [
        "CREATE TABLE t (a INT)",
        "CREATE TABLE t AS SELECT * FROM samples",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE samples",
        "INSERT INTO recordings SELECT * FROM recordings",
        "DELETE FROM events",
        "UPDATE events SET type = 'x'",
        "COPY (SELECT * FROM samples) TO '/tmp/gbrain-stolen.parquet'",
        "COPY samples TO '/tmp/gbrain-stolen.csv'",
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
        "SET datafusion.execution.target_partitions = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/passwd'",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
        "SELECT * FROM recordings WHERE recording_id IN (SELECT * FROM read_json('/etc/x.json'))",
        "PREPARE p AS SELECT 1",
    ] {
        let err = sb.sql(ANALYST_TOKEN, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{sql}: {err:?}");
    }
    assert!(!std::path::Path::new("/tmp/gbrain-stolen.parquet").exists());
    for sql in [
        "SELEC 1",
        "SELECT nope FROM samples",
        "SELECT * FROM no_such_table",
        "SELECT * FROM epochs('left', 1, 0)",
        "SELECT * FROM epoch_band_power('left', 0, 1, 'kappa')",
        "SELECT 1/0",
    ] {
        let err = sb.sql(ANALYST_TOKEN, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sql}: {err:?}");
    }
    // Reading the catalog's own description stays allowed.
    let shown = sb.sql(ANALYST_TOKEN, "SHOW TABLES").await.unwrap();
    let names = arrow::util::pretty::pretty_format_batches(&[shown])
        .unwrap()
        .to_string();
    assert!(
        names.contains("samples") && names.contains("events"),
        "{names}"
    );
    let err = sb.sql(SUBMITTER_TOKEN, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut anonymous = gbrain_cli::sql::connect(
        &ClientArgs {
            server: sb.endpoint(),
            token: None,
            json: false,
            tls: Default::default(),
        },
        None,
    )
    .await
    .unwrap();
    let err = gbrain_cli::sql::collect(&mut anonymous, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    sb.stop().await;
}

fn limited(limits: QueryLimits) -> Options {
    let mut o = Options::default();
    o.query.limits = limits;
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_time_and_result_limits_are_resource_exhausted() {
    let sb = Sandbox::start_with(limited(QueryLimits {
        memory_bytes: 16 << 20,
        // Room for the spilling sort on one partition on a loaded machine.
        timeout: Duration::from_secs(40),
        max_result_bytes: 256 << 10,
        // One partition: DataFusion 55's sorts running side by side under one fair pool race
        // for what a spilling sort frees just before its merge, so under a limit this tight
        // two of them sometimes stop (ResourceExhausted) rather than finish.
        target_partitions: 1,
    }))
    .await;
    upload(&sb, Spec::eeg(4, 256, 3600), "a.edf").await;
    // Sorting 3.7M rows (59 MB) in 16 MiB spills to disk and finishes.
    let sorted = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT max(rn) FROM (SELECT row_number() OVER (ORDER BY value, sample_index) AS rn FROM samples)",
        )
        .await
        .unwrap();
    assert_eq!(count(&sorted), 4 * 256 * 3600);
    // Holding every value of a group cannot spill: past 16 MiB the query stops.
    let err = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT channel, array_agg(value) FROM samples GROUP BY channel",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("memory"), "{err:?}");
    // A recursion without end runs until the time limit stops it.
    let err = sb
        .sql(
            ANALYST_TOKEN,
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("time limit"), "{err:?}");
    // Every sample is more than 256 KiB of result.
    let err = sb
        .sql(ANALYST_TOKEN, "SELECT * FROM samples")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("result"), "{err:?}");
    sb.stop().await;
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_stops_when_its_client_goes_away() {
    let sb = Sandbox::start().await;
    upload(&sb, Spec::eeg(2, 256, 60), "a.edf").await;
    let mut client = sb.flight(ANALYST_TOKEN, None).await;
    // Billions of rows: it would run for hours.
    let (_, mut streams) = gbrain_cli::sql::query(
        &mut client,
        "SELECT a.value, b.value FROM samples a, samples b",
    )
    .await
    .unwrap();
    let mut stream = streams.remove(0);
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    drop(stream);
    drop(client);
    let mut text = String::new();
    for _ in 0..200 {
        text = sb.metrics_text().await;
        let cancelled = metric_value(&text, "gbrain_query_queries_total{outcome=\"cancelled\"}");
        let active = metric_value(&text, "gbrain_query_active");
        if cancelled == Some(1.0) && active == Some(0.0) {
            sb.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the query kept running after its client left:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_keep_their_answers_after_later_ingest() {
    let sb = Sandbox::start().await;
    let first = upload(&sb, Spec::eeg(2, 128, 10), "a.edf").await;
    let mut snapshots = gbrain_cli::snapshot::connect(&ClientArgs {
        server: sb.endpoint(),
        token: Some(ANALYST_TOKEN.into()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    let s = snapshots
        .create_snapshot(CreateSnapshotRequest {
            name: "before".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.schema, "snapshot_before");
    let dup = snapshots
        .create_snapshot(CreateSnapshotRequest {
            name: "before".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = snapshots
        .create_snapshot(CreateSnapshotRequest {
            name: "Bad Name".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let q = "SELECT (SELECT count(*) FROM recordings) AS r, (SELECT count(*) FROM samples) AS s, \
             (SELECT count(*) FROM epochs('*', -0.5, 0.5)) AS e";
    let before = sb.sql(ANALYST_TOKEN, q).await.unwrap();
    // Later ingest: a second recording, and events on the first.
    upload(
        &sb,
        Spec {
            seed: 5,
            ..Spec::eeg(2, 128, 10)
        },
        "b.edf",
    )
    .await;
    let mut client = sb.client().await;
    client
        .append_events(gbrain_proto::ingest::v1::AppendEventsRequest {
            recording_id: first.clone(),
            events: vec![gbrain_proto::ingest::v1::Event {
                onset: Some(5.0),
                r#type: "left".into(),
                ..Default::default()
            }],
            source: "task".into(),
            idempotency_key: String::new(),
            events_tsv: None,
        })
        .await
        .unwrap();
    let now = sb.sql(ANALYST_TOKEN, q).await.unwrap();
    assert_ne!(now, before, "the latest data changed");
    // Pinned to the snapshot, the same query gives the same answer, functions included.
    let pinned = sb.sql_at(ANALYST_TOKEN, Some("before"), q).await.unwrap();
    assert_eq!(pinned, before);
    let schema = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT count(*) FROM snapshot_before.recordings",
        )
        .await
        .unwrap();
    assert_eq!(count(&schema), 1);
    // Another tenant has no such snapshot.
    let err = sb
        .sql_at(OTHER_TENANT_TOKEN, Some("before"), "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = sb
        .sql(
            OTHER_TENANT_TOKEN,
            "SELECT * FROM snapshot_before.recordings",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let list = snapshots
        .list_snapshots(ListSnapshotsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.snapshots.len(), 1);
    let gone = snapshots
        .delete_snapshot(DeleteSnapshotRequest {
            name: "before".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.deleted);
    let _ = ADMIN_TOKEN;
    sb.stop().await;
}
