//! From source bytes to a committed recording.
//!
//! The order matters for crash safety: the recording's object prefixes are registered as a
//! pending write before any object is written; objects are written; the catalog commit makes
//! them visible and clears the pending write in one transaction. A crash before the commit
//! leaves only garbage that [`crate::gc`] collects; a crash after it leaves a whole recording.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gbrain_catalog::{
    ChannelRow, CommitOutcome, DataFileRow, FileKind, NewRecording, PendingWrite, RecordingRow,
    SegmentRow,
};
use gbrain_common::tenant::TenantId;
use gbrain_formats::bids::{
    BidsChannel, BidsEvent, SignalSidecar, parse_channels_tsv, parse_events_tsv,
    parse_signal_sidecar,
};
use gbrain_formats::edf::{EdfReader, Header, SignalHeader, TimelineSummary};
use gbrain_proto::ingest::v1::{RecordingMetadata, SidecarKind, SignalFormat};
use gbrain_storage::events::{EventRow, write_events};
use gbrain_storage::layout;
use gbrain_storage::staging::{ChannelReader, StagedPart, delete_prefix};
use object_store::{ObjectStoreExt, PutPayload};
use sha2::Digest;

use crate::convert::{Converted, FinishedPart, convert};
use crate::deid::{Deidentified, deidentify_events_only, deidentify_header};
use crate::events::{bids_to_rows, scrubbed_annotation_rows, trigger_rows};
use crate::{Error, Ingest, Result};

/// Where the bytes of a recording are.
#[derive(Debug)]
pub enum Source {
    /// Parts of an upload on the object store.
    Staged(Vec<StagedPart>),
    /// A local file (benchmarks, tools).
    File(PathBuf),
    /// No signal file: the recording holds events only.
    None,
}

/// A recording to ingest.
#[derive(Debug)]
pub struct IngestRequest {
    pub tenant: TenantId,
    pub metadata: RecordingMetadata,
    pub source: Source,
    pub source_bytes: u64,
    /// Hex SHA-256 of the source, when already known (uploads hash while receiving). When
    /// `None` the conversion computes it.
    pub source_sha256: Option<String>,
    pub upload_id: Option<String>,
}

/// What ingest did.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestOutcome {
    pub recording_id: String,
    pub deduplicated: bool,
    pub recording: RecordingRow,
    pub num_segments: u32,
}

/// The BIDS sidecars of an upload, parsed and checked.
#[derive(Debug, Default)]
pub struct Sidecars {
    pub signal: Option<SignalSidecar>,
    pub channels: Option<Vec<BidsChannel>>,
    pub events: Option<(String, Vec<BidsEvent>)>,
}

/// Parses the sidecars of an upload. Any malformed one fails the upload, naming the file and
/// the field.
pub fn parse_sidecars(metadata: &RecordingMetadata) -> Result<Sidecars> {
    let mut out = Sidecars::default();
    for (i, s) in metadata.sidecars.iter().enumerate() {
        let name = if s.name.is_empty() {
            format!("metadata.sidecars[{i}]")
        } else {
            s.name.clone()
        };
        let kind = SidecarKind::try_from(s.kind).unwrap_or(SidecarKind::Unspecified);
        let dup = |what: &str| {
            Error::invalid(
                format!("metadata.sidecars[{i}]"),
                format!("a second {what} sidecar; send at most one"),
            )
        };
        match kind {
            SidecarKind::BidsEegJson | SidecarKind::BidsIeegJson => {
                if out.signal.is_some() {
                    return Err(dup("eeg.json/ieeg.json"));
                }
                let ieeg = kind == SidecarKind::BidsIeegJson;
                out.signal = Some(parse_signal_sidecar(&s.content, &name, ieeg)?);
            }
            SidecarKind::BidsChannelsTsv => {
                if out.channels.is_some() {
                    return Err(dup("channels.tsv"));
                }
                out.channels = Some(parse_channels_tsv(&s.content, &name)?);
            }
            SidecarKind::BidsEventsTsv => {
                if out.events.is_some() {
                    return Err(dup("events.tsv"));
                }
                out.events = Some((name.clone(), parse_events_tsv(&s.content, &name)?));
            }
            SidecarKind::Unspecified => {
                return Err(Error::invalid(
                    format!("metadata.sidecars[{i}].kind"),
                    "must say which BIDS sidecar this is",
                ));
            }
        }
    }
    Ok(out)
}

