//! The reader against the real and generated files in the shared test data, checked against
//! reference values from pyedflib (with its known sub-second error corrected).

use std::fs;
use std::path::PathBuf;

use gbrain_formats::edf::{Encoding, read_to_memory};
use serde_json::Value;

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GBRAIN_TEST_DATA") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn golden() -> Value {
    let path = data_dir().join("eeg_edf/golden_pyedflib.json");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("test data missing at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_file_matches_the_reference_values() {
    let golden = golden();
    let files: Vec<_> = golden
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .collect();
    assert_eq!(files.len(), 3);
    for (name, want) in files {
        let bytes = fs::read(data_dir().join("eeg_edf").join(name)).unwrap();
        assert_eq!(bytes.len() as u64, want["bytes"].as_u64().unwrap());
        let scan = read_to_memory(&bytes[..], bytes.len() as u64)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let h = &scan.header;
        let kind = match h.format.encoding {
            Encoding::Int16 => "EDF+",
            Encoding::Int24 => "BDF+",
        };
        assert_eq!(kind, want["filetype"].as_str().unwrap(), "{name}");
        assert_eq!(h.num_records, want["n_datarecords"].as_u64().unwrap());
        assert_eq!(
            h.record_duration,
            want["datarecord_duration_s"].as_f64().unwrap()
        );

        let data: Vec<usize> = h.data_signals().collect();
        let wsig = want["signals"].as_array().unwrap();
        assert_eq!(data.len(), wsig.len(), "{name}");
        for (&i, w) in data.iter().zip(wsig) {
            let s = &h.signals[i];
            let ctx = format!("{name} {}", s.label);
            assert_eq!(s.label, w["label"].as_str().unwrap(), "{ctx}");
            assert_eq!(s.transducer, w["transducer"].as_str().unwrap(), "{ctx}");
            assert_eq!(
                s.physical_dimension,
                w["dimension"].as_str().unwrap(),
                "{ctx}"
            );
            assert_eq!(s.physical_min, w["physical_min"].as_f64().unwrap(), "{ctx}");
            assert_eq!(s.physical_max, w["physical_max"].as_f64().unwrap(), "{ctx}");
            assert_eq!(i64::from(s.digital_min), w["digital_min"].as_i64().unwrap());
            assert_eq!(i64::from(s.digital_max), w["digital_max"].as_i64().unwrap());
            assert_eq!(s.prefiltering, w["prefilter"].as_str().unwrap(), "{ctx}");
            assert_eq!(
                s.sample_rate(h.record_duration),
                w["sample_rate"].as_f64().unwrap(),
                "{ctx}"
            );
            let samples = &scan.samples[i];
            assert_eq!(
                samples.len() as u64,
                w["n_samples"].as_u64().unwrap(),
                "{ctx}"
            );
            let first5: Vec<i64> = samples[..5].iter().map(|v| i64::from(*v)).collect();
            let want5: Vec<i64> = w["first5_digital"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(first5, want5, "{ctx}");
            for (d, p) in samples[..5]
                .iter()
                .zip(w["first5_physical"].as_array().unwrap())
            {
                assert!(
                    (s.to_physical(*d) - p.as_f64().unwrap()).abs() < 1e-5,
                    "{ctx}"
                );
            }
            let sum: i64 = samples.iter().map(|v| i64::from(*v)).sum();
            assert_eq!(sum, w["digital_sum"].as_i64().unwrap(), "{ctx}");
            let n = samples.len() as f64;
            let mean = samples.iter().map(|d| s.to_physical(*d)).sum::<f64>() / n;
            assert!(
                (mean - w["physical_mean"].as_f64().unwrap()).abs() < 1e-4,
                "{ctx}"
            );
        }

        let anns = &scan.timeline.annotations;
        let want_anns = want["annotations"].as_array().unwrap();
        assert_eq!(anns.len(), want_anns.len(), "{name}");
        for (a, w) in anns.iter().zip(want_anns) {
            assert_eq!(a.text, w["text"].as_str().unwrap(), "{name}");
            assert!(
                (a.onset - w["onset"].as_f64().unwrap()).abs() < 1e-6,
                "{name}"
            );
            let d = w["duration"].as_f64().unwrap();
            assert_eq!(a.duration, (d >= 0.0).then_some(d), "{name}");
        }
        if let Some(sub) = want.get("true_start_subsecond_s") {
            assert_eq!(scan.timeline.start_offset, sub.as_f64().unwrap(), "{name}");
        }
        assert_eq!(scan.timeline.segments.len(), 1, "{name} is contiguous");
    }
}

#[test]
fn the_utf8_annotation_survives() {
    let bytes = fs::read(data_dir().join("eeg_edf/test_utf8.edf")).unwrap();
    let scan = read_to_memory(&bytes[..], bytes.len() as u64).unwrap();
    assert!(
        scan.timeline
            .annotations
            .iter()
            .any(|a| a.text == "\u{4e2d}\u{6587}\u{6d4b}\u{8bd5}\u{516b}\u{4e2a}\u{5b57}")
    );
}
