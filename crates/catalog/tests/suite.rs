//! The catalog suite, run against SQLite and against the real PostgreSQL server
//! (`GBRAIN_TEST_POSTGRES`, default postgres://postgres@127.0.0.1:5432/test), each test in a
//! schema of its own.

use gbrain_catalog::{
    AppendOutcome, Catalog, ChannelRow, CommitOutcome, DataFileRow, FileKind, LiveFlush, LiveOpen,
    LiveStreamRow, ModelDecision, NewRecording, Participant, PendingWrite, RecordingRow,
    SegmentRow, UploadRow,
};

struct Db {
    catalog: Catalog,
    _dir: Option<tempfile::TempDir>,
    drop_schema: Option<(String, String)>,
}

impl Db {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/catalog.db", dir.path().display());
        Self {
            catalog: Catalog::connect(&url).await.unwrap(),
            _dir: Some(dir),
            drop_schema: None,
        }
    }

    async fn postgres() -> Self {
        let base = std::env::var("GBRAIN_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let schema = format!("gbtest_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{base}?schema={schema}");
        let catalog = Catalog::connect(&url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {base} is needed for the catalog suite: {e}")
        });
        Self {
            catalog,
            _dir: None,
            drop_schema: Some((base, schema)),
        }
    }

    async fn finish(self) {
        self.catalog.close().await;
        if let Some((base, schema)) = self.drop_schema {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db.catalog).await;
                db.finish().await;
            }

            #[tokio::test]
            async fn postgres() {
                let db = super::Db::postgres().await;
                super::$name(&db.catalog).await;
                db.finish().await;
            }
        }
    };
}

fn recording(tenant: &str, id: &str, sha: &str) -> NewRecording {
    NewRecording {
        row: RecordingRow {
            tenant: tenant.into(),
            recording_id: id.into(),
            source_sha256: sha.into(),
            subject_pseudonym: "gb-abc".into(),
            session: Some("01".into()),
            task: Some("rest".into()),
            run: None,
            acquisition: None,
            datatype: Some("eeg".into()),
            format: "EDF+C".into(),
            start_time_ns: Some(1_600_000_000_000_000_000),
            duration_s: 10.0,
            record_duration_s: 1.0,
            record_duration_text: "1".into(),
            num_records: 10,
            source_bytes: 5000,
            stored_bytes: 3000,
            sex: Some("F".into()),
            age_years: Some(42),
            num_signals: 1,
            num_annotation_signals: 1,
            num_samples: 2560,
            num_events: 2,
            patient_field: "gb-abc F X X".into(),
            recording_field: "Startdate X X X X".into(),
            warnings: vec!["a warning".into()],
            sidecar_json: None,
            ingested_ns: 1,
        },
        channels: vec![ChannelRow {
            channel_index: 0,
            label: "Fp1".into(),
            channel_type: "EEG".into(),
            unit: "uV".into(),
            transducer: String::new(),
            prefiltering: "HP:0.1Hz".into(),
            reserved: String::new(),
            sample_rate: 256.0,
            samples_per_record: 256,
            physical_min: -100.0,
            physical_max: 100.0,
            physical_min_text: "-100".into(),
            physical_max_text: "100".into(),
            digital_min: -32768,
            digital_max: 32767,
            gain: 200.0 / 65535.0,
            offset: 0.0015,
            num_samples: 2560,
            is_annotation: false,
        }],
        segments: vec![SegmentRow {
            segment_index: 0,
            first_record: 0,
            num_records: 10,
            onset_s: 0.0,
        }],
        files: vec![DataFileRow {
            path: format!(
                "data/signals/tenant={tenant}/recording={id}/channel=00000/part-00000.parquet"
            ),
            kind: FileKind::Signal,
            channel_index: Some(0),
            first_row: 0,
            num_rows: 2560,
            size_bytes: 3000,
        }],
        upload_id: None,
        write_id: format!("w-{id}"),
    }
}

