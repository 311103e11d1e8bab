//! The `samples` table: every sample of every channel, in physical units, with its time.
//!
//! Stored files hold `sample_index` and the digital `value`; the scan turns them into `t`
//! (seconds from the recording's start, gaps kept), `time` (absolute) and `value * gain +
//! offset`. Filters on recording, channel, `t`, `time` and `sample_index` choose the files and
//! become a `sample_index` range per file, which the Parquet scan prunes row groups with.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;

use super::filters::Selection;
use super::timestamp_type;
use crate::view::{ChannelInfo, QueryView};

/// Column name of the channel position added to each scanned file.
const CHANNEL_POSITION: &str = "__channel_position";

/// The object store URL every scan reads from (registered per query).
pub const STORE_URL: &str = "gbrain://data/";

pub fn samples_schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("recording_id", dict.clone(), false),
        Field::new("channel", dict, false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("t", DataType::Float64, false),
        Field::new("time", timestamp_type(), true),
        Field::new("value", DataType::Float64, false),
        Field::new("sample_rate", DataType::Float64, false),
    ]))
}

fn file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_index", DataType::Int64, false),
        Field::new("value", DataType::Int32, false),
    ]))
}

#[derive(Debug)]
pub struct SamplesTable {
    view: Arc<QueryView>,
    schema: SchemaRef,
}

impl SamplesTable {
    pub fn new(view: Arc<QueryView>) -> Self {
        Self {
            view,
            schema: samples_schema(),
        }
    }

    pub fn view(&self) -> &Arc<QueryView> {
        &self.view
    }
}

/// A chosen channel: its position, its info, and the sample range its filters allow.
pub type Chosen<'a> = (usize, &'a ChannelInfo, Option<(u64, u64)>);

/// The channels a selection keeps, each with the sample range its time filters allow.
pub fn select_channels<'a>(view: &'a QueryView, sel: &Selection) -> Vec<Chosen<'a>> {
    let mut out = Vec::new();
    if sel.t.is_empty() || sel.time.is_empty() || sel.sample_index.is_empty() {
        return out;
    }
    for (pos, ch) in view.channels.iter().enumerate() {
        if let Some(r) = &sel.recordings
            && !r.contains(ch.recording_id.as_ref())
        {
            continue;
        }
        if let Some(c) = &sel.channels
            && !c.contains(ch.label.as_ref())
        {
            continue;
        }
        let mut range: Option<(u64, u64)> = None;
        let mut restrict = |lo: u64, hi: u64| {
            range = Some(match range {
                Some((a, b)) => (a.max(lo), b.min(hi)),
                None => (lo, hi),
            });
        };
        if sel.t.is_set() {
            match ch.sample_range(sel.t.lo, sel.t.hi) {
                Some((lo, hi)) => restrict(lo, hi),
                None => continue,
            }
        }
        if sel.time.is_set() {
            let Some(start) = ch.start_ns else { continue };
            let to_t = |ns: f64| (ns - start as f64) / 1e9;
            match ch.sample_range(sel.time.lo.map(to_t), sel.time.hi.map(to_t)) {
                Some((lo, hi)) => restrict(lo, hi),
                None => continue,
            }
        }
        if sel.sample_index.is_set() {
            let lo = sel.sample_index.lo.map_or(0, |v| v.max(0.0).ceil() as u64);
            let hi = sel
                .sample_index
                .hi
                .map_or(u64::MAX, |v| if v < 0.0 { 0 } else { v.floor() as u64 });
            restrict(lo, hi);
        }
        if let Some((lo, hi)) = range
            && lo > hi
        {
            continue;
        }
        out.push((pos, ch, range));
    }
    out
}

#[async_trait]
impl TableProvider for SamplesTable {
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
                if Selection::understands(f) {
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
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (sel, _) = Selection::from_filters(filters);
        let chosen = select_channels(&self.view, &sel);
        let total_files: usize = self.view.channels.iter().map(|c| c.files.len()).sum();

        // Files grouped by the sample range their scan keeps.
        let mut groups: BTreeMap<Option<(u64, u64)>, Vec<PartitionedFile>> = BTreeMap::new();
        for (pos, ch, range) in &chosen {
            for f in &ch.files {
                if let Some((lo, hi)) = range
                    && (f.first_sample + f.rows <= *lo || f.first_sample > *hi)
                {
                    continue;
                }
                let mut file = PartitionedFile::new(f.path.clone(), f.size)
                    .with_partition_values(vec![ScalarValue::UInt32(Some(*pos as u32))]);
                // A live flush's file holds every channel: read this one's row groups.
                if let Some(plan) = plan_of(f) {
                    file = file.with_extension(plan);
                }
                groups.entry(*range).or_default().push(file);
            }
        }
        let scanned: usize = groups.values().map(Vec::len).sum();
        let partitions = state.config().target_partitions().max(1);
        let file_schema = file_schema();
        let table_schema = TableSchema::builder(Arc::clone(&file_schema))
            .with_table_partition_cols(vec![Arc::new(Field::new(
                CHANNEL_POSITION,
                DataType::UInt32,
                false,
            ))])
            .build();
        let df_schema = DFSchema::try_from(Arc::clone(&file_schema))?;
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(STORE_URL)?;
        let mut scans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for (range, files) in groups {
            let mut source = ParquetSource::new(table_schema.clone());
            if let Some((lo, hi)) = range {
                let predicate = col("sample_index")
                    .gt_eq(lit(lo as i64))
                    .and(col("sample_index").lt_eq(lit(hi as i64)));
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                source = source.with_predicate(physical).with_pushdown_filters(true);
            }
            let mut file_groups: Vec<Vec<PartitionedFile>> =
                vec![Vec::new(); partitions.min(files.len()).max(1)];
            let n = file_groups.len();
            for (i, f) in files.into_iter().enumerate() {
                file_groups[i % n].push(f);
            }
            let config = FileScanConfigBuilder::new(url.clone(), Arc::new(source))
                .with_file_groups(file_groups.into_iter().map(FileGroup::new).collect())
                .build();
            scans.push(DataSourceExec::from_data_source(config));
        }
        let input: Option<Arc<dyn ExecutionPlan>> = if scans.is_empty() {
            None
        } else {
            Some(UnionExec::try_new(scans)?)
        };
        Ok(Arc::new(SamplesExec::new(
            Arc::clone(&self.view),
            input,
            projection.cloned(),
            total_files - scanned,
            scanned,
        )?))
    }
}

