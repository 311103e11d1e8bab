//! Events and annotations as Parquet: one file per batch appended to a recording.
//!
//! Columns: `onset` and `duration` (seconds from the recording's start; null when unknown),
//! `type`, `value`, `source` (where the event came from: `edf_annotation`, `bdf_trigger`,
//! `bids_events`, or the source an API client named), `sample`, `response_time`, and `extra`
//! (a JSON object of any further columns, such as those of a BIDS events.tsv).

use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub onset: Option<f64>,
    pub duration: Option<f64>,
    pub event_type: String,
    pub value: Option<String>,
    pub source: String,
    pub sample: Option<i64>,
    pub response_time: Option<f64>,
    /// A JSON object.
    pub extra: Option<String>,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("onset", DataType::Float64, true),
        Field::new("duration", DataType::Float64, true),
        Field::new("type", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("sample", DataType::Int64, true),
        Field::new("response_time", DataType::Float64, true),
        Field::new("extra", DataType::Utf8, true),
    ]))
}

/// Encodes events as one Parquet file. Events are sorted by onset (unknown onsets last), so
/// that row-group statistics prune by time.
pub fn write_events(rows: &[EventRow]) -> Result<Bytes> {
    let mut sorted: Vec<&EventRow> = rows.iter().collect();
    sorted.sort_by(|a, b| match (a.onset, b.onset) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Float64Array::from_iter(sorted.iter().map(|r| r.onset))),
            Arc::new(Float64Array::from_iter(sorted.iter().map(|r| r.duration))),
            Arc::new(StringArray::from_iter_values(
                sorted.iter().map(|r| r.event_type.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                sorted.iter().map(|r| r.value.as_deref()),
            )),
            Arc::new(StringArray::from_iter_values(
                sorted.iter().map(|r| r.source.as_str()),
            )),
            Arc::new(Int64Array::from_iter(sorted.iter().map(|r| r.sample))),
            Arc::new(Float64Array::from_iter(
                sorted.iter().map(|r| r.response_time),
            )),
            Arc::new(StringArray::from_iter(
                sorted.iter().map(|r| r.extra.as_deref()),
            )),
        ],
    )?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("globalbrain {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema(), Some(props))?;
    w.write(&batch)?;
    Ok(Bytes::from(w.into_inner()?))
}

/// Decodes an events file.
pub fn read_events(bytes: Bytes, path: &str) -> Result<Vec<EventRow>> {
    let corrupt = |what: &str| Error::Corrupt {
        path: path.to_string(),
        reason: format!("column {what} has an unexpected type"),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        macro_rules! col {
            ($name:literal, $ty:ty) => {
                batch
                    .column_by_name($name)
                    .and_then(|c| c.as_any().downcast_ref::<$ty>())
                    .ok_or_else(|| corrupt($name))?
            };
        }
        let onset = col!("onset", Float64Array);
        let duration = col!("duration", Float64Array);
        let ty = col!("type", StringArray);
        let value = col!("value", StringArray);
        let source = col!("source", StringArray);
        let sample = col!("sample", Int64Array);
        let rt = col!("response_time", Float64Array);
        let extra = col!("extra", StringArray);
        let opt_f = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        let opt_s = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        for i in 0..batch.num_rows() {
            out.push(EventRow {
                onset: opt_f(onset, i),
                duration: opt_f(duration, i),
                event_type: ty.value(i).to_string(),
                value: opt_s(value, i),
                source: source.value(i).to_string(),
                sample: (!sample.is_null(i)).then(|| sample.value(i)),
                response_time: opt_f(rt, i),
                extra: opt_s(extra, i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sorted_by_onset() {
        let rows = vec![
            EventRow {
                onset: Some(2.5),
                duration: None,
                event_type: "right".into(),
                value: Some("2".into()),
                source: "bids_events".into(),
                sample: Some(640),
                response_time: Some(0.4),
                extra: Some(r#"{"stim_file":"a.bmp"}"#.into()),
            },
            EventRow {
                onset: None,
                duration: None,
                event_type: "rating".into(),
                value: None,
                source: "bids_events".into(),
                sample: None,
                response_time: None,
                extra: None,
            },
            EventRow {
                onset: Some(-1.0),
                duration: Some(0.5),
                event_type: "\u{4e2d}\u{6587}".into(),
                value: None,
                source: "edf_annotation".into(),
                sample: None,
                response_time: None,
                extra: None,
            },
        ];
        let bytes = write_events(&rows).unwrap();
        let back = read_events(bytes, "t").unwrap();
        assert_eq!(
            back,
            vec![rows[2].clone(), rows[0].clone(), rows[1].clone()]
        );
    }
}