/// Registers the pending write a commit clears, as the ingest service does first.
async fn pending(c: &Catalog, tenant: &str, write_id: &str) {
    c.begin_write(&PendingWrite {
        write_id: write_id.into(),
        tenant: tenant.into(),
        prefixes: vec![format!("data/x/{write_id}")],
        created_ns: 1,
    })
    .await
    .unwrap();
}

async fn commit(c: &Catalog, rec: &NewRecording) -> CommitOutcome {
    pending(c, &rec.row.tenant, &rec.write_id).await;
    c.commit_recording(rec).await.unwrap()
}

async fn append(
    c: &Catalog,
    tenant: &str,
    rec: &str,
    file: &DataFileRow,
    key: Option<&str>,
    write_id: &str,
) -> AppendOutcome {
    pending(c, tenant, write_id).await;
    c.append_events(tenant, rec, file, key, write_id)
        .await
        .unwrap()
}

async fn tenant_keys_are_created_once(c: &Catalog) {
    // Connecting again re-runs the migration check against the same database.
    let key = c.tenant_key("t", 1, || "aa".into()).await.unwrap();
    assert_eq!(key, "aa");
    assert_eq!(c.tenant_key("t", 2, || "bb".into()).await.unwrap(), "aa");
}
both!(tenant_keys_are_created_once);

async fn commits_atomically_and_deduplicates(c: &Catalog) {
    let rec = recording("a", "r1", "sha1");
    c.begin_write(&PendingWrite {
        write_id: rec.write_id.clone(),
        tenant: "a".into(),
        prefixes: vec!["data/signals/tenant=a/recording=r1".into()],
        created_ns: 10,
    })
    .await
    .unwrap();
    assert!(c.get_recording("a", "r1").await.unwrap().is_none());
    assert_eq!(c.abandoned_writes(11).await.unwrap().len(), 1);

    assert_eq!(
        c.commit_recording(&rec).await.unwrap(),
        CommitOutcome::Committed
    );
    let got = c.get_recording("a", "r1").await.unwrap().unwrap();
    assert_eq!(got, rec.row);
    assert_eq!(c.channels("a", "r1").await.unwrap(), rec.channels);
    assert_eq!(c.segments("a", "r1").await.unwrap(), rec.segments);
    assert_eq!(
        c.files("a", "r1", FileKind::Signal).await.unwrap(),
        rec.files
    );
    assert!(
        c.abandoned_writes(i64::MAX).await.unwrap().is_empty(),
        "commit clears the write"
    );
    assert_eq!(
        c.find_by_checksum("a", "sha1").await.unwrap().as_deref(),
        Some("r1")
    );

    // The same bytes again under another id: the first recording wins, nothing new appears.
    let mut again = recording("a", "r2", "sha1");
    again.files[0].path.push_str(".2");
    assert_eq!(
        commit(c, &again).await,
        CommitOutcome::Duplicate {
            recording_id: "r1".into()
        }
    );
    assert!(c.get_recording("a", "r2").await.unwrap().is_none());
    assert!(c.channels("a", "r2").await.unwrap().is_empty());

    // A commit whose pending write garbage collection already took commits nothing.
    let late = recording("a", "r3", "sha3");
    pending(c, "a", &late.write_id).await;
    c.end_write(&late.write_id).await.unwrap();
    assert!(matches!(
        c.commit_recording(&late).await,
        Err(gbrain_catalog::Error::WriteCollected(_))
    ));
    assert!(c.get_recording("a", "r3").await.unwrap().is_none());
    assert!(
        c.files("a", "r3", FileKind::Signal)
            .await
            .unwrap()
            .is_empty()
    );
}
both!(commits_atomically_and_deduplicates);

