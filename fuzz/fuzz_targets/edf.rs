//! Arbitrary bytes into the EDF/BDF reader and the BIDS sidecar parsers: errors are fine,
//! panics are bugs. Run with `cargo xtask fuzz`.
#![no_main]

use gbrain_formats::bids::{parse_channels_tsv, parse_events_tsv, parse_participants_tsv, parse_signal_sidecar};
use gbrain_formats::edf::read_to_memory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = read_to_memory(data, data.len() as u64) {
        let total: usize = scan.samples.iter().map(Vec::len).sum();
        assert!(total * 2 <= data.len());
    }
    // A size that lies about the stream must not panic either.
    let _ = read_to_memory(data, data.len() as u64 + 512);
    let _ = parse_events_tsv(data, "events.tsv");
    let _ = parse_channels_tsv(data, "channels.tsv");
    let _ = parse_participants_tsv(data, "participants.tsv");
    let _ = parse_signal_sidecar(data, "eeg.json", false);
});