/// Turns stored (sample_index, digital value, channel position) rows into samples.
pub struct SamplesExec {
    view: Arc<QueryView>,
    input: Option<Arc<dyn ExecutionPlan>>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    files_pruned: usize,
    files_scanned: usize,
}

impl fmt::Debug for SamplesExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SamplesExec")
            .field("files_scanned", &self.files_scanned)
            .field("files_pruned", &self.files_pruned)
            .finish()
    }
}

impl SamplesExec {
    pub(crate) fn new(
        view: Arc<QueryView>,
        input: Option<Arc<dyn ExecutionPlan>>,
        projection: Option<Vec<usize>>,
        files_pruned: usize,
        files_scanned: usize,
    ) -> Result<Self> {
        let full = samples_schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let partitions = input
            .as_ref()
            .map_or(1, |i| i.properties().partitioning.partition_count());
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let metrics = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&metrics)
            .global_counter("files_pruned")
            .add(files_pruned);
        MetricBuilder::new(&metrics)
            .global_counter("files_scanned")
            .add(files_scanned);
        Ok(Self {
            view,
            input,
            projection,
            schema,
            cache,
            metrics,
            files_pruned,
            files_scanned,
        })
    }
}

impl DisplayAs for SamplesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SamplesExec: files_scanned={}, files_pruned={}",
            self.files_scanned, self.files_pruned
        )
    }
}