/// The SHA-256 that identifies an events-only recording: its metadata and sidecars.
pub fn events_only_sha256(metadata: &RecordingMetadata) -> String {
    use prost::Message;
    let mut h = sha2::Sha256::new();
    h.update(b"globalbrain events-only v1\n");
    h.update(metadata.encode_to_vec());
    hex::encode(h.finalize())
}

impl Ingest {
    /// Ingests one recording and commits it.
    pub async fn ingest(&self, req: IngestRequest) -> Result<IngestOutcome> {
        let started = Instant::now();
        let tenant = req.tenant.as_str().to_string();
        if let Some(sha) = &req.source_sha256
            && let Some(existing) = self.catalog.find_by_checksum(&tenant, sha).await?
        {
            let mut outcome = self.outcome(&tenant, &existing, true).await?;
            let m = &req.metadata;
            let labels = [
                &m.subject,
                &m.session,
                &m.task,
                &m.run,
                &m.acquisition,
                &m.datatype,
            ];
            if !m.sidecars.is_empty() || labels.iter().any(|l| !l.is_empty()) {
                outcome.recording.warnings.push(format!(
                    "these bytes are already recording {existing}; it keeps its own labels and \
                     events, and the labels and sidecars sent with this upload were not applied \
                     (append events with AppendEvents)"
                ));
            }
            return Ok(outcome);
        }
        let format =
            SignalFormat::try_from(req.metadata.format_hint).unwrap_or(SignalFormat::Unspecified);
        let events_only = matches!(req.source, Source::None);
        if events_only != (format == SignalFormat::None) {
            return Err(Error::invalid(
                "metadata.format_hint",
                "SIGNAL_FORMAT_NONE is for uploads without signal bytes, and only for them",
            ));
        }
        let sidecars = parse_sidecars(&req.metadata)?;
        let key = self.tenant_key(&tenant).await?;
        let policy = self.auth.policy(&req.tenant).deid;

        let _slot = self
            .conversions
            .acquire()
            .await
            .map_err(|_| Error::Cancelled("server is shutting down".into()))?;
        let recording_id = uuid::Uuid::new_v4().to_string();
        let write = PendingWrite {
            write_id: recording_id.clone(),
            tenant: tenant.clone(),
            prefixes: vec![
                layout::recording_signals(&tenant, &recording_id).to_string(),
                layout::recording_events(&tenant, &recording_id).to_string(),
            ],
            created_ns: self.clock.now_ns(),
        };
        self.catalog.begin_write(&write).await?;

        let result = self
            .write_and_commit(&req, &recording_id, &sidecars, &key, &policy, format)
            .await;
        match result {
            Ok((outcome, committed)) => {
                if !committed {
                    // Another upload of the same bytes won the race: drop ours.
                    self.discard(&write).await;
                }
                if !outcome.deduplicated {
                    let r = &outcome.recording;
                    self.metrics.source_bytes.inc_by(r.source_bytes as u64);
                    self.metrics.stored_bytes.inc_by(r.stored_bytes as u64);
                    self.metrics.samples.inc_by(r.num_samples as u64);
                    self.metrics.events.inc_by(r.num_events as u64);
                    self.metrics
                        .convert_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(
                        tenant = %tenant,
                        recording_id = %outcome.recording_id,
                        format = %r.format,
                        samples = r.num_samples,
                        events = r.num_events,
                        stored_bytes = r.stored_bytes,
                        seconds = started.elapsed().as_secs_f64(),
                        "recording committed"
                    );
                }
                Ok(outcome)
            }
            Err(e) => {
                self.discard(&write).await;
                Err(e)
            }
        }
    }

