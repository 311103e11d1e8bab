//! Storage beyond the local directory: a real S3 server, and crashes simulated by an object
//! store that fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gbrain_common::clock::MockClock;
use gbrain_formats::edf::read_to_memory;
use gbrain_integration_tests::faults::Faulty;
use gbrain_integration_tests::files::Spec;
use gbrain_integration_tests::tools::{SeaweedFs, data_dir};
use gbrain_integration_tests::{Options, Sandbox, export_bytes};
use gbrain_proto::ingest::v1::{ListRecordingsRequest, RecordingMetadata};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

#[tokio::test(flavor = "multi_thread")]
async fn recordings_round_trip_through_s3() {
    let s3 = SeaweedFs::start();
    let store =
        gbrain_storage::store::open(&format!("s3://{}/tenant-data", s3.bucket), &s3.options())
            .unwrap();
    let mut options = Options {
        store: Some(Arc::clone(&store)),
        ..Options::default()
    };
    options.config.part_bytes = 256 * 1024;
    let sb = Sandbox::start_with(options).await;
    let mut client = sb.client().await;
    for f in ["test_generator.edf", "test_generator.bdf"] {
        let path = data_dir().join("eeg_edf").join(f);
        let src = std::fs::read(&path).unwrap();
        let r = gbrain_integration_tests::upload(&mut client, &path)
            .await
            .unwrap();
        let back = export_bytes(&mut client, &r.recording_id).await;
        let a = read_to_memory(&src[..], src.len() as u64).unwrap();
        let b = read_to_memory(&back[..], back.len() as u64).unwrap();
        assert_eq!(a.samples, b.samples, "{f}");
    }
    // The objects are in the bucket, under the prefix; no staged bytes are left.
    use futures::TryStreamExt;
    let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|m| m.location.as_ref().starts_with("data/signals/tenant=demo/"))
    );
    assert!(
        listed
            .iter()
            .all(|m| !m.location.as_ref().starts_with("staging/"))
    );
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_that_never_commit_are_invisible_and_collected() {
    let dir = tempfile::tempdir().unwrap();
    let inner =
        gbrain_storage::store::open(&format!("file://{}", dir.path().display()), &[]).unwrap();
    // A process that dies after writing three signal files: later writes and every delete
    // fail, so nothing can clean up.
    let writes = AtomicUsize::new(0);
    let dying = Arc::new(Faulty::new(Arc::clone(&inner), move |p| {
        p.as_ref().starts_with("data/") && writes.fetch_add(1, Ordering::SeqCst) >= 3
    }));
    dying.fail_deletes.store(true, Ordering::SeqCst);
    let clock = Arc::new(MockClock::new(1_700_000_000_000_000_000));
    let mut options = Options {
        store: Some(dying.clone()),
        clock: clock.clone(),
        ..Options::default()
    };
    options.config.convert.flush_bytes = 1;
    options.config.convert.block_bytes = 64 * 1024;
    let sb = Sandbox::start_with(options).await;
    let mut client = sb.client().await;
    let data = Spec::eeg(8, 256, 60).bytes();
    // One attempt, without the client's retries.
    use gbrain_proto::ingest::v1::upload_request::Kind;
    use gbrain_proto::ingest::v1::{UploadChunk, UploadFinish, UploadRequest, UploadStart};
    let messages = vec![
        UploadRequest {
            kind: Some(Kind::Start(UploadStart {
                upload_id: "dies".into(),
                metadata: Some(RecordingMetadata::default()),
                offset: 0,
                size_bytes: data.len() as u64,
            })),
        },
        UploadRequest {
            kind: Some(Kind::Chunk(UploadChunk {
                offset: 0,
                data: data.clone().into(),
            })),
        },
        UploadRequest {
            kind: Some(Kind::Finish(UploadFinish::default())),
        },
    ];
    let err = client
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        client
            .list_recordings(ListRecordingsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .recordings
            .is_empty()
    );
    // Nor can SQL see any of it: the view holds committed recordings only.
    let seen = sb
        .sql(
            gbrain_integration_tests::ANALYST_TOKEN,
            "SELECT (SELECT count(*) FROM recordings) AS r, (SELECT count(*) FROM channels) AS c, \
             (SELECT count(*) FROM samples) AS s, (SELECT count(*) FROM epochs('*', -1, 1)) AS e",
        )
        .await
        .unwrap();
    for c in seen.columns() {
        let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
        assert_eq!(
            c.as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0),
            0
        );
    }
    // Some signal files made it to storage before the "crash"; the cleanup could not run.
    use futures::TryStreamExt;
    let before: Vec<ObjectMeta> = inner
        .list(Some(&Path::from("data")))
        .try_collect()
        .await
        .unwrap();
    assert!(!before.is_empty());
    assert_eq!(
        sb.catalog.abandoned_writes(i64::MAX).await.unwrap().len(),
        1
    );

    // Nothing is collected inside the grace period; after it, everything is.
    dying.heal();
    assert_eq!(
        sb.ingest.collect_garbage().await.unwrap(),
        Default::default()
    );
    clock.advance_ns(2 * 3600 * 1_000_000_000);
    let report = sb.ingest.collect_garbage().await.unwrap();
    assert_eq!(report.writes, 1);
    let after: Vec<ObjectMeta> = inner
        .list(Some(&Path::from("data")))
        .try_collect()
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
    // The failed upload's staged bytes expire with their upload.
    clock.advance_ns(25 * 3600 * 1_000_000_000);
    let report = sb.ingest.collect_garbage().await.unwrap();
    assert_eq!(report.uploads, 1);
    let staged: Vec<ObjectMeta> = inner
        .list(Some(&Path::from("staging")))
        .try_collect()
        .await
        .unwrap();
    assert!(staged.is_empty());
    sb.stop().await;
}

