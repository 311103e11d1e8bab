//! Arbitrary bytes and mutated real files go to the parser: it may refuse them, but never
//! panic, and never hand back more samples than the file can hold.

use std::fs;
use std::path::PathBuf;

use gbrain_formats::bids::{parse_channels_tsv, parse_events_tsv, parse_signal_sidecar};
use gbrain_formats::edf::read_to_memory;
use proptest::prelude::*;

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GBRAIN_TEST_DATA") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn seeds() -> Vec<Vec<u8>> {
    ["test_subsecond.edf", "test_generator.bdf"]
        .iter()
        .map(|f| {
            let p = data_dir().join("eeg_edf").join(f);
            fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn check(bytes: &[u8], claimed_size: u64) {
    if let Ok(scan) = read_to_memory(bytes, claimed_size) {
        let total: usize = scan.samples.iter().map(Vec::len).sum();
        assert!(total * 2 <= bytes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096), slack in 0u64..64) {
        check(&bytes, bytes.len() as u64);
        check(&bytes, bytes.len() as u64 + slack);
        check(&bytes, (bytes.len() as u64).saturating_sub(slack));
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_magic(tail in proptest::collection::vec(any::<u8>(), 0..2048), bdf in any::<bool>()) {
        let mut bytes = if bdf { b"\xffBIOSEMI".to_vec() } else { b"0       ".to_vec() };
        bytes.extend(tail);
        check(&bytes, bytes.len() as u64);
    }

    #[test]
    fn mutated_real_files(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        header_only in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let seeds = seeds();
        let mut bytes = seeds[which].clone();
        // Half the time aim the edits at the header and first records, where parsing happens.
        let span = if header_only { 2048.min(bytes.len()) } else { bytes.len() };
        for (at, v) in edits {
            let i = at.index(span);
            bytes[i] = v;
        }
        check(&bytes, bytes.len() as u64);
        let cut = cut.index(bytes.len());
        check(&bytes[..cut], cut as u64);
    }

    #[test]
    fn arbitrary_sidecars(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_events_tsv(&bytes, "events.tsv");
        let _ = parse_channels_tsv(&bytes, "channels.tsv");
        let _ = parse_signal_sidecar(&bytes, "eeg.json", false);
    }

    #[test]
    fn tsv_like_text(rows in proptest::collection::vec(proptest::collection::vec("[a-z0-9./ -]{0,6}", 1..5), 1..6)) {
        let text: String = rows.iter().map(|r| r.join("\t")).collect::<Vec<_>>().join("\n");
        let _ = parse_events_tsv(text.as_bytes(), "events.tsv");
        let _ = parse_channels_tsv(text.as_bytes(), "channels.tsv");
    }
}
