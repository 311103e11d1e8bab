//! Uploads against the in-process sandbox: lossless storage of the real files, idempotency,
//! resuming, limits, tenants and roles.

use std::path::Path;
use std::time::Duration;

use gbrain_catalog::FileKind;
use gbrain_cli::upload::{UploadError, upload_file_as};
use gbrain_formats::edf::read_to_memory;
use gbrain_integration_tests::files::Spec;
use gbrain_integration_tests::tools::data_dir;
use gbrain_integration_tests::{
    ANALYST_TOKEN, CatalogKind, OTHER_TENANT_TOKEN, Options, SUBMITTER_TOKEN, Sandbox,
};
use gbrain_proto::ingest::v1::upload_request::Kind;
use gbrain_proto::ingest::v1::{
    ExportRecordingRequest, GetRecordingRequest, GetUploadRequest, ListRecordingsRequest,
    RecordingMetadata, UploadChunk, UploadFinish, UploadRequest, UploadStart,
};
use gbrain_storage::signal::read_signal_file;
use object_store::ObjectStoreExt;
use tonic::Code;

fn hidden() -> indicatif::ProgressBar {
    indicatif::ProgressBar::hidden()
}

fn real_files() -> Vec<std::path::PathBuf> {
    [
        "test_subsecond.edf",
        "test_utf8.edf",
        "test_generator.edf",
        "test_generator.bdf",
    ]
    .iter()
    .map(|f| data_dir().join("eeg_edf").join(f))
    .collect()
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every stored digital value equals the source's, and the stored bytes are at most the
/// source's, for every real file.
async fn real_files_are_stored_losslessly(options: Options) {
    let sb = Sandbox::start_with(options).await;
    let mut client = sb.client().await;
    println!(
        "{:<24} {:>10} {:>10} {:>7}",
        "file", "source", "stored", "ratio"
    );
    for path in real_files() {
        let bytes = std::fs::read(&path).unwrap();
        let reference = read_to_memory(&bytes[..], bytes.len() as u64).unwrap();
        let r = gbrain_integration_tests::upload(&mut client, &path)
            .await
            .unwrap();
        let counts = r.counts.unwrap();
        let want_samples: usize = reference.samples.iter().map(Vec::len).sum();
        assert_eq!(counts.samples as usize, want_samples);
        assert_eq!(counts.events as usize, reference.timeline.annotations.len());
        assert_eq!(r.source_bytes, bytes.len() as u64);
        println!(
            "{:<24} {:>10} {:>10} {:>7.3}",
            path.file_name().unwrap().to_string_lossy(),
            r.source_bytes,
            r.stored_bytes,
            r.stored_bytes as f64 / r.source_bytes as f64
        );
        assert!(
            r.stored_bytes <= r.source_bytes,
            "{}: stored more than the source",
            path.display()
        );

        let files = sb
            .catalog
            .files("demo", &r.recording_id, FileKind::Signal)
            .await
            .unwrap();
        let stored_total: i64 = sb
            .catalog
            .files("demo", &r.recording_id, FileKind::Events)
            .await
            .unwrap()
            .iter()
            .chain(&files)
            .map(|f| f.size_bytes)
            .sum();
        assert_eq!(stored_total as u64, r.stored_bytes);
        for (i, want) in reference.samples.iter().enumerate() {
            if reference.header.signals[i].is_annotation {
                continue;
            }
            let mut got = Vec::new();
            for f in files.iter().filter(|f| f.channel_index == Some(i as i64)) {
                let b = sb
                    .store
                    .get(&f.path.as_str().into())
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let (first, values) = read_signal_file(b, &f.path).unwrap();
                assert_eq!(first as usize, got.len());
                got.extend(values);
            }
            assert_eq!(&got, want, "{} signal {i}", path.display());
        }
    }
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_files_are_stored_losslessly_on_sqlite() {
    real_files_are_stored_losslessly(Options::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_files_are_stored_losslessly_on_postgres() {
    real_files_are_stored_losslessly(Options {
        catalog: CatalogKind::Postgres,
        ..Options::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_bytes_give_the_same_recording() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let path = &real_files()[0];
    let a = gbrain_integration_tests::upload(&mut client, path)
        .await
        .unwrap();
    let b = gbrain_integration_tests::upload(&mut client, path)
        .await
        .unwrap();
    assert_eq!(a.recording_id, b.recording_id);
    assert!(!a.deduplicated && b.deduplicated);
    // Concurrent uploads of new bytes race; one recording comes out.
    let dir = tempfile::tempdir().unwrap();
    let p = write_temp(dir.path(), "x.edf", &Spec::eeg(4, 128, 20).bytes());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = sb.client().await;
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            gbrain_integration_tests::upload(&mut c, &p)
                .await
                .unwrap()
                .recording_id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = client
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .recordings;
    assert_eq!(listed.len(), 2);
    sb.stop().await;
}

/// Sends `start` and chunks of `data` from `from`, then breaks the connection (or ends the
/// stream cleanly when `clean`) without finishing.
async fn send_part(
    sb: &Sandbox,
    id: &str,
    data: &[u8],
    from: usize,
    to: usize,
    clean: bool,
) -> Option<tonic::Status> {
    let mut client = sb.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let start = UploadRequest {
        kind: Some(Kind::Start(UploadStart {
            upload_id: id.into(),
            metadata: Some(RecordingMetadata::default()),
            offset: from as u64,
            size_bytes: data.len() as u64,
        })),
    };
    let call = tokio::spawn(async move {
        client
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(start).await.unwrap();
    let mut at = from;
    while at < to {
        let end = (at + 65536).min(to);
        let chunk = UploadRequest {
            kind: Some(Kind::Chunk(UploadChunk {
                offset: at as u64,
                data: bytes::Bytes::copy_from_slice(&data[at..end]),
            })),
        };
        if tx.send(chunk).await.is_err() {
            break;
        }
        at = end;
    }
    if clean {
        drop(tx);
        return call.await.unwrap().err();
    }
    // Let the server take the bytes, then cut the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    drop(tx);
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_resumes_after_a_dropped_connection() {
    let mut options = Options::default();
    options.config.part_bytes = 100_000;
    let sb = Sandbox::start_with(options).await;
    let spec = Spec::eeg(8, 256, 60);
    let data = spec.bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "resume.edf", &data);
    let id = uuid::Uuid::new_v4().to_string();

    // First connection: 40% of the file, then the connection breaks.
    send_part(&sb, &id, &data, 0, data.len() * 2 / 5, false).await;
    let mut client = sb.client().await;
    let held = wait_for_bytes(&mut client, &id).await;
    assert!(held > 0 && held <= (data.len() * 2 / 5) as u64);

    // Second connection: ends cleanly before finish; the server says where to resume.
    // The first stream's server side may still be finishing its last part: Aborted says
    // "retry", as the CLI does.
    let mut status = None;
    for _ in 0..100 {
        let s = send_part(&sb, &id, &data, held as usize, data.len() * 3 / 4, true)
            .await
            .unwrap();
        if s.code() != Code::Aborted {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the upload stayed busy");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("resume at"), "{status:?}");
    let held2 = client
        .get_upload(GetUploadRequest {
            upload_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .received_bytes;
    assert_eq!(
        held2,
        (data.len() * 3 / 4) as u64,
        "a clean end stages everything received"
    );

    // Resuming at a wrong offset is refused and names the right one.
    let err = upload_file_as(
        &mut client,
        &path,
        RecordingMetadata::default(),
        &id,
        7,
        &hidden(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(
        err.to_string().contains(&format!("resume at {held2}")),
        "{err}"
    );

    // Resume from what the server holds: the recording is whole.
    let r = upload_file_as(
        &mut client,
        &path,
        RecordingMetadata::default(),
        &id,
        held2,
        &hidden(),
    )
    .await
    .unwrap();
    assert_eq!(r.counts.unwrap().samples, 8 * 256 * 60);
    let rec = client
        .get_recording(GetRecordingRequest {
            recording_id: r.recording_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    use sha2::Digest;
    assert_eq!(rec.source_sha256, hex::encode(sha2::Sha256::digest(&data)));
    // The staged parts are gone; asking again about the upload gives the recording.
    let after = client
        .get_upload(GetUploadRequest {
            upload_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.recording_id, r.recording_id);
    assert!(
        sb.stored_files()
            .iter()
            .all(|(p, _)| !p.to_string_lossy().contains("staging"))
    );
    // A retried finish of the committed upload returns the same recording.
    let again = upload_file_as(
        &mut client,
        &path,
        RecordingMetadata::default(),
        &id,
        0,
        &hidden(),
    )
    .await
    .unwrap();
    assert_eq!(again.recording_id, r.recording_id);
    sb.stop().await;
}

async fn wait_for_bytes(client: &mut gbrain_cli::client::Ingest, id: &str) -> u64 {
    for _ in 0..50 {
        if let Ok(r) = client
            .get_upload(GetUploadRequest {
                upload_id: id.into(),
            })
            .await
        {
            let n = r.into_inner().received_bytes;
            if n > 0 {
                return n;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no bytes staged");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_streams_get_clear_errors() {
    let mut options = Options::default();
    options.config.max_upload_bytes = 1 << 20;
    let sb = Sandbox::start_with(options).await;
    let mut client = sb.client().await;
    let data = Spec::eeg(2, 128, 10).bytes();
    let start = |id: &str, offset: u64, size: u64| UploadRequest {
        kind: Some(Kind::Start(UploadStart {
            upload_id: id.into(),
            metadata: Some(RecordingMetadata::default()),
            offset,
            size_bytes: size,
        })),
    };
    let chunk = |offset: u64, d: &[u8]| UploadRequest {
        kind: Some(Kind::Chunk(UploadChunk {
            offset,
            data: bytes::Bytes::copy_from_slice(d),
        })),
    };
    let finish = |sha: &str| UploadRequest {
        kind: Some(Kind::Finish(UploadFinish { sha256: sha.into() })),
    };
    let n = data.len() as u64;
    let cases: Vec<(&str, Vec<UploadRequest>, Code, &str)> = vec![
        (
            "chunk at the wrong offset",
            vec![
                start("a1", 0, n),
                chunk(0, &data[..100]),
                chunk(50, &data[100..200]),
            ],
            Code::FailedPrecondition,
            "chunk.offset",
        ),
        (
            "unknown upload id",
            vec![start("never-started", 4096, n), chunk(4096, &data[4096..])],
            Code::FailedPrecondition,
            "upload_id",
        ),
        (
            "upload over the maximum size",
            vec![start("a2", 0, 2 << 20)],
            Code::ResourceExhausted,
            "size_bytes",
        ),
        (
            "no start first",
            vec![chunk(0, &data)],
            Code::InvalidArgument,
            "start",
        ),
        (
            "bad upload id",
            vec![start("../../etc", 0, n)],
            Code::InvalidArgument,
            "upload_id",
        ),
        (
            "more bytes than declared",
            vec![start("a3", 0, 10), chunk(0, &data[..20])],
            Code::InvalidArgument,
            "chunk.data",
        ),
        (
            "finish before all bytes",
            vec![start("a4", 0, n), chunk(0, &data[..100]), finish("")],
            Code::InvalidArgument,
            "finish",
        ),
        (
            "checksum mismatch",
            vec![start("a5", 0, n), chunk(0, &data), finish(&"0".repeat(64))],
            Code::InvalidArgument,
            "finish.sha256",
        ),
        (
            "empty file",
            vec![start("a6", 0, 0), finish("")],
            Code::InvalidArgument,
            "size_bytes",
        ),
    ];
    for (what, messages, code, field) in cases {
        let status = client
            .upload(tokio_stream::iter(messages))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{what}: {:?}",
            status.message()
        );
    }
    let listed = client
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.recordings.is_empty());
    // A checksum mismatch discards the upload: nothing to resume.
    let status = client
        .get_upload(GetUploadRequest {
            upload_id: "a5".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_roles_are_enforced() {
    let sb = Sandbox::start().await;
    let mut admin = sb.client().await;
    let path = &real_files()[0];
    let mine = gbrain_integration_tests::upload(&mut admin, path)
        .await
        .unwrap();

    // No token, a wrong token: Unauthenticated. Health needs none.
    for token in [None, Some("not-a-token")] {
        let mut c = sb.client_with(token).await;
        let s = c
            .list_recordings(ListRecordingsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(sb.channel().await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: gbrain_ingest::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Another tenant sees nothing of demo's and gets its own recording of the same bytes.
    let mut other = sb.client_with(Some(OTHER_TENANT_TOKEN)).await;
    let s = other
        .get_recording(GetRecordingRequest {
            recording_id: mine.recording_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = other
        .export_recording(ExportRecordingRequest {
            recording_id: mine.recording_id.clone(),
            format: 0,
        })
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), Code::NotFound);
    assert!(
        other
            .list_recordings(ListRecordingsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .recordings
            .is_empty()
    );
    let theirs = gbrain_integration_tests::upload(&mut other, path)
        .await
        .unwrap();
    assert_ne!(theirs.recording_id, mine.recording_id);
    assert!(!theirs.deduplicated);
    let mut their_rec = other
        .get_recording(GetRecordingRequest {
            recording_id: theirs.recording_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut my_rec = admin
        .get_recording(GetRecordingRequest {
            recording_id: mine.recording_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        their_rec.subject_pseudonym, my_rec.subject_pseudonym,
        "pseudonym keys are per tenant"
    );
    their_rec.subject_pseudonym.clear();
    my_rec.subject_pseudonym.clear();

    // Roles: a submitter cannot export, an analyst cannot upload.
    let mut submitter = sb.client_with(Some(SUBMITTER_TOKEN)).await;
    let s = submitter
        .export_recording(ExportRecordingRequest {
            recording_id: mine.recording_id.clone(),
            format: 0,
        })
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), Code::PermissionDenied);
    let mut analyst = sb.client_with(Some(ANALYST_TOKEN)).await;
    match gbrain_integration_tests::upload(&mut analyst, path).await {
        Err(UploadError::Rejected(s)) => assert_eq!(s.code(), Code::PermissionDenied),
        other => panic!("{other:?}"),
    }
    assert!(
        analyst
            .export_recording(ExportRecordingRequest {
                recording_id: mine.recording_id.clone(),
                format: 0
            })
            .await
            .is_ok()
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fractional_records_mixed_rates_and_unknown_record_counts() {
    use gbrain_integration_tests::files::SignalSpec;
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let mut spec = Spec::eeg(0, 1, 40);
    spec.record_duration = "0.25".into();
    spec.signals = vec![
        SignalSpec::eeg("EEG Fast", 100, false),
        SignalSpec::eeg("Resp", 1, false),
        SignalSpec::eeg("EEG Odd", 7, false),
    ];
    spec.num_records_text = Some("-1".into());
    spec.subsecond = 0.125;
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "mixed.edf", &spec.bytes());
    let r = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap();
    assert_eq!(r.counts.unwrap().records, 40, "counted from the file size");
    let rec = client
        .get_recording(GetRecordingRequest {
            recording_id: r.recording_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let rates: Vec<f64> = rec.channels.iter().map(|c| c.sample_rate).collect();
    assert_eq!(rates[..3], [400.0, 4.0, 28.0]);
    assert!((rec.duration_s - 10.0).abs() < 1e-9);
    assert!(rec.start_time.contains(".125"), "{}", rec.start_time);
    let out = gbrain_integration_tests::export_bytes(&mut client, &r.recording_id).await;
    let back = read_to_memory(&out[..], out.len() as u64).unwrap();
    assert_eq!(back.header.record_duration_text, "0.25");
    assert_eq!(back.header.num_records, 40);
    assert_eq!(back.timeline.start_offset, 0.125);
    for s in 0..3 {
        assert_eq!(back.samples[s], spec.samples(s));
    }
    sb.stop().await;
}
