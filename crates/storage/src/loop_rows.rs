//! The feedback loop's rows as Parquet: one file per table and batch a loop session writes,
//! attached to its stream's recording.
//!
//! - `predictions`: one row per decoded window and model version: the live decoder's, whose
//!   prediction went back as feedback, and a shadow candidate's, which decoded the same window
//!   without sending anything. Times are seconds from the recording's start, like events', so
//!   predictions join samples and events on time.
//! - `outcomes`: one row per reported outcome, with how many of its windows the live decoder
//!   got right.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::Result;

fn time() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The stored columns of `predictions`.
pub fn predictions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        // 1, 2, 3... per session, as in its feedback.
        Field::new("window_number", DataType::Int64, false),
        // The window's samples: [first_sample, end_sample).
        Field::new("first_sample", DataType::Int64, false),
        Field::new("end_sample", DataType::Int64, false),
        // Seconds from the recording's start.
        Field::new("onset", DataType::Float64, false),
        Field::new("duration", DataType::Float64, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, true),
        // `live` (sent as feedback) or `shadow` (a candidate, not sent).
        Field::new("role", DataType::Utf8, false),
        // Null when the window has no prediction; `error` says why.
        Field::new("class", DataType::Int32, true),
        Field::new("probability", DataType::Float64, true),
        // ln(p1 / p0), and that minus the session's adapted bias.
        Field::new("raw_score", DataType::Float64, true),
        Field::new("score", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("source_time", time(), true),
        Field::new("received_time", time(), false),
        Field::new("inferred_time", time(), false),
        // Null for shadow predictions, which are never sent.
        Field::new("sent_time", time(), true),
    ]))
}

/// The stored columns of `outcomes`.
pub fn outcomes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("session_id", DataType::Utf8, false),
        Field::new("first_window", DataType::Int64, false),
        Field::new("last_window", DataType::Int64, false),
        Field::new("label", DataType::Int32, false),
        // Windows of the range the live decoder predicted, and how many it got right.
        Field::new("windows", DataType::Int64, false),
        Field::new("correct", DataType::Int64, false),
        // Seconds from the recording's start, over the predicted windows; null when none.
        Field::new("onset", DataType::Float64, true),
        Field::new("duration", DataType::Float64, true),
        Field::new("reported_time", time(), false),
    ]))
}

/// Encodes one batch as a Parquet file.
pub fn write(batch: &RecordBatch) -> Result<Bytes> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("globalbrain {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    w.write(batch)?;
    Ok(Bytes::from(w.into_inner()?))
}
