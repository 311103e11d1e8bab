//! Live streams: sessions of numbered sample chunks over the node's write-ahead log.
//!
//! A stream is opened with a client-chosen id and a channel layout. Chunks carry sequence
//! numbers 1, 2, 3...; a chunk is acknowledged once its record is synced in the log. A chunk at
//! or below the last acknowledged number is acknowledged again and not stored twice; a gap is
//! refused. Opening the same id again (a reconnect) resumes: it says the last acknowledged
//! number, and the connection that held the stream before is superseded, so a half-dead
//! connection cannot interleave chunks with the new one. At start the log is replayed, so
//! every acknowledged chunk of every stream is back in memory after a crash.
//!
//! Values are stored as 32-bit integers of each channel's resolution (default 1 nV for µV
//! channels), as an amplifier's ADC delivers them and as BDF stores them.
//!
//! A flusher writes the held samples to Parquet by time and by size, commits them to the
//! catalog and releases the log behind them; small flushed files are compacted. Encoding and
//! merging files run on a background executor at the lowest CPU priority, and so does writing
//! them on a local disk (where creating files costs CPU), so that on a busy machine they wait
//! for the chunks and the closed loop rather than delay them. The gRPC stream over
//! this is in `grpc` (see docs/ARCHITECTURE.md, "Live streams").

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gbrain_catalog::{
    Catalog, DataFileRow, FileKind, LiveFlush, LiveOpen, LiveStreamRow, NewRecording, PendingWrite,
};
use gbrain_common::clock::Clock;
use gbrain_common::executor::Executor;
use gbrain_storage::layout;
use gbrain_storage::signal::{SampleWidth, SignalFileWriter, channel_groups, write_channels};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::wal::{Wal, WalConfig};

/// The most channels a stream may declare.
pub const MAX_CHANNELS: usize = 1024;
/// The highest sample rate a stream may declare, in Hz.
pub const MAX_SAMPLE_RATE: f64 = 100_000.0;
/// The most samples per channel in one chunk (a minute at 1 kHz).
pub const MAX_CHUNK_SAMPLES: usize = 60_000;
/// Samples (of all streams) a node holds in memory until they are flushed: past it, chunks
/// wait for flushes to make room.
pub const MAX_HELD_SAMPLES: u64 = 256 << 20;
/// Physical units per stored step when a channel gives none.
pub const DEFAULT_RESOLUTION: f64 = 1e-3;

/// One channel of a stream's layout.
#[derive(Clone, PartialEq, Message)]
pub struct ChannelSpec {
    #[prost(string, tag = "1")]
    pub label: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub unit: String,
    /// Physical units per stored step; 0 means [`DEFAULT_RESOLUTION`].
    #[prost(double, tag = "4")]
    pub resolution: f64,
}

/// What a stream carries: one sample rate for every channel.
#[derive(Clone, PartialEq, Message)]
pub struct Layout {
    #[prost(double, tag = "1")]
    pub sample_rate: f64,
    #[prost(message, repeated, tag = "2")]
    pub channels: Vec<ChannelSpec>,
}

impl Layout {
    /// Checks the layout and fills in default resolutions.
    pub fn checked(mut self) -> Result<Self> {
        if !(self.sample_rate.is_finite()
            && self.sample_rate > 0.0
            && self.sample_rate <= MAX_SAMPLE_RATE)
        {
            return Err(Error::invalid(
                "layout.sample_rate",
                format!(
                    "{} Hz is not within (0, {MAX_SAMPLE_RATE}] Hz",
                    self.sample_rate
                ),
            ));
        }
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(Error::invalid(
                "layout.channels",
                format!(
                    "{} channels; a stream has 1 to {MAX_CHANNELS}",
                    self.channels.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.channels.iter_mut().enumerate() {
            let field = format!("layout.channels[{i}]");
            if c.label.trim().is_empty() {
                return Err(Error::invalid(format!("{field}.label"), "is empty"));
            }
            if !seen.insert(c.label.clone()) {
                return Err(Error::invalid(
                    format!("{field}.label"),
                    format!("'{}' is used by another channel", c.label),
                ));
            }
            if c.resolution == 0.0 {
                c.resolution = DEFAULT_RESOLUTION;
            }
            if !(c.resolution.is_finite() && c.resolution > 0.0) {
                return Err(Error::invalid(
                    format!("{field}.resolution"),
                    format!("{} is not a positive step", c.resolution),
                ));
            }
        }
        Ok(self)
    }
}

/// The values of one chunk, sample-major (sample 0 of every channel, then sample 1...).
#[derive(Clone, Debug)]
pub enum Samples {
    /// Physical values, stored at each channel's resolution.
    Physical(Vec<f64>),
    /// Stored steps as they are.
    Digital(Vec<i32>),
}

impl Samples {
    /// The values of an Arrow IPC stream of one record batch: a column per channel, in
    /// layout order and named as the channels; floats are physical values, integers steps.
    pub fn from_arrow_ipc(bytes: &[u8], layout: &Layout) -> Result<Self> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{DataType, Float32Type, Float64Type, Int16Type, Int32Type};
        let field = "chunk.arrow_ipc";
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::invalid(field, format!("not an Arrow IPC stream: {e}")))?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(
                b.map_err(|e| Error::invalid(field, format!("a batch does not decode: {e}")))?,
            );
        }
        let [batch] = batches.as_slice() else {
            return Err(Error::invalid(
                field,
                format!("{} record batches; send one per chunk", batches.len()),
            ));
        };
        let width = layout.channels.len();
        if batch.num_columns() != width {
            return Err(Error::invalid(
                field,
                format!("{} columns for {width} channels", batch.num_columns()),
            ));
        }
        let rows = batch.num_rows();
        let schema = batch.schema();
        let floats = schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Float32 | DataType::Float64));
        let mut physical = vec![0f64; if floats { rows * width } else { 0 }];
        let mut digital = vec![0i32; if floats { 0 } else { rows * width }];
        for (c, (f, spec)) in schema.fields().iter().zip(&layout.channels).enumerate() {
            if f.name() != &spec.label {
                return Err(Error::invalid(
                    format!("{field}.columns[{c}]"),
                    format!(
                        "is named '{}' where channel '{}' is due",
                        f.name(),
                        spec.label
                    ),
                ));
            }
            let col = batch.column(c);
            if col.null_count() > 0 {
                return Err(Error::invalid(
                    format!("{field}.columns[{c}]"),
                    "holds nulls; every sample needs a value",
                ));
            }
            let mixed = || {
                Error::invalid(
                    format!("{field}.columns[{c}]"),
                    "integer steps and float values are mixed; use one kind for every column",
                )
            };
            match (f.data_type(), floats) {
                (DataType::Float32, true) => {
                    for (r, v) in col
                        .as_primitive::<Float32Type>()
                        .values()
                        .iter()
                        .enumerate()
                    {
                        physical[r * width + c] = f64::from(*v);
                    }
                }
                (DataType::Float64, true) => {
                    for (r, v) in col
                        .as_primitive::<Float64Type>()
                        .values()
                        .iter()
                        .enumerate()
                    {
                        physical[r * width + c] = *v;
                    }
                }
                (DataType::Int16, false) => {
                    for (r, v) in col.as_primitive::<Int16Type>().values().iter().enumerate() {
                        digital[r * width + c] = i32::from(*v);
                    }
                }
                (DataType::Int32, false) => {
                    for (r, v) in col.as_primitive::<Int32Type>().values().iter().enumerate() {
                        digital[r * width + c] = *v;
                    }
                }
                (DataType::Int16 | DataType::Int32, true) => return Err(mixed()),
                (other, _) => {
                    return Err(Error::invalid(
                        format!("{field}.columns[{c}]"),
                        format!("is {other}; use float32, float64, int16 or int32"),
                    ));
                }
            }
        }
        Ok(if floats {
            Samples::Physical(physical)
        } else {
            Samples::Digital(digital)
        })
    }

    /// The stored steps, sample-major, and the samples per channel.
    fn digital(self, layout: &Layout) -> Result<(usize, Vec<i32>)> {
        let width = layout.channels.len();
        let len = match &self {
            Samples::Physical(v) => v.len(),
            Samples::Digital(v) => v.len(),
        };
        if len == 0 || len % width != 0 {
            return Err(Error::invalid(
                "chunk.values",
                format!(
                    "{len} values for {width} channels: give a whole number of samples, \
                     sample-major"
                ),
            ));
        }
        let samples = len / width;
        if samples > MAX_CHUNK_SAMPLES {
            return Err(Error::invalid(
                "chunk.values",
                format!("{samples} samples per channel; a chunk holds at most {MAX_CHUNK_SAMPLES}"),
            ));
        }
        let values = match self {
            Samples::Digital(v) => v,
            Samples::Physical(v) => {
                let mut out = Vec::with_capacity(v.len());
                for (i, x) in v.iter().enumerate() {
                    let c = &layout.channels[i % width];
                    let step = (*x / c.resolution).round();
                    if !(step.is_finite()
                        && step >= f64::from(i32::MIN)
                        && step <= f64::from(i32::MAX))
                    {
                        return Err(Error::invalid(
                            "chunk.values",
                            format!(
                                "sample {} of channel '{}' is {x} {}: not finite, or beyond what \
                                 32-bit steps of {} hold",
                                i / width,
                                c.label,
                                c.unit,
                                c.resolution
                            ),
                        ));
                    }
                    out.push(step as i32);
                }
                out
            }
        };
        Ok((samples, values))
    }
}

