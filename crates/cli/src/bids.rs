//! `gbrain import-bids`: every run of a BIDS dataset becomes a recording.
//!
//! EDF and BDF signal files of `eeg` and `ieeg` runs are uploaded with their events table,
//! channels table and merged `*_eeg.json`/`*_ieeg.json` sidecar; the server checks them all and
//! commits each run atomically. A run whose signal file is empty or in a format Global Brain
//! does not read still gets its events imported, as an events-only recording, and the signal
//! file gets an error of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_formats::bids::{BidsRun, Datatype, scan_dataset};
use gbrain_proto::ingest::v1::{
    PutParticipantsRequest, RecordingMetadata, Sidecar, SidecarKind, SignalFormat,
};
use serde::Serialize;

use crate::client::{self, Ingest};
use crate::output;
use crate::upload::{upload_events_only, upload_file};

/// What happened to one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunReport {
    /// The run's files, relative to the dataset root, without suffix.
    pub run: String,
    pub datatype: String,
    pub recording_id: Option<String>,
    pub events_only: bool,
    pub deduplicated: bool,
    pub samples: u64,
    pub events: u64,
    /// The signal file, relative to the root.
    pub signal_file: Option<String>,
    /// Why the signal file was not imported.
    pub signal_error: Option<String>,
    /// Why nothing of the run was imported.
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// What happened to the dataset.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImportReport {
    pub dataset: String,
    pub participants: Option<u64>,
    pub participants_error: Option<String>,
    pub runs: Vec<RunReport>,
}

impl ImportReport {
    pub fn failures(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.error.is_some() || r.signal_error.is_some())
            .count()
            + usize::from(self.participants_error.is_some())
    }
}

fn sidecar(kind: SidecarKind, path: &Path, root: &Path) -> anyhow::Result<Sidecar> {
    Ok(Sidecar {
        kind: kind as i32,
        name: relative(path, root),
        content: std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    })
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Merges the JSON sidecars that apply to a run, root first, so that nearer files win.
fn merged_json(paths: &[PathBuf]) -> anyhow::Result<Option<Vec<u8>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut merged = serde_json::Map::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(m)) => merged.extend(m),
            // Let the server name the problem.
            _ => return Ok(Some(bytes)),
        }
    }
    Ok(Some(serde_json::to_vec(&serde_json::Value::Object(
        merged,
    ))?))
}

fn file_extension(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.rsplit_once('_')
        .map(|(_, s)| s)
        .unwrap_or(&name)
        .split_once('.')
        .map(|(_, e)| e.to_string())
        .unwrap_or_default()
}

async fn import_run(
    client: &mut Ingest,
    root: &Path,
    dataset: &str,
    run: &BidsRun,
    json: bool,
) -> RunReport {
    let dir = run
        .signal
        .as_ref()
        .or(run.events.as_ref())
        .and_then(|p| p.parent())
        .map(|d| relative(d, root))
        .unwrap_or_default();
    let mut report = RunReport {
        run: format!("{dir}/{}", run.stem),
        datatype: run.datatype.as_str().to_string(),
        recording_id: None,
        events_only: false,
        deduplicated: false,
        samples: 0,
        events: 0,
        signal_file: run.signal.as_ref().map(|p| relative(p, root)),
        signal_error: None,
        error: None,
        warnings: Vec::new(),
    };
    let entity = |k: &str| run.entity(k).unwrap_or_default().to_string();
    let mut metadata = RecordingMetadata {
        subject: run
            .entity("sub")
            .map(|s| format!("sub-{s}"))
            .unwrap_or_default(),
        session: entity("ses"),
        task: entity("task"),
        run: entity("run"),
        acquisition: entity("acq"),
        datatype: run.datatype.as_str().to_string(),
        dataset: dataset.to_string(),
        ..Default::default()
    };
    let events = match &run.events {
        Some(p) => match sidecar(SidecarKind::BidsEventsTsv, p, root) {
            Ok(s) => Some(s),
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                return report;
            }
        },
        None => None,
    };

    let mut import_signal = None;
    if let Some(signal) = &run.signal {
        let size = std::fs::metadata(signal).map(|m| m.len()).unwrap_or(0);
        let ext = file_extension(signal);
        let supported = matches!(ext.as_str(), "edf" | "bdf")
            && matches!(run.datatype, Datatype::Eeg | Datatype::Ieeg);
        if size == 0 {
            report.signal_error = Some("empty file (0 bytes): there is no signal to import".into());
        } else if !supported {
            report.signal_error = Some(format!(
                "unsupported signal format .{ext} for {} data: Global Brain reads EDF and BDF EEG/iEEG",
                run.datatype.as_str()
            ));
        } else {
            import_signal = Some((signal.clone(), ext));
        }
    }

    let outcome = if let Some((signal, ext)) = import_signal {
        metadata.format_hint = if ext == "bdf" {
            SignalFormat::Bdf
        } else {
            SignalFormat::Edf
        } as i32;
        let mut sidecars: Vec<Sidecar> = events.into_iter().collect();
        if let Some(ch) = &run.channels {
            match sidecar(SidecarKind::BidsChannelsTsv, ch, root) {
                Ok(s) => sidecars.push(s),
                Err(e) => {
                    report.error = Some(format!("{e:#}"));
                    return report;
                }
            }
        }
        match merged_json(&run.sidecars) {
            Ok(Some(content)) => sidecars.push(Sidecar {
                kind: if run.datatype == Datatype::Ieeg {
                    SidecarKind::BidsIeegJson
                } else {
                    SidecarKind::BidsEegJson
                } as i32,
                name: run
                    .sidecars
                    .last()
                    .map(|p| relative(p, root))
                    .unwrap_or_default(),
                content,
            }),
            Ok(None) => {}
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                return report;
            }
        }
        metadata.sidecars = sidecars;
        let bar = output::progress(0, json, &relative(&signal, root));
        upload_file(client, &signal, metadata, &bar).await
    } else if let Some(ev) = events {
        metadata.sidecars = vec![ev];
        report.events_only = true;
        upload_events_only(client, metadata).await
    } else {
        // A signal that cannot be imported and no events: only the signal error remains.
        return report;
    };
    match outcome {
        Ok(r) => {
            let c = r.counts.unwrap_or_default();
            report.recording_id = Some(r.recording_id);
            report.deduplicated = r.deduplicated;
            report.samples = c.samples;
            report.events = c.events;
            report.warnings = r.warnings;
        }
        Err(e) => {
            if report.events_only || report.signal_file.is_none() {
                report.error = Some(e.to_string());
            } else {
                report.signal_error = Some(e.to_string());
            }
        }
    }
    report
}

