//! The query service through Flight SQL: tables, fusion functions, pruning, snapshots.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use gbrain_integration_tests::fusion::{self, Fixture};
use gbrain_integration_tests::{ANALYST_TOKEN, OTHER_TENANT_TOKEN, Sandbox};
use gbrain_query::functions::welch_band_power;

fn f64s(b: &RecordBatch, name: &str) -> Vec<f64> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Float64).unwrap();
    c.as_primitive::<Float64Type>().values().to_vec()
}

fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().values().to_vec()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
    let s = c.as_string::<i32>();
    (0..s.len())
        .map(|i| (!s.is_null(i)).then(|| s.value(i).to_string()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

async fn setup() -> (Sandbox, Fixture) {
    let sb = Sandbox::start().await;
    let fx = fusion::load(&sb).await;
    (sb, fx)
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_hold_the_committed_recordings() {
    let (sb, fx) = setup().await;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT recording_id, duration_s, format FROM recordings ORDER BY recording_id",
        )
        .await
        .unwrap();
    let mut want = [fx.a.id.clone(), fx.b.id.clone()];
    want.sort();
    assert_eq!(
        strings(&r, "recording_id"),
        want.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    let ch = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT label, sample_rate, unit, samples FROM channels WHERE recording_id = '{}' ORDER BY channel_index",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    assert_eq!(f64s(&ch, "sample_rate"), vec![128.0, 128.0, 64.0]);
    assert_eq!(i64s(&ch, "samples"), vec![2560, 2560, 1280]);

    // Every sample of one channel, in physical units, with its time.
    let s = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT sample_index, t, value, time FROM samples WHERE recording_id = '{}' AND channel = 'EEG C2' ORDER BY sample_index",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let want = fx.a.physical(2);
    let got = f64s(&s, "value");
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(a, b)| close(*a, *b)));
    let t = f64s(&s, "t");
    assert_eq!(t[64], 1.0, "64 Hz: sample 64 is at 1 s");
    let time = s.column_by_name("time").unwrap();
    assert!(
        !time.is_null(0),
        "the start time is known, so is every sample's"
    );

    let e = sb
        .sql(
            ANALYST_TOKEN,
            "SELECT type, count(*) AS n, avg(response_time) AS rt FROM events GROUP BY type ORDER BY type",
        )
        .await
        .unwrap();
    assert_eq!(
        strings(&e, "type"),
        vec![
            Some("button".into()),
            Some("left".into()),
            Some("right".into())
        ]
    );
    assert_eq!(i64s(&e, "n"), vec![11, 6, 5]);
    sb.stop().await;
}

/// Expected epoch values of one channel around `onset`, laid out as MNE does.
fn epoch(values: &[f64], rate: f64, onset: f64, tmin: f64, tmax: f64) -> Vec<f64> {
    let centre = (onset * rate).round() as i64;
    let (k0, k1) = ((tmin * rate).round() as i64, (tmax * rate).round() as i64);
    (k0..=k1).map(|k| values[(centre + k) as usize]).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn epochs_time_lock_samples_at_each_channels_rate() {
    let (sb, fx) = setup().await;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT epoch, onset, channel, t_rel, value FROM epochs('left', -0.2, 0.8, 'EEG C0,EEG C2', '{}') ORDER BY channel, onset, t_rel",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let channels = strings(&r, "channel");
    let values = f64s(&r, "value");
    let t_rel = f64s(&r, "t_rel");
    let mut at = 0;
    for (s, label) in [(0usize, "EEG C0"), (2usize, "EEG C2")] {
        let rate = fx.a.rate(s);
        let phys = fx.a.physical(s);
        for onset in fx.a.onsets("left") {
            let want = epoch(&phys, rate, onset, -0.2, 0.8);
            for (j, w) in want.iter().enumerate() {
                assert_eq!(channels[at].as_deref(), Some(label));
                assert!(
                    close(values[at], *w),
                    "{label} at {onset}: {} vs {w}",
                    values[at]
                );
                let k = (-0.2 * rate).round() + j as f64;
                assert!(close(t_rel[at], k / rate));
                at += 1;
            }
        }
    }
    assert_eq!(at, values.len(), "no extra rows");
    // 128 Hz: -26..=102 (129 samples); 64 Hz: -13..=51 (65).
    assert_eq!(values.len(), 4 * 129 + 4 * 65);

    // The averaging form agrees with averaging the rows.
    let erp = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT t_rel, value, epochs FROM erp('left,right', -0.2, 0.8, 'EEG C0', '{}') WHERE event_type = 'right' ORDER BY t_rel",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let phys = fx.a.physical(0);
    let rights: Vec<Vec<f64>> =
        fx.a.onsets("right")
            .iter()
            .map(|o| epoch(&phys, 128.0, *o, -0.2, 0.8))
            .collect();
    let got = f64s(&erp, "value");
    assert_eq!(got.len(), 129);
    for (j, g) in got.iter().enumerate() {
        let mean = rights.iter().map(|e| e[j]).sum::<f64>() / rights.len() as f64;
        assert!(close(*g, mean));
    }
    assert!(i64s(&erp, "epochs").iter().all(|n| *n == 4));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn band_power_is_welch_over_the_channels_rate() {
    let (sb, fx) = setup().await;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT onset, band, power FROM epoch_band_power('left', 0, 1, 'alpha,beta', 'EEG C1', '{}') ORDER BY onset, band",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let phys = fx.a.physical(1);
    let bands = strings(&r, "band");
    let power = f64s(&r, "power");
    let mut at = 0;
    for onset in fx.a.onsets("left") {
        let x = epoch(&phys, 128.0, onset, 0.0, 1.0);
        for (name, lo, hi) in [("alpha", 8.0, 13.0), ("beta", 13.0, 30.0)] {
            assert_eq!(bands[at].as_deref(), Some(name));
            let want = welch_band_power(&x, 128.0, lo, hi).unwrap();
            assert!(close(power[at], want), "{name} at {onset}");
            at += 1;
        }
    }
    assert_eq!(at, power.len());

    // The aggregate over a time range of samples, with the rate from the channel.
    let agg = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT band_power(value, t, sample_rate, 8, 13) AS alpha FROM samples \
                 WHERE recording_id = '{}' AND channel = 'EEG C1' AND t >= 2 AND t < 6",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let x = &phys[256..768];
    let want = welch_band_power(x, 128.0, 8.0, 13.0).unwrap();
    assert!(close(f64s(&agg, "alpha")[0], want));
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn asof_pairs_events_and_samples_with_the_right_event() {
    let (sb, fx) = setup().await;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT onset, type, matched_onset, lag_s FROM asof_events('left,right', 'button', 'forward', 1.0, '{}') ORDER BY onset",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let lags = f64s(&r, "lag_s");
    assert_eq!(lags.len(), 8);
    assert!(lags.iter().all(|l| (l - 0.4).abs() < 1e-9), "{lags:?}");

    // The README's way onto epochs: join the match on the event.
    let e = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT e.epoch, a.matched_onset - a.onset AS rt FROM epochs('left', -0.2, 0.8, 'EEG C0', '{id}') e \
                 JOIN asof_events('left', 'button', 'forward', 1.5, '{id}') a USING (recording_id, onset)",
                id = fx.a.id
            ),
        )
        .await
        .unwrap();
    assert_eq!(e.num_rows(), 4 * 129);
    assert!(f64s(&e, "rt").iter().all(|l| (l - 0.4).abs() < 1e-9));

    // Each sample with the last trial event at or before it.
    let s = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT t, event_onset, event_type, since_event_s FROM samples_asof('left,right', 'backward', NULL, 'EEG C2', '{}') ORDER BY t",
                fx.a.id
            ),
        )
        .await
        .unwrap();
    let t = f64s(&s, "t");
    assert_eq!(t.len(), 1280);
    let onsets = s
        .column_by_name("event_onset")
        .unwrap()
        .as_primitive::<Float64Type>()
        .clone();
    let types = strings(&s, "event_type");
    let trials: Vec<(f64, &str)> =
        fx.a.events
            .iter()
            .filter(|e| e.1 != "button")
            .map(|e| (e.0, e.1.as_str()))
            .collect();
    for (i, ti) in t.iter().enumerate() {
        let want = trials
            .iter()
            .filter(|(o, _)| *o <= *ti)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match want {
            None => assert!(onsets.is_null(i), "nothing before {ti}"),
            Some((o, ty)) => {
                assert_eq!(onsets.value(i), *o, "at {ti}");
                assert_eq!(types[i].as_deref(), Some(*ty));
            }
        }
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resampling_puts_channels_of_different_rates_on_one_grid() {
    let (sb, fx) = setup().await;
    let r = sb
        .sql(
            ANALYST_TOKEN,
            &format!(
                "SELECT a.t, a.value AS c0, b.value AS c2 \
                 FROM resample(32, 'EEG C0', '{id}') a JOIN resample(32, 'EEG C2', '{id}') b \
                 ON a.sample_index = b.sample_index ORDER BY a.t",
                id = fx.a.id
            ),
        )
        .await
        .unwrap();
    let t = f64s(&r, "t");
    assert_eq!(
        t.len(),
        20 * 32,
        "every 32 Hz point of 20 s, in both channels"
    );
    // Linear interpolation lands on samples where the grids meet: at 32 Hz every point is a
    // sample of both the 128 Hz and the 64 Hz channel.
    let c0 = f64s(&r, "c0");
    let c2 = f64s(&r, "c2");
    let (p0, p2) = (fx.a.physical(0), fx.a.physical(2));
    for (i, ti) in t.iter().enumerate() {
        assert!(close(c0[i], p0[(ti * 128.0).round() as usize]));
        assert!(close(c2[i], p2[(ti * 64.0).round() as usize]));
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenant_sees_none_of_it() {
    let (sb, fx) = setup().await;
    let a = &fx.a.id;
    let queries = [
        format!("SELECT recording_id FROM recordings WHERE recording_id = '{a}'"),
        format!("SELECT recording_id FROM channels WHERE recording_id = '{a}'"),
        format!("SELECT recording_id FROM segments WHERE recording_id = '{a}'"),
        format!("SELECT recording_id FROM samples WHERE recording_id = '{a}'"),
        format!("SELECT recording_id FROM events WHERE recording_id = '{a}'"),
        format!(
            "SELECT * FROM recordings WHERE recording_id IN (SELECT recording_id FROM samples WHERE recording_id = '{a}')"
        ),
        format!(
            "SELECT r.recording_id FROM recordings r JOIN events e ON r.recording_id = e.recording_id WHERE e.recording_id = '{a}'"
        ),
        format!("SELECT recording_id FROM epochs('*', -0.1, 0.1, NULL, '{a}')"),
        format!("SELECT event_type FROM erp('*', -0.1, 0.1, NULL, '{a}')"),
        format!("SELECT recording_id FROM epoch_band_power('*', 0, 1, 'alpha', NULL, '{a}')"),
        format!("SELECT recording_id FROM asof_events('*', '*', 'nearest', NULL, '{a}')"),
        format!("SELECT recording_id FROM samples_asof('*', 'backward', NULL, NULL, '{a}')"),
        format!("SELECT recording_id FROM resample(10, NULL, '{a}')"),
    ];
    for q in &queries {
        let r = sb.sql(OTHER_TENANT_TOKEN, q).await.unwrap();
        assert_eq!(r.num_rows(), 0, "{q}");
    }
    // Unfiltered, every table and function returns only the tenant's own recording.
    let mine = [
        "SELECT DISTINCT recording_id FROM recordings",
        "SELECT DISTINCT recording_id FROM channels",
        "SELECT DISTINCT recording_id FROM samples",
        "SELECT DISTINCT recording_id FROM events",
        "SELECT DISTINCT recording_id FROM epochs('*', -0.1, 0.1)",
        "SELECT DISTINCT recording_id FROM epoch_band_power('*', 0, 1, 'alpha')",
        "SELECT DISTINCT recording_id FROM asof_events('*', '*')",
        "SELECT DISTINCT recording_id FROM samples_asof('left')",
        "SELECT DISTINCT recording_id FROM resample(10)",
    ];
    for q in mine {
        let r = sb.sql(OTHER_TENANT_TOKEN, q).await.unwrap();
        assert_eq!(
            strings(&r, "recording_id"),
            vec![Some(fx.other.id.clone())],
            "{q}"
        );
    }
    let erp = sb
        .sql(
            OTHER_TENANT_TOKEN,
            "SELECT sum(epochs) AS n FROM erp('left', 0, 0.5) WHERE channel = 'EEG C0'",
        )
        .await
        .unwrap();
    // other has two left trials; demo's six never count.
    assert_eq!(i64s(&erp, "n")[0], 2 * 65);
    sb.stop().await;
}

/// Where a query runs: `x-gbrain-execution` per query, else the size of what its scans read
/// against the threshold. The scheduler here accepts no connection, so a query sent to it
/// fails, and one kept on the node answers.
#[tokio::test(flavor = "multi_thread")]
async fn large_queries_go_to_ballista_and_a_query_can_choose() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let scheduler = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let options = |threshold: u64| gbrain_integration_tests::Options {
        query: gbrain_query::QueryConfig {
            threads: 2,
            distributed: Some(gbrain_query::DistributedConfig {
                scheduler: scheduler.clone(),
                threshold_bytes: threshold,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let scan = "SELECT count(*) AS n FROM samples";
    let args = |sb: &Sandbox| gbrain_common::clap_blocks::ClientArgs {
        server: sb.endpoint(),
        token: Some(ANALYST_TOKEN.to_string()),
        json: false,
        tls: Default::default(),
    };

    // Below the threshold: here.
    let sb = Sandbox::start_with(options(u64::MAX)).await;
    fusion::load(&sb).await;
    let n = i64s(&sb.sql(ANALYST_TOKEN, scan).await.unwrap(), "n")[0];
    assert!(n > 0);
    assert_eq!(sent(&sb).await, 0);
    // Asked for: to the scheduler, whatever the size.
    let mut distributed = gbrain_cli::sql::connect_with(&args(&sb), None, Some("distributed"))
        .await
        .unwrap();
    let err = gbrain_cli::sql::collect(&mut distributed, scan)
        .await
        .expect_err("the scheduler is not there");
    println!("sent to a scheduler that is not there: {err}");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(sent(&sb).await, 1);
    // A setting that is none of the three.
    let mut bad = gbrain_cli::sql::connect_with(&args(&sb), None, Some("everywhere"))
        .await
        .unwrap();
    let err = gbrain_cli::sql::collect(&mut bad, scan).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("x-gbrain-execution"), "{err}");
    sb.stop().await;

    // At the threshold: to the scheduler, unless the query asks to stay.
    let sb = Sandbox::start_with(options(1)).await;
    fusion::load(&sb).await;
    assert!(sb.sql(ANALYST_TOKEN, scan).await.is_err());
    assert_eq!(sent(&sb).await, 1);
    let mut local = gbrain_cli::sql::connect_with(&args(&sb), None, Some("local"))
        .await
        .unwrap();
    let (_, b) = gbrain_cli::sql::collect(&mut local, scan).await.unwrap();
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), n);
    // A query that scans no stored file stays, whatever the threshold.
    let r = sb
        .sql(ANALYST_TOKEN, "SELECT count(*) AS n FROM recordings")
        .await
        .unwrap();
    assert!(i64s(&r, "n")[0] > 0);
    assert_eq!(sent(&sb).await, 1);
    sb.stop().await;

    // Without a scheduler, asking for Ballista is refused, naming the setting.
    let sb = Sandbox::start().await;
    let mut distributed = gbrain_cli::sql::connect_with(&args(&sb), None, Some("distributed"))
        .await
        .unwrap();
    let err = gbrain_cli::sql::collect(&mut distributed, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("--ballista-scheduler"), "{err}");
    sb.stop().await;
}

/// Queries the service sent to Ballista, from its metrics.
async fn sent(sb: &Sandbox) -> u64 {
    sb.metrics_text()
        .await
        .lines()
        .find(|l| l.starts_with("gbrain_query_distributed_total"))
        .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .unwrap_or(0)
}