/// A log record of the live streams.
#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(oneof = "record::Kind", tags = "2, 3")]
    kind: Option<record::Kind>,
}

mod record {
    /// Tag 1 was an open record: streams are now opened in the catalog.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "2")]
        Chunk(super::ChunkRecord),
        #[prost(message, tag = "3")]
        Close(super::StreamKey),
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Message)]
struct StreamKey {
    #[prost(string, tag = "1")]
    tenant: String,
    #[prost(string, tag = "2")]
    stream_id: String,
}

#[derive(Clone, PartialEq, Message)]
struct ChunkRecord {
    #[prost(message, optional, tag = "1")]
    key: Option<StreamKey>,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(uint64, tag = "3")]
    first_sample: u64,
    #[prost(uint32, tag = "4")]
    samples: u32,
    /// Stored steps, little-endian i32, sample-major.
    #[prost(bytes = "bytes", tag = "5")]
    values: Bytes,
}

/// Where a stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The last acknowledged chunk; 0 before the first.
    pub last_seq: u64,
    /// Samples per channel held durably.
    pub samples: u64,
}

/// The answer to a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    /// Samples per channel held durably, this chunk included.
    pub samples: u64,
    /// True when the chunk had been acknowledged before and was not stored again.
    pub duplicate: bool,
}

struct State {
    position: Position,
    closed: bool,
    /// Samples not yet in Parquet, per channel, from sample `held_from`.
    held: Vec<Vec<i32>>,
    held_from: u64,
    /// (log record, end sample) of each chunk held, oldest first: what the log must keep.
    chunks: VecDeque<(u64, u64)>,
    /// The last chunk sent to subscribers: chunks go to them when received, before the log
    /// holds them, and once each (a chunk sent again after a failed write is not repeated).
    published_seq: u64,
}

/// Files merged into one by a compaction.
pub const COMPACTION_FANIN: usize = 16;
/// Files of this level are not merged further (level 4: 16^4 flushes, hours of signal).
pub const MAX_LEVEL: u32 = 4;

/// Stored samples of a stream over the same samples: one file per channel, or (a flush) one
/// file of every channel.
#[derive(Clone, Debug)]
struct Part {
    /// 0 for a flush; a compaction of parts of level L makes one of level L + 1.
    level: u32,
    first: u64,
    rows: u64,
    /// By channel, or the one file of every channel (no `channel_index`).
    files: Vec<DataFileRow>,
}

impl Part {
    /// The file holding channel `c`, with its row groups there when the file holds every
    /// channel.
    fn channel(&self, c: usize) -> Result<(&DataFileRow, Option<std::ops::Range<usize>>)> {
        match self.files.as_slice() {
            [f] if f.channel_index.is_none() => Ok((f, Some(channel_groups(self.rows, c)))),
            files => files.get(c).map(|f| (f, None)).ok_or_else(|| {
                Error::Internal(format!("part at sample {} has no channel {c}", self.first))
            }),
        }
    }
}

/// The stream's stored parts, in sample order, from the catalog's current files.
fn parts_of(files: Vec<DataFileRow>) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for f in files {
        // `files` come by channel, then first sample.
        let first = f.first_row as u64;
        match parts.iter_mut().find(|p| p.first == first) {
            Some(p) => p.files.push(f),
            None => parts.push(Part {
                level: layout::live_level(&f.path),
                first,
                rows: f.num_rows as u64,
                files: vec![f],
            }),
        }
    }
    for p in &mut parts {
        p.files.sort_by_key(|f| f.channel_index);
    }
    parts.sort_by_key(|p| p.first);
    parts
}

/// The parts a compaction merges next: the oldest run of [`COMPACTION_FANIN`] parts of one
/// level below [`MAX_LEVEL`]; for a stream that is done, every part after the last one of
/// level [`MAX_LEVEL`] - 1 or more.
fn next_merge(parts: &[Part], done: bool) -> Option<std::ops::Range<usize>> {
    let mut i = 0;
    while i < parts.len() {
        let level = parts[i].level;
        let mut j = i;
        while j < parts.len() && parts[j].level == level {
            j += 1;
        }
        if level < MAX_LEVEL && j - i >= COMPACTION_FANIN {
            return Some(i..i + COMPACTION_FANIN);
        }
        i = j;
    }
    if done {
        let start = parts
            .iter()
            .rposition(|p| p.level >= MAX_LEVEL - 1)
            .map_or(0, |k| k + 1);
        if parts.len() - start >= 2 {
            return Some(start..parts.len());
        }
    }
    None
}

/// One live stream.
pub struct Stream {
    pub tenant: String,
    pub stream_id: String,
    pub recording_id: String,
    pub layout: Layout,
    /// Raised by every open; a connection holding an older one is superseded.
    generation: AtomicU64,
    state: tokio::sync::Mutex<State>,
    /// What Parquet holds; changed only by the flusher.
    parts: std::sync::Mutex<Vec<Part>>,
    /// Acknowledged chunks, to whoever subscribed (a loop session).
    tail: tokio::sync::broadcast::Sender<Arc<LiveChunk>>,
}

/// Chunks a subscriber may fall behind by before it misses some.
pub const TAIL_CHUNKS: usize = 1024;

/// An acknowledged chunk, as subscribers get it.
#[derive(Debug)]
pub struct LiveChunk {
    pub seq: u64,
    pub first_sample: u64,
    pub samples: usize,
    /// Stored steps, sample-major; times each channel's resolution they are physical values.
    pub values: Vec<i32>,
    /// When the chunk was received (Unix ns); subscribers get it then, before its log sync.
    pub received_ns: i64,
    /// When its first sample was taken at the source, if the client said.
    pub source_time_ns: Option<i64>,
}

/// A stream's chunks from now on.
#[derive(Debug)]
pub struct Subscription {
    pub recording_id: String,
    pub layout: Layout,
    pub chunks: tokio::sync::broadcast::Receiver<Arc<LiveChunk>>,
}

fn tail() -> tokio::sync::broadcast::Sender<Arc<LiveChunk>> {
    tokio::sync::broadcast::channel(TAIL_CHUNKS).0
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("tenant", &self.tenant)
            .field("stream_id", &self.stream_id)
            .field("recording_id", &self.recording_id)
            .finish_non_exhaustive()
    }
}

/// A connection's hold on a stream.
#[derive(Debug, Clone)]
pub struct Session {
    pub stream: Arc<Stream>,
    generation: u64,
}

/// What live streams are stored with.
#[derive(Clone)]
pub struct LiveDeps {
    pub catalog: Catalog,
    pub store: Arc<dyn ObjectStore>,
    pub clock: Arc<dyn Clock>,
    pub metrics: crate::metrics::LiveMetrics,
}