async fn tenants_never_see_each_other(c: &Catalog) {
    commit(c, &recording("a", "r1", "sha1")).await;
    // Tenant b may store the same bytes: checksums are per tenant.
    assert_eq!(
        commit(c, &recording("b", "r9", "sha1")).await,
        CommitOutcome::Committed
    );
    assert!(c.get_recording("b", "r1").await.unwrap().is_none());
    assert!(c.channels("b", "r1").await.unwrap().is_empty());
    assert!(
        c.files("b", "r1", FileKind::Signal)
            .await
            .unwrap()
            .is_empty()
    );
    let listed: Vec<String> = c
        .list_recordings("b", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.recording_id)
        .collect();
    assert_eq!(listed, vec!["r9"]);
    assert_eq!(
        c.find_by_checksum("b", "sha1").await.unwrap().as_deref(),
        Some("r9")
    );
    let file = DataFileRow {
        path: "data/events/tenant=b/recording=r1/x.parquet".into(),
        kind: FileKind::Events,
        channel_index: None,
        first_row: 0,
        num_rows: 3,
        size_bytes: 100,
    };
    assert_eq!(
        append(c, "b", "r1", &file, None, "w").await,
        AppendOutcome::UnknownRecording
    );
}
both!(tenants_never_see_each_other);

async fn concurrent_commits_of_the_same_bytes_make_one_recording(c: &Catalog) {
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = recording("a", &format!("r{i}"), "same");
            rec.files[0].path = format!("p{i}");
            commit(&c, &rec).await
        }));
    }
    let mut committed = 0;
    for t in tasks {
        if t.await.unwrap() == CommitOutcome::Committed {
            committed += 1;
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(c.list_recordings("a", None, 100).await.unwrap().len(), 1);
}
both!(concurrent_commits_of_the_same_bytes_make_one_recording);

async fn uploads_and_pages(c: &Catalog) {
    let up = UploadRow {
        tenant: "a".into(),
        upload_id: "u1".into(),
        metadata: "{}".into(),
        size_bytes: 100,
        created_ns: 5,
        recording_id: None,
    };
    assert_eq!(c.create_upload(&up).await.unwrap(), up);
    let mut other = up.clone();
    other.size_bytes = 7;
    assert_eq!(
        c.create_upload(&other).await.unwrap(),
        up,
        "an existing upload is kept"
    );
    assert!(c.get_upload("b", "u1").await.unwrap().is_none());
    assert_eq!(c.expired_uploads(6).await.unwrap().len(), 1);
    let mut rec = recording("a", "r1", "s");
    rec.upload_id = Some("u1".into());
    commit(c, &rec).await;
    assert_eq!(
        c.get_upload("a", "u1")
            .await
            .unwrap()
            .unwrap()
            .recording_id
            .as_deref(),
        Some("r1")
    );
    assert_eq!(
        c.expired_uploads(6).await.unwrap().len(),
        1,
        "committed uploads expire too"
    );
    assert!(c.expired_uploads(5).await.unwrap().is_empty());
    c.delete_upload("a", "u1").await.unwrap();
    assert!(c.get_upload("a", "u1").await.unwrap().is_none());

    for i in 2..7 {
        commit(c, &recording("a", &format!("r{i}"), &format!("s{i}"))).await;
    }
    let page1 = c.list_recordings("a", None, 4).await.unwrap();
    let page2 = c
        .list_recordings("a", Some(&page1[3].recording_id), 4)
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), 6);
}
both!(uploads_and_pages);

async fn appends_events_once_per_key(c: &Catalog) {
    commit(c, &recording("a", "r1", "s")).await;
    let file = |n: i64, p: &str| DataFileRow {
        path: p.into(),
        kind: FileKind::Events,
        channel_index: None,
        first_row: 0,
        num_rows: n,
        size_bytes: 10,
    };
    assert_eq!(
        append(c, "a", "r1", &file(3, "e1"), Some("k"), "w1").await,
        AppendOutcome::Appended { total_events: 5 }
    );
    assert_eq!(
        append(c, "a", "r1", &file(3, "e2"), Some("k"), "w2").await,
        AppendOutcome::Duplicate { total_events: 5 }
    );
    assert_eq!(
        append(c, "a", "r1", &file(1, "e3"), None, "w3").await,
        AppendOutcome::Appended { total_events: 6 }
    );
    let files = c.files("a", "r1", FileKind::Events).await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        c.get_recording("a", "r1")
            .await
            .unwrap()
            .unwrap()
            .num_events,
        6
    );
}
both!(appends_events_once_per_key);

