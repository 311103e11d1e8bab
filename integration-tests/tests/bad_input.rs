//! Every malformed file gets InvalidArgument naming the field and the reason; the server stays
//! up and nothing partial becomes visible.

use gbrain_cli::upload::{UploadError, upload_file};
use gbrain_integration_tests::Sandbox;
use gbrain_integration_tests::files::Spec;
use gbrain_proto::ingest::v1::{ListRecordingsRequest, RecordingMetadata, SignalFormat};
use tonic::Code;

/// A valid EDF+C file with a sub-second start and an annotation.
fn good() -> Spec {
    let mut s = Spec::eeg(2, 64, 4);
    s.subsecond = 0.25;
    s.annotations = vec![(1, 1.5, Some(0.5), "blink".into())];
    s
}

fn patch(mut bytes: Vec<u8>, at: usize, text: &[u8]) -> Vec<u8> {
    bytes[at..at + text.len()].copy_from_slice(text);
    bytes
}

/// Cases: a name, the bytes, the start of the error message (the field).
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let g = good();
    let ok = g.bytes();
    let ns = 3; // two signals and the annotation signal
    let sig = |field: usize, i: usize| -> usize {
        let widths = [16usize, 80, 8, 8, 8, 8, 8, 80, 8, 32];
        256 + widths[..field].iter().sum::<usize>() * ns + i * widths[field]
    };
    let mut cases = vec![
        (
            "wrong version field",
            patch(ok.clone(), 0, b"1       "),
            "header.version",
        ),
        (
            "header size disagrees with the signal count",
            patch(ok.clone(), 184, b"512     "),
            "header.header_bytes",
        ),
        (
            "zero signals",
            patch(ok.clone(), 252, b"0   "),
            "header.num_signals",
        ),
        (
            "absurd signal count",
            patch(ok.clone(), 252, b"9999"),
            "header.num_signals",
        ),
        (
            "non-ASCII header byte",
            patch(ok.clone(), 20, &[0xe9]),
            "header.patient",
        ),
        (
            "digital min >= max",
            patch(ok.clone(), sig(5, 0), b"40000   "),
            "signal[0] (EEG C0).digital_min",
        ),
        (
            "physical min == max",
            patch(
                patch(ok.clone(), sig(3, 1), b"3200    "),
                sig(4, 1),
                b"3200    ",
            ),
            "signal[1] (EEG C1).physical_min",
        ),
        (
            "samples per record = 0",
            patch(ok.clone(), sig(8, 0), b"0       "),
            "signal[0] (EEG C0).samples_per_record",
        ),
        (
            "file shorter than the header promises",
            ok[..ok.len() / 2].to_vec(),
            "header.num_records",
        ),
        (
            "truncated last record",
            ok[..ok.len() - 10].to_vec(),
            "data_records",
        ),
        (
            "file shorter than its own header",
            ok[..300].to_vec(),
            "header",
        ),
    ];

    // BDF magic on a 16-bit body.
    let mut bdf16 = ok.clone();
    bdf16[0] = 0xff;
    bdf16[1..8].copy_from_slice(b"BIOSEMI");
    cases.push(("BDF magic on a 16-bit body", bdf16, "header.version"));

    // A TAL onset without a sign, in record 2.
    let mut unsigned = g.clone();
    unsigned.annotations = vec![(2, 2.5, None, "x".into())];
    let mut b = unsigned.bytes();
    let needle = b"+2.5\x14x";
    let pos = b.windows(needle.len()).position(|w| w == needle).unwrap();
    b[pos] = b'0';
    cases.push((
        "TAL onset without a sign",
        b,
        "signal[2] (EDF Annotations).record[2]",
    ));

    // EDF+D without an annotation signal: a plain file that says EDF+D.
    let mut plain = good();
    plain.plus = None;
    let b = patch(plain.bytes(), 192, b"EDF+D");
    cases.push(("EDF+D without an annotation signal", b, "header.signals"));

    // Overlapping EDF+D records.
    let mut overlap = good();
    overlap.plus = Some('D');
    overlap.record_onsets = Some(vec![0.0, 1.0, 1.5, 3.0]);
    cases.push((
        "EDF+D records that overlap",
        overlap.bytes(),
        "data_records[2]",
    ));

    // Unparseable numbers.
    cases.push((
        "non-numeric record count",
        patch(ok.clone(), 236, b"many    "),
        "header.num_records",
    ));
    cases.push((
        "impossible start date",
        patch(ok.clone(), 168, b"31.02.21"),
        "header.start_date",
    ));
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_files_are_rejected_with_the_field_and_nothing_is_kept() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, field) in cases() {
        let path = dir.path().join("bad.edf");
        std::fs::write(&path, &bytes).unwrap();
        let meta = RecordingMetadata {
            format_hint: SignalFormat::Unspecified as i32,
            ..Default::default()
        };
        match upload_file(&mut client, &path, meta, &indicatif::ProgressBar::hidden()).await {
            Err(UploadError::Rejected(s)) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{name}: {s:?}");
                assert!(
                    s.message().starts_with(field),
                    "{name}: expected {field:?}, got {:?}",
                    s.message()
                );
                assert!(
                    s.message().len() > field.len() + 5,
                    "{name}: no reason given: {:?}",
                    s.message()
                );
            }
            other => panic!("{name}: expected a rejection, got {other:?}"),
        }
    }
    // Nothing became visible, no recording data and no staged bytes remain.
    let listed = client
        .list_recordings(ListRecordingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.recordings.is_empty());
    let leftovers: Vec<_> = sb
        .stored_files()
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/objects/"))
        .map(|(p, _)| p)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        sb.catalog
            .abandoned_writes(i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );

    // The server is still up and takes a good file.
    let path = dir.path().join("good.edf");
    std::fs::write(&path, good().bytes()).unwrap();
    let r = gbrain_integration_tests::upload(&mut client, &path)
        .await
        .unwrap();
    assert_eq!(r.counts.unwrap().events, 1);
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_format_hint_must_match_the_file() {
    let sb = Sandbox::start().await;
    let mut client = sb.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.edf");
    std::fs::write(&path, good().bytes()).unwrap();
    let meta = RecordingMetadata {
        format_hint: SignalFormat::Bdf as i32,
        ..Default::default()
    };
    match upload_file(&mut client, &path, meta, &indicatif::ProgressBar::hidden()).await {
        Err(UploadError::Rejected(s)) => {
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().starts_with("metadata.format_hint"), "{s:?}");
        }
        other => panic!("{other:?}"),
    }
    sb.stop().await;
}
