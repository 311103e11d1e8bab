//! The catalog: which recordings exist, their channels, segments and data files, uploads in
//! progress and writes not yet committed. SQLite for the embedded cluster, PostgreSQL for
//! clusters, behind one type and one set of SQL statements.
//!
//! A recording is visible exactly when its row commits, in the same transaction as its channels
//! and files. Objects written before that commit are listed as a pending write first, so that a
//! crash at any point leaves either a committed recording or garbage that
//! [`Catalog::abandoned_writes`] finds.
//!
//! Every query is scoped by tenant: no method reads rows of a tenant it was not given.

mod catalog;
mod error;
mod model;
mod schema;

pub use catalog::{AppendOutcome, Catalog, CommitOutcome, Dialect, LiveOpen};
pub use error::{Error, Result};
pub use model::{
    ChannelRow, DataFileRow, FileKind, LiveFlush, LiveStreamRow, ModelDecision, NewRecording,
    Participant, PendingWrite, RecordingRow, SegmentRow, TenantView, UploadRow,
};