async fn stores_participants(c: &Catalog) {
    let p = |id: &str, a: &str| Participant {
        subject_pseudonym: id.into(),
        dataset: "ds".into(),
        attributes_json: a.into(),
    };
    c.put_participants("a", &[p("x", "{\"age\":\"31\"}"), p("y", "{}")], 1)
        .await
        .unwrap();
    c.put_participants("a", &[p("x", "{\"age\":\"32\"}")], 2)
        .await
        .unwrap();
    let got = c.participants("a").await.unwrap();
    assert_eq!(got, vec![p("x", "{\"age\":\"32\"}"), p("y", "{}")]);
    assert!(c.participants("b").await.unwrap().is_empty());
}
both!(stores_participants);

async fn attaches_loop_files_and_records_decisions(c: &Catalog) {
    commit(c, &recording("a", "r1", "s")).await;
    let file = |kind: FileKind, p: &str| DataFileRow {
        path: p.into(),
        kind,
        channel_index: None,
        first_row: 0,
        num_rows: 4,
        size_bytes: 10,
    };
    pending(c, "a", "p1").await;
    assert!(
        c.attach_file("a", "r1", &file(FileKind::Predictions, "p1"), "p1")
            .await
            .unwrap()
    );
    pending(c, "a", "o1").await;
    assert!(
        c.attach_file("a", "r1", &file(FileKind::Outcomes, "o1"), "o1")
            .await
            .unwrap()
    );
    // Another tenant's recording of the same id does not exist for this one.
    pending(c, "b", "p2").await;
    assert!(
        !c.attach_file("b", "r1", &file(FileKind::Predictions, "p2"), "p2")
            .await
            .unwrap()
    );
    assert_eq!(
        c.files("a", "r1", FileKind::Predictions).await.unwrap(),
        vec![file(FileKind::Predictions, "p1")]
    );
    let before = c.current_seq().await.unwrap();
    let view = c.tenant_view("a", before).await.unwrap();
    let kinds: Vec<FileKind> = view.files.iter().map(|(_, f)| f.kind).collect();
    assert!(kinds.contains(&FileKind::Predictions) && kinds.contains(&FileKind::Outcomes));

    let d = |version: i64, action: &str| ModelDecision {
        model: "mi".into(),
        version,
        parent_version: Some(1),
        action: action.into(),
        evidence_json: "{}".into(),
        decided_ns: 5,
    };
    let s1 = c.record_decision("a", &d(2, "fit")).await.unwrap();
    c.record_decision("a", &d(2, "promote")).await.unwrap();
    assert_eq!(
        c.model_decisions("a", i64::MAX).await.unwrap(),
        vec![d(2, "fit"), d(2, "promote")]
    );
    // As of a snapshot, later decisions are not there yet; other tenants see none.
    assert_eq!(c.model_decisions("a", s1).await.unwrap(), vec![d(2, "fit")]);
    assert!(c.model_decisions("b", i64::MAX).await.unwrap().is_empty());
}
both!(attaches_loop_files_and_records_decisions);