    /// Deletes a write's objects and forgets it. On failure the garbage collector retries.
    async fn discard(&self, write: &PendingWrite) {
        for prefix in &write.prefixes {
            if let Err(e) = delete_prefix(&self.store, &prefix.as_str().into()).await {
                tracing::warn!(write_id = %write.write_id, error = %e, "cleanup failed; gc will retry");
                return;
            }
        }
        if let Err(e) = self.catalog.end_write(&write.write_id).await {
            tracing::warn!(write_id = %write.write_id, error = %e, "cleanup failed; gc will retry");
        }
    }

    async fn write_and_commit(
        &self,
        req: &IngestRequest,
        recording_id: &str,
        sidecars: &Sidecars,
        key: &[u8],
        policy: &gbrain_common::tenant::DeidPolicy,
        format: SignalFormat,
    ) -> Result<(IngestOutcome, bool)> {
        let tenant = req.tenant.as_str();
        let meta = &req.metadata;
        let mut files = Vec::new();
        let mut warnings = Vec::new();

        let signal = match &req.source {
            Source::None => None,
            source => Some(
                self.convert_source(
                    tenant,
                    recording_id,
                    source,
                    req.source_bytes,
                    req.source_sha256.is_none(),
                    req.source_sha256
                        .clone()
                        .unwrap_or_else(|| recording_id.to_string()),
                    key,
                    policy,
                    meta,
                    format,
                    &mut files,
                )
                .await?,
            ),
        };
        let source_sha256 = match (&req.source_sha256, &signal) {
            (Some(s), _) => s.clone(),
            (None, Some((_, _, c))) => c
                .sha256
                .map(hex::encode)
                .ok_or_else(|| Error::Internal("conversion did not hash".into()))?,
            (None, None) => events_only_sha256(meta),
        };
        let deid = match &signal {
            Some((_, d, _)) => d.clone(),
            None => deidentify_events_only(key, &meta.dataset, &meta.subject, &source_sha256),
        };

        // Events: annotations and triggers from the file, then the BIDS events table, encoded
        // on the CPU pool.
        let scrub = policy.scrub_annotations;
        let bids_events = sidecars.events.as_ref().map(|(_, e)| e.clone());
        let (signal, num_events, events_file) = self
            .on_cpu(move || {
                let mut rows: Vec<EventRow> = Vec::new();
                if let Some((header, deid, converted)) = &signal {
                    let scrubber = scrub.then_some(&deid.scrubber);
                    rows.extend(scrubbed_annotation_rows(&converted.timeline, scrubber));
                    if let Some((status, triggers)) = &converted.triggers {
                        rows.extend(trigger_rows(header, *status, triggers, &converted.timeline));
                    }
                }
                if let Some(events) = &bids_events {
                    rows.extend(bids_to_rows(events, "bids_events"));
                }
                let file = match rows.is_empty() {
                    true => None,
                    false => Some(write_events(&rows)?),
                };
                Ok((signal, rows.len(), file))
            })
            .await?;
        if let Some((_, _, converted)) = &signal {
            warnings.extend(converted.timeline.warnings.iter().cloned());
        }
        if let Some(bytes) = events_file {
            let path = layout::events_part(tenant, recording_id, "0-source");
            let size = bytes.len() as i64;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(gbrain_storage::Error::from)?;
            files.push(DataFileRow {
                path: path.to_string(),
                kind: FileKind::Events,
                channel_index: None,
                first_row: 0,
                num_rows: num_events as i64,
                size_bytes: size,
            });
        }

        let (
            channels,
            segments,
            row_format,
            record_duration,
            record_duration_text,
            num_records,
            start_ns,
            duration_s,
        ) = match &signal {
            Some((header, _, converted)) => {
                let channels = channel_rows(
                    header,
                    converted,
                    sidecars.channels.as_deref(),
                    &mut warnings,
                );
                if let Some(s) = &sidecars.signal {
                    check_sampling_frequency(header, s, &mut warnings);
                }
                let segments = segment_rows(&converted.timeline);
                let offset_ns = (converted.timeline.start_offset * 1e9).round() as i64;
                let start_ns = deid
                    .start
                    .and_then(|s| s.and_utc().timestamp_nanos_opt())
                    .and_then(|ns| ns.checked_add(offset_ns));
                (
                    channels,
                    segments,
                    header.format.to_string(),
                    header.record_duration,
                    header.record_duration_text.clone(),
                    header.num_records as i64,
                    start_ns,
                    converted.timeline.duration(header.record_duration),
                )
            }
            None => (
                Vec::new(),
                Vec::new(),
                "NONE".to_string(),
                0.0,
                "0".to_string(),
                0,
                None,
                0.0,
            ),
        };

        let stored_bytes: i64 = files.iter().map(|f| f.size_bytes).sum();
        let num_samples: i64 = channels.iter().map(|c| c.num_samples).sum();
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let row = RecordingRow {
            tenant: tenant.to_string(),
            recording_id: recording_id.to_string(),
            source_sha256: source_sha256.clone(),
            subject_pseudonym: deid.subject_pseudonym.clone(),
            session: opt(&meta.session),
            task: opt(&meta.task).or_else(|| sidecars.signal.as_ref().map(|s| s.task_name.clone())),
            run: opt(&meta.run),
            acquisition: opt(&meta.acquisition),
            datatype: opt(&meta.datatype),
            format: row_format,
            start_time_ns: start_ns,
            duration_s,
            record_duration_s: record_duration,
            record_duration_text,
            num_records,
            source_bytes: req.source_bytes as i64,
            stored_bytes,
            sex: deid.sex.map(str::to_string),
            age_years: deid.age_years.map(i64::from),
            num_signals: channels.iter().filter(|c| !c.is_annotation).count() as i64,
            num_annotation_signals: channels.iter().filter(|c| c.is_annotation).count() as i64,
            num_samples,
            num_events: num_events as i64,
            patient_field: deid.patient_field.clone(),
            recording_field: deid.recording_field.clone(),
            warnings,
            sidecar_json: sidecars
                .signal
                .as_ref()
                .map(|s| serde_json::Value::Object(s.document.clone()).to_string()),
            ingested_ns: self.clock.now_ns(),
        };
        let num_segments = segments.len() as u32;
        let new = NewRecording {
            row: row.clone(),
            channels,
            segments,
            files,
            upload_id: req.upload_id.clone(),
            write_id: recording_id.to_string(),
        };
        match self.catalog.commit_recording(&new).await? {
            CommitOutcome::Committed => Ok((
                IngestOutcome {
                    recording_id: recording_id.to_string(),
                    deduplicated: false,
                    recording: row,
                    num_segments,
                },
                true,
            )),
            CommitOutcome::Duplicate { recording_id } => {
                if let Some(upload) = &req.upload_id {
                    self.catalog
                        .finish_upload(tenant, upload, &recording_id)
                        .await?;
                }
                Ok((self.outcome(tenant, &recording_id, true).await?, false))
            }
        }
    }

