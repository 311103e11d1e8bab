//! `gbrain export`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use gbrain_cli::{client, output};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_proto::ingest::v1::{ExportFormat, ExportRecordingRequest, export_recording_response};
use tokio::io::AsyncWriteExt;

pub async fn command(
    recording_id: String,
    out: PathBuf,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let format = match out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("edf") => ExportFormat::EdfPlus,
        Some("bdf") => ExportFormat::BdfPlus,
        _ => bail!("--out must end in .edf (EDF+) or .bdf (BDF+)"),
    };
    let mut client = client::ingest(&args).await?;
    let mut stream = client
        .export_recording(ExportRecordingRequest {
            recording_id: recording_id.clone(),
            format: format as i32,
        })
        .await
        .map_err(|s| anyhow::anyhow!(client::status(&s)))?
        .into_inner();
    // Write next to the target and rename at the end, so a failed export leaves no half file.
    let partial = out.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut info = None;
    let mut written = 0u64;
    let mut bar = indicatif::ProgressBar::hidden();
    let result: anyhow::Result<()> = async {
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!(client::status(&s)))?
        {
            match msg.kind {
                Some(export_recording_response::Kind::Info(i)) => {
                    bar = output::progress(i.size_bytes, args.json, &out.display().to_string());
                    info = Some(i);
                }
                Some(export_recording_response::Kind::Data(d)) => {
                    file.write_all(&d).await?;
                    written += d.len() as u64;
                    bar.set_position(written);
                }
                None => {}
            }
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    let info = info.context("the server sent no export info")?;
    if info.size_bytes != written {
        let _ = tokio::fs::remove_file(&partial).await;
        bail!("export ended after {written} of {} bytes", info.size_bytes);
    }
    tokio::fs::rename(&partial, &out).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"recording_id": recording_id, "file": out.display().to_string(), "format": info.format, "bytes": written})
        );
    } else {
        println!(
            "{}: {} {} bytes from recording {recording_id}",
            out.display(),
            info.format,
            written
        );
    }
    Ok(ExitCode::SUCCESS)
}