async fn snapshots_keep_answering_the_same(c: &Catalog) {
    commit(c, &recording("a", "r1", "s1")).await;
    let p = |a: &str| Participant {
        subject_pseudonym: "gb-abc".into(),
        dataset: "ds".into(),
        attributes_json: a.into(),
    };
    c.put_participants("a", &[p("{\"age\":\"30\"}")], 1)
        .await
        .unwrap();
    let before = c.create_snapshot("a", "before", 7).await.unwrap();
    assert_eq!(c.snapshot("a", "before").await.unwrap(), Some(before));
    assert!(matches!(
        c.create_snapshot("a", "before", 8).await,
        Err(gbrain_catalog::Error::SnapshotExists(_))
    ));
    assert_eq!(
        c.snapshot("b", "before").await.unwrap(),
        None,
        "names are per tenant"
    );

    commit(c, &recording("a", "r2", "s2")).await;
    let events = DataFileRow {
        path: "data/events/tenant=a/recording=r1/e.parquet".into(),
        kind: FileKind::Events,
        channel_index: None,
        first_row: 0,
        num_rows: 4,
        size_bytes: 100,
    };
    append(c, "a", "r1", &events, None, "w-events").await;
    c.put_participants("a", &[p("{\"age\":\"31\"}")], 2)
        .await
        .unwrap();

    let then = c.tenant_view("a", before).await.unwrap();
    let now = c
        .tenant_view("a", c.current_seq().await.unwrap())
        .await
        .unwrap();
    let ids = |v: &gbrain_catalog::TenantView| {
        v.recordings
            .iter()
            .map(|r| r.recording_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&then), vec!["r1"]);
    assert_eq!(ids(&now), vec!["r1", "r2"]);
    assert_eq!(then.channels.len(), 1);
    assert_eq!(now.channels.len(), 2);
    assert_eq!(then.segments.len(), 1);
    assert!(then.files.iter().all(|(_, f)| f.kind == FileKind::Signal));
    assert!(
        now.files
            .iter()
            .any(|(r, f)| r == "r1" && f.kind == FileKind::Events)
    );
    assert_eq!(
        c.participants_at("a", before).await.unwrap()[0].attributes_json,
        "{\"age\":\"30\"}"
    );
    assert_eq!(
        c.participants("a").await.unwrap()[0].attributes_json,
        "{\"age\":\"31\"}"
    );
    assert!(
        c.tenant_view("b", i64::MAX)
            .await
            .unwrap()
            .recordings
            .is_empty()
    );
    assert_eq!(c.snapshots("a").await.unwrap().len(), 1);
    assert!(c.delete_snapshot("a", "before").await.unwrap());
    assert_eq!(c.snapshot("a", "before").await.unwrap(), None);
}
both!(snapshots_keep_answering_the_same);

/// A new live stream `stream_id` of tenant `a` on node-1, and its recording.
fn live(stream_id: &str, recording_id: &str) -> (NewRecording, LiveStreamRow) {
    let mut rec = recording("a", recording_id, &format!("sha-{recording_id}"));
    rec.row.format = "LIVE".into();
    rec.row.num_samples = 0;
    rec.channels[0].num_samples = 0;
    rec.files.clear();
    let stream = LiveStreamRow {
        tenant: "a".into(),
        stream_id: stream_id.into(),
        recording_id: recording_id.into(),
        owner: "node-1".into(),
        layout_hex: "0a00".into(),
        flushed_seq: 0,
        flushed_samples: 0,
        closed: false,
        created_ns: 5,
    };
    (rec, stream)
}

