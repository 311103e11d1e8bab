//! Export: a recording back as a de-identified EDF+ or BDF+ file.
//!
//! The header carries the stored pseudonym and the policy-adjusted start, never the original
//! patient or recording fields (they were never stored). Signals come back with their original
//! digital values, physical ranges, units, labels and prefiltering, so physical values are
//! bit-identical to the source's. Events become TALs in one `EDF Annotations` signal; EDF+D
//! recordings stay discontinuous with their gaps. BioSemi triggers are not repeated as
//! annotations: they are still in the Status channel.

use std::io::Write;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use gbrain_catalog::{ChannelRow, DataFileRow, FileKind, RecordingRow, SegmentRow};
use gbrain_common::tenant::TenantId;
use gbrain_formats::edf::{
    EdfWriter, Encoding, FileFormat, RecordSignal, Variant, WriterHeader, WriterSignal, write_tal,
};
use gbrain_proto::ingest::v1::{ExportFormat, ExportInfo};
use gbrain_storage::events::{EventRow, read_events};
use gbrain_storage::signal::{SignalFileReader, channel_groups};
use tokio::sync::mpsc;

use crate::{Error, Ingest, Result};

/// Bytes per message of the export stream.
pub const EXPORT_CHUNK_BYTES: usize = 1 << 20;

/// The export's description and its bytes, in order.
pub struct Export {
    pub info: ExportInfo,
    pub chunks: mpsc::Receiver<Result<Bytes>>,
}

impl Ingest {
    pub async fn export(
        &self,
        tenant: &TenantId,
        recording_id: &str,
        format: ExportFormat,
    ) -> Result<Export> {
        let t = tenant.as_str();
        let rec = self
            .catalog
            .get_recording(t, recording_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("recording {recording_id} not found")))?;
        if rec.format == "NONE" {
            return Err(Error::precondition(
                "recording_id",
                "this recording holds events only; there are no signals to export",
            ));
        }
        let source = FileFormat::parse(&rec.format)
            .ok_or_else(|| Error::Internal(format!("stored format {:?}", rec.format)))?;
        let encoding = match (format, source.encoding) {
            (ExportFormat::EdfPlus, Encoding::Int24) => {
                return Err(Error::precondition(
                    "format",
                    "this is a BDF recording with 24-bit samples; EDF+ holds 16 bits, so the \
                     export would lose precision: export it as BDF+",
                ));
            }
            (ExportFormat::BdfPlus, _) => Encoding::Int24,
            (ExportFormat::EdfPlus, Encoding::Int16) => Encoding::Int16,
            (ExportFormat::Unspecified, e) => e,
        };
        let channels = self.catalog.channels(t, recording_id).await?;
        let segments = self.catalog.segments(t, recording_id).await?;
        let signal_files = self
            .catalog
            .files(t, recording_id, FileKind::Signal)
            .await?;
        let mut events = Vec::new();
        for f in self
            .catalog
            .files(t, recording_id, FileKind::Events)
            .await?
        {
            let bytes = gbrain_storage::store::get_bytes(self.store.as_ref(), &f.path).await?;
            events.extend(read_events(bytes, &f.path)?);
        }
        let plan = plan(
            &rec,
            &channels,
            &segments,
            &events,
            encoding,
            source.variant,
        )?;
        let info = ExportInfo {
            format: plan.header.format.to_string(),
            size_bytes: plan.size_bytes,
            file_name: format!(
                "{recording_id}.{}",
                if encoding == Encoding::Int16 {
                    "edf"
                } else {
                    "bdf"
                }
            ),
        };
        let (tx, rx) = mpsc::channel(4);
        let store = std::sync::Arc::clone(&self.store);
        let handle = tokio::runtime::Handle::current();
        let data_channels: Vec<ChannelRow> =
            channels.into_iter().filter(|c| !c.is_annotation).collect();
        tokio::task::spawn_blocking(move || {
            let err_tx = tx.clone();
            if let Err(e) = write_file(plan, &data_channels, &signal_files, store, &handle, tx) {
                let _ = err_tx.blocking_send(Err(e));
            }
        });
        Ok(Export { info, chunks: rx })
    }
}

/// Everything needed to write the file, computed before the first byte.
struct Plan {
    header: WriterHeader,
    /// TAL bytes per record.
    tals: Vec<Vec<u8>>,
    size_bytes: u64,
}

