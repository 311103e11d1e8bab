//! Events: from EDF annotations, BioSemi triggers, BIDS events tables and API calls, to rows
//! of the events table.

use std::collections::BTreeMap;

use gbrain_catalog::{AppendOutcome, DataFileRow, FileKind, PendingWrite};
use gbrain_common::tenant::TenantId;
use gbrain_formats::bids::{BidsEvent, parse_events_tsv};
use gbrain_formats::edf::{Header, TimelineSummary, Trigger};
use gbrain_proto::ingest::v1::{AppendEventsRequest, Event};
use gbrain_storage::events::{EventRow, write_events};
use gbrain_storage::layout;
use object_store::{ObjectStoreExt, PutPayload};

use crate::deid::Scrubber;
use crate::{Error, Ingest, Result};

/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1_000_000;

/// Annotation texts as events, scrubbed of the patient's name when a scrubber is given.
pub fn scrubbed_annotation_rows(
    timeline: &TimelineSummary,
    scrubber: Option<&Scrubber>,
) -> Vec<EventRow> {
    timeline
        .annotations
        .iter()
        .map(|a| EventRow {
            onset: Some(a.onset),
            duration: a.duration,
            event_type: match scrubber {
                Some(s) => s.scrub(&a.text),
                None => a.text.clone(),
            },
            value: None,
            source: "edf_annotation".into(),
            sample: None,
            response_time: None,
            extra: None,
        })
        .collect()
}

/// BioSemi triggers as events, timed on the Status channel.
pub fn trigger_rows(
    header: &Header,
    status: usize,
    triggers: &[Trigger],
    timeline: &TimelineSummary,
) -> Vec<EventRow> {
    let spr = header.signals[status].samples_per_record as u64;
    let rate = header.signals[status].sample_rate(header.record_duration);
    let time_of = |sample: u64| -> f64 {
        let record = sample / spr;
        let after = timeline
            .segments
            .partition_point(|s| s.first_record <= record);
        let seg = timeline
            .segments
            .get(after.saturating_sub(1))
            .or(timeline.segments.first());
        match seg {
            Some(s) => s.onset + (sample - s.first_record * spr) as f64 / rate,
            None => sample as f64 / rate,
        }
    };
    triggers
        .iter()
        .map(|t| EventRow {
            onset: Some(time_of(t.sample)),
            duration: t.length.map(|n| n as f64 / rate),
            event_type: "trigger".into(),
            value: Some(t.code.to_string()),
            source: "bdf_trigger".into(),
            sample: Some(t.sample as i64),
            response_time: None,
            extra: None,
        })
        .collect()
}

/// BIDS events as rows: `trial_type` becomes the type (`event` when absent), other columns go
/// to `extra` as a JSON object.
pub fn bids_to_rows(events: &[BidsEvent], source: &str) -> Vec<EventRow> {
    events
        .iter()
        .map(|e| EventRow {
            onset: e.onset,
            duration: e.duration,
            event_type: e.trial_type.clone().unwrap_or_else(|| "event".into()),
            value: e.value.clone(),
            source: source.to_string(),
            sample: e.sample,
            response_time: e.response_time,
            extra: (!e.extra.is_empty()).then(|| {
                let map: serde_json::Map<String, serde_json::Value> = e
                    .extra
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.clone()
                                .map(serde_json::Value::String)
                                .unwrap_or(serde_json::Value::Null),
                        )
                    })
                    .collect();
                serde_json::Value::Object(map).to_string()
            }),
        })
        .collect()
}

/// Checks API events and turns them into rows.
pub fn api_to_rows(events: &[Event], source: &str) -> Result<Vec<EventRow>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |f: &str| format!("events[{i}].{f}");
            if let Some(o) = e.onset
                && !o.is_finite()
            {
                return Err(Error::invalid(
                    field("onset"),
                    "must be a finite number of seconds",
                ));
            }
            if let Some(d) = e.duration
                && (!d.is_finite() || d < 0.0)
            {
                return Err(Error::invalid(
                    field("duration"),
                    "must be a finite, non-negative number of seconds",
                ));
            }
            if let Some(r) = e.response_time
                && !r.is_finite()
            {
                return Err(Error::invalid(field("response_time"), "must be finite"));
            }
            if e.r#type.is_empty() {
                return Err(Error::invalid(field("type"), "is required"));
            }
            let extra: BTreeMap<&String, &String> = e.extra.iter().collect();
            Ok(EventRow {
                onset: e.onset,
                duration: e.duration,
                event_type: e.r#type.clone(),
                value: (!e.value.is_empty()).then(|| e.value.clone()),
                source: source.to_string(),
                sample: e.sample,
                response_time: e.response_time,
                extra: (!extra.is_empty())
                    .then(|| serde_json::to_string(&extra).unwrap_or_else(|_| "{}".into())),
            })
        })
        .collect()
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub appended: u64,
    pub total_events: u64,
    pub deduplicated: bool,
}

