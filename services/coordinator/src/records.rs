//! What loop sessions decide, stored: their predictions and outcomes as Parquet files attached
//! to their streams' recordings (the `predictions` and `outcomes` tables), and the decisions
//! of evolving models (the `model_decisions` table).
//!
//! A session buffers its rows and writes them as one file per table every [`FLUSH_EVERY`],
//! or at once when [`FLUSH_ROWS`] predictions are held. A file is listed as a pending write
//! before it is put and committed to the catalog after, so a crash leaves nothing half
//! visible, and garbage collection removes what a crash left behind.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use gbrain_catalog::{Catalog, DataFileRow, FileKind, ModelDecision, PendingWrite};
use gbrain_common::clock::Clock;
use gbrain_storage::{layout, loop_rows};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::{Error, Result};

/// How often a session writes its rows.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Predictions a session holds before it writes them at once.
pub const FLUSH_ROWS: usize = 8192;

/// One row of `predictions`.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictionRow {
    pub window: u64,
    pub first_sample: u64,
    pub end_sample: u64,
    pub model_version: Option<String>,
    pub shadow: bool,
    pub class: Option<u8>,
    pub probability: Option<f64>,
    pub raw_score: Option<f64>,
    pub score: Option<f64>,
    pub error: Option<String>,
    pub source_ns: Option<i64>,
    pub received_ns: i64,
    pub inferred_ns: i64,
    pub sent_ns: Option<i64>,
}

/// One row of `outcomes`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeRow {
    pub first_window: u64,
    pub last_window: u64,
    pub label: u8,
    pub windows: u64,
    pub correct: u64,
    /// The predicted windows' samples, [first, end), when there were any.
    pub samples: Option<(u64, u64)>,
    pub reported_ns: i64,
}

/// A session's rows not yet written.
#[derive(Debug, Default)]
pub struct Pending {
    pub predictions: Vec<PredictionRow>,
    pub outcomes: Vec<OutcomeRow>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.predictions.is_empty() && self.outcomes.is_empty()
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn times(v: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter(v).with_timezone("UTC"))
}

/// `rows` of one session as a batch of the stored `predictions` columns.
pub fn predictions_batch(
    session: &str,
    model: &str,
    rate: f64,
    rows: &[PredictionRow],
) -> Result<RecordBatch> {
    let secs = |s: u64| s as f64 / rate;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| session))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.window)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.first_sample)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.end_sample)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| secs(r.first_sample)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| secs(r.end_sample - r.first_sample)),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| model))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.model_version.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter()
                .map(|r| if r.shadow { "shadow" } else { "live" }),
        )),
        Arc::new(Int32Array::from_iter(
            rows.iter().map(|r| r.class.map(i32::from)),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.probability))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.raw_score))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.error.as_deref()),
        )),
        times(rows.iter().map(|r| r.source_ns)),
        times(rows.iter().map(|r| Some(r.received_ns))),
        times(rows.iter().map(|r| Some(r.inferred_ns))),
        times(rows.iter().map(|r| r.sent_ns)),
    ];
    RecordBatch::try_new(loop_rows::predictions_schema(), columns)
        .map_err(|e| Error::Records(e.to_string()))
}

/// `rows` of one session as a batch of the stored `outcomes` columns.
pub fn outcomes_batch(session: &str, rate: f64, rows: &[OutcomeRow]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| session))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.first_window)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.last_window)),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| i32::from(r.label)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.windows)),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i(r.correct)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.samples.map(|(a, _)| a as f64 / rate)),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            r.samples.map(|(a, b)| b.saturating_sub(a) as f64 / rate)
        }))),
        times(rows.iter().map(|r| Some(r.reported_ns))),
    ];
    RecordBatch::try_new(loop_rows::outcomes_schema(), columns)
        .map_err(|e| Error::Records(e.to_string()))
}

/// Where a coordinator stores rows and decisions: the cluster's catalog and object store.
#[derive(Clone, Debug)]
pub struct Records {
    catalog: Catalog,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
}

impl Records {
    pub fn new(catalog: Catalog, store: Arc<dyn ObjectStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            catalog,
            store,
            clock,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Writes `batch` as one file of `kind` attached to a recording of `tenant`, atomically.
    pub async fn append(
        &self,
        tenant: &str,
        recording_id: &str,
        kind: FileKind,
        batch: RecordBatch,
    ) -> Result<()> {
        let part = uuid::Uuid::new_v4().to_string();
        let path = layout::loop_part(tenant, recording_id, kind.as_str(), &part);
        let write = PendingWrite {
            write_id: format!("loop-{part}"),
            tenant: tenant.to_string(),
            prefixes: vec![path.to_string()],
            created_ns: self.clock.now_ns(),
        };
        let rows = batch.num_rows() as i64;
        // Parquet encoding is CPU work: off the IO runtime.
        let bytes = tokio::task::spawn_blocking(move || loop_rows::write(&batch))
            .await
            .map_err(|e| Error::Records(e.to_string()))?
            .map_err(|e| Error::Records(e.to_string()))?;
        self.catalog.begin_write(&write).await?;
        let file = DataFileRow {
            path: path.to_string(),
            kind,
            channel_index: None,
            first_row: 0,
            num_rows: rows,
            size_bytes: bytes.len() as i64,
        };
        let attached = match self.store.put(&path, PutPayload::from(bytes)).await {
            Ok(_) => self
                .catalog
                .attach_file(tenant, recording_id, &file, &write.write_id)
                .await
                .map_err(Error::from),
            Err(e) => Err(Error::Records(format!("{path}: {e}"))),
        };
        match attached {
            Ok(true) => Ok(()),
            // Definitely not committed: the object goes, then the pending write.
            Ok(false) | Err(Error::Records(_)) => {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        let _ = self.catalog.end_write(&write.write_id).await;
                    }
                    Err(e) => {
                        tracing::warn!(write_id = %write.write_id, error = %e, "loop rows file not deleted; gc will");
                    }
                }
                match attached {
                    Ok(_) => Err(Error::Records(format!("recording {recording_id} is gone"))),
                    Err(e) => Err(e),
                }
            }
            // The commit may have happened (a connection lost during it): the object stays,
            // and garbage collection removes it with its pending write if it did not.
            Err(e) => Err(e),
        }
    }

    /// Stores a decision about a model version.
    pub async fn decide(&self, tenant: &str, d: &ModelDecision) -> Result<()> {
        self.catalog.record_decision(tenant, d).await?;
        Ok(())
    }

    /// Names the catalog's current commit for `tenant`, so that the data a refit used stays
    /// queryable as it was.
    pub async fn snapshot(&self, tenant: &str, name: &str) -> Result<i64> {
        Ok(self
            .catalog
            .create_snapshot(tenant, name, self.clock.now_ns())
            .await?)
    }

    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }
}