/// When held samples go to Parquet.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Every stream's samples are flushed at least this often, so that queries see them.
    pub interval: Duration,
    /// A stream holding this many values (samples times channels) is flushed at once.
    pub stream_values: u64,
    /// Samples (of all streams) a node holds until they are flushed; past it, chunks wait
    /// for a flush (their acks slow down) and, after `room_wait`, get ResourceExhausted.
    pub max_held: u64,
    /// How long a chunk waits for flushes to make room before it is refused.
    pub room_wait: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            stream_values: 4 << 20,
            max_held: MAX_HELD_SAMPLES,
            room_wait: Duration::from_secs(30),
        }
    }
}

/// What one flush pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Streams whose samples went to Parquet.
    pub streams: usize,
    /// Samples per channel, summed over those streams.
    pub samples: u64,
    /// Streams that were closed and are now fully stored.
    pub closed: usize,
    /// Streams whose flush failed; their samples stay held and logged.
    pub failed: usize,
    /// The log records released, up to this one.
    pub released_lsn: u64,
    /// Files merged away by compactions (per channel).
    pub merged: usize,
}

/// The node's live streams.
pub struct Live {
    wal: Wal,
    deps: LiveDeps,
    /// This node's id: streams are taken by the node whose log holds them.
    owner: String,
    policy: FlushPolicy,
    streams: std::sync::Mutex<HashMap<(String, String), Arc<Stream>>>,
    /// First opens one at a time, so that two connections opening one new stream agree.
    creating: tokio::sync::Mutex<()>,
    /// One flush pass at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Wakes the flusher before its interval (a stream holds much, or the node is full).
    flush_soon: tokio::sync::Notify,
    /// Raised after each flush pass, for chunks waiting for room.
    flushed: tokio::sync::Notify,
    /// Samples held by every stream, against `policy.max_held`.
    held_samples: AtomicU64,
    /// Encodes, writes and merges flushed files at a lower CPU priority than the streams and
    /// the closed loop they feed.
    background: Executor,
    /// The highest log record written for a chunk.
    max_lsn: AtomicU64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("owner", &self.owner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn check_stream_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "open.stream_id",
            "must be 1-128 characters of letters, digits, '-', '_' or '.' (a UUID)",
        ))
    }
}

fn wal_error(e: crate::wal::WalError) -> Error {
    Error::Internal(format!("live streams: {e}"))
}

/// The node's id, kept beside its log: made once, the same after every restart.
fn node_id(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("{}: {e}", path.display()))),
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    let id = format!("ingest-{}", uuid::Uuid::new_v4());
    let tmp = dir.join("node-id.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, id.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    Ok(id)
}

fn layout_from_hex(hex_layout: &str) -> Result<Layout> {
    let bytes = hex::decode(hex_layout)
        .map_err(|e| Error::Internal(format!("live stream layout in the catalog: {e}")))?;
    Layout::decode(bytes.as_slice())
        .map_err(|e| Error::Internal(format!("live stream layout in the catalog: {e}")))
}

impl Live {
    /// Opens the log, and brings back every stream this node holds: its flushed position from
    /// the catalog, then every acknowledged chunk after it from the log. Nothing is served
    /// before this returns.
    pub async fn open(config: WalConfig, deps: LiveDeps, policy: FlushPolicy) -> Result<Self> {
        let dir = config.dir.clone();
        let (wal, records, owner) = tokio::task::spawn_blocking(move || {
            let owner = node_id(&dir)?;
            let (wal, records) = Wal::open(config).map_err(wal_error)?;
            Ok::<_, Error>((wal, records, owner))
        })
        .await
        .map_err(|e| Error::Internal(format!("live streams: {e}")))??;
        let mut streams: HashMap<(String, String), (Stream, State)> = HashMap::new();
        for row in deps.catalog.open_live_streams(&owner).await? {
            let layout = layout_from_hex(&row.layout_hex)?;
            let width = layout.channels.len();
            let mut state = State::empty(width);
            state.position = Position {
                last_seq: row.flushed_seq as u64,
                samples: row.flushed_samples as u64,
            };
            state.held_from = row.flushed_samples as u64;
            let parts = parts_of(
                deps.catalog
                    .files(&row.tenant, &row.recording_id, FileKind::Signal)
                    .await?,
            );
            let stream = Stream {
                tenant: row.tenant.clone(),
                stream_id: row.stream_id.clone(),
                recording_id: row.recording_id,
                layout,
                generation: AtomicU64::new(0),
                state: tokio::sync::Mutex::new(State::empty(0)),
                parts: std::sync::Mutex::new(parts),
                tail: tail(),
            };
            streams.insert((row.tenant, row.stream_id), (stream, state));
        }
        let mut max_lsn = 0;
        for r in records {
            max_lsn = r.lsn;
            let record = Record::decode(r.payload).map_err(|e| {
                Error::Internal(format!(
                    "live streams: log record {} does not decode: {e}",
                    r.lsn
                ))
            })?;
            match record.kind {
                Some(record::Kind::Chunk(c)) => {
                    let Some(key) = &c.key else { continue };
                    // Streams closed and stored, or flushed past this chunk, skip it.
                    if let Some((_, state)) =
                        streams.get_mut(&(key.tenant.clone(), key.stream_id.clone()))
                    {
                        state.replay(&c, r.lsn)?;
                    }
                }
                Some(record::Kind::Close(key)) => {
                    if let Some((_, state)) = streams.get_mut(&(key.tenant, key.stream_id)) {
                        state.closed = true;
                        let end = state.position.samples;
                        state.chunks.push_back((r.lsn, end));
                    }
                }
                None => {}
            }
        }
        let held: u64 = streams
            .values()
            .map(|(_, st)| st.held.iter().map(|c| c.len() as u64).sum::<u64>())
            .sum();
        let streams = streams
            .into_iter()
            .map(|(k, (mut stream, state))| {
                stream.state = tokio::sync::Mutex::new(state);
                (k, Arc::new(stream))
            })
            .collect::<HashMap<_, _>>();
        tracing::info!(
            streams = streams.len(),
            held_samples = held,
            owner,
            "live streams recovered"
        );
        Ok(Self {
            wal,
            deps,
            owner,
            policy,
            streams: std::sync::Mutex::new(streams),
            creating: tokio::sync::Mutex::new(()),
            flushing: tokio::sync::Mutex::new(()),
            flush_soon: tokio::sync::Notify::new(),
            flushed: tokio::sync::Notify::new(),
            held_samples: AtomicU64::new(held),
            max_lsn: AtomicU64::new(max_lsn),
            background: Executor::background("live-flush", 1)
                .map_err(|e| Error::Internal(format!("live flush executor: {e}")))?,
        })
    }