impl Ingest {
    /// Attaches events to a recording of `tenant`, atomically.
    pub async fn append_events(
        &self,
        tenant: &TenantId,
        req: AppendEventsRequest,
    ) -> Result<Appended> {
        let t = tenant.as_str();
        if req.recording_id.is_empty() {
            return Err(Error::invalid("recording_id", "is required"));
        }
        let source = if req.source.is_empty() {
            "api".to_string()
        } else if req.source.len() > 64 {
            return Err(Error::invalid("source", "is longer than 64 characters"));
        } else {
            req.source.clone()
        };
        let rows = match (&req.events_tsv, req.events.is_empty()) {
            (Some(tsv), true) => {
                let name = if tsv.name.is_empty() {
                    "events_tsv".to_string()
                } else {
                    tsv.name.clone()
                };
                let events = parse_events_tsv(&tsv.content, &name)?;
                bids_to_rows(&events, &source)
            }
            (None, false) => api_to_rows(&req.events, &source)?,
            (Some(_), false) => {
                return Err(Error::invalid(
                    "events",
                    "send either events or events_tsv, not both",
                ));
            }
            (None, true) => return Err(Error::invalid("events", "no events to append")),
        };
        if rows.is_empty() {
            return Err(Error::invalid("events", "no events to append"));
        }
        if rows.len() > MAX_EVENTS_PER_APPEND {
            return Err(Error::too_large(
                "events",
                format!(
                    "{} events in one append; the limit is {MAX_EVENTS_PER_APPEND}",
                    rows.len()
                ),
            ));
        }
        if self
            .catalog
            .get_recording(t, &req.recording_id)
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!(
                "recording {} not found",
                req.recording_id
            )));
        }
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key.as_str());
        let part = uuid::Uuid::new_v4().to_string();
        let path = layout::events_part(t, &req.recording_id, &part);
        let write = PendingWrite {
            write_id: format!("events-{part}"),
            tenant: t.to_string(),
            prefixes: vec![path.to_string()],
            created_ns: self.clock.now_ns(),
        };
        self.catalog.begin_write(&write).await?;
        let bytes = write_events(&rows)?;
        let size = bytes.len() as i64;
        let file = DataFileRow {
            path: path.to_string(),
            kind: FileKind::Events,
            channel_index: None,
            first_row: 0,
            num_rows: rows.len() as i64,
            size_bytes: size,
        };
        let outcome = match self.store.put(&path, PutPayload::from(bytes)).await {
            Ok(_) => self
                .catalog
                .append_events(t, &req.recording_id, &file, key, &write.write_id)
                .await
                .map_err(Error::from),
            Err(e) => Err(Error::Storage(e.into())),
        };
        // Forget the write only once its object is gone; otherwise gc collects both.
        let undo = || async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    let _ = self.catalog.end_write(&write.write_id).await;
                }
                Err(e) => {
                    tracing::warn!(write_id = %write.write_id, error = %e, "events file not deleted; gc will");
                }
            }
        };
        match outcome {
            Ok(AppendOutcome::Appended { total_events }) => {
                self.metrics.events.inc_by(rows.len() as u64);
                Ok(Appended {
                    appended: rows.len() as u64,
                    total_events: total_events as u64,
                    deduplicated: false,
                })
            }
            Ok(AppendOutcome::Duplicate { total_events }) => {
                undo().await;
                Ok(Appended {
                    appended: 0,
                    total_events: total_events as u64,
                    deduplicated: true,
                })
            }
            Ok(AppendOutcome::UnknownRecording) => {
                undo().await;
                Err(Error::NotFound(format!(
                    "recording {} not found",
                    req.recording_id
                )))
            }
            Err(e) => {
                undo().await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_events_are_checked() {
        let ok = Event {
            onset: Some(1.0),
            duration: Some(0.5),
            r#type: "left".into(),
            value: "1".into(),
            sample: None,
            response_time: Some(0.3),
            extra: [("hand".to_string(), "L".to_string())]
                .into_iter()
                .collect(),
        };
        let rows = api_to_rows(std::slice::from_ref(&ok), "task").unwrap();
        assert_eq!(rows[0].extra.as_deref(), Some(r#"{"hand":"L"}"#));
        assert_eq!(rows[0].source, "task");
        for (bad, field) in [
            (
                Event {
                    onset: Some(f64::NAN),
                    ..ok.clone()
                },
                "events[0].onset",
            ),
            (
                Event {
                    duration: Some(-1.0),
                    ..ok.clone()
                },
                "events[0].duration",
            ),
            (
                Event {
                    r#type: String::new(),
                    ..ok.clone()
                },
                "events[0].type",
            ),
        ] {
            match api_to_rows(&[bad], "task") {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }
}
