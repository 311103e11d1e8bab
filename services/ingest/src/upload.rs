//! The upload stream: staging, resuming, hashing, and handing finished uploads to the
//! pipeline.
//!
//! Bytes are buffered up to [`crate::IngestConfig::part_bytes`] and staged as one object per
//! part. What `GetUpload` reports is what is staged: durable, so that a client resuming from
//! there loses nothing. The SHA-256 runs over the staged bytes as they are staged; a stream
//! that resumes in the same process continues the hash, and after a restart the staged parts
//! are hashed again once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use gbrain_catalog::UploadRow;
use gbrain_common::tenant::TenantId;
use gbrain_proto::ingest::v1::upload_request::Kind;
use gbrain_proto::ingest::v1::{
    GetUploadResponse, RecordingCounts, RecordingMetadata, SignalFormat, UploadRequest,
    UploadResponse,
};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::pipeline::{IngestOutcome, IngestRequest, Source, events_only_sha256, parse_sidecars};
use crate::{Error, Ingest, Result};

type SessionKey = (String, String);

enum SessionState {
    /// A stream is writing this upload now, or a part it started is still being written.
    Active,
    /// No stream is; the hash covers the first `staged` bytes.
    Idle { staged: u64, hasher: Sha256 },
}

/// Upload streams in progress, so that two streams never write one upload and a resumed
/// stream continues the hash.
#[derive(Default, Clone)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<SessionKey, SessionState>>>,
}

impl Sessions {
    fn acquire(&self, key: SessionKey) -> Result<Arc<SessionGuard>> {
        let mut map = self
            .inner
            .lock()
            .map_err(|_| Error::Internal("sessions lock".into()))?;
        let previous = match map.remove(&key) {
            Some(SessionState::Active) => {
                map.insert(key.clone(), SessionState::Active);
                return Err(Error::Conflict(
                    "upload_id: another stream is writing this upload now; retry when it ends"
                        .into(),
                ));
            }
            Some(SessionState::Idle { staged, hasher }) => Some((staged, hasher)),
            None => None,
        };
        map.insert(key.clone(), SessionState::Active);
        Ok(Arc::new(SessionGuard {
            sessions: self.clone(),
            key,
            previous: Mutex::new(previous),
            keep: Mutex::new(None),
        }))
    }

    /// Forgets an idle upload (its bytes were collected). An active one is left alone.
    pub fn forget(&self, tenant: &str, upload: &str) {
        if let Ok(mut map) = self.inner.lock() {
            let key = (tenant.to_string(), upload.to_string());
            if matches!(map.get(&key), Some(SessionState::Idle { .. })) {
                map.remove(&key);
            }
        }
    }

    pub(crate) fn is_active(&self, tenant: &str, upload: &str) -> bool {
        self.inner
            .lock()
            .map(|m| {
                matches!(
                    m.get(&(tenant.to_string(), upload.to_string())),
                    Some(SessionState::Active)
                )
            })
            .unwrap_or(false)
    }
}

/// Marks an upload active while a stream holds it and while any part it started is still
/// being written (every staging task holds a clone), so that a stream the client abandons
/// cannot race the stream that resumes it. On the last drop it records where the hash stands,
/// or forgets the upload.
struct SessionGuard {
    sessions: Sessions,
    key: SessionKey,
    previous: Mutex<Option<(u64, Sha256)>>,
    keep: Mutex<Option<(u64, Sha256)>>,
}

impl SessionGuard {
    fn take_previous(&self) -> Option<(u64, Sha256)> {
        self.previous.lock().ok().and_then(|mut p| p.take())
    }