/// A staging write fails once, after the first: the upload stops with a retryable error, and
/// the resumed upload's hash still covers every byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_staging_write_is_retried_without_losing_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let inner =
        gbrain_storage::store::open(&format!("file://{}", dir.path().display()), &[]).unwrap();
    let staged_puts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&staged_puts);
    let flaky = Arc::new(Faulty::new(inner, move |p| {
        p.as_ref().starts_with("staging/") && counter.fetch_add(1, Ordering::SeqCst) == 1
    }));
    let mut options = Options {
        store: Some(flaky.clone()),
        ..Options::default()
    };
    options.config.part_bytes = 64 * 1024;
    let sb = Sandbox::start_with(options).await;
    let mut client = sb.client().await;
    let path = dir.path().join("r.edf");
    // Three 2 MiB chunks, staged as three parts; the second part's write fails.
    let spec = Spec::eeg(16, 512, 300);
    std::fs::write(&path, spec.bytes()).unwrap();
    // The client sends the file's SHA-256 at the end; the server checks it against its own
    // hash of the staged parts, across the failure and the resume.
    let r = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap();
    assert_eq!(r.counts.unwrap().samples, 16 * 512 * 300);
    assert!(
        staged_puts.load(Ordering::SeqCst) > 3,
        "the failure happened and was retried"
    );
    let back = export_bytes(&mut client, &r.recording_id).await;
    let scan = read_to_memory(&back[..], back.len() as u64).unwrap();
    assert_eq!(scan.samples[0], spec.samples(0));
    sb.stop().await;
}

/// On a real S3 server: an object larger than the multipart threshold is written in parts
/// (its ETag says how many) and reads back whole; an exclusive create writes once, and a
/// second one for the same key changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn large_objects_go_in_parts_and_exclusive_creates_write_once_on_s3() {
    use object_store::ObjectStoreExt;
    let s3 = SeaweedFs::start();
    let store =
        gbrain_storage::store::open(&format!("s3://{}/s3-semantics", s3.bucket), &s3.options())
            .unwrap();
    let size = gbrain_storage::store::MULTIPART_THRESHOLD * 2 + 12345;
    let big: bytes::Bytes = (0..size)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let path = Path::from("big/object.parquet");
    gbrain_storage::store::put_large(store.as_ref(), &path, big.clone())
        .await
        .unwrap();
    let meta = store.head(&path).await.unwrap();
    assert_eq!(meta.size, size as u64);
    let parts = size.div_ceil(gbrain_storage::store::MULTIPART_PART_BYTES);
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "a multipart ETag ends with its part count {parts}: {etag}"
    );
    let back = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(back == big, "the object reads back whole");

    let key = Path::from("models/m/1/model.onnx");
    assert!(
        gbrain_storage::store::put_new(store.as_ref(), &key, bytes::Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !gbrain_storage::store::put_new(store.as_ref(), &key, bytes::Bytes::from_static(b"second"))
            .await
            .unwrap(),
        "the second create of the same key is refused"
    );
    let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&kept[..], b"first");
}
