//! Resumable, idempotent uploads.
//!
//! The client picks the upload id, so it knows it before anything can fail. After a dropped
//! connection it asks the server how many bytes it holds (GetUpload) and continues from
//! there; the SHA-256 sent at the end covers the whole file, so the server can check that the
//! resumed pieces fit together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_proto::ingest::v1::upload_request::Kind;
use gbrain_proto::ingest::v1::{
    GetUploadRequest, RecordingMetadata, SignalFormat, UploadChunk, UploadFinish, UploadRequest,
    UploadResponse, UploadStart,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::Code;

use crate::client::{self, Ingest};
use crate::output;

/// Bytes per chunk message.
pub const CHUNK_BYTES: usize = 2 << 20;
/// Attempts before an upload gives up.
pub const ATTEMPTS: u32 = 6;

/// Labels for a plain upload.
#[derive(Debug, Default, Clone)]
pub struct Labels {
    pub subject: Option<String>,
    pub session: Option<String>,
    pub task: Option<String>,
    pub run: Option<String>,
    pub dataset: Option<String>,
}

/// An upload that failed: the server's answer, or a local problem.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{}", client::status(.0))]
    Rejected(tonic::Status),
    #[error("{0}")]
    Local(String),
}

impl UploadError {
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rejected(s) => Some(s.code()),
            Self::Local(_) => None,
        }
    }
}

fn retriable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// Uploads a file, resuming after transient failures.
pub async fn upload_file(
    client: &mut Ingest,
    path: &Path,
    metadata: RecordingMetadata,
    bar: &indicatif::ProgressBar,
) -> Result<UploadResponse, UploadError> {
    let upload_id = uuid::Uuid::new_v4().to_string();
    upload_file_as(client, path, metadata, &upload_id, 0, bar).await
}

/// Uploads a file under a given upload id, starting at `offset` (0 for a new upload; what
/// GetUpload reports to resume one).
pub async fn upload_file_as(
    client: &mut Ingest,
    path: &Path,
    metadata: RecordingMetadata,
    upload_id: &str,
    offset: u64,
    bar: &indicatif::ProgressBar,
) -> Result<UploadResponse, UploadError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| UploadError::Local(format!("{}: {e}", path.display())))?
        .len();
    bar.set_length(size);
    let mut offset = offset;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stream = stream_file(
            path.to_path_buf(),
            upload_id.to_string(),
            metadata.clone(),
            offset,
            size,
            bar.clone(),
        );
        match client.upload(stream).await {
            Ok(r) => {
                bar.finish_and_clear();
                return Ok(r.into_inner());
            }
            Err(s) if retriable(s.code()) && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                offset = match client
                    .get_upload(GetUploadRequest {
                        upload_id: upload_id.to_string(),
                    })
                    .await
                {
                    Ok(r) => r.into_inner().received_bytes,
                    Err(g) if g.code() == Code::NotFound => 0,
                    Err(g) if retriable(g.code()) => offset,
                    Err(g) => return Err(UploadError::Rejected(g)),
                };
                bar.set_position(offset);
            }
            Err(s) => {
                bar.abandon();
                return Err(UploadError::Rejected(s));
            }
        }
    }
}

/// The messages of one upload stream: start, the file from `offset` in chunks, finish with
/// the whole file's SHA-256.
fn stream_file(
    path: PathBuf,
    upload_id: String,
    metadata: RecordingMetadata,
    offset: u64,
    size: u64,
    bar: indicatif::ProgressBar,
) -> tokio_stream::wrappers::ReceiverStream<UploadRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let start = UploadRequest {
            kind: Some(Kind::Start(UploadStart {
                upload_id,
                metadata: Some(metadata),
                offset,
                size_bytes: size,
            })),
        };
        if tx.send(start).await.is_err() {
            return;
        }
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        // The hash covers the bytes the server already holds, too.
        let mut pos = 0u64;
        while pos < offset {
            let want = ((offset - pos) as usize).min(buf.len());
            if file.read_exact(&mut buf[..want]).await.is_err() {
                return;
            }
            hasher.update(&buf[..want]);
            pos += want as u64;
        }
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => return,
            };
            hasher.update(&buf[..n]);
            let chunk = UploadRequest {
                kind: Some(Kind::Chunk(UploadChunk {
                    offset: pos,
                    data: bytes::Bytes::copy_from_slice(&buf[..n]),
                })),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
            pos += n as u64;
            bar.set_position(pos);
        }
        let finish = UploadRequest {
            kind: Some(Kind::Finish(UploadFinish {
                sha256: hex::encode(hasher.finalize()),
            })),
        };
        let _ = tx.send(finish).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `gbrain upload`.
pub async fn command(
    files: Vec<PathBuf>,
    labels: Labels,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let mut client = client::ingest(&args).await?;
    let mut failed = 0;
    let mut results = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let format = match file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("bdf") => SignalFormat::Bdf,
            Some("edf") => SignalFormat::Edf,
            _ => SignalFormat::Unspecified,
        };
        let metadata = RecordingMetadata {
            subject: labels.subject.clone().unwrap_or_default(),
            session: labels.session.clone().unwrap_or_default(),
            task: labels.task.clone().unwrap_or_default(),
            run: labels.run.clone().unwrap_or_default(),
            dataset: labels.dataset.clone().unwrap_or_default(),
            format_hint: format as i32,
            ..Default::default()
        };
        let bar = output::progress(0, args.json, &name);
        match upload_file(&mut client, file, metadata, &bar).await {
            Ok(r) => {
                if args.json {
                    results.push(output::upload_json(&name, &r));
                } else {
                    println!("{}", output::upload_line(&name, &r));
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    results.push(serde_json::json!({"file": name, "error": e.to_string()}));
                } else {
                    eprintln!("{name}: rejected: {e}");
                }
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).context("encoding output")?
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Creates a recording that has no signal file: its events travel as a sidecar.
pub async fn upload_events_only(
    client: &mut Ingest,
    mut metadata: RecordingMetadata,
) -> Result<UploadResponse, UploadError> {
    metadata.format_hint = SignalFormat::None as i32;
    let upload_id = uuid::Uuid::new_v4().to_string();
    let messages = vec![
        UploadRequest {
            kind: Some(Kind::Start(UploadStart {
                upload_id,
                metadata: Some(metadata),
                offset: 0,
                size_bytes: 0,
            })),
        },
        UploadRequest {
            kind: Some(Kind::Finish(UploadFinish::default())),
        },
    ];
    client
        .upload(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
        .map_err(UploadError::Rejected)
}
