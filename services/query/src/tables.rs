//! The tables a tenant queries. Each is built for one query from that tenant's view, so rows of
//! other tenants are never in reach: isolation lives here, below SQL.

mod filters;
mod rows;
mod samples;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::Result;

pub use rows::RowsTable;
pub use samples::{STORE_URL, SamplesExec, SamplesTable, is_samples_exec};

use crate::context::Loaded;
use crate::view::{QueryView, RowTable};

/// Names of the tables, for listings and the guard.
pub const TABLES: &[&str] = &[
    "recordings",
    "channels",
    "segments",
    "samples",
    "events",
    "participants",
    "predictions",
    "outcomes",
    "model_decisions",
];

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The provider of `name` over a loaded view, if there is such a table.
pub fn table(
    name: &str,
    loaded: &Loaded,
    store: &Arc<dyn object_store::ObjectStore>,
) -> Result<Option<Arc<dyn TableProvider>>> {
    let view = &loaded.view;
    let participants = &loaded.participants;
    let rows = |t: RowTable| -> Arc<dyn TableProvider> {
        Arc::new(RowsTable::new(t, Arc::clone(view), Arc::clone(store)))
    };
    Ok(Some(match name {
        "recordings" => mem(recordings(view)?)?,
        "channels" => mem(channels(view)?)?,
        "segments" => mem(segments(view)?)?,
        "participants" => mem(participants_batch(participants)?)?,
        "samples" => Arc::new(SamplesTable::new(Arc::clone(view))),
        "events" => rows(RowTable::Events),
        "predictions" => rows(RowTable::Predictions),
        "outcomes" => rows(RowTable::Outcomes),
        "model_decisions" => mem(decisions_batch(&loaded.decisions)?)?,
        _ => return Ok(None),
    }))
}

fn mem(batch: RecordBatch) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(
        batch.schema(),
        vec![vec![batch]],
    )?))
}

