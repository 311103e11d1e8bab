//! Output for people and for machines (`--json`).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;

use gbrain_proto::ingest::v1::{Recording, UploadResponse};
use serde_json::{Value, json};

pub fn upload_json(file: &str, r: &UploadResponse) -> Value {
    let c = r.counts.unwrap_or_default();
    json!({
        "file": file,
        "recording_id": r.recording_id,
        "deduplicated": r.deduplicated,
        "signals": c.signals,
        "annotation_signals": c.annotation_signals,
        "records": c.records,
        "samples": c.samples,
        "events": c.events,
        "segments": c.segments,
        "source_bytes": r.source_bytes,
        "stored_bytes": r.stored_bytes,
        "warnings": r.warnings,
    })
}

pub fn upload_line(file: &str, r: &UploadResponse) -> String {
    let c = r.counts.unwrap_or_default();
    let ratio = if r.source_bytes > 0 {
        r.stored_bytes as f64 / r.source_bytes as f64
    } else {
        0.0
    };
    let mut line = format!(
        "{file}: recording {}{} ({} signals, {} samples, {} events, {} segment(s); stored {} of {} bytes, {:.2})",
        r.recording_id,
        if r.deduplicated {
            " (already uploaded)"
        } else {
            ""
        },
        c.signals,
        c.samples,
        c.events,
        c.segments,
        r.stored_bytes,
        r.source_bytes,
        ratio
    );
    for w in &r.warnings {
        line.push_str(&format!("\n  warning: {w}"));
    }
    line
}

pub fn recording_json(r: &Recording) -> Value {
    let c = r.counts.unwrap_or_default();
    json!({
        "recording_id": r.recording_id,
        "subject_pseudonym": r.subject_pseudonym,
        "session": r.session,
        "task": r.task,
        "run": r.run,
        "datatype": r.datatype,
        "format": r.format,
        "start_time": r.start_time,
        "duration_s": r.duration_s,
        "sex": r.sex,
        "age_years": r.age_years,
        "signals": c.signals,
        "samples": c.samples,
        "events": c.events,
        "segments": r.segments.iter().map(|s| json!({"first_record": s.first_record, "records": s.records, "onset": s.onset})).collect::<Vec<_>>(),
        "channels": r.channels.iter().map(|ch| json!({
            "index": ch.index, "label": ch.label, "type": ch.r#type, "unit": ch.unit,
            "sample_rate": ch.sample_rate, "samples": ch.samples,
            "physical_min": ch.physical_min, "physical_max": ch.physical_max,
            "digital_min": ch.digital_min, "digital_max": ch.digital_max,
            "prefiltering": ch.prefiltering,
        })).collect::<Vec<_>>(),
        "source_sha256": r.source_sha256,
        "source_bytes": r.source_bytes,
        "stored_bytes": r.stored_bytes,
        "ingested_at": r.ingested_at,
        "warnings": r.warnings,
    })
}

/// A progress bar on a terminal, nothing otherwise.
pub fn progress(len: u64, json: bool, label: &str) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// Writes a file only its owner may read (mode 0600): tokens, credentials.
#[cfg(unix)]
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{contents}")?;
    Ok(())
}

#[cfg(not(unix))]
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{contents}\n"))?;
    Ok(())
}
