//! The tables whose rows are files attached to recordings: `events` (every event of every
//! recording), and the feedback loop's `predictions` and `outcomes`. Their rows are small
//! beside samples, so a view reads a table's files into memory once and every later query of
//! that view scans memory; past [`EVENTS_IN_MEMORY_BYTES`] the files are scanned instead.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::filters::Selection;
use super::samples::STORE_URL;
use crate::view::{EVENTS_IN_MEMORY_BYTES, QueryView, RowTable, RowsInMemory};

/// The stored columns, then `recording_id` from the file's recording.
pub fn rows_schema(table: RowTable) -> SchemaRef {
    let stored = table.stored_schema();
    let mut fields: Vec<Field> = stored.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("recording_id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

#[derive(Debug)]
pub struct RowsTable {
    table: RowTable,
    view: Arc<QueryView>,
    store: Arc<dyn ObjectStore>,
    schema: SchemaRef,
}

impl RowsTable {
    /// Which table, over which view.
    pub fn parts(&self) -> (RowTable, &Arc<QueryView>) {
        (self.table, &self.view)
    }

    pub fn new(table: RowTable, view: Arc<QueryView>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            table,
            view,
            store,
            schema: rows_schema(table),
        }
    }
}

/// Reads every file of a row table in a view into one batch, when they are small enough.
async fn load(
    table: RowTable,
    view: &QueryView,
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<Arc<RowsInMemory>>> {
    let files = &view.row_files[table.index()];
    let total: u64 = files.iter().map(|(_, f)| f.size_bytes.max(0) as u64).sum();
    if total > EVENTS_IN_MEMORY_BYTES {
        return Ok(None);
    }
    let mut files: Vec<(usize, String)> = files.iter().map(|(r, f)| (*r, f.path.clone())).collect();
    files.sort_by_key(|(r, _)| *r);
    let fetched: Vec<(usize, bytes::Bytes, String)> = futures::stream::iter(files)
        .map(|(r, path)| {
            let store = Arc::clone(store);
            async move {
                let bytes = store
                    .get(&path.as_str().into())
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .bytes()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok::<_, DataFusionError>((r, bytes, path))
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let schema = rows_schema(table);
    let mut batches = Vec::new();
    let mut ranges: HashMap<String, (usize, usize)> = HashMap::new();
    let mut at = 0usize;
    for (r, bytes, _path) in fetched {
        let id = view.recording(r).recording_id.clone();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        for b in reader {
            let b = b?;
            let n = b.num_rows();
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n(id.as_str(), n),
            )));
            batches.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
            let e = ranges.entry(id.clone()).or_insert((at, 0));
            e.1 += n;
            at += n;
        }
    }
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    Ok(Some(Arc::new(RowsInMemory { batch, ranges })))
}

#[async_trait]
impl TableProvider for RowsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                let (s, _) = Selection::from_filters(std::slice::from_ref(*f));
                if s.recordings.is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (sel, _) = Selection::from_filters(filters);
        let cached = self.view.rows[self.table.index()]
            .get_or_try_init(|| load(self.table, &self.view, &self.store))
            .await?;
        if let Some(events) = cached {
            // Each recording's rows are contiguous: slicing them out copies nothing.
            let slices: Vec<RecordBatch> = match &sel.recordings {
                None => vec![events.batch.clone()],
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| events.ranges.get(id))
                    .map(|(start, len)| events.batch.slice(*start, *len))
                    .collect(),
            };
            let slices = match limit {
                Some(l) => vec![
                    arrow::compute::concat_batches(&self.schema, &slices)?
                        .slice(0, l.min(slices.iter().map(RecordBatch::num_rows).sum())),
                ],
                None => slices,
            };
            return Ok(MemorySourceConfig::try_new_exec(
                &[slices],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?);
        }
        let files: Vec<PartitionedFile> = self.view.row_files[self.table.index()]
            .iter()
            .filter_map(|(ri, f)| {
                let id = &self.view.recording(*ri).recording_id;
                if let Some(r) = &sel.recordings
                    && !r.contains(id)
                {
                    return None;
                }
                Some(
                    PartitionedFile::new(f.path.clone(), f.size_bytes as u64)
                        .with_partition_values(vec![ScalarValue::Utf8(Some(id.clone()))]),
                )
            })
            .collect();
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let table_schema = TableSchema::builder(self.table.stored_schema())
            .with_table_partition_cols(vec![Arc::new(Field::new(
                "recording_id",
                DataType::Utf8,
                false,
            ))])
            .build();
        let partitions = state.config().target_partitions().max(1).min(files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
        for (i, f) in files.into_iter().enumerate() {
            groups[i % partitions].push(f);
        }
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(STORE_URL)?;
        let config = FileScanConfigBuilder::new(url, Arc::new(ParquetSource::new(table_schema)))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