    /// Streams the source through the reader and encoder on the CPU pool while an async task
    /// writes finished files to the object store.
    #[allow(clippy::too_many_arguments)]
    async fn convert_source(
        &self,
        tenant: &str,
        recording_id: &str,
        source: &Source,
        size: u64,
        hash: bool,
        identity_hint: String,
        key: &[u8],
        policy: &gbrain_common::tenant::DeidPolicy,
        meta: &RecordingMetadata,
        format: SignalFormat,
        files: &mut Vec<DataFileRow>,
    ) -> Result<(Header, Deidentified, Converted)> {
        if size == 0 {
            return Err(Error::invalid(
                "file",
                "is empty (0 bytes): there is no recording in it",
            ));
        }
        let reader: Box<dyn std::io::Read + Send> = match source {
            Source::Staged(parts) => {
                Box::new(ChannelReader::new(self.staging.stream(parts.clone(), 2)))
            }
            Source::File(path) => Box::new(std::fs::File::open(path).map_err(|e| {
                Error::invalid("file", format!("cannot open {}: {e}", path.display()))
            })?),
            Source::None => return Err(Error::Internal("no source to convert".into())),
        };
        let (part_tx, mut part_rx) = tokio::sync::mpsc::channel::<FinishedPart>(4);
        let store = Arc::clone(&self.store);
        let (tenant_s, rec_s) = (tenant.to_string(), recording_id.to_string());
        let uploader = tokio::spawn(async move {
            let mut files = Vec::new();
            while let Some(p) = part_rx.recv().await {
                let path = layout::signal_part(&tenant_s, &rec_s, p.channel, p.part);
                let size = p.bytes.len() as i64;
                // Parts of long recordings run to hundreds of MB: written in parts.
                gbrain_storage::store::put_large(store.as_ref(), &path, p.bytes).await?;
                files.push(DataFileRow {
                    path: path.to_string(),
                    kind: FileKind::Signal,
                    channel_index: Some(i64::from(p.channel)),
                    first_row: p.first_sample as i64,
                    num_rows: p.rows as i64,
                    size_bytes: size,
                });
            }
            Ok::<_, Error>(files)
        });

        let key = key.to_vec();
        let policy = policy.clone();
        let dataset = meta.dataset.clone();
        let subject = meta.subject.clone();
        let options = self.config.convert.clone();
        let rec = recording_id.to_string();
        let converted = self
            .on_cpu(move || {
                let mut edf = EdfReader::open(reader, size)?;
                let header = edf.header().clone();
                check_format_hint(&header, format)?;
                let deid =
                    deidentify_header(&header, &key, &policy, &dataset, &subject, &identity_hint);
                let mut sink = |p: FinishedPart| {
                    part_tx
                        .blocking_send(p)
                        .map_err(|_| Error::Internal("signal file writer stopped".into()))
                };
                let converted = convert(&mut edf, &rec, &options, hash, &mut sink)?;
                Ok((header, deid, converted))
            })
            .await;
        // The sender is gone once the CPU task returns, so the uploader ends.
        let uploaded = uploader
            .await
            .map_err(|e| Error::Internal(format!("uploader: {e}")))?;
        // A failed write stops the conversion too; its error is the cause worth reporting.
        files.extend(uploaded?);
        let (header, deid, converted) = converted?;
        Ok((header, deid, converted))
    }

