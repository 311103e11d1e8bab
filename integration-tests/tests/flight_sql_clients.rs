//! Real Flight SQL clients from PyPI (ADBC with pyarrow and pandas, and pyarrow's own Flight
//! client) against the sandbox.

use std::process::Command;

use gbrain_integration_tests::tools::{python, script};
use gbrain_integration_tests::{ANALYST_TOKEN, Sandbox, fusion};
use gbrain_proto::query::v1::CreateSnapshotRequest;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn adbc_and_pyarrow_query_the_service() {
    let sb = Sandbox::start().await;
    let fx = fusion::load(&sb).await;
    let mut snapshots = gbrain_cli::snapshot::connect(&gbrain_common::clap_blocks::ClientArgs {
        server: sb.endpoint(),
        token: Some(ANALYST_TOKEN.into()),
        json: false,
        tls: Default::default(),
    })
    .await
    .unwrap();
    snapshots
        .create_snapshot(CreateSnapshotRequest { name: "two".into() })
        .await
        .unwrap();
    // A third recording after the snapshot: the pinned query must not see it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.edf");
    let mut later = gbrain_integration_tests::files::Spec::eeg(1, 128, 5);
    later.seed = 11;
    std::fs::write(&path, later.bytes()).unwrap();
    let mut client = sb.client().await;
    gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap();

    let addr = sb.addr.to_string();
    let recording = fx.a.id.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script("check_flight_sql.py"))
            .args([&addr, ANALYST_TOKEN, &recording, "two"])
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
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();

    // fetch_arrow_table: every channel of the two recordings, with its sample count.
    let rows = r["arrow_table"].as_array().unwrap_or_else(|| panic!("{r}"));
    let mut counts: Vec<(String, String, u64)> = rows
        .iter()
        .map(|x| {
            (
                x[0].as_str().unwrap().to_string(),
                x[1].as_str().unwrap().to_string(),
                x[2].as_u64().unwrap(),
            )
        })
        .collect();
    counts.retain(|c| c.0 == fx.a.id);
    assert_eq!(
        counts.iter().map(|c| c.2).collect::<Vec<_>>(),
        vec![2560, 2560, 1280],
        "{r}"
    );

    // fetch_df with a bound parameter: four left epochs of 129 samples, and their average.
    let e = &r["pandas_epochs"];
    assert_eq!(e["rows"], json!(4 * 129), "{r}");
    assert_eq!(e["epochs"], json!(4), "{r}");
    let phys = fx.a.physical(0);
    let at0: f64 =
        fx.a.onsets("left")
            .iter()
            .map(|o| phys[(o * 128.0).round() as usize])
            .sum::<f64>()
            / 4.0;
    assert!((e["erp_at_0"].as_f64().unwrap() - at0).abs() < 1e-9, "{r}");

    // Three bound parameters: 2 s of a 128 Hz channel.
    assert_eq!(r["parameters"], json!(256), "{r}");
    assert_eq!(r["band_power"].as_array().map(Vec::len), Some(2), "{r}");
    // Writes come back as errors naming the refusal.
    let refused = r["refused"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(refused.contains("read-only"), "{refused}");
    // Metadata calls: the tables and a table's columns.
    let tables: Vec<&str> = r["metadata"]["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"samples") && tables.contains(&"events"),
        "{r}"
    );
    assert!(
        r["metadata"]["samples_columns"]
            .as_array()
            .unwrap()
            .contains(&json!("value")),
        "{r}"
    );
    // Pinned to the snapshot: two recordings, not three.
    assert_eq!(r["pinned"], json!(2), "{r}");
    // pyarrow's Flight client with a hand-made command.
    let events: u64 = fx.a.events.len() as u64 + fx.b.events.len() as u64;
    assert_eq!(r["pyarrow_flight"], json!(events), "{r}");
    sb.stop().await;
}
