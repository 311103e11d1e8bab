//! `gbrain recordings` and `gbrain events`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gbrain_cli::{client, output};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_proto::ingest::v1::{
    AppendEventsRequest, GetRecordingRequest, ListRecordingsRequest, Sidecar, SidecarKind,
};

pub async fn list(limit: u32, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::ingest(&args).await?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_recordings(ListRecordingsRequest {
                limit: limit.min(1000),
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!(client::status(&s)))?
            .into_inner();
        all.extend(page.recordings);
        if page.next_page_token.is_empty() || all.len() >= limit as usize {
            break;
        }
        page_token = page.next_page_token;
    }
    all.truncate(limit as usize);
    if args.json {
        let rows: Vec<_> = all.iter().map(output::recording_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<36}  {:<6}  {:<20}  {:>8}  {:>11}  {:>7}  start",
            "recording", "format", "subject", "signals", "samples", "events"
        );
        for r in &all {
            let c = r.counts.unwrap_or_default();
            println!(
                "{:<36}  {:<6}  {:<20}  {:>8}  {:>11}  {:>7}  {}",
                r.recording_id,
                r.format,
                r.subject_pseudonym,
                c.signals,
                c.samples,
                c.events,
                r.start_time
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(recording_id: String, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::ingest(&args).await?;
    let r = client
        .get_recording(GetRecordingRequest { recording_id })
        .await
        .map_err(|s| anyhow::anyhow!(client::status(&s)))?
        .into_inner();
    let json = output::recording_json(&r);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("recording {}", r.recording_id);
        println!(
            "  subject   {} (sex {}, age {})",
            r.subject_pseudonym,
            if r.sex.is_empty() { "-" } else { &r.sex },
            r.age_years
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into())
        );
        println!(
            "  format    {}, start {}, {:.3} s",
            r.format, r.start_time, r.duration_s
        );
        for s in &r.segments {
            println!(
                "  segment   records {}..{} at {:.7} s",
                s.first_record,
                s.first_record + s.records,
                s.onset
            );
        }
        for c in &r.channels {
            println!(
                "  [{:>3}] {:<16} {:<10} {:>9.3} Hz  {:<6} {} samples",
                c.index, c.label, c.r#type, c.sample_rate, c.unit, c.samples
            );
        }
        for w in &r.warnings {
            println!("  warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn append_events(
    recording_id: String,
    file: PathBuf,
    source: String,
    idempotency_key: Option<String>,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let content = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut client = client::ingest(&args).await?;
    let r = client
        .append_events(AppendEventsRequest {
            recording_id: recording_id.clone(),
            events: Vec::new(),
            source,
            idempotency_key: idempotency_key.unwrap_or_default(),
            events_tsv: Some(Sidecar {
                kind: SidecarKind::BidsEventsTsv as i32,
                name: file.display().to_string(),
                content,
            }),
        })
        .await
        .map_err(|s| anyhow::anyhow!(client::status(&s)))?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"recording_id": recording_id, "appended": r.appended, "total_events": r.total_events, "deduplicated": r.deduplicated})
        );
    } else {
        println!(
            "{recording_id}: appended {} events ({} in all){}",
            r.appended,
            r.total_events,
            if r.deduplicated {
                "; this key was used before, nothing new"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