async fn live_streams_commit_their_flushes_once(c: &Catalog) {
    let (rec, stream) = live("s1", "live-1");
    assert_eq!(
        c.create_live_stream(&rec, &stream).await.unwrap(),
        LiveOpen::Created
    );
    let mut again = recording("a", "live-2", "live-sha-2");
    again.files.clear();
    assert_eq!(
        c.create_live_stream(
            &again,
            &LiveStreamRow {
                recording_id: "live-2".into(),
                ..stream.clone()
            }
        )
        .await
        .unwrap(),
        LiveOpen::Existing(stream.clone()),
        "the first open's stream and recording stand"
    );
    assert!(c.get_recording("a", "live-2").await.unwrap().is_none());
    assert_eq!(
        c.open_live_streams("node-1").await.unwrap(),
        vec![stream.clone()]
    );
    assert!(c.open_live_streams("node-2").await.unwrap().is_empty());
    assert!(
        c.live_stream("b", "s1").await.unwrap().is_none(),
        "streams are per tenant"
    );

    let seq_before = c.current_seq().await.unwrap();
    pending(c, "a", "w-live-1").await;
    let file = DataFileRow {
        path: "data/signals/tenant=a/recording=live-1/live/0/channel=00000.parquet".into(),
        kind: FileKind::Signal,
        channel_index: Some(0),
        first_row: 0,
        num_rows: 500,
        size_bytes: 700,
    };
    let flush = LiveFlush {
        tenant: "a".into(),
        stream_id: "s1".into(),
        recording_id: "live-1".into(),
        files: vec![file.clone()],
        flushed_seq: 4,
        flushed_samples: 500,
        duration_s: 500.0 / 256.0,
        closed: false,
        write_id: Some("w-live-1".into()),
    };
    assert!(c.commit_live_flush(&flush).await.unwrap());
    let row = c.live_stream("a", "s1").await.unwrap().unwrap();
    assert_eq!((row.flushed_seq, row.flushed_samples), (4, 500));
    let r = c.get_recording("a", "live-1").await.unwrap().unwrap();
    assert_eq!(r.num_samples, 500);
    assert_eq!(r.stored_bytes, 3000 + 700);
    assert_eq!(c.channels("a", "live-1").await.unwrap()[0].num_samples, 500);
    assert!(
        c.abandoned_writes(i64::MAX).await.unwrap().is_empty(),
        "the flush cleared its pending write"
    );
    let then = c.tenant_view("a", seq_before).await.unwrap();
    let now = c
        .tenant_view("a", c.current_seq().await.unwrap())
        .await
        .unwrap();
    assert!(
        then.files.is_empty(),
        "a snapshot before the flush has no files"
    );
    assert_eq!(now.files, vec![("live-1".to_string(), file.clone())]);

    // A retry of the committed flush changes nothing.
    pending(c, "a", "w-live-retry").await;
    let retry = LiveFlush {
        flushed_seq: 3,
        flushed_samples: 400,
        write_id: Some("w-live-retry".into()),
        ..flush.clone()
    };
    assert!(!c.commit_live_flush(&retry).await.unwrap());
    assert_eq!(
        c.live_stream("a", "s1").await.unwrap().unwrap().flushed_seq,
        4
    );

    // Closing with nothing more to store.
    let close = LiveFlush {
        files: Vec::new(),
        closed: true,
        write_id: None,
        ..flush
    };
    assert!(c.commit_live_flush(&close).await.unwrap());
    assert!(c.open_live_streams("node-1").await.unwrap().is_empty());
    assert!(c.live_stream("a", "s1").await.unwrap().unwrap().closed);
}
both!(live_streams_commit_their_flushes_once);