impl ExecutionPlan for SamplesExec {
    fn name(&self) -> &str {
        "SamplesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.input.iter().collect()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            Arc::clone(&self.view),
            children.into_iter().next(),
            self.projection.clone(),
            self.files_pruned,
            self.files_scanned,
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = Arc::clone(&self.schema);
        let Some(input) = &self.input else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let stream = input.execute(partition, context)?;
        let view = Arc::clone(&self.view);
        let projection = self.projection.clone();
        let out_schema = Arc::clone(&schema);
        let mapped = stream.map(move |batch| {
            let batch = batch?;
            to_samples(&view, &batch, projection.as_deref(), &out_schema)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, mapped)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

fn as_any_plan(p: &dyn ExecutionPlan) -> &dyn Any {
    p
}

/// Whether a plan node is a samples scan (for the guard and the tests).
pub fn is_samples_exec(p: &dyn ExecutionPlan) -> bool {
    as_any_plan(p).is::<SamplesExec>()
}

fn to_samples(
    view: &QueryView,
    batch: &RecordBatch,
    projection: Option<&[usize]>,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let position = batch
        .column_by_name(CHANNEL_POSITION)
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(|| DataFusionError::Internal("samples scan lost its channel".into()))?;
    let index = batch
        .column_by_name("sample_index")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| DataFusionError::Internal("samples scan lost sample_index".into()))?;
    let digital = cast(
        batch
            .column_by_name("value")
            .ok_or_else(|| DataFusionError::Internal("samples scan lost value".into()))?,
        &DataType::Int32,
    )?;
    let digital = digital
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| DataFusionError::Internal("value is not int32".into()))?;
    if n == 0 {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    // A batch comes from one file, so from one channel.
    let pos = position.value(0) as usize;
    let ch = view
        .channels
        .get(pos)
        .ok_or_else(|| DataFusionError::Internal(format!("no channel at {pos}")))?;
    let all = [0usize, 1, 2, 3, 4, 5, 6, 7];
    let wanted = projection.unwrap_or(&all);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
    let mut t_cache: Option<Arc<Float64Array>> = None;
    let mut t = |ch: &ChannelInfo| -> Arc<Float64Array> {
        if let Some(t) = &t_cache {
            return Arc::clone(t);
        }
        let arr = Arc::new(times(ch, index.values()));
        t_cache = Some(Arc::clone(&arr));
        arr
    };
    for &c in wanted {
        let col: ArrayRef = match c {
            0 => Arc::new(constant_dictionary(&ch.recording_id, n)),
            1 => Arc::new(constant_dictionary(&ch.label, n)),
            2 => Arc::new(Int32Array::from_value(ch.index as i32, n)),
            3 => Arc::new(index.clone()),
            4 => t(ch),
            5 => {
                let tt = t(ch);
                match ch.start_ns {
                    Some(start) => Arc::new(
                        TimestampNanosecondArray::from_iter_values(
                            tt.values().iter().map(|s| start + (s * 1e9).round() as i64),
                        )
                        .with_timezone("UTC"),
                    ),
                    None => Arc::new(TimestampNanosecondArray::new_null(n).with_timezone("UTC")),
                }
            }
            6 => Arc::new(Float64Array::from_iter_values(
                digital
                    .values()
                    .iter()
                    .map(|d| f64::from(*d) * ch.gain + ch.offset),
            )),
            7 => Arc::new(Float64Array::from_value(ch.rate, n)),
            other => {
                return Err(DataFusionError::Internal(format!(
                    "no samples column {other}"
                )));
            }
        };
        columns.push(col);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// Seconds from the recording's start of each sample index; indices come sorted from one file.
fn times(ch: &ChannelInfo, index: &[i64]) -> Float64Array {
    if ch.segments.len() <= 1 {
        let (first, onset) = ch.segments.first().copied().unwrap_or((0, 0.0));
        let rate = ch.rate;
        return Float64Array::from_iter_values(
            index
                .iter()
                .map(|s| onset + (*s as f64 - first as f64) / rate),
        );
    }
    Float64Array::from_iter_values(index.iter().map(|s| ch.t_of(*s as u64)))
}

fn constant_dictionary(value: &str, n: usize) -> DictionaryArray<Int32Type> {
    let keys = Int32Array::from_value(0, n);
    let values: ArrayRef = Arc::new(StringArray::from(vec![value]));
    DictionaryArray::<Int32Type>::try_new(keys, values)
        .unwrap_or_else(|_| DictionaryArray::<Int32Type>::from_iter(std::iter::repeat_n(value, n)))
}

impl SamplesExec {
    /// Files this scan reads and skips.
    pub fn file_counts(&self) -> (usize, usize) {
        (self.files_scanned, self.files_pruned)
    }

    pub fn view(&self) -> &Arc<QueryView> {
        &self.view
    }

    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// The same scan over `input` as decoded elsewhere: Parquet access plans are not part of
    /// DataFusion's plan encoding, so each file of every channel (a live flush's) gets this
    /// channel's row groups back from the view, or the scan would read every channel's.
    pub(crate) fn rebuilt(
        view: Arc<QueryView>,
        input: Option<Arc<dyn ExecutionPlan>>,
        projection: Option<Vec<usize>>,
        files_pruned: usize,
        files_scanned: usize,
    ) -> Result<Self> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        let input = match input {
            None => None,
            Some(plan) => Some(
                plan.transform_down(|node| {
                    let Some(exec) = (node.as_ref() as &dyn Any).downcast_ref::<DataSourceExec>()
                    else {
                        return Ok(Transformed::no(node));
                    };
                    let Some((config, _)) = exec.downcast_to_file_source::<ParquetSource>() else {
                        return Ok(Transformed::no(node));
                    };
                    let mut config = config.clone();
                    let mut changed = false;
                    for group in &mut config.file_groups {
                        let files = std::mem::replace(group, FileGroup::new(Vec::new()));
                        let files = files
                            .into_inner()
                            .into_iter()
                            .map(|f| match access_plan(&view, &f) {
                                Some(plan) if f.extension::<ParquetAccessPlan>().is_none() => {
                                    changed = true;
                                    f.with_extension(plan)
                                }
                                _ => f,
                            })
                            .collect();
                        *group = FileGroup::new(files);
                    }
                    Ok(if changed {
                        Transformed::yes(DataSourceExec::from_data_source(config))
                    } else {
                        Transformed::no(node)
                    })
                })?
                .data,
            ),
        };
        Self::new(view, input, projection, files_pruned, files_scanned)
    }
}

/// The row groups a scanned file holds of its channel, when it holds every channel's.
fn access_plan(view: &QueryView, file: &PartitionedFile) -> Option<ParquetAccessPlan> {
    let pos = match file.partition_values.first()? {
        ScalarValue::UInt32(Some(p)) => *p as usize,
        _ => return None,
    };
    let path = file.object_meta.location.as_ref();
    let f = view
        .channels
        .get(pos)?
        .files
        .iter()
        .find(|f| object_store::path::Path::from(f.path.as_str()).as_ref() == path)?;
    plan_of(f)
}

fn plan_of(f: &crate::view::SignalFile) -> Option<ParquetAccessPlan> {
    let (mine, total) = f.row_groups.as_ref()?;
    let mut plan = ParquetAccessPlan::new_none(*total);
    for g in mine.clone() {
        plan.scan(g);
    }
    Some(plan)
}
