//! Readers and writers for the file formats hospitals submit.
//!
//! - [`edf`]: EDF, EDF+C, EDF+D, BDF, BDF+C and BDF+D. The reader streams data records in
//!   blocks from any [`std::io::Read`] and never holds the whole file; the writer produces
//!   de-identified EDF+/BDF+ for export.
//! - [`bids`]: the BIDS sidecars that travel with a signal file (`*_events.tsv`,
//!   `*_channels.tsv`, `*_eeg.json`/`*_ieeg.json`, `participants.tsv`) and the walk over a
//!   dataset tree.
//!
//! Every malformed input is reported as [`Error::Invalid`] naming the field and the reason, so
//! that the services can hand it to the client unchanged. Nothing in this crate panics on bad
//! input; property tests and a fuzz target hold it to that.
//!
//! Header fields that carry personal data (the EDF patient and recording fields) are kept in
//! [`edf::Header`] for de-identification, and its `Debug` output redacts them so they cannot leak
//! into logs by accident.

pub mod bids;
pub mod edf;
mod error;

pub use error::{Error, Result};