/// A live stream's flushes, the loop's prediction files and event appends on one recording,
/// all at once (the cluster's ingest and coordinator do this): every commit lands, none is
/// refused by a deadlock, and each takes its own commit number.
async fn concurrent_commits_on_one_recording_never_deadlock(c: &Catalog) {
    let (rec, stream) = live("sc", "live-c");
    assert_eq!(
        c.create_live_stream(&rec, &stream).await.unwrap(),
        LiveOpen::Created
    );
    const EACH: i64 = 24;
    let seq_before = c.current_seq().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=EACH {
        for kind in 0..3 {
            let c = c.clone();
            let write_id = format!("w-{kind}-{i}");
            pending(&c, "a", &write_id).await;
            tasks.spawn(async move {
                let file = |kind: FileKind, path: String| DataFileRow {
                    path,
                    kind,
                    channel_index: (kind == FileKind::Signal).then_some(0),
                    first_row: (i - 1) * 100,
                    num_rows: 100,
                    size_bytes: 10,
                };
                match kind {
                    0 => c
                        .commit_live_flush(&LiveFlush {
                            tenant: "a".into(),
                            stream_id: "sc".into(),
                            recording_id: "live-c".into(),
                            files: vec![file(FileKind::Signal, format!("flush-{i}"))],
                            flushed_seq: i,
                            flushed_samples: i * 100,
                            duration_s: i as f64,
                            closed: false,
                            write_id: Some(write_id),
                        })
                        .await
                        .map(|_| ()),
                    1 => c
                        .attach_file(
                            "a",
                            "live-c",
                            &file(FileKind::Predictions, format!("pred-{i}")),
                            &write_id,
                        )
                        .await
                        .map(|attached| assert!(attached)),
                    _ => c
                        .append_events(
                            "a",
                            "live-c",
                            &file(FileKind::Events, format!("events-{i}")),
                            None,
                            &write_id,
                        )
                        .await
                        .map(|_| ()),
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap()
            .unwrap_or_else(|e| panic!("a commit failed: {e}"));
    }
    // Flushes racing each other may find a later one committed first (and change nothing);
    // every attach and append is a commit of its own.
    let commits = c.current_seq().await.unwrap() - seq_before;
    assert!(commits > 2 * EACH, "{commits} commits");
    let view = c
        .tenant_view("a", c.current_seq().await.unwrap())
        .await
        .unwrap();
    let count = |k: FileKind| view.files.iter().filter(|(_, f)| f.kind == k).count() as i64;
    assert_eq!(count(FileKind::Predictions), EACH);
    assert_eq!(count(FileKind::Events), EACH);
    assert!(count(FileKind::Signal) >= 1);
}
both!(concurrent_commits_on_one_recording_never_deadlock);

async fn compactions_replace_files_and_snapshots_pin_the_old_ones(c: &Catalog) {
    commit(c, &recording("a", "r1", "s1")).await;
    let old = recording("a", "r1", "s1").files[0].clone();
    let pinned = c.create_snapshot("a", "before", 1).await.unwrap();
    let new = DataFileRow {
        path: "data/signals/tenant=a/recording=r1/compact=L1-0-x/channel=00000.parquet".into(),
        size_bytes: 2500,
        ..old.clone()
    };
    pending(c, "a", "w-compact").await;
    let seq = c
        .replace_files(
            "a",
            "r1",
            std::slice::from_ref(&old),
            std::slice::from_ref(&new),
            "w-compact",
            100,
        )
        .await
        .unwrap();
    let files = |v: gbrain_catalog::TenantView| {
        v.files.into_iter().map(|(_, f)| f.path).collect::<Vec<_>>()
    };
    assert_eq!(
        files(c.tenant_view("a", pinned).await.unwrap()),
        vec![old.path.clone()]
    );
    assert_eq!(
        files(c.tenant_view("a", seq).await.unwrap()),
        vec![new.path.clone()]
    );
    assert_eq!(
        c.files("a", "r1", FileKind::Signal).await.unwrap(),
        vec![new.clone()]
    );
    assert_eq!(
        c.get_recording("a", "r1")
            .await
            .unwrap()
            .unwrap()
            .stored_bytes,
        2500
    );
    // A file that is not current is not replaced again.
    pending(c, "a", "w-again").await;
    assert!(
        c.replace_files("a", "r1", std::slice::from_ref(&old), &[], "w-again", 101)
            .await
            .is_err()
    );

    // The snapshot reads the old file: it stays until the snapshot goes.
    assert!(c.removed_files(1000, 10).await.unwrap().is_empty());
    assert!(c.delete_snapshot("a", "before").await.unwrap());
    assert!(
        c.removed_files(50, 10).await.unwrap().is_empty(),
        "not yet past its grace"
    );
    assert_eq!(
        c.removed_files(1000, 10).await.unwrap(),
        vec![("a".to_string(), old.path.clone())]
    );
    c.forget_file("a", &old.path).await.unwrap();
    assert!(c.removed_files(1000, 10).await.unwrap().is_empty());
    assert_eq!(
        files(c.tenant_view("a", seq).await.unwrap()),
        vec![new.path]
    );
}
both!(compactions_replace_files_and_snapshots_pin_the_old_ones);