    fn keep(&self, staged: u64, hasher: Sha256) {
        if let Ok(mut k) = self.keep.lock() {
            *k = Some((staged, hasher));
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let keep = self.keep.lock().ok().and_then(|mut k| k.take());
        if let Ok(mut map) = self.sessions.inner.lock() {
            match keep {
                Some((staged, hasher)) => {
                    map.insert(self.key.clone(), SessionState::Idle { staged, hasher });
                }
                None => {
                    map.remove(&self.key);
                }
            }
        }
    }
}

/// Stages an upload's parts: each part is written and hashed in the background while the
/// stream goes on receiving, at most one part at a time, so the hash stays in order.
///
/// `staged` and `hasher` change together, only when a part is known to be written, so they
/// always describe the same prefix of the file.
struct Stager {
    staging: gbrain_storage::staging::Staging,
    session: Arc<SessionGuard>,
    tenant: String,
    upload: String,
    /// Bytes durably staged (and hashed).
    staged: u64,
    hasher: Sha256,
    inflight: Option<tokio::task::JoinHandle<Result<(u64, Sha256)>>>,
}

impl Stager {
    fn new(
        staging: gbrain_storage::staging::Staging,
        session: Arc<SessionGuard>,
        tenant: &str,
        upload: &str,
        staged: u64,
        hasher: Sha256,
    ) -> Self {
        Self {
            staging,
            session,
            tenant: tenant.to_string(),
            upload: upload.to_string(),
            staged,
            hasher,
            inflight: None,
        }
    }

    /// Waits for the part being written, if any.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.inflight.take() {
            let (staged, hasher) = task
                .await
                .map_err(|e| Error::Internal(format!("staging task: {e}")))??;
            self.staged = staged;
            self.hasher = hasher;
        }
        Ok(())
    }

    /// Starts writing `data` as the next part once the previous one is written.
    async fn push(&mut self, data: Bytes) -> Result<()> {
        self.settle().await?;
        let staging = self.staging.clone();
        let (tenant, upload) = (self.tenant.clone(), self.upload.clone());
        let offset = self.staged;
        let mut hasher = self.hasher.clone();
        let session = Arc::clone(&self.session);
        self.inflight = Some(tokio::spawn(async move {
            // Held until the part is written, even if the stream is gone by then.
            let _session = session;
            let len = data.len() as u64;
            let to_hash = data.clone();
            let hashing = tokio::task::spawn_blocking(move || {
                hasher.update(&to_hash);
                hasher
            });
            let put = staging.put_part(&tenant, &upload, offset, data);
            let (hashed, put) = tokio::join!(hashing, put);
            let hasher = hashed.map_err(|e| Error::Internal(format!("hashing: {e}")))?;
            put?;
            Ok((offset + len, hasher))
        }));
        Ok(())
    }

    /// Stages what is buffered and waits until every part is durable.
    async fn flush(&mut self, buffer: &mut BytesMut) -> Result<()> {
        if !buffer.is_empty() {
            self.push(buffer.split().freeze()).await?;
        }
        self.settle().await
    }
}

/// Counts an upload stream as active while it runs and records its outcome when it ends,
/// also when the call is dropped because the client went away.
struct ActiveUpload<'a> {
    metrics: &'a crate::IngestMetrics,
    outcome: Option<&'static str>,
}

impl<'a> ActiveUpload<'a> {
    fn new(metrics: &'a crate::IngestMetrics) -> Self {
        metrics.uploads_active.inc();
        Self {
            metrics,
            outcome: None,
        }
    }
}

impl Drop for ActiveUpload<'_> {
    fn drop(&mut self) {
        self.metrics.uploads_active.dec();
        let outcome = self.outcome.unwrap_or("cancelled");
        self.metrics
            .uploads
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Upload ids are chosen by clients and become part of object paths.
fn check_upload_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "upload_id",
            "must be 1-64 characters of letters, digits, '-' and '_' (a UUID is ideal)",
        ))
    }
}

