//! The `events` table: every event of every recording, from the events files the view lists.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use super::filters::Selection;
use super::samples::STORE_URL;
use crate::view::QueryView;

/// The stored columns, then `recording_id` from the file's recording.
pub fn events_schema() -> SchemaRef {
    let stored = gbrain_storage::events::schema();
    let mut fields: Vec<Field> = stored.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("recording_id", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

#[derive(Debug)]
pub struct EventsTable {
    view: Arc<QueryView>,
    schema: SchemaRef,
}

impl EventsTable {
    pub fn new(view: Arc<QueryView>) -> Self {
        Self {
            view,
            schema: events_schema(),
        }
    }
}

#[async_trait]
impl TableProvider for EventsTable {
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
        let files: Vec<PartitionedFile> = self
            .view
            .event_files
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
        let table_schema = TableSchema::builder(gbrain_storage::events::schema())
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
