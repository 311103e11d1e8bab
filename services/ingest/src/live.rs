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
//! Not here yet: flushing the held samples to Parquet and releasing the log, and the gRPC
//! stream over this (see docs/ARCHITECTURE.md, "Live streams").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::wal::{Wal, WalConfig};

/// The most channels a stream may declare.
pub const MAX_CHANNELS: usize = 1024;
/// The highest sample rate a stream may declare, in Hz.
pub const MAX_SAMPLE_RATE: f64 = 100_000.0;
/// The most samples per channel in one chunk (a minute at 1 kHz).
pub const MAX_CHUNK_SAMPLES: usize = 60_000;
/// Samples (of all streams) a node holds in memory until they are flushed. Flushing to Parquet
/// is not built yet, so this bounds memory: past it, chunks get ResourceExhausted.
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
    #[prost(oneof = "record::Kind", tags = "1, 2, 3")]
    kind: Option<record::Kind>,
}

mod record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Open(super::OpenRecord),
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
struct OpenRecord {
    #[prost(message, optional, tag = "1")]
    key: Option<StreamKey>,
    #[prost(string, tag = "2")]
    recording_id: String,
    #[prost(message, optional, tag = "3")]
    layout: Option<Layout>,
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

/// The node's live streams.
pub struct Live {
    wal: Wal,
    streams: std::sync::Mutex<HashMap<(String, String), Arc<Stream>>>,
    /// First opens one at a time, so that the open record the log replays first is the one
    /// whose stream the map holds.
    creating: tokio::sync::Mutex<()>,
    /// Samples held by every stream, against `max_held`.
    held_samples: AtomicU64,
    max_held: u64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
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

impl Live {
    /// Opens the log and replays it: every acknowledged chunk of every stream is held again.
    /// Blocking: call it off the IO runtime.
    pub fn open(config: WalConfig) -> Result<Self> {
        let (wal, records) =
            Wal::open(config).map_err(|e| Error::Internal(format!("live streams: {e}")))?;
        let mut opened: HashMap<(String, String), (String, Layout, State)> = HashMap::new();
        for r in records {
            let record = Record::decode(r.payload).map_err(|e| {
                Error::Internal(format!(
                    "live streams: log record {} does not decode: {e}",
                    r.lsn
                ))
            })?;
            match record.kind {
                Some(record::Kind::Open(o)) => {
                    let (Some(key), Some(layout)) = (o.key, o.layout) else {
                        continue;
                    };
                    let width = layout.channels.len();
                    opened
                        .entry((key.tenant, key.stream_id))
                        .or_insert_with(|| (o.recording_id, layout, State::empty(width)));
                }
                Some(record::Kind::Chunk(c)) => {
                    let Some(key) = &c.key else { continue };
                    let k = (key.tenant.clone(), key.stream_id.clone());
                    if let Some((_, _, state)) = opened.get_mut(&k) {
                        state.apply(&c);
                    }
                }
                Some(record::Kind::Close(key)) => {
                    if let Some((_, _, state)) = opened.get_mut(&(key.tenant, key.stream_id)) {
                        state.closed = true;
                    }
                }
                None => {}
            }
        }
        let held: u64 = opened
            .values()
            .map(|(_, _, st)| st.held.iter().map(|c| c.len() as u64).sum::<u64>())
            .sum();
        let streams = opened
            .into_iter()
            .map(|((tenant, stream_id), (recording_id, layout, state))| {
                let stream = Arc::new(Stream {
                    tenant: tenant.clone(),
                    stream_id: stream_id.clone(),
                    recording_id,
                    layout,
                    generation: AtomicU64::new(0),
                    state: tokio::sync::Mutex::new(state),
                });
                ((tenant, stream_id), stream)
            })
            .collect();
        Ok(Self {
            wal,
            streams: std::sync::Mutex::new(streams),
            creating: tokio::sync::Mutex::new(()),
            held_samples: AtomicU64::new(held),
            max_held: MAX_HELD_SAMPLES,
        })
    }