/// The response for an ingested recording.
pub fn response(o: &IngestOutcome) -> UploadResponse {
    let r = &o.recording;
    UploadResponse {
        recording_id: o.recording_id.clone(),
        deduplicated: o.deduplicated,
        counts: Some(RecordingCounts {
            signals: r.num_signals as u32,
            annotation_signals: r.num_annotation_signals as u32,
            records: r.num_records as u64,
            samples: r.num_samples as u64,
            events: r.num_events as u64,
            segments: o.num_segments,
        }),
        warnings: r.warnings.clone(),
        source_bytes: r.source_bytes as u64,
        stored_bytes: r.stored_bytes as u64,
    }
}

impl Ingest {
    /// Serves one upload stream for `tenant`.
    pub async fn upload<S>(&self, tenant: &TenantId, mut stream: S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        let mut active = ActiveUpload::new(&self.metrics);
        let result = self.upload_inner(tenant, &mut stream).await;
        active.outcome = Some(match &result {
            Ok(r) if r.deduplicated => "deduplicated",
            Ok(_) => "committed",
            Err(e) if e.is_client_error() => "rejected",
            Err(_) => "failed",
        });
        result
    }

    async fn upload_inner<S>(&self, tenant: &TenantId, stream: &mut S) -> Result<UploadResponse>
    where
        S: Stream<Item = Result<UploadRequest, tonic::Status>> + Unpin,
    {
        let t = tenant.as_str();
        let first = match stream.next().await {
            Some(Ok(m)) => m,
            Some(Err(s)) => return Err(Error::Stream(s)),
            None => {
                return Err(Error::invalid(
                    "start",
                    "the stream ended before its first message",
                ));
            }
        };
        let Some(Kind::Start(start)) = first.kind else {
            return Err(Error::invalid("start", "the first message must be start"));
        };
        check_upload_id(&start.upload_id)?;
        let id = start.upload_id.clone();
        let max = self.config.max_upload_bytes;
        if start.size_bytes > max {
            return Err(Error::too_large(
                "size_bytes",
                format!(
                    "{} bytes is more than this server's maximum upload of {max} bytes",
                    start.size_bytes
                ),
            ));
        }

        let row = match self.catalog.get_upload(t, &id).await? {
            Some(row) => {
                if let Some(recording) = &row.recording_id {
                    // Already done: the same answer again.
                    return Ok(response(&self.outcome(t, recording, true).await?));
                }
                if row.size_bytes as u64 != start.size_bytes {
                    return Err(Error::invalid(
                        "size_bytes",
                        format!(
                            "upload {id} was started with {} bytes, not {}",
                            row.size_bytes, start.size_bytes
                        ),
                    ));
                }
                row
            }
            None => {
                if start.offset != 0 {
                    return Err(Error::precondition(
                        "upload_id",
                        format!(
                            "unknown upload {id}: it never started here, or it expired; start it \
                             again at offset 0"
                        ),
                    ));
                }
                let metadata = start.metadata.clone().ok_or_else(|| {
                    Error::invalid("metadata", "is required when an upload starts")
                })?;
                let format = SignalFormat::try_from(metadata.format_hint)
                    .unwrap_or(SignalFormat::Unspecified);
                if format == SignalFormat::None && start.size_bytes != 0 {
                    return Err(Error::invalid(
                        "size_bytes",
                        "must be 0 with SIGNAL_FORMAT_NONE",
                    ));
                }
                if format != SignalFormat::None && start.size_bytes == 0 {
                    return Err(Error::invalid(
                        "size_bytes",
                        "is 0: an empty file holds no recording (use SIGNAL_FORMAT_NONE for events only)",
                    ));
                }
                // Fail fast on bad sidecars, before any byte is sent.
                parse_sidecars(&metadata)?;
                self.catalog
                    .create_upload(&UploadRow {
                        tenant: t.to_string(),
                        upload_id: id.clone(),
                        metadata: hex::encode(metadata.encode_to_vec()),
                        size_bytes: start.size_bytes as i64,
                        created_ns: self.clock.now_ns(),
                        recording_id: None,
                    })
                    .await?
            }
        };
        let metadata = hex::decode(&row.metadata)
            .ok()
            .and_then(|b| RecordingMetadata::decode(&b[..]).ok())
            .ok_or_else(|| Error::Internal(format!("upload {id} has unreadable metadata")))?;
        let size = row.size_bytes as u64;

        let session = self.sessions.acquire((t.to_string(), id.clone()))?;
        let staged = self.staging.received(t, &id).await?;
        if start.offset != staged {
            if let Some((at, h)) = session.take_previous() {
                session.keep(at, h);
            }
            return Err(Error::precondition(
                "offset",
                format!(
                    "the server holds {staged} bytes of upload {id}; resume at {staged}, not {}",
                    start.offset
                ),
            ));
        }
        let hasher = match session.take_previous() {
            Some((at, h)) if at == staged => h,
            _ => self.rehash(t, &id).await?,
        };
        self.catalog
            .touch_upload(t, &id, self.clock.now_ns())
            .await?;
        let mut stager = Stager::new(
            self.staging.clone(),
            Arc::clone(&session),
            t,
            &id,
            staged,
            hasher,
        );

        let mut buffer = BytesMut::new();
        let mut next = staged;
        // Set when the upload ended for good, so that there is nothing to resume.
        let mut forgotten = false;
        let result: Result<UploadResponse> = loop {
            let msg = match stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(status)) => {
                    // The stream broke (the client went away, or a message could not be
                    // decoded): keep what arrived, for the resume.
                    if let Err(e) = stager.flush(&mut buffer).await {
                        break Err(e);
                    }
                    tracing::info!(upload_id = %id, held = stager.staged, "upload stream broke");
                    break Err(Error::Stream(status));
                }
                None => {
                    if let Err(e) = stager.flush(&mut buffer).await {
                        break Err(e);
                    }
                    break Err(Error::precondition(
                        "finish",
                        format!(
                            "the stream ended before finish; {held} of {size} bytes are held, \
                             resume at {held}",
                            held = stager.staged
                        ),
                    ));
                }
            };
            match msg.kind {
                Some(Kind::Chunk(c)) => {
                    if c.offset != next {
                        if let Err(e) = stager.flush(&mut buffer).await {
                            break Err(e);
                        }
                        break Err(Error::precondition(
                            "chunk.offset",
                            format!(
                                "expected offset {next}, got {}; {} bytes are held",
                                c.offset, stager.staged
                            ),
                        ));
                    }
                    let len = c.data.len() as u64;
                    if next + len > size {
                        break Err(Error::invalid(
                            "chunk.data",
                            format!(
                                "bytes beyond the declared size of {size} (chunk ends at {})",
                                next + len
                            ),
                        ));
                    }
                    self.metrics.upload_bytes.inc_by(len);
                    next += len;
                    buffer.extend_from_slice(&c.data);
                    if buffer.len() >= self.config.part_bytes
                        && let Err(e) = stager.push(buffer.split().freeze()).await
                    {
                        break Err(e);
                    }
                }
                Some(Kind::Finish(f)) => {
                    if let Err(e) = stager.flush(&mut buffer).await {
                        break Err(e);
                    }
                    if stager.staged != size {
                        break Err(Error::invalid(
                            "finish",
                            format!(
                                "received {} of {size} bytes; send the rest first",
                                stager.staged
                            ),
                        ));
                    }
                    let digest = hex::encode(stager.hasher.clone().finalize());
                    if !f.sha256.is_empty() && !f.sha256.eq_ignore_ascii_case(&digest) {
                        self.forget_upload(t, &id).await;
                        // The bytes are wrong: nothing to resume.
                        return Err(Error::invalid(
                            "finish.sha256",
                            "does not match the bytes received; the upload was discarded, start \
                             it again",
                        ));
                    }
                    let finished = self.finish(tenant, &id, metadata, size, digest).await;
                    forgotten = matches!(&finished, Err(e) if e.is_client_error());
                    break finished;
                }
                Some(Kind::Start(_)) => {
                    break Err(Error::invalid("start", "sent twice in one stream"));
                }
                None => {
                    break Err(Error::invalid(
                        "kind",
                        "an upload message must be start, chunk or finish",
                    ));
                }
            }
        };
        // A part still being written finishes before the hash state is kept for a resume.
        let settled = stager.settle().await;
        if result.is_err() && !forgotten && settled.is_ok() {
            session.keep(stager.staged, stager.hasher.clone());
        }
        result
    }

    async fn finish(
        &self,
        tenant: &TenantId,
        id: &str,
        metadata: RecordingMetadata,
        size: u64,
        digest: String,
    ) -> Result<UploadResponse> {
        let t = tenant.as_str();
        let events_only = SignalFormat::try_from(metadata.format_hint) == Ok(SignalFormat::None);
        let (source, sha) = if events_only {
            (Source::None, events_only_sha256(&metadata))
        } else {
            let parts = self.staging.parts(t, id).await?;
            let held: u64 = parts.iter().map(|p| p.len).sum();
            if held != size {
                // The parts changed under us (a write of an abandoned stream landed late, or
                // garbage collection ran): the bytes are not lost for good, the stream is.
                return Err(Error::Conflict(format!(
                    "upload_id: the server holds {held} of {size} bytes of upload {id} in order; \
                     resume at {held}"
                )));
            }
            (Source::Staged(parts), digest)
        };
        let outcome = self
            .ingest(IngestRequest {
                tenant: tenant.clone(),
                metadata,
                source,
                source_bytes: size,
                source_sha256: Some(sha),
                upload_id: Some(id.to_string()),
            })
            .await;
        match outcome {
            Ok(o) => {
                if o.deduplicated {
                    self.catalog.finish_upload(t, id, &o.recording_id).await?;
                }
                if let Err(e) = self.staging.delete(t, id).await {
                    tracing::warn!(upload_id = %id, error = %e, "staged bytes not deleted; gc will");
                }
                Ok(response(&o))
            }
            Err(e) => {
                if e.is_client_error() {
                    // A malformed file stays malformed: drop it rather than keep it to resume.
                    self.forget_upload(t, id).await;
                }
                Err(e)
            }
        }
    }

    async fn forget_upload(&self, t: &str, id: &str) {
        if let Err(e) = self.staging.delete(t, id).await {
            tracing::warn!(upload_id = %id, error = %e, "staged bytes not deleted; gc will");
            return;
        }
        if let Err(e) = self.catalog.delete_upload(t, id).await {
            tracing::warn!(upload_id = %id, error = %e, "upload row not deleted; gc will");
        }
    }

    /// Hashes the staged parts of an upload again (after a restart).
    async fn rehash(&self, t: &str, id: &str) -> Result<Sha256> {
        let parts = self.staging.parts(t, id).await?;
        let mut rx = self.staging.stream(parts, 2);
        let mut hasher = Sha256::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                hasher
            })
            .await
            .map_err(|e| Error::Internal(format!("hashing: {e}")))?;
        }
        Ok(hasher)
    }

    /// How much of an upload is held.
    pub async fn get_upload(&self, tenant: &TenantId, id: &str) -> Result<GetUploadResponse> {
        check_upload_id(id)?;
        let t = tenant.as_str();
        let row = self
            .catalog
            .get_upload(t, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("upload {id} not found")))?;
        let received = match &row.recording_id {
            Some(_) => row.size_bytes as u64,
            None => self.staging.received(t, id).await?,
        };
        Ok(GetUploadResponse {
            upload_id: id.to_string(),
            received_bytes: received,
            size_bytes: row.size_bytes as u64,
            recording_id: row.recording_id.unwrap_or_default(),
        })
    }
}
