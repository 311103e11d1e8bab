//! Reading what the functions need: a channel's samples over a range, and a recording's
//! events, straight from the files the view lists.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, Int16Array, Int32Array};
use datafusion::error::{DataFusionError, Result};
use futures::TryStreamExt;
use gbrain_storage::events::EventRow;
use object_store::ObjectStore;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::view::{ChannelInfo, QueryView, ROWS_PER_GROUP};

/// What every function of one query reads from.
#[derive(Debug)]
pub struct FunctionEnv {
    pub view: Arc<QueryView>,
    pub store: Arc<dyn ObjectStore>,
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The digital samples `lo..=hi` of a channel, reading only the row groups that hold them.
pub async fn read_digital(
    store: &Arc<dyn ObjectStore>,
    ch: &ChannelInfo,
    lo: u64,
    hi: u64,
) -> Result<Vec<i32>> {
    let mut out: Vec<i32> = Vec::with_capacity((hi + 1 - lo) as usize);
    for f in &ch.files {
        let end = f.first_sample + f.rows;
        if end <= lo || f.first_sample > hi {
            continue;
        }
        let first_group = (lo.saturating_sub(f.first_sample)) / ROWS_PER_GROUP;
        let last_group = (hi.min(end - 1) - f.first_sample) / ROWS_PER_GROUP;
        let groups: Vec<usize> = (first_group..=last_group)
            .map(|g| f.row_group(g as usize))
            .collect();
        let reader = StoreReader {
            store: Arc::clone(store),
            path: f.path.as_str().into(),
            size: f.size,
        };
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(external)?;
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [1]);
        let stream = builder
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(ROWS_PER_GROUP as usize)
            .build()
            .map_err(external)?;
        let batches: Vec<arrow::array::RecordBatch> =
            stream.try_collect().await.map_err(external)?;
        // Samples of the first selected row group start here.
        let mut at = f.first_sample + first_group * ROWS_PER_GROUP;
        for b in batches {
            let col = b.column(0);
            let n = col.len() as u64;
            let from = lo.max(at);
            let to = (hi + 1).min(at + n);
            if from < to {
                let (a, z) = ((from - at) as usize, (to - at) as usize);
                if let Some(v) = col.as_any().downcast_ref::<Int16Array>() {
                    out.extend(v.values()[a..z].iter().map(|x| i32::from(*x)));
                } else if let Some(v) = col.as_any().downcast_ref::<Int32Array>() {
                    out.extend_from_slice(&v.values()[a..z]);
                } else {
                    return Err(DataFusionError::Internal(format!(
                        "{}: value column has type {}",
                        f.path,
                        col.data_type()
                    )));
                }
            }
            at += n;
        }
    }
    Ok(out)
}

/// The events of one recording (every events file), sorted by onset, those without an
/// onset last.
pub async fn read_events(env: &FunctionEnv, recording: usize) -> Result<Vec<EventRow>> {
    let mut out = Vec::new();
    for (ri, f) in &env.view.row_files[crate::view::RowTable::Events.index()] {
        if *ri != recording {
            continue;
        }
        let bytes = env
            .store
            .get(&f.path.as_str().into())
            .await
            .map_err(external)?
            .bytes()
            .await
            .map_err(external)?;
        out.extend(
            gbrain_storage::events::read_events(bytes, &f.path)
                .map_err(|e| DataFusionError::Execution(e.to_string()))?,
        );
    }
    out.sort_by(|a, b| match (a.onset, b.onset) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(out)
}

/// Recordings a call covers: all, or those named.
pub fn recordings(env: &FunctionEnv, only: &Option<HashSet<String>>) -> Vec<usize> {
    (0..env.view.view.recordings.len())
        .filter(|&i| super::args::allowed(only, &env.view.recording(i).recording_id))
        .collect()
}

/// Reads a Parquet file's byte ranges from the object store.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

/// Bytes fetched with the footer: enough for a signal file's metadata in one request.
const FOOTER_HINT: usize = 64 * 1024;

impl AsyncFileReader for StoreReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt as _;