    /// The outcome for an existing recording.
    pub(crate) async fn outcome(
        &self,
        tenant: &str,
        recording_id: &str,
        deduplicated: bool,
    ) -> Result<IngestOutcome> {
        let recording = self
            .catalog
            .get_recording(tenant, recording_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("recording {recording_id}")))?;
        let num_segments = self.catalog.segments(tenant, recording_id).await?.len() as u32;
        Ok(IngestOutcome {
            recording_id: recording_id.to_string(),
            deduplicated,
            recording,
            num_segments,
        })
    }
}

fn check_format_hint(header: &Header, hint: SignalFormat) -> Result<()> {
    use gbrain_formats::edf::Encoding;
    let actual = header.format.encoding;
    match (hint, actual) {
        (SignalFormat::Edf, Encoding::Int24) => Err(Error::invalid(
            "metadata.format_hint",
            "says EDF but the file is BDF (24-bit)",
        )),
        (SignalFormat::Bdf, Encoding::Int16) => Err(Error::invalid(
            "metadata.format_hint",
            "says BDF but the file is EDF (16-bit)",
        )),
        _ => Ok(()),
    }
}

/// A channel type for a signal without a BIDS channels.tsv, from the EDF+ standard label
/// prefixes ("EEG Fpz-Cz", "ECG", "EMG chin"...).
pub fn infer_channel_type(header: &Header, s: &SignalHeader) -> String {
    if s.is_annotation {
        return "ANNOTATION".into();
    }
    if gbrain_formats::edf::is_status_channel(header, s) {
        return "TRIG".into();
    }
    let label = s.label.to_ascii_uppercase();
    let first = label.split([' ', '-', '_']).next().unwrap_or("");
    let t = match first {
        "EEG" => "EEG",
        "ECG" | "EKG" => "ECG",
        "EOG" | "HEOG" | "VEOG" => "EOG",
        "EMG" => "EMG",
        "RESP" | "RESPIRATION" => "RESP",
        "TEMP" => "TEMP",
        "SAO2" | "SPO2" | "PLETH" | "LIGHT" | "SOUND" | "EVENT" | "EP" | "ERG" | "MARKER" => "MISC",
        "STATUS" | "TRIGGER" | "TRIG" => "TRIG",
        _ => {
            let unit = s.physical_dimension.to_ascii_lowercase();
            if matches!(unit.as_str(), "uv" | "\u{b5}v" | "mv" | "nv") {
                "EEG"
            } else {
                "MISC"
            }
        }
    };
    t.into()
}