fn plan(
    rec: &RecordingRow,
    channels: &[ChannelRow],
    segments: &[SegmentRow],
    events: &[EventRow],
    encoding: Encoding,
    source_variant: Variant,
) -> Result<Plan> {
    let start_ns = rec.start_time_ns.unwrap_or_else(|| {
        NaiveDate::from_ymd_opt(1985, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_nanos_opt().unwrap_or(0))
            .unwrap_or(0)
    });
    let whole = start_ns.div_euclid(1_000_000_000);
    let sub_second = start_ns.rem_euclid(1_000_000_000) as f64 / 1e9;
    let start: NaiveDateTime = DateTime::from_timestamp(whole, 0)
        .map(|d| d.naive_utc())
        .ok_or_else(|| Error::Internal("start time out of range".into()))?;
    let year = chrono::Datelike::year(&start);
    if !(1985..=2084).contains(&year) {
        return Err(Error::precondition(
            "recording_id",
            format!("the start year {year} cannot be written in EDF's two-digit years (1985-2084)"),
        ));
    }
    let num_records = rec.num_records.max(0) as usize;
    let duration = rec.record_duration_s;
    let variant = if source_variant == Variant::Discontinuous || segments.len() > 1 {
        Variant::Discontinuous
    } else {
        Variant::Contiguous
    };

    // Record onsets from the segments.
    let mut onsets = vec![0.0f64; num_records];
    for s in segments {
        for k in 0..s.num_records.max(0) as usize {
            let r = s.first_record as usize + k;
            if r < num_records {
                onsets[r] = s.onset_s + k as f64 * duration;
            }
        }
    }
    let mut tals: Vec<Vec<u8>> = onsets
        .iter()
        .map(|o| {
            let mut v = Vec::new();
            write_tal(&mut v, sub_second + o, None, &[]);
            v
        })
        .collect();
    // Each annotation goes in the record that holds its onset, unless that record is full:
    // TAL onsets are absolute, so any record may carry any annotation, and spreading a crowd of
    // events keeps the annotation signal (the same width in every record) from growing with it.
    let mut entries: Vec<(usize, Vec<u8>)> = events
        .iter()
        .filter(|e| e.source != "bdf_trigger")
        .filter_map(|e| {
            let onset = e.onset?;
            let text = match (&e.source[..], &e.value) {
                ("edf_annotation", _) | (_, None) => e.event_type.clone(),
                (_, Some(v)) => format!("{}={v}", e.event_type),
            };
            let natural = onsets.partition_point(|o| *o <= onset).saturating_sub(1);
            let mut tal = Vec::new();
            write_tal(&mut tal, sub_second + onset, e.duration, &[text.as_str()]);
            Some((natural, tal))
        })
        .collect();
    entries.sort_by_key(|(r, _)| *r);
    if !tals.is_empty() {
        let n = tals.len();
        let keeper = tals.iter().map(Vec::len).max().unwrap_or(0);
        let total: usize = entries.iter().map(|(_, t)| t.len()).sum();
        let widest = entries.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let budget = keeper + widest.max(total.div_ceil(n));
        let (mut cursor, mut wrap) = (0usize, 0usize);
        for (natural, tal) in entries {
            cursor = cursor.max(natural);
            while cursor < n && tals[cursor].len() + tal.len() > budget {
                cursor += 1;
            }
            let r = if cursor < n {
                cursor
            } else {
                while wrap < n && tals[wrap].len() + tal.len() > budget {
                    wrap += 1;
                }
                wrap.min(n - 1)
            };
            tals[r].extend_from_slice(&tal);
        }
    }
    let bps = encoding.bytes_per_sample();
    let longest = tals.iter().map(Vec::len).max().unwrap_or(0).max(bps);
    let annotation_spr = longest.div_ceil(bps);

    let mut signals: Vec<WriterSignal> = channels
        .iter()
        .filter(|c| !c.is_annotation)
        .map(|c| WriterSignal {
            label: c.label.clone(),
            transducer: c.transducer.clone(),
            physical_dimension: c.unit.clone(),
            physical_min_text: c.physical_min_text.clone(),
            physical_max_text: c.physical_max_text.clone(),
            digital_min: c.digital_min as i32,
            digital_max: c.digital_max as i32,
            prefiltering: c.prefiltering.clone(),
            samples_per_record: c.samples_per_record as usize,
            reserved: c.reserved.clone(),
        })
        .collect();
    signals.push(WriterSignal::annotations(encoding, annotation_spr));
    let record_bytes: usize = signals.iter().map(|s| s.samples_per_record * bps).sum();
    let header = WriterHeader {
        format: FileFormat { encoding, variant },
        patient: rec.patient_field.clone(),
        recording: rec.recording_field.clone(),
        start,
        num_records: num_records as u64,
        record_duration_text: rec.record_duration_text.clone(),
        signals,
    };
    let size_bytes = (256 * (header.signals.len() + 1) + num_records * record_bytes) as u64;
    Ok(Plan {
        header,
        tals,
        size_bytes,
    })
}

