//! BIDS: the sidecars that describe a recording and the walk over a dataset tree.
//!
//! Parsing is separate from the walk so that the ingest service can validate sidecar bytes it
//! receives over gRPC with the same code the CLI uses to find them on disk.

mod channels;
mod events;
mod layout;
mod participants;
mod sidecar;
mod tsv;

pub use channels::{BidsChannel, CHANNEL_TYPES, parse_channels_tsv};
pub use events::{BidsEvent, parse_events_tsv};
pub use layout::{BidsDataset, BidsRun, Datatype, FileName, parse_entities, scan_dataset};
pub use participants::{Participant, parse_participants_tsv};
pub use sidecar::{SignalSidecar, parse_signal_sidecar};
