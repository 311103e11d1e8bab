//! Rows of the catalog.

/// A recording about to be committed, with everything that becomes visible with it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecording {
    pub row: RecordingRow,
    pub channels: Vec<ChannelRow>,
    pub segments: Vec<SegmentRow>,
    pub files: Vec<DataFileRow>,
    /// The upload this recording came from, marked committed (and its metadata cleared) in
    /// the same transaction.
    pub upload_id: Option<String>,
    /// The pending write that listed this recording's objects, cleared in the same transaction.
    pub write_id: String,
}

/// One recording. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordingRow {
    pub tenant: String,
    pub recording_id: String,
    pub source_sha256: String,
    pub subject_pseudonym: String,
    pub session: Option<String>,
    pub task: Option<String>,
    pub run: Option<String>,
    pub acquisition: Option<String>,
    pub datatype: Option<String>,
    /// `EDF`, `EDF+C`, `EDF+D`, `BDF`, `BDF+C`, `BDF+D` or `NONE`.
    pub format: String,
    /// Start of the first sample, after the tenant's date policy.
    pub start_time_ns: Option<i64>,
    pub duration_s: f64,
    pub record_duration_s: f64,
    pub record_duration_text: String,
    pub num_records: i64,
    pub source_bytes: i64,
    pub stored_bytes: i64,
    pub sex: Option<String>,
    pub age_years: Option<i64>,
    pub num_signals: i64,
    pub num_annotation_signals: i64,
    pub num_samples: i64,
    pub num_events: i64,
    /// The de-identified EDF patient field, as an export writes it.
    pub patient_field: String,
    /// The de-identified EDF recording field, as an export writes it.
    pub recording_field: String,
    pub warnings: Vec<String>,
    /// The merged BIDS sidecar, if one came with the upload.
    pub sidecar_json: Option<String>,
    pub ingested_ns: i64,
}

/// One signal of a recording, annotation signals included (they have no samples).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelRow {
    pub channel_index: i64,
    pub label: String,
    pub channel_type: String,
    pub unit: String,
    pub transducer: String,
    pub prefiltering: String,
    pub reserved: String,
    pub sample_rate: f64,
    pub samples_per_record: i64,
    pub physical_min: f64,
    pub physical_max: f64,
    pub physical_min_text: String,
    pub physical_max_text: String,
    pub digital_min: i64,
    pub digital_max: i64,
    /// `physical = digital * gain + offset`.
    pub gain: f64,
    pub offset: f64,
    pub num_samples: i64,
    pub is_annotation: bool,
}

/// A run of contiguous records. EDF+D recordings have several.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentRow {
    pub segment_index: i64,
    pub first_record: i64,
    pub num_records: i64,
    /// Seconds from the recording's start.
    pub onset_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    Signal,
    Events,
    /// A loop session's decoded windows (the `predictions` table).
    Predictions,
    /// Outcomes reported to a loop session (the `outcomes` table).
    Outcomes,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Events => "events",
            Self::Predictions => "predictions",
            Self::Outcomes => "outcomes",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "signal" => Some(Self::Signal),
            "events" => Some(Self::Events),
            "predictions" => Some(Self::Predictions),
            "outcomes" => Some(Self::Outcomes),
            _ => None,
        }
    }
}

/// A decision of the feedback loop about a model version (fit, shadow, canary, promote, roll
/// back, reject), with its evidence as a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDecision {
    pub model: String,
    pub version: i64,
    /// The version it was fitted from, or is compared against.
    pub parent_version: Option<i64>,
    pub action: String,
    pub evidence_json: String,
    pub decided_ns: i64,
}

/// An object holding part of a recording.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataFileRow {
    pub path: String,
    pub kind: FileKind,
    /// For signal files.
    pub channel_index: Option<i64>,
    /// First sample index (signal files) or 0.
    pub first_row: i64,
    pub num_rows: i64,
    pub size_bytes: i64,
}

/// An upload in progress or done.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadRow {
    pub tenant: String,
    pub upload_id: String,
    pub metadata: String,
    pub size_bytes: i64,
    pub created_ns: i64,
    pub recording_id: Option<String>,
}

/// Objects written for a commit that has not happened (yet).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingWrite {
    pub write_id: String,
    pub tenant: String,
    /// Object prefixes to delete if the commit never comes.
    pub prefixes: Vec<String>,
    pub created_ns: i64,
}

/// A row of a participants table, keyed by pseudonym.
#[derive(Clone, Debug, PartialEq)]
pub struct Participant {
    pub subject_pseudonym: String,
    pub dataset: String,
    pub attributes_json: String,
}

/// What a tenant can query as of one commit: read in one transaction, so the pieces agree.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TenantView {
    /// The commit this view is as of.
    pub seq: i64,
    pub recordings: Vec<RecordingRow>,
    /// (recording_id, channel), by recording then channel index.
    pub channels: Vec<(String, ChannelRow)>,
    /// (recording_id, segment), by recording then segment index.
    pub segments: Vec<(String, SegmentRow)>,
    /// (recording_id, file) of every kind.
    pub files: Vec<(String, DataFileRow)>,
}

/// A live stream: its recording, the node whose write-ahead log holds its unflushed chunks,
/// and how far Parquet holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveStreamRow {
    pub tenant: String,
    pub stream_id: String,
    pub recording_id: String,
    /// The ingest node (its write-ahead log) that takes the stream's chunks.
    pub owner: String,
    /// The stream's layout, encoded by the ingest service (opaque here).
    pub layout_hex: String,
    /// The last chunk whose samples are in committed files; 0 before the first flush.
    pub flushed_seq: i64,
    /// Samples per channel in committed files.
    pub flushed_samples: i64,
    pub closed: bool,
    pub created_ns: i64,
}

/// One flush of a live stream: the files it wrote and where the stream then stands.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveFlush {
    pub tenant: String,
    pub stream_id: String,
    pub recording_id: String,
    /// One signal file per channel (none when only closing).
    pub files: Vec<DataFileRow>,
    pub flushed_seq: i64,
    pub flushed_samples: i64,
    /// Seconds of signal held after the flush.
    pub duration_s: f64,
    pub closed: bool,
    /// The pending write that listed the files; cleared in the same transaction.
    pub write_id: Option<String>,
}
