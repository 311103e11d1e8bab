//! Behavioural events and BIDS datasets.

use std::path::Path;

use gbrain_catalog::FileKind;
use gbrain_cli::bids::import;
use gbrain_integration_tests::files::{SignalSpec, Spec};
use gbrain_integration_tests::tools::data_dir;
use gbrain_integration_tests::{OTHER_TENANT_TOKEN, Sandbox};
use gbrain_proto::ingest::v1::{
    AppendEventsRequest, Event, GetRecordingRequest, Sidecar, SidecarKind,
};
use gbrain_storage::events::{EventRow, read_events};
use object_store::ObjectStoreExt;
use tonic::Code;

async fn events_of(sb: &Sandbox, recording: &str) -> Vec<EventRow> {
    let mut out = Vec::new();
    for f in sb
        .catalog
        .files("demo", recording, FileKind::Events)
        .await
        .unwrap()
    {
        let b = sb
            .store
            .get(&f.path.as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.extend(read_events(b, &f.path).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn events_append_atomically_once_per_key() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.edf");
    std::fs::write(&path, Spec::eeg(2, 128, 10).bytes()).unwrap();
    let rec = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap()
        .recording_id;

    let event = |onset: f64, ty: &str| Event {
        onset: Some(onset),
        duration: Some(0.1),
        r#type: ty.into(),
        value: "1".into(),
        sample: None,
        response_time: Some(0.35),
        extra: [("hand".to_string(), "left".to_string())]
            .into_iter()
            .collect(),
    };
    let req = AppendEventsRequest {
        recording_id: rec.clone(),
        events: vec![event(1.0, "left"), event(2.0, "right")],
        source: "task".into(),
        idempotency_key: "batch-1".into(),
        events_tsv: None,
    };
    let a = client
        .append_events(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.appended, a.total_events, a.deduplicated), (2, 2, false));
    let again = client.append_events(req).await.unwrap().into_inner();
    assert_eq!(
        (again.appended, again.total_events, again.deduplicated),
        (0, 2, true)
    );

    let tsv = AppendEventsRequest {
        recording_id: rec.clone(),
        events: vec![],
        source: "responses".into(),
        idempotency_key: String::new(),
        events_tsv: Some(Sidecar {
            kind: SidecarKind::BidsEventsTsv as i32,
            name: "events.tsv".into(),
            content: b"onset\tduration\ttrial_type\tresponse_time\tstim_file\n3.5\t0\tbutton\t0.42\ta.bmp\nn/a\tn/a\trating\tn/a\tb.bmp\n".to_vec(),
        }),
    };
    let t = client.append_events(tsv).await.unwrap().into_inner();
    assert_eq!((t.appended, t.total_events), (2, 4));
    let stored = events_of(&sb, &rec).await;
    assert_eq!(stored.len(), 4);
    let button = stored.iter().find(|e| e.event_type == "button").unwrap();
    assert_eq!(button.response_time, Some(0.42));
    assert_eq!(button.extra.as_deref(), Some(r#"{"stim_file":"a.bmp"}"#));
    assert!(
        stored
            .iter()
            .any(|e| e.event_type == "rating" && e.onset.is_none())
    );
    let left = stored.iter().find(|e| e.event_type == "left").unwrap();
    assert_eq!(
        (left.source.as_str(), left.value.as_deref()),
        ("task", Some("1"))
    );

    // Bad events: the field and the reason; nothing appended.
    let bad = [
        (
            vec![Event {
                onset: Some(f64::INFINITY),
                ..event(1.0, "x")
            }],
            None,
            "events[0].onset",
        ),
        (
            vec![Event {
                r#type: String::new(),
                ..event(1.0, "x")
            }],
            None,
            "events[0].type",
        ),
        (
            vec![],
            Some(b"duration\ttrial_type\n1\tx\n".to_vec()),
            "events.tsv",
        ),
        (
            vec![],
            Some(b"onset\tduration\nsoon\t1\n".to_vec()),
            "events.tsv line 2 column onset",
        ),
        (vec![], None, "events"),
    ];
    for (events, tsv, field) in bad {
        let s = client
            .append_events(AppendEventsRequest {
                recording_id: rec.clone(),
                events,
                source: String::new(),
                idempotency_key: String::new(),
                events_tsv: tsv.map(|content| Sidecar {
                    kind: SidecarKind::BidsEventsTsv as i32,
                    name: "events.tsv".into(),
                    content,
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(field), "{field}: {:?}", s.message());
    }
    let unknown = client
        .append_events(AppendEventsRequest {
            recording_id: "no-such-recording".into(),
            events: vec![event(1.0, "x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Another tenant cannot add to this recording.
    let mut other = sb.client_with(Some(OTHER_TENANT_TOKEN)).await;
    let s = other
        .append_events(AppendEventsRequest {
            recording_id: rec.clone(),
            events: vec![event(1.0, "x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let r = client
        .get_recording(GetRecordingRequest { recording_id: rec })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.counts.unwrap().events, 4);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdf_status_triggers_become_events() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let mut spec = Spec::eeg(2, 500, 3).bdf();
    spec.signals.push(SignalSpec::eeg("Status", 500, true));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bdf");
    std::fs::write(&path, spec.bytes()).unwrap();
    let r = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap();
    let events = events_of(&sb, &r.recording_id).await;
    let triggers: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.source == "bdf_trigger")
        .collect();
    // Code 5 for 10 samples of every 100, over 1500 samples.
    assert_eq!(triggers.len(), 15);
    assert_eq!(triggers[1].sample, Some(100));
    assert_eq!(triggers[1].value.as_deref(), Some("5"));
    assert!((triggers[1].onset.unwrap() - 0.2).abs() < 1e-9);
    assert!((triggers[1].duration.unwrap() - 0.02).abs() < 1e-9);
    let rec = client
        .get_recording(GetRecordingRequest {
            recording_id: r.recording_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.channels[2].r#type, "TRIG");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ds000117_imports_its_events_and_names_each_empty_signal() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let root = data_dir().join("bids/ds000117");
    let report = import(&mut client, &root, None, true).await.unwrap();
    // participants.tsv lists 16 subjects and the empty-room "subject".
    assert_eq!(report.participants, Some(17));
    let events_files = report.runs.iter().filter(|r| r.events > 0).count();
    assert_eq!(events_files, 32, "every events.tsv imports");
    assert!(
        report.runs.iter().all(|r| r.error.is_none()),
        "{:#?}",
        report
            .runs
            .iter()
            .filter(|r| r.error.is_some())
            .collect::<Vec<_>>()
    );
    let empties: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.signal_file.is_some())
        .collect();
    assert!(!empties.is_empty());
    for r in &empties {
        let e = r.signal_error.as_deref().unwrap_or_default();
        assert!(e.contains("empty file (0 bytes)"), "{}: {e}", r.run);
        // Its events still imported; a signal without events (the empty-room run) has nothing.
        if r.events > 0 {
            assert!(r.events_only, "{}", r.run);
        } else {
            assert!(r.recording_id.is_none(), "{}", r.run);
        }
    }
    // The MEG runs' events are intact: 12 runs, each with its own table.
    let meg: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.datatype == "meg" && r.events > 0)
        .collect();
    assert_eq!(meg.len(), 12);
    let run1 = meg
        .iter()
        .find(|r| {
            r.run
                .ends_with("sub-01_ses-meg_task-facerecognition_run-01_proc-sss")
        })
        .unwrap();
    let tsv =
        std::fs::read_to_string(root.join(
            "sub-01/ses-meg/meg/sub-01_ses-meg_task-facerecognition_run-01_proc-sss_events.tsv",
        ))
        .unwrap();
    assert_eq!(
        run1.events as usize,
        tsv.lines().filter(|l| !l.trim().is_empty()).count() - 1
    );
    let events = events_of(&sb, run1.recording_id.as_ref().unwrap()).await;
    let first = events.iter().find(|e| e.onset == Some(24.2073)).unwrap();
    assert!(
        first
            .extra
            .as_deref()
            .unwrap()
            .contains("\"stim_type\":\"Unfamiliar\"")
    );
    // Behavioural files without timing keep their rows with unknown onsets.
    let beh = report.runs.iter().find(|r| r.datatype == "beh").unwrap();
    let beh_events = events_of(&sb, beh.recording_id.as_ref().unwrap()).await;
    assert!(
        beh_events
            .iter()
            .all(|e| e.onset.is_none() && e.response_time.is_some())
    );

    // Importing again changes nothing.
    let again = import(&mut client, &root, None, true).await.unwrap();
    assert!(
        again
            .runs
            .iter()
            .filter(|r| r.recording_id.is_some())
            .all(|r| r.deduplicated)
    );
    let ids = |rep: &gbrain_cli::bids::ImportReport| {
        rep.runs
            .iter()
            .map(|r| r.recording_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&report), ids(&again));
    // Participants link to recordings by pseudonym.
    let participants = sb.catalog.participants("demo").await.unwrap();
    let rec = client
        .get_recording(GetRecordingRequest {
            recording_id: run1.recording_id.clone().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let p = participants
        .iter()
        .find(|p| p.subject_pseudonym == rec.subject_pseudonym)
        .unwrap();
    assert!(
        p.attributes_json.contains("\"age\":\"31\""),
        "{}",
        p.attributes_json
    );
    sb.stop().await;
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

const EEG_JSON: &str = r#"{"TaskName":"oddball","EEGReference":"Cz","SamplingFrequency":256,"PowerLineFrequency":50,"SoftwareFilters":"n/a"}"#;

/// A small BIDS EEG dataset: two subjects, one with a sidecar missing a field.
fn eeg_dataset(dir: &Path) {
    write(
        dir,
        "dataset_description.json",
        br#"{"Name":"oddball-demo","BIDSVersion":"1.9.0"}"#,
    );
    write(
        dir,
        "participants.tsv",
        b"participant_id\tage\tsex\tname\nsub-01\t34\tF\tAnna\nsub-02\t95\tM\tBob\n",
    );
    write(dir, "task-oddball_eeg.json", EEG_JSON.as_bytes());
    let spec = Spec::eeg(3, 256, 20);
    for sub in ["01", "02"] {
        let base = format!("sub-{sub}/eeg/sub-{sub}_task-oddball");
        write(dir, &format!("{base}_eeg.edf"), &spec.bytes());
        write(dir, &format!("{base}_events.tsv"), b"onset\tduration\ttrial_type\tvalue\tsample\n1.0\t0.2\tstandard\t1\t256\n2.5\t0.2\ttarget\t2\t640\n");
        write(
            dir,
            &format!("{base}_channels.tsv"),
            b"name\ttype\tunits\nEEG C0\tEEG\tuV\nEEG C1\tEOG\tuV\nEEG C2\tEMG\tuV\n",
        );
    }
    // sub-02's own sidecar sets SoftwareFilters to null, which the dataset-level one cannot
    // mend; a third subject's sidecar lacks PowerLineFrequency altogether.
    write(dir, "sub-02/eeg/sub-02_task-oddball_eeg.json", br#"{"TaskName":"oddball","EEGReference":"Cz","SamplingFrequency":256,"PowerLineFrequency":50,"SoftwareFilters":null}"#);
    let base = "sub-03/eeg/sub-03_task-rest";
    write(
        dir,
        &format!("{base}_eeg.edf"),
        &Spec::eeg(3, 256, 5).bytes(),
    );
    write(dir, &format!("{base}_eeg.json"), br#"{"TaskName":"rest","EEGReference":"Cz","SamplingFrequency":256,"SoftwareFilters":"n/a"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bids_eeg_dataset_imports_signals_with_their_sidecars() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let dir = tempfile::tempdir().unwrap();
    eeg_dataset(dir.path());
    let report = import(&mut client, dir.path(), None, true).await.unwrap();
    assert_eq!(report.dataset, "oddball-demo");
    assert_eq!(report.runs.len(), 3);
    let ok = &report.runs[0];
    assert!(!ok.events_only);
    assert_eq!((ok.samples, ok.events), (3 * 256 * 20, 2));
    let bad = &report.runs[1];
    assert!(bad.recording_id.is_none());
    let err = bad.signal_error.as_deref().unwrap();
    assert!(
        err.contains("InvalidArgument") && err.contains("SoftwareFilters"),
        "{err}"
    );
    let missing = report.runs[2].signal_error.as_deref().unwrap();
    assert!(
        missing.contains("PowerLineFrequency: required field missing"),
        "{missing}"
    );

    let rec = client
        .get_recording(GetRecordingRequest {
            recording_id: ok.recording_id.clone().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = rec.channels.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(types, vec!["EEG", "EOG", "EMG", "ANNOTATION"]);
    assert_eq!(rec.task, "oddball");
    let events = events_of(&sb, &rec.recording_id).await;
    let target = events.iter().find(|e| e.event_type == "target").unwrap();
    assert_eq!(
        (target.onset, target.sample, target.value.as_deref()),
        (Some(2.5), Some(640), Some("2"))
    );
    // Policy: age capped, direct identifiers dropped.
    let participants = sb.catalog.participants("demo").await.unwrap();
    assert_eq!(participants.len(), 2);
    assert!(
        participants
            .iter()
            .any(|p| p.attributes_json.contains("\"age\":\"90\""))
    );
    assert!(
        participants
            .iter()
            .all(|p| !p.attributes_json.contains("Anna") && !p.attributes_json.contains("name"))
    );

    // A channels.tsv with a type outside the BIDS enum and an events.tsv with a bad onset.
    write(
        dir.path(),
        "sub-01/eeg/sub-01_task-oddball_channels.tsv",
        b"name\ttype\tunits\nEEG C0\tBRAIN\tuV\n",
    );
    write(
        dir.path(),
        "sub-01/eeg/sub-01_task-oddball_eeg.edf",
        &Spec::eeg(3, 256, 21).bytes(),
    );
    let report = import(&mut client, dir.path(), None, true).await.unwrap();
    let err = report.runs[0].signal_error.as_deref().unwrap();
    assert!(
        err.contains("column type") && err.contains("BRAIN"),
        "{err}"
    );
    write(
        dir.path(),
        "sub-01/eeg/sub-01_task-oddball_channels.tsv",
        b"name\ttype\tunits\nEEG C0\tEEG\tuV\n",
    );
    write(
        dir.path(),
        "sub-01/eeg/sub-01_task-oddball_events.tsv",
        b"onset\tduration\nfirst\t1\n",
    );
    let report = import(&mut client, dir.path(), None, true).await.unwrap();
    let err = report.runs[0].signal_error.as_deref().unwrap();
    assert!(err.contains("column onset"), "{err}");
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_of_events_exports_without_bloating_every_record() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.edf");
    std::fs::write(&path, Spec::eeg(1, 128, 120).bytes()).unwrap();
    let rec = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap()
        .recording_id;
    // 600 responses within one second, some with control characters in their text.
    let events: Vec<Event> = (0..600)
        .map(|i| Event {
            onset: Some(10.0 + f64::from(i) / 1000.0),
            duration: None,
            r#type: if i % 100 == 0 {
                "key\u{14}press".into()
            } else {
                "keypress".into()
            },
            value: String::new(),
            sample: None,
            response_time: None,
            extra: Default::default(),
        })
        .collect();
    client
        .append_events(AppendEventsRequest {
            recording_id: rec.clone(),
            events,
            source: "task".into(),
            idempotency_key: String::new(),
            events_tsv: None,
        })
        .await
        .unwrap();
    let out = gbrain_integration_tests::export_bytes(&mut client, &rec).await;
    let scan = gbrain_formats::edf::read_to_memory(&out[..], out.len() as u64).unwrap();
    assert_eq!(scan.timeline.annotations.len(), 600);
    assert!(
        scan.timeline
            .annotations
            .iter()
            .any(|a| a.text == "key press")
    );
    let mut onsets: Vec<f64> = scan.timeline.annotations.iter().map(|a| a.onset).collect();
    onsets.sort_by(f64::total_cmp);
    assert!((onsets[0] - 10.0).abs() < 1e-6 && (onsets[599] - 10.599).abs() < 1e-6);
    // Spread over the 120 records, each record's annotation signal holds about 5 events, not
    // all 600: the file stays near the signal's own size.
    let source_len = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(out.len() < source_len * 2, "{} vs {source_len}", out.len());
    sb.stop().await;
}