/// Imports a dataset.
pub async fn import(
    client: &mut Ingest,
    root: &Path,
    dataset_name: Option<String>,
    json: bool,
) -> anyhow::Result<ImportReport> {
    let ds = scan_dataset(root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dataset = dataset_name.unwrap_or(ds.name.clone());
    let mut report = ImportReport {
        dataset: dataset.clone(),
        participants: None,
        participants_error: None,
        runs: Vec::new(),
    };
    if let Some(p) = &ds.participants {
        let tsv = sidecar(SidecarKind::Unspecified, p, root)?;
        match client
            .put_participants(PutParticipantsRequest {
                dataset: dataset.clone(),
                participants_tsv: Some(tsv),
            })
            .await
        {
            Ok(r) => report.participants = Some(r.into_inner().stored),
            Err(s) => report.participants_error = Some(client::status(&s)),
        }
    }
    for run in &ds.runs {
        let r = import_run(client, root, &dataset, run, json).await;
        if !json {
            print_run(&r);
        }
        report.runs.push(r);
    }
    Ok(report)
}

fn print_run(r: &RunReport) {
    match (&r.recording_id, &r.error) {
        (Some(id), _) => println!(
            "{}: {} {id} ({} samples, {} events){}",
            r.run,
            if r.events_only {
                "events-only recording"
            } else {
                "recording"
            },
            r.samples,
            r.events,
            if r.deduplicated {
                ", already imported"
            } else {
                ""
            }
        ),
        (None, Some(e)) => println!("{}: not imported: {e}", r.run),
        (None, None) => println!("{}: nothing imported", r.run),
    }
    if let (Some(f), Some(e)) = (&r.signal_file, &r.signal_error) {
        println!("  {f}: {e}");
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
}

/// `gbrain import-bids`.
pub async fn command(
    dir: PathBuf,
    dataset: Option<String>,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let mut client = client::ingest(&args).await?;
    let report = import(&mut client, &dir, dataset, args.json).await?;
    let imported = report
        .runs
        .iter()
        .filter(|r| r.recording_id.is_some())
        .count();
    let events: u64 = report.runs.iter().map(|r| r.events).sum();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(n) = report.participants {
            println!("participants.tsv: {n} participants");
        }
        if let Some(e) = &report.participants_error {
            println!("participants.tsv: not imported: {e}");
        }
        println!(
            "{}: {imported} of {} runs imported ({} with signals), {events} events; {} file(s) failed",
            report.dataset,
            report.runs.len(),
            report
                .runs
                .iter()
                .filter(|r| r.recording_id.is_some() && !r.events_only)
                .count(),
            report.failures()
        );
    }
    // 2: some files failed but others were imported; 1: nothing was.
    Ok(match (report.failures(), imported) {
        (0, _) => ExitCode::SUCCESS,
        (_, 0) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    })
}