fn channel_rows(
    header: &Header,
    converted: &Converted,
    bids: Option<&[BidsChannel]>,
    warnings: &mut Vec<String>,
) -> Vec<ChannelRow> {
    let by_name: HashMap<&str, &BidsChannel> = bids
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    if let Some(b) = bids {
        let labels: Vec<&str> = header
            .signals
            .iter()
            .filter(|s| !s.is_annotation)
            .map(|s| s.label.as_str())
            .collect();
        let missing: Vec<&str> = b
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| !labels.contains(n))
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "channels.tsv lists {} channel(s) the file does not have: {}",
                missing.len(),
                missing.join(", ")
            ));
        }
    }
    header
        .signals
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let channel_type = by_name
                .get(s.label.as_str())
                .map(|c| c.channel_type.clone())
                .unwrap_or_else(|| infer_channel_type(header, s));
            ChannelRow {
                channel_index: i as i64,
                label: s.label.clone(),
                channel_type,
                unit: s.physical_dimension.clone(),
                transducer: s.transducer.clone(),
                prefiltering: s.prefiltering.clone(),
                reserved: s.reserved.clone(),
                sample_rate: s.sample_rate(header.record_duration),
                samples_per_record: s.samples_per_record as i64,
                physical_min: s.physical_min,
                physical_max: s.physical_max,
                physical_min_text: s.physical_min_text.clone(),
                physical_max_text: s.physical_max_text.clone(),
                digital_min: i64::from(s.digital_min),
                digital_max: i64::from(s.digital_max),
                gain: s.gain(),
                offset: s.offset(),
                num_samples: converted.samples[i] as i64,
                is_annotation: s.is_annotation,
            }
        })
        .collect()
}

fn check_sampling_frequency(header: &Header, sidecar: &SignalSidecar, warnings: &mut Vec<String>) {
    let matches =
        header.signals.iter().filter(|s| !s.is_annotation).any(|s| {
            (s.sample_rate(header.record_duration) - sidecar.sampling_frequency).abs() < 1e-6
        });
    if !matches {
        warnings.push(format!(
            "eeg.json says SamplingFrequency {} Hz but no signal has that rate",
            sidecar.sampling_frequency
        ));
    }
}

fn segment_rows(t: &TimelineSummary) -> Vec<SegmentRow> {
    t.segments
        .iter()
        .enumerate()
        .map(|(i, s)| SegmentRow {
            segment_index: i as i64,
            first_record: s.first_record as i64,
            num_records: s.num_records as i64,
            onset_s: s.onset,
        })
        .collect()
}