    /// This node's id, as the catalog's live streams name their owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn get(&self, tenant: &str, stream_id: &str) -> Option<Arc<Stream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), stream_id.to_string()))
            .cloned()
    }

    fn snapshot(&self) -> Vec<Arc<Stream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Opens a stream, or resumes it. A resumed stream must be opened with the layout it was
    /// first opened with (or none). A new stream's recording is committed to the catalog
    /// first, from `recording` (given the new recording id and the checked layout).
    pub async fn open_stream(
        &self,
        tenant: &str,
        stream_id: &str,
        layout: Option<Layout>,
        recording: impl FnOnce(&str, &Layout) -> NewRecording,
    ) -> Result<(Session, Position)> {
        check_stream_id(stream_id)?;
        let layout = layout.map(Layout::checked).transpose()?;
        if let Some(stream) = self.get(tenant, stream_id) {
            return Self::resume(stream, layout.as_ref()).await;
        }
        let _one = self.creating.lock().await;
        if let Some(stream) = self.get(tenant, stream_id) {
            return Self::resume(stream, layout.as_ref()).await;
        }
        let existing = match self.deps.catalog.live_stream(tenant, stream_id).await? {
            Some(row) => Some(row),
            None => {
                let layout = layout.clone().ok_or_else(|| {
                    Error::invalid(
                        "open.layout",
                        "required when a stream is opened the first time",
                    )
                })?;
                let recording_id = uuid::Uuid::new_v4().to_string();
                let rec = recording(&recording_id, &layout);
                let row = LiveStreamRow {
                    tenant: tenant.to_string(),
                    stream_id: stream_id.to_string(),
                    recording_id: recording_id.clone(),
                    owner: self.owner.clone(),
                    layout_hex: hex::encode(layout.encode_to_vec()),
                    flushed_seq: 0,
                    flushed_samples: 0,
                    closed: false,
                    created_ns: self.deps.clock.now_ns(),
                };
                match self.deps.catalog.create_live_stream(&rec, &row).await? {
                    LiveOpen::Created => {
                        let width = layout.channels.len();
                        let stream = Arc::new(Stream {
                            tenant: tenant.to_string(),
                            stream_id: stream_id.to_string(),
                            recording_id,
                            layout,
                            generation: AtomicU64::new(1),
                            state: tokio::sync::Mutex::new(State::empty(width)),
                            parts: std::sync::Mutex::new(Vec::new()),
                            tail: tail(),
                        });
                        self.insert(&stream);
                        tracing::info!(
                            tenant,
                            recording_id = %stream.recording_id,
                            channels = width,
                            "live stream created"
                        );
                        let position = Position {
                            last_seq: 0,
                            samples: 0,
                        };
                        return Ok((
                            Session {
                                stream,
                                generation: 1,
                            },
                            position,
                        ));
                    }
                    LiveOpen::Existing(row) => Some(row),
                }
            }
        };
        let Some(row) = existing else {
            return Err(Error::Internal("live stream lookup".into()));
        };
        if row.closed {
            return Err(Error::precondition(
                "open.stream_id",
                format!("stream {stream_id} is closed"),
            ));
        }
        if row.owner != self.owner {
            return Err(Error::precondition(
                "open.stream_id",
                format!(
                    "stream {stream_id} is taken by another ingest node ({}); open it there",
                    row.owner
                ),
            ));
        }
        // Ours and open, but not held: committed by an open whose node restarted between the
        // commit and now. Its chunks, if any, were replayed at start; none can be missing.
        let layout_stored = layout_from_hex(&row.layout_hex)?;
        let mut state = State::empty(layout_stored.channels.len());
        state.position = Position {
            last_seq: row.flushed_seq as u64,
            samples: row.flushed_samples as u64,
        };
        state.held_from = row.flushed_samples as u64;
        let parts = parts_of(
            self.deps
                .catalog
                .files(tenant, &row.recording_id, FileKind::Signal)
                .await?,
        );
        let stream = Arc::new(Stream {
            tenant: tenant.to_string(),
            stream_id: stream_id.to_string(),
            recording_id: row.recording_id,
            layout: layout_stored,
            generation: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(state),
            parts: std::sync::Mutex::new(parts),
            tail: tail(),
        });
        self.insert(&stream);
        Self::resume(stream, layout.as_ref()).await
    }

    fn insert(&self, stream: &Arc<Stream>) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (stream.tenant.clone(), stream.stream_id.clone()),
                Arc::clone(stream),
            );
    }

    async fn resume(stream: Arc<Stream>, layout: Option<&Layout>) -> Result<(Session, Position)> {
        if let Some(l) = layout
            && *l != stream.layout
        {
            return Err(Error::precondition(
                "open.layout",
                "differs from the layout this stream was first opened with",
            ));
        }
        let state = stream.state.lock().await;
        if state.closed {
            return Err(Error::precondition(
                "open.stream_id",
                format!("stream {} is closed", stream.stream_id),
            ));
        }
        let generation = stream.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let position = state.position;
        drop(state);
        Ok((Session { stream, generation }, position))
    }

    /// Waits until the node holds room for `adding` more samples: flushes make room, so a
    /// slow store slows acks down. Past `policy.room_wait` the chunk is refused.
    async fn room(&self, adding: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.policy.room_wait;
        loop {
            let flushed = self.flushed.notified();
            if self.held_samples.load(Ordering::Acquire) + adding <= self.policy.max_held {
                return Ok(());
            }
            self.flush_soon.notify_one();
            if tokio::time::timeout_at(deadline, flushed).await.is_err() {
                return Err(Error::too_large(
                    "chunk",
                    format!(
                        "this node holds {} samples of live streams not yet stored, the most it \
                         holds, and flushes have not made room; retry later",
                        self.policy.max_held
                    ),
                ));
            }
        }
    }

    /// Stores one chunk and acknowledges it once it is durable.
    pub async fn append(&self, session: &Session, seq: u64, samples: Samples) -> Result<Ack> {
        self.append_at(session, seq, samples, None).await
    }

    /// [`Live::append`], with when the chunk's first sample was taken at the source.
    pub async fn append_at(
        &self,
        session: &Session,
        seq: u64,
        samples: Samples,
        source_time_ns: Option<i64>,
    ) -> Result<Ack> {
        let stream = &session.stream;
        if seq == 0 {
            return Err(Error::invalid("chunk.seq", "chunks are numbered from 1"));
        }
        let (n, values) = samples.digital(&stream.layout)?;
        let adding = values.len() as u64;
        self.room(adding).await?;
        let mut state = stream.state.lock().await;
        if stream.generation.load(Ordering::Acquire) != session.generation {
            return Err(Error::Conflict(format!(
                "stream {}: opened again on another connection; this one is superseded",
                stream.stream_id
            )));
        }
        if state.closed {
            return Err(Error::precondition("chunk", "the stream is closed"));
        }
        let last = state.position.last_seq;
        if seq <= last {
            return Ok(Ack {
                seq,
                samples: state.position.samples,
                duplicate: true,
            });
        }
        if seq != last + 1 {
            return Err(Error::precondition(
                "chunk.seq",
                format!(
                    "{seq} follows {last}: chunks {} to {} are missing (resume from {})",
                    last + 1,
                    seq - 1,
                    last + 1
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in &values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let chunk = ChunkRecord {
            key: Some(StreamKey {
                tenant: stream.tenant.clone(),
                stream_id: stream.stream_id.clone(),
            }),
            seq,
            first_sample: state.position.samples,
            samples: u32::try_from(n).unwrap_or(u32::MAX),
            values: Bytes::from(bytes),
        };
        let payload = Record {
            kind: Some(record::Kind::Chunk(chunk.clone())),
        }
        .encode_to_vec();
        // Subscribers (loop sessions) get the chunk now, not after the log's sync: their
        // feedback need not wait for durability, and a disk that stalls a sync does not stall
        // the loop. A chunk whose write then fails comes again from the client with the same
        // sequence number, and is not sent twice.
        let first_sample = state.position.samples;
        if seq > state.published_seq {
            state.published_seq = seq;
            if stream.tail.receiver_count() > 0 {
                let _ = stream.tail.send(Arc::new(LiveChunk {
                    seq,
                    first_sample,
                    samples: n,
                    values: values.clone(),
                    received_ns: self.deps.clock.now_ns(),
                    source_time_ns,
                }));
            }
        }
        let lsn = self
            .wal
            .append(Bytes::from(payload))
            .await
            .map_err(wal_error)?;
        self.max_lsn.fetch_max(lsn, Ordering::AcqRel);
        state.push(&values, n, seq, lsn);
        self.held_samples.fetch_add(adding, Ordering::AcqRel);
        let held_values = (state.position.samples - state.held_from) * state.held.len() as u64;
        if held_values >= self.policy.stream_values {
            self.flush_soon.notify_one();
        }
        Ok(Ack {
            seq,
            samples: state.position.samples,
            duplicate: false,
        })
    }

    /// Ends the stream: no chunk is taken after this. What it holds is stored by the next
    /// flush, which marks it closed in the catalog.
    pub async fn close(&self, session: &Session) -> Result<Position> {
        let stream = &session.stream;
        let mut state = stream.state.lock().await;
        if stream.generation.load(Ordering::Acquire) != session.generation {
            return Err(Error::Conflict(format!(
                "stream {}: opened again on another connection; this one is superseded",
                stream.stream_id
            )));
        }
        if !state.closed {
            let record = Record {
                kind: Some(record::Kind::Close(StreamKey {
                    tenant: stream.tenant.clone(),
                    stream_id: stream.stream_id.clone(),
                })),
            };
            let lsn = self
                .wal
                .append(Bytes::from(record.encode_to_vec()))
                .await
                .map_err(wal_error)?;
            self.max_lsn.fetch_max(lsn, Ordering::AcqRel);
            // The close record stays in the log until the catalog says closed.
            let end = state.position.samples;
            state.chunks.push_back((lsn, end));
            state.closed = true;
            self.flush_soon.notify_one();
        }
        Ok(state.position)
    }

    /// The chunks a stream of `tenant` acknowledges from now on.
    pub fn subscribe(&self, tenant: &str, stream_id: &str) -> Result<Subscription> {
        let stream = self.get(tenant, stream_id).ok_or_else(|| {
            Error::NotFound(format!("no open live stream {stream_id} on this node"))
        })?;
        Ok(Subscription {
            recording_id: stream.recording_id.clone(),
            layout: stream.layout.clone(),
            chunks: stream.tail.subscribe(),
        })
    }

    /// The samples held for a stream, per channel, from sample `from` (not yet in Parquet).
    pub async fn held(&self, tenant: &str, stream_id: &str) -> Option<(u64, Vec<Vec<i32>>)> {
        let stream = self.get(tenant, stream_id)?;
        let state = stream.state.lock().await;
        Some((state.held_from, state.held.clone()))
    }

    /// Flushes every stream's held samples to Parquet and commits them, then releases the
    /// log records no stream needs. A stream whose flush fails keeps its samples (and its
    /// log records) for the next pass.
    pub async fn flush(&self) -> FlushReport {
        let _one = self.flushing.lock().await;
        let started = std::time::Instant::now();
        // Records written before this are either in a stream scanned below or stored.
        let floor = self.max_lsn.load(Ordering::Acquire);
        let mut report = FlushReport::default();
        let mut pinned = u64::MAX;
        for stream in self.snapshot() {
            match self.flush_stream(&stream).await {
                Ok((samples, closed)) => {
                    if samples > 0 {
                        report.streams += 1;
                        report.samples += samples;
                    }
                    if closed {
                        report.closed += 1;
                    }
                    match self.compact_stream(&stream, closed).await {
                        Ok(merged) => report.merged += merged,
                        Err(e) => tracing::warn!(
                            tenant = %stream.tenant,
                            recording_id = %stream.recording_id,
                            error = %e,
                            "live stream compaction failed; its files stay as they are"
                        ),
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(
                        tenant = %stream.tenant,
                        recording_id = %stream.recording_id,
                        error = %e,
                        "live stream flush failed; its samples stay held for the next pass"
                    );
                }
            }
            if let Some(&(lsn, _)) = stream.state.lock().await.chunks.front() {
                pinned = pinned.min(lsn);
            }
        }
        let release = floor.min(pinned.saturating_sub(1));
        if release > 0 {
            self.wal.release(release);
            report.released_lsn = release;
        }
        self.flushed.notify_waiters();
        let m = &self.deps.metrics;
        m.flush_seconds.observe(started.elapsed().as_secs_f64());
        m.held_values
            .set(self.held_samples.load(Ordering::Acquire) as i64);
        report
    }

    /// Flushes one stream: (samples per channel stored, whether it is now closed and done).
    async fn flush_stream(&self, stream: &Arc<Stream>) -> Result<(u64, bool)> {
        let (from, last_seq, closed, data) = {
            let state = stream.state.lock().await;
            let n = state.position.samples - state.held_from;
            if n == 0 && !state.closed {
                return Ok((0, false));
            }
            (
                state.held_from,
                state.position.last_seq,
                state.closed,
                state.held.clone(),
            )
        };
        let n = data.first().map_or(0, |c| c.len() as u64);
        let end = from + n;
        let tenant = stream.tenant.as_str();
        let mut files = Vec::new();
        let mut write_id = None;
        if n > 0 {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let path = layout::live_flush_file(tenant, &stream.recording_id, from, &id[..12]);
            let write = PendingWrite {
                write_id: format!("live-{id}"),
                tenant: tenant.to_string(),
                prefixes: vec![path.to_string()],
                created_ns: self.deps.clock.now_ns(),
            };
            self.deps.catalog.begin_write(&write).await?;
            write_id = Some(write.write_id.clone());
            let (store, metrics) = (Arc::clone(&self.deps.store), self.deps.metrics.clone());
            let background = self.background.handle().clone();
            let written = self
                .writing(async move {
                    // One file holds every channel (a channel's rows after another's).
                    let encoded = background
                        .spawn_blocking(move || write_channels(SampleWidth::Int32, from, &data))
                        .await
                        .map_err(|e| Error::Internal(format!("live flush: {e}")))??;
                    let size = encoded.len() as i64;
                    store
                        .put(&path, PutPayload::from(encoded))
                        .await
                        .map_err(gbrain_storage::Error::from)?;
                    metrics.files.inc();
                    Ok::<_, Error>(DataFileRow {
                        path: path.to_string(),
                        kind: FileKind::Signal,
                        channel_index: None,
                        first_row: from as i64,
                        num_rows: n as i64,
                        size_bytes: size,
                    })
                })
                .await?;
            files.push(written);
        }
        let flush = LiveFlush {
            tenant: tenant.to_string(),
            stream_id: stream.stream_id.clone(),
            recording_id: stream.recording_id.clone(),
            files,
            flushed_seq: last_seq as i64,
            flushed_samples: end as i64,
            duration_s: end as f64 / stream.layout.sample_rate,
            closed,
            write_id,
        };
        if !self.deps.catalog.commit_live_flush(&flush).await? {
            return Err(Error::Internal(format!(
                "the catalog holds stream {} past sample {end}; not stored again",
                stream.stream_id
            )));
        }
        if n > 0 {
            stream
                .parts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Part {
                    level: 0,
                    first: from,
                    rows: n,
                    files: flush.files,
                });
        }
        let mut state = stream.state.lock().await;
        state.drain(end);
        self.held_samples
            .fetch_sub(n * state.held.len() as u64, Ordering::AcqRel);
        let done = closed && state.position.samples == end;
        if done {
            state.chunks.clear();
            drop(state);
            let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            let key = (stream.tenant.clone(), stream.stream_id.clone());
            if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                map.remove(&key);
            }
        }
        Ok((n, done))
    }

    /// Merges the stream's oldest run of small files, if it has one, into one file per channel
    /// of the next level, a channel at a time; returns the parts merged away. A stream that
    /// is done has its last small files merged into one.
    async fn compact_stream(&self, stream: &Arc<Stream>, done: bool) -> Result<usize> {
        let (run, parts) = {
            let parts = stream.parts.lock().unwrap_or_else(|p| p.into_inner());
            let Some(run) = next_merge(&parts, done) else {
                return Ok(0);
            };
            (run.clone(), parts[run].to_vec())
        };
        let first = parts[0].first;
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        let level = parts.iter().map(|p| p.level).max().unwrap_or(0) + 1;
        let tenant = stream.tenant.as_str();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = layout::live_compact_dir(tenant, &stream.recording_id, level, first, &id[..12]);
        let write = PendingWrite {
            write_id: format!("live-compact-{id}"),
            tenant: tenant.to_string(),
            prefixes: vec![dir.to_string()],
            created_ns: self.deps.clock.now_ns(),
        };
        self.deps.catalog.begin_write(&write).await?;
        // A channel at a time.
        let (store, metrics) = (Arc::clone(&self.deps.store), self.deps.metrics.clone());
        let channels = stream.layout.channels.len();
        let merged = parts.len();
        let removed: Vec<DataFileRow> = parts.iter().flat_map(|p| p.files.clone()).collect();
        let background = self.background.handle().clone();
        let added = self
            .writing(async move {
                let store = store.as_ref();
                // Files of every channel (flushes, small) are read once; files of one channel
                // a channel at a time.
                let mut shared = std::collections::HashMap::new();
                for p in &parts {
                    if let (f, Some(_)) = p.channel(0)? {
                        let bytes = gbrain_storage::store::get_bytes(store, &f.path).await?;
                        shared.insert(f.path.clone(), bytes);
                    }
                }
                let mut added = Vec::with_capacity(channels);
                for c in 0..channels {
                    let mut inputs = Vec::with_capacity(parts.len());
                    for p in &parts {
                        let (f, groups) = p.channel(c)?;
                        let bytes = match shared.get(&f.path) {
                            Some(b) => b.clone(),
                            None => gbrain_storage::store::get_bytes(store, &f.path).await?,
                        };
                        inputs.push((f.path.clone(), bytes, groups));
                    }
                    let encoded = background
                        .spawn_blocking(move || {
                            let mut w =
                                SignalFileWriter::new(SampleWidth::Int32, first, Vec::new())?;
                            let mut next = first;
                            for (path, bytes, groups) in inputs {
                                let (start, values) = gbrain_storage::signal::read_signal_groups(
                                    bytes, &path, groups,
                                )?;
                                if start != next {
                                    return Err(Error::Internal(format!(
                                        "{path} starts at sample {start} where {next} was due"
                                    )));
                                }
                                next += values.len() as u64;
                                w.push(&values)?;
                            }
                            Ok(w.finish()?)
                        })
                        .await
                        .map_err(|e| Error::Internal(format!("live compaction: {e}")))??;
                    let path = layout::live_compact_part(&dir, c as u32);
                    let size = encoded.len() as i64;
                    // Files of the upper levels hold hours of a channel: written in parts.
                    gbrain_storage::store::put_large(store, &path, encoded).await?;
                    metrics.files.inc();
                    added.push(DataFileRow {
                        path: path.to_string(),
                        kind: FileKind::Signal,
                        channel_index: Some(c as i64),
                        first_row: first as i64,
                        num_rows: rows as i64,
                        size_bytes: size,
                    });
                }
                Ok::<_, Error>(added)
            })
            .await?;
        self.deps
            .catalog
            .replace_files(
                tenant,
                &stream.recording_id,
                &removed,
                &added,
                &write.write_id,
                self.deps.clock.now_ns(),
            )
            .await?;
        let mut current = stream.parts.lock().unwrap_or_else(|p| p.into_inner());
        current.splice(
            run,
            [Part {
                level,
                first,
                rows,
                files: added,
            }],
        );
        Ok(merged)
    }

    /// Runs a flush's or a compaction's file writes (their encoding always runs on the
    /// background executor): on the background executor too when the store is a local disk,
    /// where creating files is what costs CPU; on this runtime for S3, where writes are network
    /// waits and the store's pooled connections must live on the runtime every request shares.
    async fn writing<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        if gbrain_storage::store::is_local(self.deps.store.as_ref()) {
            self.background
                .spawn(work)
                .await
                .map_err(|e| Error::Internal(format!("live flush writes: {e}")))?
        } else {
            work.await
        }
    }

    /// Flushes every `policy.interval`, or sooner when a stream holds much, until `shutdown`;
    /// then once more.
    pub async fn run_flusher(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.policy.interval) => {}
                () = self.flush_soon.notified() => {}
            }
            let report = self.flush().await;
            if report.streams > 0 || report.closed > 0 || report.failed > 0 {
                tracing::debug!(?report, "live streams flushed");
            }
        }
        let report = self.flush().await;
        tracing::info!(?report, "live streams flushed at shutdown");
    }
}