fn recordings(view: &QueryView) -> Result<RecordBatch> {
    let r = &view.view.recordings;
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("subject_pseudonym", DataType::Utf8, false),
        Field::new("session", DataType::Utf8, true),
        Field::new("task", DataType::Utf8, true),
        Field::new("run", DataType::Utf8, true),
        Field::new("acquisition", DataType::Utf8, true),
        Field::new("datatype", DataType::Utf8, true),
        Field::new("format", DataType::Utf8, false),
        Field::new("start_time", timestamp_type(), true),
        Field::new("duration_s", DataType::Float64, false),
        Field::new("record_duration_s", DataType::Float64, false),
        Field::new("num_records", DataType::Int64, false),
        Field::new("num_signals", DataType::Int64, false),
        Field::new("sex", DataType::Utf8, true),
        Field::new("age_years", DataType::Int64, true),
        Field::new("source_sha256", DataType::Utf8, false),
        Field::new("source_bytes", DataType::Int64, false),
        Field::new("ingested_at", timestamp_type(), false),
    ]));
    let s = |f: fn(&gbrain_catalog::RecordingRow) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(r.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        s(|x| Some(x.recording_id.as_str())),
        s(|x| Some(x.subject_pseudonym.as_str())),
        s(|x| x.session.as_deref()),
        s(|x| x.task.as_deref()),
        s(|x| x.run.as_deref()),
        s(|x| x.acquisition.as_deref()),
        s(|x| x.datatype.as_deref()),
        s(|x| Some(x.format.as_str())),
        Arc::new(
            TimestampNanosecondArray::from_iter(r.iter().map(|x| x.start_time_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(
            r.iter().map(|x| x.duration_s),
        )),
        Arc::new(Float64Array::from_iter_values(
            r.iter().map(|x| x.record_duration_s),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| x.num_records),
        )),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| x.num_signals),
        )),
        s(|x| x.sex.as_deref()),
        Arc::new(Int64Array::from_iter(r.iter().map(|x| x.age_years))),
        s(|x| Some(x.source_sha256.as_str())),
        Arc::new(Int64Array::from_iter_values(
            r.iter().map(|x| x.source_bytes),
        )),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(r.iter().map(|x| x.ingested_ns))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn channels(view: &QueryView) -> Result<RecordBatch> {
    let c: Vec<&gbrain_catalog::ChannelRow> = view
        .view
        .channels
        .iter()
        .filter(|(_, c)| !c.is_annotation)
        .map(|(_, c)| c)
        .collect();
    let recs: Vec<&str> = view
        .view
        .channels
        .iter()
        .filter(|(_, c)| !c.is_annotation)
        .map(|(r, _)| r.as_str())
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("sample_rate", DataType::Float64, false),
        Field::new("physical_min", DataType::Float64, false),
        Field::new("physical_max", DataType::Float64, false),
        Field::new("digital_min", DataType::Int64, false),
        Field::new("digital_max", DataType::Int64, false),
        Field::new("gain", DataType::Float64, false),
        Field::new("offset", DataType::Float64, false),
        Field::new("prefiltering", DataType::Utf8, false),
        Field::new("transducer", DataType::Utf8, false),
        Field::new("samples", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(recs)),
        Arc::new(Int32Array::from_iter_values(
            c.iter().map(|x| x.channel_index as i32),
        )),
        Arc::new(StringArray::from_iter_values(
            c.iter().map(|x| x.label.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            c.iter().map(|x| x.channel_type.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            c.iter().map(|x| x.unit.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(
            c.iter().map(|x| x.sample_rate),
        )),
        Arc::new(Float64Array::from_iter_values(
            c.iter().map(|x| x.physical_min),
        )),
        Arc::new(Float64Array::from_iter_values(
            c.iter().map(|x| x.physical_max),
        )),
        Arc::new(Int64Array::from_iter_values(
            c.iter().map(|x| x.digital_min),
        )),
        Arc::new(Int64Array::from_iter_values(
            c.iter().map(|x| x.digital_max),
        )),
        Arc::new(Float64Array::from_iter_values(c.iter().map(|x| x.gain))),
        Arc::new(Float64Array::from_iter_values(c.iter().map(|x| x.offset))),
        Arc::new(StringArray::from_iter_values(
            c.iter().map(|x| x.prefiltering.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            c.iter().map(|x| x.transducer.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            c.iter().map(|x| x.num_samples),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn segments(view: &QueryView) -> Result<RecordBatch> {
    let s = &view.view.segments;
    let duration = |rec: &str, n: i64| {
        view.recording_index
            .get(rec)
            .map(|&i| view.recording(i).record_duration_s * n as f64)
            .unwrap_or(0.0)
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("segment_index", DataType::Int64, false),
        Field::new("onset_s", DataType::Float64, false),
        Field::new("duration_s", DataType::Float64, false),
        Field::new("first_record", DataType::Int64, false),
        Field::new("num_records", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            s.iter().map(|(r, _)| r.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            s.iter().map(|(_, x)| x.segment_index),
        )),
        Arc::new(Float64Array::from_iter_values(
            s.iter().map(|(_, x)| x.onset_s),
        )),
        Arc::new(Float64Array::from_iter_values(
            s.iter().map(|(r, x)| duration(r, x.num_records)),
        )),
        Arc::new(Int64Array::from_iter_values(
            s.iter().map(|(_, x)| x.first_record),
        )),
        Arc::new(Int64Array::from_iter_values(
            s.iter().map(|(_, x)| x.num_records),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn participants_batch(p: &[gbrain_catalog::Participant]) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("subject_pseudonym", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("attributes", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.subject_pseudonym.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.dataset.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            p.iter().map(|x| x.attributes_json.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The feedback loop's decisions about model versions, oldest first. Besides the evidence,
/// the numbers each decision turned on are columns: the version's and its parent's accuracy
/// on the same windows (held-out windows for a fit, compared trials' windows otherwise).
fn decisions_batch(d: &[gbrain_catalog::ModelDecision]) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("parent_version", DataType::Int64, true),
        // fit, canary, promote, rollback or reject.
        Field::new("action", DataType::Utf8, false),
        Field::new("windows", DataType::Int64, true),
        Field::new("accuracy", DataType::Float64, true),
        Field::new("parent_accuracy", DataType::Float64, true),
        // A fit's data: the snapshot that pins it.
        Field::new("snapshot", DataType::Utf8, true),
        // A JSON object: every number the decision was made on, and a fit's lineage.
        Field::new("evidence", DataType::Utf8, false),
        Field::new("decided_at", timestamp_type(), false),
    ]));
    let evidence: Vec<serde_json::Value> = d
        .iter()
        .map(|x| serde_json::from_str(&x.evidence_json).unwrap_or_default())
        .collect();
    let fit = |i: usize| d[i].action == "fit";
    let num = |i: usize, fit_key: &str, key: &str| {
        evidence[i][if fit(i) { fit_key } else { key }].as_f64()
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|x| x.model.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(d.iter().map(|x| x.version))),
        Arc::new(Int64Array::from_iter(d.iter().map(|x| x.parent_version))),
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|x| x.action.as_str()),
        )),
        Arc::new(Int64Array::from_iter((0..d.len()).map(|i| {
            evidence[i][if fit(i) { "train_windows" } else { "windows" }].as_i64()
        }))),
        Arc::new(Float64Array::from_iter(
            (0..d.len()).map(|i| num(i, "heldout_accuracy", "candidate_accuracy")),
        )),
        Arc::new(Float64Array::from_iter(
            (0..d.len()).map(|i| num(i, "parent_heldout_accuracy", "current_accuracy")),
        )),
        Arc::new(StringArray::from_iter(
            evidence.iter().map(|e| e["snapshot"].as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|x| x.evidence_json.as_str()),
        )),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(d.iter().map(|x| x.decided_ns))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