    fn get(&self, tenant: &str, stream_id: &str) -> Option<Arc<Stream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), stream_id.to_string()))
            .cloned()
    }

    /// Opens a stream, or resumes it. A resumed stream must be opened with the layout it was
    /// first opened with (or none).
    pub async fn open_stream(
        &self,
        tenant: &str,
        stream_id: &str,
        layout: Option<Layout>,
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
        let layout = layout.ok_or_else(|| {
            Error::invalid(
                "open.layout",
                "required when a stream is opened the first time",
            )
        })?;
        let recording_id = uuid::Uuid::new_v4().to_string();
        let record = Record {
            kind: Some(record::Kind::Open(OpenRecord {
                key: Some(StreamKey {
                    tenant: tenant.to_string(),
                    stream_id: stream_id.to_string(),
                }),
                recording_id: recording_id.clone(),
                layout: Some(layout.clone()),
            })),
        };
        self.wal
            .append(Bytes::from(record.encode_to_vec()))
            .await
            .map_err(|e| Error::Internal(format!("live streams: {e}")))?;
        let width = layout.channels.len();
        let stream = Arc::new(Stream {
            tenant: tenant.to_string(),
            stream_id: stream_id.to_string(),
            recording_id,
            layout,
            generation: AtomicU64::new(1),
            state: tokio::sync::Mutex::new(State::empty(width)),
        });
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (tenant.to_string(), stream_id.to_string()),
                Arc::clone(&stream),
            );
        let position = Position {
            last_seq: 0,
            samples: 0,
        };
        Ok((
            Session {
                stream,
                generation: 1,
            },
            position,
        ))
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

    /// Stores one chunk and acknowledges it once it is durable.
    pub async fn append(&self, session: &Session, seq: u64, samples: Samples) -> Result<Ack> {
        let stream = &session.stream;
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
        if seq == 0 {
            return Err(Error::invalid("chunk.seq", "chunks are numbered from 1"));
        }
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
        let (n, values) = samples.digital(&stream.layout)?;
        let adding = values.len() as u64;
        if self.held_samples.load(Ordering::Acquire) + adding > self.max_held {
            return Err(Error::too_large(
                "chunk",
                format!(
                    "this node holds {} samples of live streams not yet flushed, the most it \
                     holds; retry later",
                    self.max_held
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
        self.wal
            .append(Bytes::from(payload))
            .await
            .map_err(|e| Error::Internal(format!("live streams: {e}")))?;
        state.apply(&chunk);
        self.held_samples.fetch_add(adding, Ordering::AcqRel);
        Ok(Ack {
            seq,
            samples: state.position.samples,
            duplicate: false,
        })
    }

    /// Ends the stream: no chunk is taken after this.
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
            self.wal
                .append(Bytes::from(record.encode_to_vec()))
                .await
                .map_err(|e| Error::Internal(format!("live streams: {e}")))?;
            state.closed = true;
        }
        Ok(state.position)
    }

    /// The samples held for a stream, per channel, from sample `from` (for flushing and for
    /// queries of the live tail).
    pub async fn held(&self, tenant: &str, stream_id: &str) -> Option<(u64, Vec<Vec<i32>>)> {
        let stream = self.get(tenant, stream_id)?;
        let state = stream.state.lock().await;
        Some((state.held_from, state.held.clone()))
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
        }
    }

    /// Applies a logged chunk (from an append, or from replay).
    fn apply(&mut self, c: &ChunkRecord) {
        if c.seq <= self.position.last_seq {
            return;
        }
        let width = self.held.len().max(1);
        for (i, v) in c.values.chunks_exact(4).enumerate() {
            let x = i32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if let Some(ch) = self.held.get_mut(i % width) {
                ch.push(x);
            }
        }
        self.position = Position {
            last_seq: c.seq,
            samples: c.first_sample + u64::from(c.samples),
        };
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

    fn open(dir: &std::path::Path) -> Live {
        Live::open(WalConfig::new(dir)).unwrap()
    }

    #[tokio::test]
    async fn chunks_are_acknowledged_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path());
        let (s, pos) = live.open_stream("t", "s1", Some(layout())).await.unwrap();
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

    #[tokio::test]
    async fn bad_chunks_and_layouts_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path());
        let mut bad = layout();
        bad.channels[2].label = "C3".into();
        let e = live.open_stream("t", "s", Some(bad)).await.unwrap_err();
        assert!(e.to_string().contains("layout.channels[2].label"), "{e}");
        let e = live.open_stream("t", "s", None).await.unwrap_err();
        assert!(e.to_string().contains("open.layout"), "{e}");
        let e = live
            .open_stream("t", "a/b", Some(layout()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("open.stream_id"), "{e}");
        let (s, _) = live.open_stream("t", "s", Some(layout())).await.unwrap();
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
        let e = live.open_stream("t", "s", Some(other)).await.unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition { .. }), "{e}");
    }

    #[tokio::test]
    async fn held_samples_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = open(dir.path());
        live.max_held = 3 * 30;
        let (s, _) = live.open_stream("t", "s", Some(layout())).await.unwrap();
        live.append(&s, 1, chunk(1, 20)).await.unwrap();
        let e = live.append(&s, 2, chunk(2, 20)).await.unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        // Refused, not stored: the same number fits once it is small enough.
        let ack = live.append(&s, 2, chunk(2, 10)).await.unwrap();
        assert_eq!((ack.seq, ack.samples), (2, 30));
        drop(live);
        // The count comes back with the replayed samples.
        let mut live = open(dir.path());
        live.max_held = 3 * 30;
        let (s, _) = live.open_stream("t", "s", None).await.unwrap();
        assert!(live.append(&s, 3, chunk(3, 1)).await.is_err());
    }

    #[tokio::test]
    async fn a_reopen_resumes_and_supersedes_the_old_connection() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path());
        let (old, _) = live.open_stream("t", "s", Some(layout())).await.unwrap();
        live.append(&old, 1, chunk(1, 10)).await.unwrap();
        let (new, pos) = live.open_stream("t", "s", None).await.unwrap();
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
        let (_, other) = live.open_stream("u", "s", Some(layout())).await.unwrap();
        assert_eq!(other.last_seq, 0);
    }

    #[tokio::test]
    async fn acknowledged_chunks_survive_a_restart_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let recording_id;
        {
            let live = open(dir.path());
            let (s, _) = live.open_stream("t", "s", Some(layout())).await.unwrap();
            recording_id = s.stream.recording_id.clone();
            for seq in 1..=5 {
                live.append(&s, seq, chunk(seq, 20)).await.unwrap();
            }
            live.append(&s, 3, chunk(3, 20)).await.unwrap();
            let (_, held) = live.held("t", "s").await.unwrap();
            drop(live);
            let live = open(dir.path());
            let (s2, pos) = live.open_stream("t", "s", None).await.unwrap();
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
        let live = open(dir.path());
        let e = live.open_stream("t", "s", None).await.unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert_eq!(live.held("t", "s").await.unwrap().1[0].len(), 120);
    }
}