impl State {
    fn empty(width: usize) -> Self {
        Self {
            position: Position {
                last_seq: 0,
                samples: 0,
            },
            closed: false,
            held: vec![Vec::new(); width],
            held_from: 0,
            chunks: VecDeque::new(),
            published_seq: 0,
        }
    }

    /// Holds an acknowledged chunk of `n` samples (sample-major `values`), logged at `lsn`.
    fn push(&mut self, values: &[i32], n: usize, seq: u64, lsn: u64) {
        let width = self.held.len().max(1);
        for (c, ch) in self.held.iter_mut().enumerate() {
            ch.reserve(n);
            ch.extend(values.iter().skip(c).step_by(width));
        }
        self.position = Position {
            last_seq: seq,
            samples: self.position.samples + n as u64,
        };
        self.chunks.push_back((lsn, self.position.samples));
    }

    /// Applies a logged chunk at start: chunks already stored are skipped; the rest must
    /// follow on exactly.
    fn replay(&mut self, c: &ChunkRecord, lsn: u64) -> Result<()> {
        if c.seq <= self.position.last_seq {
            return Ok(());
        }
        if c.seq != self.position.last_seq + 1 || c.first_sample != self.position.samples {
            return Err(Error::Internal(format!(
                "live streams: log record {lsn} holds chunk {} from sample {} where chunk {} \
                 from sample {} was due",
                c.seq,
                c.first_sample,
                self.position.last_seq + 1,
                self.position.samples
            )));
        }
        let values: Vec<i32> = c
            .values
            .chunks_exact(4)
            .map(|v| i32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            .collect();
        self.push(&values, c.samples as usize, c.seq, lsn);
        Ok(())
    }

    /// Forgets the held samples before `end`, now stored.
    fn drain(&mut self, end: u64) {
        let n = (end.saturating_sub(self.held_from)) as usize;
        for ch in &mut self.held {
            ch.drain(..n.min(ch.len()));
        }
        self.held_from = self.held_from.max(end);
        while self
            .chunks
            .front()
            .is_some_and(|&(_, chunk_end)| chunk_end <= end && !self.closed)
        {
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            sample_rate: 250.0,
            channels: ["C3", "Cz", "C4"]
                .iter()
                .map(|l| ChannelSpec {
                    label: (*l).into(),
                    kind: "EEG".into(),
                    unit: "uV".into(),
                    resolution: 0.0,
                })
                .collect(),
        }
    }

    fn chunk(seq: u64, samples: usize) -> Samples {
        Samples::Physical(
            (0..samples * 3)
                .map(|i| (seq * 1000 + i as u64) as f64 * 0.5)
                .collect(),
        )
    }

    /// A node's live streams over a SQLite catalog and an in-memory store in `dir`.
    struct Node {
        live: Live,
        catalog: Catalog,
    }

    async fn catalog(dir: &std::path::Path) -> Catalog {
        Catalog::connect(&format!("sqlite://{}/catalog.db", dir.display()))
            .await
            .unwrap()
    }

    async fn node_with(
        dir: &std::path::Path,
        store: Arc<dyn ObjectStore>,
        policy: FlushPolicy,
    ) -> Node {
        let catalog = catalog(dir).await;
        let live = Live::open(
            WalConfig::new(dir.join("wal")),
            LiveDeps {
                catalog: catalog.clone(),
                store: Arc::clone(&store),
                clock: Arc::new(gbrain_common::clock::SystemClock),
                metrics: crate::metrics::LiveMetrics::default(),
            },
            policy,
        )
        .await
        .unwrap();
        Node { live, catalog }
    }

    async fn open(dir: &std::path::Path) -> Live {
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        node_with(dir, store, FlushPolicy::default()).await.live
    }

    /// A recording row as the gRPC handler builds one (the fields the catalog needs).
    fn recording(tenant: &str) -> impl FnOnce(&str, &Layout) -> NewRecording + use<> {
        let tenant = tenant.to_string();
        move |id: &str, layout: &Layout| NewRecording {
            row: gbrain_catalog::RecordingRow {
                tenant,
                recording_id: id.into(),
                source_sha256: format!("live-{id}"),
                subject_pseudonym: "gb-test".into(),
                session: None,
                task: None,
                run: None,
                acquisition: None,
                datatype: None,
                format: "LIVE".into(),
                start_time_ns: None,
                duration_s: 0.0,
                record_duration_s: 1.0 / layout.sample_rate,
                record_duration_text: String::new(),
                num_records: 0,
                source_bytes: 0,
                stored_bytes: 0,
                sex: None,
                age_years: None,
                num_signals: layout.channels.len() as i64,
                num_annotation_signals: 0,
                num_samples: 0,
                num_events: 0,
                patient_field: String::new(),
                recording_field: String::new(),
                warnings: Vec::new(),
                sidecar_json: None,
                ingested_ns: 0,
            },
            channels: layout
                .channels
                .iter()
                .enumerate()
                .map(|(i, c)| gbrain_catalog::ChannelRow {
                    channel_index: i as i64,
                    label: c.label.clone(),
                    channel_type: c.kind.clone(),
                    unit: c.unit.clone(),
                    transducer: String::new(),
                    prefiltering: String::new(),
                    reserved: String::new(),
                    sample_rate: layout.sample_rate,
                    samples_per_record: 1,
                    physical_min: 0.0,
                    physical_max: 0.0,
                    physical_min_text: String::new(),
                    physical_max_text: String::new(),
                    digital_min: 0,
                    digital_max: 0,
                    gain: c.resolution,
                    offset: 0.0,
                    num_samples: 0,
                    is_annotation: false,
                })
                .collect(),
            segments: Vec::new(),
            files: Vec::new(),
            upload_id: None,
            write_id: String::new(),
        }
    }

    #[tokio::test]
    async fn chunks_are_acknowledged_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path()).await;
        let (s, pos) = live
            .open_stream("t", "s1", Some(layout()), recording("t"))
            .await
            .unwrap();
        assert_eq!(
            pos,
            Position {
                last_seq: 0,
                samples: 0
            }
        );
        for seq in 1..=3 {
            let ack = live.append(&s, seq, chunk(seq, 25)).await.unwrap();
            assert_eq!(
                (ack.seq, ack.samples, ack.duplicate),
                (seq, seq * 25, false)
            );
        }
        // A chunk sent again is acknowledged again and not stored twice.
        let again = live.append(&s, 2, chunk(2, 25)).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.samples, 75);
        // A gap is refused, naming what is missing.
        let gap = live.append(&s, 6, chunk(6, 25)).await.unwrap_err();
        assert!(matches!(gap, Error::FailedPrecondition { .. }), "{gap}");
        assert!(
            gap.to_string().contains("chunks 4 to 5 are missing"),
            "{gap}"
        );
        let (from, held) = live.held("t", "s1").await.unwrap();
        assert_eq!(from, 0);
        assert_eq!(held.len(), 3);
        assert!(held.iter().all(|c| c.len() == 75));
        // Channel 1 (Cz) of sample 0 of chunk 1: value index 1 = (1000 + 1) * 0.5 uV, in nV.
        assert_eq!(held[1][0], 500_500);
    }

    /// Subscribers get every chunk once, in order and contiguous, a chunk sent again included.
    #[tokio::test]
    async fn subscribers_get_each_chunk_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path()).await;
        let (s, _) = live
            .open_stream("t", "s1", Some(layout()), recording("t"))
            .await
            .unwrap();
        let mut sub = live.subscribe("t", "s1").unwrap();
        assert!(
            live.subscribe("u", "s1").is_err(),
            "another tenant's stream is not there"
        );
        for seq in [1, 2, 2, 1, 3] {
            live.append(&s, seq, chunk(seq, 25)).await.unwrap();
        }
        let mut got = Vec::new();
        while let Ok(c) = sub.chunks.try_recv() {
            got.push((c.seq, c.first_sample, c.samples));
        }
        assert_eq!(got, vec![(1, 0, 25), (2, 25, 25), (3, 50, 25)]);
    }

    #[tokio::test]
    async fn bad_chunks_and_layouts_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path()).await;
        let mut bad = layout();
        bad.channels[2].label = "C3".into();
        let e = live
            .open_stream("t", "s", Some(bad), recording("t"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("layout.channels[2].label"), "{e}");
        let e = live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("open.layout"), "{e}");
        let e = live
            .open_stream("t", "a/b", Some(layout()), recording("t"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("open.stream_id"), "{e}");
        let (s, _) = live
            .open_stream("t", "s", Some(layout()), recording("t"))
            .await
            .unwrap();
        // Seven values for three channels.
        let e = live
            .append(&s, 1, Samples::Physical(vec![0.0; 7]))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("chunk.values") && e.to_string().contains("7 values"),
            "{e}"
        );
        let e = live
            .append(&s, 1, Samples::Physical(vec![f64::NAN, 0.0, 0.0]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("channel 'C3'"), "{e}");
        // A refused chunk stores nothing: 1 is still the next number.
        let ack = live.append(&s, 1, chunk(1, 2)).await.unwrap();
        assert_eq!(ack.samples, 2);
        let mut other = layout();
        other.sample_rate = 500.0;
        let e = live
            .open_stream("t", "s", Some(other), recording("t"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition { .. }), "{e}");
    }

    #[tokio::test]
    async fn held_samples_are_bounded_and_flushes_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let policy = FlushPolicy {
            interval: Duration::from_secs(3600),
            stream_values: u64::MAX,
            max_held: 3 * 30,
            room_wait: Duration::from_millis(100),
        };
        let node = node_with(dir.path(), Arc::clone(&store), policy).await;
        let live = Arc::new(node.live);
        let (s, _) = live
            .open_stream("t", "s", Some(layout()), recording("t"))
            .await
            .unwrap();
        live.append(&s, 1, chunk(1, 20)).await.unwrap();
        // No flush comes: the chunk waits, then is refused and not stored.
        let e = live.append(&s, 2, chunk(2, 20)).await.unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        let ack = live.append(&s, 2, chunk(2, 10)).await.unwrap();
        assert_eq!((ack.seq, ack.samples), (2, 30));
        // A chunk waiting for room is taken once a flush makes it.
        let waiting = {
            let (live, s) = (Arc::clone(&live), s.clone());
            tokio::spawn(async move { live.append(&s, 3, chunk(3, 20)).await })
        };
        tokio::task::yield_now().await;
        let report = live.flush().await;
        assert_eq!((report.streams, report.samples, report.failed), (1, 30, 0));
        let ack = waiting.await.unwrap().unwrap();
        assert_eq!((ack.seq, ack.samples), (3, 50));
        drop(live);
        // The count comes back with the replayed samples: 20 held, room for 10 more.
        let node = node_with(dir.path(), store, policy).await;
        let (s, pos) = node
            .live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap();
        assert_eq!(pos.last_seq, 3);
        assert_eq!(node.live.held("t", "s").await.unwrap().0, 30);
        assert!(node.live.append(&s, 4, chunk(4, 11)).await.is_err());
        node.live.append(&s, 4, chunk(4, 10)).await.unwrap();
    }

    #[tokio::test]
    async fn flushes_store_samples_once_and_release_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let policy = FlushPolicy {
            interval: Duration::from_secs(3600),
            ..FlushPolicy::default()
        };
        let mut sent: Vec<Vec<i32>> = vec![Vec::new(); 3];
        let recording_id;
        {
            let node = node_with(dir.path(), Arc::clone(&store), policy).await;
            let live = &node.live;
            let (s, _) = live
                .open_stream("t", "s", Some(layout()), recording("t"))
                .await
                .unwrap();
            recording_id = s.stream.recording_id.clone();
            for seq in 1..=4 {
                live.append(&s, seq, chunk(seq, 25)).await.unwrap();
            }
            let report = live.flush().await;
            assert_eq!((report.streams, report.samples), (1, 100));
            assert!(report.released_lsn >= 4, "{report:?}");
            assert_eq!(
                live.held("t", "s").await.unwrap(),
                (100, vec![Vec::new(); 3])
            );
            // Nothing new: a pass stores nothing.
            assert_eq!(live.flush().await.samples, 0);
            for seq in 5..=6 {
                live.append(&s, seq, chunk(seq, 25)).await.unwrap();
            }
            let (_, held) = live.held("t", "s").await.unwrap();
            for (c, v) in held.iter().enumerate() {
                assert_eq!(v.len(), 50);
                sent[c].extend(v);
            }
            // A crash here: chunks 5 and 6 are only in the log.
        }
        let node = node_with(dir.path(), Arc::clone(&store), policy).await;
        let (s, pos) = node
            .live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap();
        assert_eq!(
            pos,
            Position {
                last_seq: 6,
                samples: 150
            }
        );
        let (from, held) = node.live.held("t", "s").await.unwrap();
        assert_eq!(from, 100, "flushed chunks are not replayed");
        for (c, v) in held.iter().enumerate() {
            assert_eq!(v, &sent[c], "channel {c}, sample by sample");
        }
        node.live.close(&s).await.unwrap();
        let report = node.live.flush().await;
        assert_eq!((report.samples, report.closed), (50, 1));
        assert!(
            node.live.held("t", "s").await.is_none(),
            "closed and stored"
        );
        let stored = node.catalog.live_stream("t", "s").await.unwrap().unwrap();
        assert!(stored.closed);
        assert_eq!((stored.flushed_seq, stored.flushed_samples), (6, 150));

        // The files hold every sample once, in order.
        let files = node
            .catalog
            .files("t", &recording_id, FileKind::Signal)
            .await
            .unwrap();
        assert_eq!(
            files.len(),
            3,
            "closed: its two flushes merged into one file per channel"
        );
        for c in 0..3i64 {
            let mut values = Vec::new();
            let mut next = 0u64;
            for f in files.iter().filter(|f| f.channel_index == Some(c)) {
                let bytes = gbrain_storage::store::get_bytes(store.as_ref(), &f.path)
                    .await
                    .unwrap();
                let (first, v) = gbrain_storage::signal::read_signal_file(bytes, &f.path).unwrap();
                assert_eq!(first, next);
                next += v.len() as u64;
                values.extend(v);
            }
            assert_eq!(values.len(), 150);
            assert_eq!(&values[100..], &sent[c as usize][..]);
            // Chunk 1's first sample of this channel: (1000 + c) * 0.5 uV in nV steps.
            assert_eq!(values[0], ((1000 + c) * 500) as i32);
        }
        let r = node
            .catalog
            .get_recording("t", &recording_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.num_samples, 150 * 3);
        // Closed: a reopen is refused, after a restart too.
        drop(node);
        let node = node_with(dir.path(), store, policy).await;
        let e = node
            .live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[tokio::test]
    async fn a_reopen_resumes_and_supersedes_the_old_connection() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path()).await;
        let (old, _) = live
            .open_stream("t", "s", Some(layout()), recording("t"))
            .await
            .unwrap();
        live.append(&old, 1, chunk(1, 10)).await.unwrap();
        let (new, pos) = live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap();
        assert_eq!(
            pos,
            Position {
                last_seq: 1,
                samples: 10
            }
        );
        let e = live.append(&old, 2, chunk(2, 10)).await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        live.append(&new, 2, chunk(2, 10)).await.unwrap();
        // Tenants are apart: the same id elsewhere is another stream.
        let (_, other) = live
            .open_stream("u", "s", Some(layout()), recording("u"))
            .await
            .unwrap();
        assert_eq!(other.last_seq, 0);
    }

    #[tokio::test]
    async fn acknowledged_chunks_survive_a_restart_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let recording_id;
        {
            let live = open(dir.path()).await;
            let (s, _) = live
                .open_stream("t", "s", Some(layout()), recording("t"))
                .await
                .unwrap();
            recording_id = s.stream.recording_id.clone();
            for seq in 1..=5 {
                live.append(&s, seq, chunk(seq, 20)).await.unwrap();
            }
            live.append(&s, 3, chunk(3, 20)).await.unwrap();
            let (_, held) = live.held("t", "s").await.unwrap();
            drop(live);
            let live = open(dir.path()).await;
            let (s2, pos) = live
                .open_stream("t", "s", None, recording("t"))
                .await
                .unwrap();
            assert_eq!(
                pos,
                Position {
                    last_seq: 5,
                    samples: 100
                }
            );
            assert_eq!(s2.stream.recording_id, recording_id);
            assert_eq!(
                live.held("t", "s").await.unwrap().1,
                held,
                "sample by sample"
            );
            live.append(&s2, 6, chunk(6, 20)).await.unwrap();
            live.close(&s2).await.unwrap();
        }
        let live = open(dir.path()).await;
        let e = live
            .open_stream("t", "s", None, recording("t"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert_eq!(live.held("t", "s").await.unwrap().1[0].len(), 120);
    }

    #[tokio::test]
    async fn compactions_merge_small_files_and_keep_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let policy = FlushPolicy {
            interval: Duration::from_secs(3600),
            ..FlushPolicy::default()
        };
        let node = node_with(dir.path(), Arc::clone(&store), policy).await;
        let live = &node.live;
        let (s, _) = live
            .open_stream("t", "s", Some(layout()), recording("t"))
            .await
            .unwrap();
        let rec = s.stream.recording_id.clone();
        let mut merged = 0;
        for seq in 1..=(COMPACTION_FANIN as u64 + 3) {
            live.append(&s, seq, chunk(seq, 7)).await.unwrap();
            merged += live.flush().await.merged;
        }
        assert_eq!(merged, COMPACTION_FANIN);
        let files = node
            .catalog
            .files("t", &rec, FileKind::Signal)
            .await
            .unwrap();
        // Per channel: one file of level 1 (16 flushes); then 3 flushes of a file each, every
        // channel in it.
        assert_eq!(files.len(), 3 + 3);
        let (level1, flushes): (Vec<_>, Vec<_>) =
            files.iter().partition(|f| f.channel_index.is_some());
        assert!(level1.iter().all(|f| layout::live_level(&f.path) == 1));
        assert!(
            level1
                .iter()
                .all(|f| (f.first_row, f.num_rows) == (0, 16 * 7))
        );
        assert!(flushes.iter().all(|f| layout::live_level(&f.path) == 0));
        for f in &flushes {
            let bytes = gbrain_storage::store::get_bytes(store.as_ref(), &f.path)
                .await
                .unwrap();
            for c in 0..3 {
                let (first, values) = gbrain_storage::signal::read_signal_groups(
                    bytes.clone(),
                    &f.path,
                    Some(channel_groups(7, c)),
                )
                .unwrap();
                assert_eq!((first, values.len()), (f.first_row as u64, 7));
                let seq = f.first_row as u64 / 7 + 1;
                let want = ((seq * 1000 + (c as u64)) as f64 * 0.5 / 1e-3).round();
                assert_eq!(f64::from(values[0]), want, "channel {c} of {}", f.path);
            }
        }
        live.close(&s).await.unwrap();
        let report = live.flush().await;
        assert_eq!(
            (report.closed, report.merged),
            (1, 4),
            "done: the last files become one"
        );
        let files = node
            .catalog
            .files("t", &rec, FileKind::Signal)
            .await
            .unwrap();
        assert_eq!(files.len(), 3);
        for (c, f) in files.iter().enumerate() {
            let bytes = gbrain_storage::store::get_bytes(store.as_ref(), &f.path)
                .await
                .unwrap();
            let (first, values) = gbrain_storage::signal::read_signal_file(bytes, &f.path).unwrap();
            assert_eq!((first, values.len()), (0, 19 * 7));
            for (i, v) in values.iter().enumerate() {
                let (seq, k) = (i / 7 + 1, i % 7);
                let want = ((seq as u64 * 1000 + (k * 3 + c) as u64) as f64 * 0.5 / 1e-3).round();
                assert_eq!(f64::from(*v), want, "channel {c} sample {i}");
            }
        }
        // The replaced files are listed for deletion once past their grace.
        let replaced = node.catalog.removed_files(i64::MAX, 1000).await.unwrap();
        assert_eq!(replaced.len(), 16 + 3 + 3);
    }

    #[test]
    fn merges_runs_of_one_level_oldest_first() {
        let part = |level, first| Part {
            level,
            first,
            rows: 1,
            files: Vec::new(),
        };
        let mut parts: Vec<Part> = (0..15).map(|i| part(0, i)).collect();
        assert_eq!(next_merge(&parts, false), None);
        assert_eq!(next_merge(&parts, true), Some(0..15));
        parts.push(part(0, 15));
        assert_eq!(next_merge(&parts, false), Some(0..16));
        let mut tiers = vec![part(MAX_LEVEL, 0), part(2, 1)];
        tiers.extend((0..16).map(|i| part(1, 2 + i)));
        tiers.extend((0..3).map(|i| part(0, 18 + i)));
        assert_eq!(next_merge(&tiers, false), Some(2..18));
        assert_eq!(next_merge(&tiers, true), Some(2..18));
        let top: Vec<Part> = (0..20).map(|i| part(MAX_LEVEL, i)).collect();
        assert_eq!(next_merge(&top, false), None, "the top level is not merged");
        assert_eq!(next_merge(&top, true), None);
    }
}
