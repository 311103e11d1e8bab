//! The gRPC face of the ingest service: authentication and roles, audit logging, and
//! conversion between protocol messages and the service's own calls.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use gbrain_catalog::{ChannelRow, RecordingRow, SegmentRow};
use gbrain_common::auth::{Principal, Role};
use gbrain_proto::ingest::v1::ingest_service_server::IngestService;
use gbrain_proto::ingest::v1::{
    AppendEventsRequest, AppendEventsResponse, Channel, ExportFormat, ExportRecordingRequest,
    ExportRecordingResponse, GetRecordingRequest, GetUploadRequest, GetUploadResponse,
    ListRecordingsRequest, ListRecordingsResponse, PutParticipantsRequest, PutParticipantsResponse,
    Recording, RecordingCounts, Segment, StreamAck, StreamChannel, StreamClosed, StreamLayout,
    StreamOpened, StreamRequest, StreamResponse, TailChunk, TailOpened, TailRequest, TailResponse,
    UploadRequest, UploadResponse, export_recording_response, stream_chunk, stream_request,
    stream_response, tail_response,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{Error, Ingest};

/// Serves `globalbrain.ingest.v1.IngestService` over an [`Ingest`].
#[derive(Clone, Debug)]
pub struct GrpcIngest {
    ingest: Arc<Ingest>,
}

impl GrpcIngest {
    pub fn new(ingest: Arc<Ingest>) -> Self {
        Self { ingest }
    }
}

/// A stream's layout from the wire.
pub fn layout_from_proto(l: StreamLayout) -> crate::live::Layout {
    crate::live::Layout {
        sample_rate: l.sample_rate,
        channels: l
            .channels
            .into_iter()
            .map(|c| crate::live::ChannelSpec {
                label: c.label,
                kind: c.r#type,
                unit: c.unit,
                resolution: c.resolution,
            })
            .collect(),
    }
}

/// A stream's layout for the wire.
pub fn layout_to_proto(l: &crate::live::Layout) -> StreamLayout {
    StreamLayout {
        sample_rate: l.sample_rate,
        channels: l
            .channels
            .iter()
            .map(|c| StreamChannel {
                label: c.label.clone(),
                r#type: c.kind.clone(),
                unit: c.unit.clone(),
                resolution: c.resolution,
            })
            .collect(),
    }
}

pub type TailStream = Pin<Box<dyn Stream<Item = Result<TailResponse, Status>> + Send>>;

fn principal<T>(req: &Request<T>, roles: &[Role], action: &str) -> Result<Principal, Status> {
    let p = Principal::from_request(req)?.clone();
    p.require_any(roles)?;
    tracing::info!(target: "audit", tenant = %p.tenant, token = %p.token_name, action, "access");
    Ok(p)
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The protocol message of a catalog recording.
pub fn recording_message(
    r: &RecordingRow,
    channels: &[ChannelRow],
    segments: &[SegmentRow],
) -> Recording {
    Recording {
        recording_id: r.recording_id.clone(),
        subject_pseudonym: r.subject_pseudonym.clone(),
        session: r.session.clone().unwrap_or_default(),
        task: r.task.clone().unwrap_or_default(),
        run: r.run.clone().unwrap_or_default(),
        acquisition: r.acquisition.clone().unwrap_or_default(),
        datatype: r.datatype.clone().unwrap_or_default(),
        format: r.format.clone(),
        start_time: r.start_time_ns.map(rfc3339).unwrap_or_default(),
        duration_s: r.duration_s,
        record_duration_s: r.record_duration_s,
        source_sha256: r.source_sha256.clone(),
        source_bytes: r.source_bytes as u64,
        stored_bytes: r.stored_bytes as u64,
        ingested_at: rfc3339(r.ingested_ns),
        sex: r.sex.clone().unwrap_or_default(),
        age_years: r.age_years.map(|a| a as u32),
        counts: Some(RecordingCounts {
            signals: r.num_signals as u32,
            annotation_signals: r.num_annotation_signals as u32,
            records: r.num_records as u64,
            samples: r.num_samples as u64,
            events: r.num_events as u64,
            segments: segments.len() as u32,
        }),
        channels: channels
            .iter()
            .map(|c| Channel {
                index: c.channel_index as u32,
                label: c.label.clone(),
                r#type: c.channel_type.clone(),
                unit: c.unit.clone(),
                transducer: c.transducer.clone(),
                prefiltering: c.prefiltering.clone(),
                sample_rate: c.sample_rate,
                physical_min: c.physical_min,
                physical_max: c.physical_max,
                digital_min: c.digital_min as i32,
                digital_max: c.digital_max as i32,
                samples_per_record: c.samples_per_record as u32,
                samples: c.num_samples as u64,
            })
            .collect(),
        segments: segments
            .iter()
            .map(|s| Segment {
                first_record: s.first_record as u64,
                records: s.num_records as u64,
                onset: s.onset_s,
            })
            .collect(),
        warnings: r.warnings.clone(),
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportRecordingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for GrpcIngest {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let p = principal(&request, &[Role::Submitter], "upload")?;
        let stream = request.into_inner();
        Ok(Response::new(self.ingest.upload(&p.tenant, stream).await?))
    }

    async fn get_upload(
        &self,
        request: Request<GetUploadRequest>,
    ) -> Result<Response<GetUploadResponse>, Status> {
        let p = principal(&request, &[Role::Submitter], "get_upload")?;
        let id = request.into_inner().upload_id;
        Ok(Response::new(self.ingest.get_upload(&p.tenant, &id).await?))
    }

    async fn append_events(
        &self,
        request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        let p = principal(&request, &[Role::Submitter], "append_events")?;
        let a = self
            .ingest
            .append_events(&p.tenant, request.into_inner())
            .await?;
        Ok(Response::new(AppendEventsResponse {
            appended: a.appended,
            total_events: a.total_events,
            deduplicated: a.deduplicated,
        }))
    }

    async fn put_participants(
        &self,
        request: Request<PutParticipantsRequest>,
    ) -> Result<Response<PutParticipantsResponse>, Status> {
        let p = principal(&request, &[Role::Submitter], "put_participants")?;
        let stored = self
            .ingest
            .put_participants(&p.tenant, request.into_inner())
            .await?;
        Ok(Response::new(PutParticipantsResponse { stored }))
    }

    async fn get_recording(
        &self,
        request: Request<GetRecordingRequest>,
    ) -> Result<Response<Recording>, Status> {
        let p = principal(&request, &[Role::Submitter, Role::Analyst], "get_recording")?;
        let id = request.into_inner().recording_id;
        let t = p.tenant.as_str();
        let c = &self.ingest.catalog;
        let r = c
            .get_recording(t, &id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::NotFound(format!("recording {id} not found")))?;
        let channels = c.channels(t, &id).await.map_err(Error::from)?;
        let segments = c.segments(t, &id).await.map_err(Error::from)?;
        Ok(Response::new(recording_message(&r, &channels, &segments)))
    }

    async fn list_recordings(
        &self,
        request: Request<ListRecordingsRequest>,
    ) -> Result<Response<ListRecordingsResponse>, Status> {
        let p = principal(
            &request,
            &[Role::Submitter, Role::Analyst],
            "list_recordings",
        )?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(1000),
        } as i64;
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let rows = self
            .ingest
            .catalog
            .list_recordings(p.tenant.as_str(), after, limit)
            .await
            .map_err(Error::from)?;
        let next_page_token = if rows.len() as i64 == limit {
            rows.last()
                .map(|r| r.recording_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListRecordingsResponse {
            recordings: rows
                .iter()
                .map(|r| recording_message(r, &[], &[]))
                .collect(),
            next_page_token,
        }))
    }

    type ExportRecordingStream = ExportStream;
    type StreamStream = LiveStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let p = principal(&request, &[Role::Submitter], "stream")?;
        let ingest = Arc::clone(&self.ingest);
        if ingest.live.is_none() {
            return Err(Error::precondition(
                "stream",
                "this node takes no live streams: start it with --wal-dir",
            )
            .into());
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let tenant = p.tenant.as_str().to_string();
            if let Err(e) = live_stream(&ingest, &p.tenant, &mut inbound, &tx).await {
                if matches!(e, Error::Internal(_)) {
                    tracing::warn!(tenant, error = %e, "live stream failed");
                }
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type TailStream = TailStream;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let p = principal(&request, &[Role::Analyst, Role::Operator], "tail")?;
        let stream_id = &request.get_ref().stream_id;
        if stream_id.is_empty() {
            return Err(Error::invalid("stream_id", "is required").into());
        }
        let live =
            self.ingest.live.as_ref().ok_or_else(|| {
                Error::precondition("stream_id", "this node takes no live streams")
            })?;
        let sub = live
            .subscribe(p.tenant.as_str(), stream_id)
            .map_err(|e| match e {
                Error::NotFound(m) => Status::failed_precondition(format!("stream_id: {m}")),
                other => Status::from(other),
            })?;
        let opened = TailResponse {
            kind: Some(tail_response::Kind::Opened(TailOpened {
                recording_id: sub.recording_id.clone(),
                layout: Some(layout_to_proto(&sub.layout)),
            })),
        };
        let chunks = tokio_stream::wrappers::BroadcastStream::new(sub.chunks).map(|c| {
            use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
            Ok(TailResponse {
                kind: Some(match c {
                    Ok(c) => tail_response::Kind::Chunk(TailChunk {
                        seq: c.seq,
                        first_sample: c.first_sample,
                        samples: c.samples as u32,
                        values: c.values.clone(),
                        received_ns: c.received_ns,
                        source_time_ns: c.source_time_ns,
                    }),
                    Err(BroadcastStreamRecvError::Lagged(n)) => tail_response::Kind::Missed(n),
                }),
            })
        });
        // Ends when the stream closes or the node drains.
        let draining = self.ingest.draining.clone();
        let stream = futures::stream::once(async { Ok(opened) })
            .chain(chunks)
            .take_until(async move { draining.cancelled().await });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn export_recording(
        &self,
        request: Request<ExportRecordingRequest>,
    ) -> Result<Response<Self::ExportRecordingStream>, Status> {
        let p = principal(&request, &[Role::Analyst], "export_recording")?;
        let req = request.into_inner();
        let format = ExportFormat::try_from(req.format).map_err(|_| {
            Error::invalid("format", format!("unknown export format {}", req.format))
        })?;
        tracing::info!(target: "audit", tenant = %p.tenant, recording_id = %req.recording_id, "export");
        let export = self
            .ingest
            .export(&p.tenant, &req.recording_id, format)
            .await?;
        let info = ExportRecordingResponse {
            kind: Some(export_recording_response::Kind::Info(export.info)),
        };
        let data = tokio_stream::wrappers::ReceiverStream::new(export.chunks);
        let stream = futures::stream::once(async move { Ok(info) }).chain(futures::StreamExt::map(
            data,
            |chunk| match chunk {
                Ok(bytes) => Ok(ExportRecordingResponse {
                    kind: Some(export_recording_response::Kind::Data(bytes)),
                }),
                Err(e) => Err(Status::from(e)),
            },
        ));
        Ok(Response::new(Box::pin(stream)))
    }
}

use futures::StreamExt as _;

/// The responses of a live stream.
pub type LiveStream = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// What a new live stream's recording is committed as: de-identified like an upload's (the
/// subject only as a pseudonym), format `LIVE`, a channel per layout channel whose gain is its
/// resolution, and no samples until the first flush.
async fn live_recording(
    ingest: &Ingest,
    tenant_id: &gbrain_common::tenant::TenantId,
    stream_id: &str,
    metadata: Option<gbrain_proto::ingest::v1::RecordingMetadata>,
) -> Result<impl FnOnce(&str, &crate::live::Layout) -> gbrain_catalog::NewRecording + use<>, Error>
{
    use gbrain_catalog::{ChannelRow, NewRecording, RecordingRow, SegmentRow};
    use sha2::Digest;
    let meta = metadata.unwrap_or_default();
    let tenant = tenant_id.as_str();
    let key = ingest.tenant_key(tenant).await?;
    let policy = ingest.auth.policy(tenant_id).deid;
    let source_sha256 = hex::encode(sha2::Sha256::digest(format!("live-stream:{stream_id}")));
    let now = ingest.clock.now_ns();
    let start = chrono::DateTime::from_timestamp_nanos(now).naive_utc();
    let deid = crate::deid::deidentify_live(
        &key,
        &policy,
        &meta.dataset,
        &meta.subject,
        &source_sha256,
        start,
    );
    let tenant = tenant.to_string();
    Ok(move |recording_id: &str, layout: &crate::live::Layout| {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let rate = layout.sample_rate;
        let channels: Vec<ChannelRow> = layout
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| ChannelRow {
                channel_index: i as i64,
                label: c.label.clone(),
                channel_type: if c.kind.is_empty() {
                    "MISC".into()
                } else {
                    c.kind.to_ascii_uppercase()
                },
                unit: c.unit.clone(),
                transducer: String::new(),
                prefiltering: String::new(),
                reserved: String::new(),
                sample_rate: rate,
                samples_per_record: 1,
                physical_min: f64::from(i32::MIN) * c.resolution,
                physical_max: f64::from(i32::MAX) * c.resolution,
                physical_min_text: format!("{}", f64::from(i32::MIN) * c.resolution),
                physical_max_text: format!("{}", f64::from(i32::MAX) * c.resolution),
                digital_min: i64::from(i32::MIN),
                digital_max: i64::from(i32::MAX),
                gain: c.resolution,
                offset: 0.0,
                num_samples: 0,
                is_annotation: false,
            })
            .collect();
        NewRecording {
            row: RecordingRow {
                tenant,
                recording_id: recording_id.to_string(),
                source_sha256,
                subject_pseudonym: deid.subject_pseudonym.clone(),
                session: opt(&meta.session),
                task: opt(&meta.task),
                run: opt(&meta.run),
                acquisition: opt(&meta.acquisition),
                datatype: opt(&meta.datatype),
                format: "LIVE".into(),
                start_time_ns: deid.start.and_then(|s| s.and_utc().timestamp_nanos_opt()),
                duration_s: 0.0,
                record_duration_s: 1.0 / rate,
                record_duration_text: format!("{}", 1.0 / rate),
                num_records: 0,
                source_bytes: 0,
                stored_bytes: 0,
                sex: None,
                age_years: None,
                num_signals: channels.len() as i64,
                num_annotation_signals: 0,
                num_samples: 0,
                num_events: 0,
                patient_field: deid.patient_field.clone(),
                recording_field: deid.recording_field.clone(),
                warnings: Vec::new(),
                sidecar_json: None,
                ingested_ns: now,
            },
            channels,
            segments: vec![SegmentRow {
                segment_index: 0,
                first_record: 0,
                num_records: 0,
                onset_s: 0.0,
            }],
            files: Vec::new(),
            upload_id: None,
            write_id: String::new(),
        }
    })
}

/// One connection of a live stream: `open`, then chunks acknowledged in order, then `close`.
async fn live_stream(
    ingest: &Ingest,
    tenant_id: &gbrain_common::tenant::TenantId,
    inbound: &mut Streaming<StreamRequest>,
    tx: &tokio::sync::mpsc::Sender<Result<StreamResponse, Status>>,
) -> Result<(), Error> {
    let live = ingest
        .live
        .as_ref()
        .ok_or_else(|| Error::precondition("stream", "this node takes no live streams"))?;
    let send = |kind: stream_response::Kind| async move {
        tx.send(Ok(StreamResponse { kind: Some(kind) }))
            .await
            .map_err(|_| Error::Cancelled("the client went away".into()))
    };
    let open = match inbound.message().await.map_err(Error::Stream)? {
        Some(StreamRequest {
            kind: Some(stream_request::Kind::Open(open)),
        }) => open,
        Some(_) => return Err(Error::invalid("open", "the first message must be open")),
        None => return Ok(()),
    };
    let layout = open.layout.map(layout_from_proto);
    let tenant = tenant_id.as_str();
    let recording = live_recording(ingest, tenant_id, &open.stream_id, open.metadata).await?;
    let (session, position) = live
        .open_stream(tenant, &open.stream_id, layout, recording)
        .await?;
    tracing::info!(
        tenant, stream_id = %open.stream_id, last_seq = position.last_seq,
        "live stream opened"
    );
    send(stream_response::Kind::Opened(StreamOpened {
        recording_id: session.stream.recording_id.clone(),
        last_seq: position.last_seq,
        samples: position.samples,
    }))
    .await?;
    loop {
        let message = tokio::select! {
            m = inbound.message() => m.map_err(Error::Stream)?,
            () = ingest.draining.cancelled() => {
                return Err(Error::Unavailable(
                    "this ingest node is shutting down; open the stream again to resume after \
                     the last acknowledged chunk"
                        .into(),
                ));
            }
        };
        let Some(message) = message else { break };
        match message.kind {
            Some(stream_request::Kind::Chunk(chunk)) => {
                let samples = match chunk.data {
                    Some(stream_chunk::Data::Packed(p)) => crate::live::Samples::Physical(
                        p.values.into_iter().map(f64::from).collect(),
                    ),
                    Some(stream_chunk::Data::ArrowIpc(bytes)) => {
                        crate::live::Samples::from_arrow_ipc(&bytes, &session.stream.layout)?
                    }
                    None => return Err(Error::invalid("chunk.data", "is empty")),
                };
                let ack = live
                    .append_at(&session, chunk.seq, samples, chunk.source_time_ns)
                    .await?;
                send(stream_response::Kind::Ack(StreamAck {
                    seq: ack.seq,
                    samples: ack.samples,
                }))
                .await?;
            }
            Some(stream_request::Kind::Close(_)) => {
                let position = live.close(&session).await?;
                return send(stream_response::Kind::Closed(StreamClosed {
                    recording_id: session.stream.recording_id.clone(),
                    samples: position.samples,
                }))
                .await;
            }
            Some(stream_request::Kind::Open(_)) => {
                return Err(Error::invalid("open", "sent twice on one connection"));
            }
            None => return Err(Error::invalid("kind", "is empty")),
        }
    }
    Ok(())
}
