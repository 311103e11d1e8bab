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
    Recording, RecordingCounts, Segment, StreamAck, StreamClosed, StreamOpened, StreamRequest,
    StreamResponse, UploadRequest, UploadResponse, export_recording_response, stream_chunk,
    stream_request, stream_response,
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
            if let Err(e) = live_stream(&ingest, &tenant, &mut inbound, &tx).await {
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

/// One connection of a live stream: `open`, then chunks acknowledged in order, then `close`.
async fn live_stream(
    ingest: &Ingest,
    tenant: &str,
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
    let layout = open.layout.map(|l| crate::live::Layout {
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
    });
    let (session, position) = live.open_stream(tenant, &open.stream_id, layout).await?;
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
    while let Some(message) = inbound.message().await.map_err(Error::Stream)? {
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
                let ack = live.append(&session, chunk.seq, samples).await?;
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
