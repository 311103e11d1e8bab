//! EDF, EDF+ and BDF, BDF+: header, streaming reader, TALs, timeline and writer.
//!
//! The reader follows the EDF+ specification (Kemp and Olivan, 2003) and BioSemi's BDF
//! notes, including the cases that mature tools get wrong: mixed and fractional sample rates,
//! sub-second starts from the first TAL, EDF+D gaps, `num_records = -1`, negative gain,
//! int24 sign extension and BioSemi Status triggers.

mod header;
mod patient;
mod reader;
mod scan;
mod tal;
mod timeline;
mod triggers;
mod writer;

pub use header::{
    Encoding, FIXED_HEADER_BYTES, FileFormat, Header, MAX_SIGNALS, SIGNAL_HEADER_BYTES,
    SignalHeader, Variant, parse_header, signal_count,
};
pub use patient::{PatientField, RecordingField, Sex, format_edf_date, parse_edf_date};
pub use reader::{EdfReader, RecordBlock};
pub use scan::{Scan, read_to_memory};
pub use tal::{Tal, parse_tals, write_tal};
pub use timeline::{Annotation, Segment, Timeline, TimelineSummary};
pub use triggers::{Trigger, TriggerDecoder, is_status_channel};
pub use writer::{EdfWriter, RecordSignal, WriterHeader, WriterSignal};