/// Feeds one channel's values from its files (and their row groups, for a file of every
/// channel) in order.
struct Cursor<'a> {
    files: Vec<(&'a DataFileRow, Option<std::ops::Range<usize>>)>,
    next_file: usize,
    reader: Option<SignalFileReader>,
    values: Vec<i32>,
    at: usize,
}

impl Cursor<'_> {
    fn take(
        &mut self,
        n: usize,
        out: &mut Vec<i32>,
        store: &std::sync::Arc<dyn object_store::ObjectStore>,
        handle: &tokio::runtime::Handle,
    ) -> Result<()> {
        out.clear();
        while out.len() < n {
            if self.at == self.values.len() {
                self.values.clear();
                self.at = 0;
                let more = match self.reader.as_mut() {
                    Some(r) => r.next_into(&mut self.values)?,
                    None => false,
                };
                if !more {
                    let Some((f, groups)) = self.files.get(self.next_file) else {
                        return Err(Error::Internal(
                            "stored samples end before the records do".into(),
                        ));
                    };
                    self.next_file += 1;
                    let bytes = handle
                        .block_on(gbrain_storage::store::get_bytes(store.as_ref(), &f.path))?;
                    self.reader = Some(SignalFileReader::new(bytes, &f.path, groups.clone())?);
                }
                continue;
            }
            let take = (n - out.len()).min(self.values.len() - self.at);
            out.extend_from_slice(&self.values[self.at..self.at + take]);
            self.at += take;
        }
        Ok(())
    }
}

/// A `Write` that sends what it is given in chunks down the export stream.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

fn write_file(
    plan: Plan,
    channels: &[ChannelRow],
    files: &[DataFileRow],
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    handle: &tokio::runtime::Handle,
    tx: mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    let mut cursors: Vec<Cursor<'_>> = channels
        .iter()
        .map(|c| {
            // A channel's own files, and its row groups in a live flush's file of every channel.
            let mut mine: Vec<(&DataFileRow, Option<std::ops::Range<usize>>)> = files
                .iter()
                .filter_map(|f| match f.channel_index {
                    Some(i) => (i == c.channel_index).then_some((f, None)),
                    None => Some((
                        f,
                        Some(channel_groups(f.num_rows as u64, c.channel_index as usize)),
                    )),
                })
                .collect();
            mine.sort_by_key(|(f, _)| f.first_row);
            Cursor {
                files: mine,
                next_file: 0,
                reader: None,
                values: Vec::new(),
                at: 0,
            }
        })
        .collect();
    let sprs: Vec<usize> = channels
        .iter()
        .map(|c| c.samples_per_record as usize)
        .collect();
    let mut writer = EdfWriter::new(
        ChunkSender {
            tx,
            buf: Vec::with_capacity(EXPORT_CHUNK_BYTES + 65536),
        },
        plan.header,
    )?;
    let mut record: Vec<Vec<i32>> = sprs.iter().map(|n| Vec::with_capacity(*n)).collect();
    for tal in &plan.tals {
        for ((cursor, out), n) in cursors.iter_mut().zip(record.iter_mut()).zip(&sprs) {
            cursor.take(*n, out, &store, handle)?;
        }
        let mut parts: Vec<RecordSignal<'_>> =
            record.iter().map(|v| RecordSignal::Samples(v)).collect();
        parts.push(RecordSignal::Annotations(tal));
        writer.write_record(&parts)?;
    }
    writer.finish()?;
    Ok(())
}
