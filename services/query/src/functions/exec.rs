//! The execution plan behind every table function: a fixed number of partitions, each a stream
//! of batches produced by the function's own code.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// Produces the batches of one partition.
pub type Work = Arc<dyn Fn(usize) -> BoxStream<'static, Result<RecordBatch>> + Send + Sync>;

/// Plans a function's partitions once its scan knows the projection and filters.
pub type Planner = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<(usize, Work)>> + Send + Sync>;

/// A table function's output.
pub struct FunctionTable {
    pub name: &'static str,
    pub schema: SchemaRef,
    /// Given the target partition count, returns the partitions and their work.
    pub plan: Planner,
    /// The call that made it, so that its plan can be rebuilt elsewhere (Ballista's
    /// executors); `None` for a table that only describes a prepared statement.
    pub call: Option<Arc<super::FunctionCall>>,
}

impl fmt::Debug for FunctionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FunctionTable({})", self.name)
    }
}

#[async_trait]
impl TableProvider for FunctionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let target = state.config().target_partitions().max(1);
        let (partitions, work) = (self.plan)(target).await?;
        Ok(Arc::new(
            FunctionExec::new(
                self.name,
                Arc::clone(&self.schema),
                partitions.max(1),
                work,
                projection.cloned(),
            )?
            .with_call(self.call.clone(), target),
        ))
    }
}

pub struct FunctionExec {
    name: &'static str,
    full_schema: SchemaRef,
    partitions: usize,
    work: Work,
    projection: Option<Vec<usize>>,
    cache: Arc<PlanProperties>,
    /// The call and the partition target it was planned with.
    call: Option<(Arc<super::FunctionCall>, usize)>,
}

impl fmt::Debug for FunctionExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FunctionExec({}, {} partitions)",
            self.name, self.partitions
        )
    }
}

impl FunctionExec {
    pub fn new(
        name: &'static str,
        full_schema: SchemaRef,
        partitions: usize,
        work: Work,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(full_schema.project(p)?),
            None => Arc::clone(&full_schema),
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            name,
            full_schema,
            partitions,
            work,
            projection,
            cache,
            call: None,
        })
    }

    fn with_call(mut self, call: Option<Arc<super::FunctionCall>>, target: usize) -> Self {
        self.call = call.map(|c| (c, target));
        self
    }

    /// The function, its output schema (before projection), partitions and projection.
    pub fn parts(&self) -> (&'static str, &SchemaRef, usize, Option<&[usize]>) {
        (
            self.name,
            &self.full_schema,
            self.partitions,
            self.projection.as_deref(),
        )
    }

    /// The call this plan came from and the partition target it was planned with.
    pub fn call(&self) -> Option<&(Arc<super::FunctionCall>, usize)> {
        self.call.as_ref()
    }

    /// A plan of `partitions` that runs `call`'s planner when a partition first executes:
    /// how a plan made elsewhere (the scheduler) is rebuilt where it runs (an executor).
    pub fn deferred(
        table: &FunctionTable,
        target: usize,
        partitions: usize,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let planner = Arc::clone(&table.plan);
        let name = table.name;
        let work: Work = Arc::new(move |p| {
            let planner = Arc::clone(&planner);
            futures::stream::once(async move {
                let (n, work) = planner(target).await?;
                if n.max(1) != partitions {
                    return datafusion::common::internal_err!(
                        "{name}: planned {partitions} partitions where it was built but {n} here"
                    );
                }
                Ok(work(p))
            })
            .try_flatten()
            .boxed()
        });
        Ok(Self::new(
            name,
            Arc::clone(&table.schema),
            partitions,
            work,
            projection,
        )?
        .with_call(table.call.clone(), target))
    }
}

impl DisplayAs for FunctionExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FunctionExec: {}, partitions={}",
            self.name, self.partitions
        )
    }
}

impl ExecutionPlan for FunctionExec {
    fn name(&self) -> &str {
        self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let projection = self.projection.clone();
        let stream = (self.work)(partition).map(move |b| {
            let b = b?;
            match &projection {
                Some(p) => Ok(b.project(p)?),
                None => Ok(b),
            }
        });
        let _ = &self.full_schema;
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Runs `f` for each of `items` spread over `partitions`, each partition one stream.
pub fn spread<T, F, S>(items: Vec<T>, partitions: usize, f: F) -> (usize, Work)
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> S + Send + Sync + 'static,
    S: futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
{
    let n = partitions.clamp(1, items.len().max(1));
    let mut buckets: Vec<Vec<T>> = vec![Vec::new(); n];
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % n].push(item);
    }
    let buckets = Arc::new(buckets);
    let f = Arc::new(f);
    let work: Work = Arc::new(move |p| {
        let items = buckets.get(p).cloned().unwrap_or_default();
        let f = Arc::clone(&f);
        futures::stream::iter(items)
            .flat_map(move |item| f(item))
            .boxed()
    });
    (n, work)
}

/// When a call's arguments hold placeholders (a prepared statement being described), a table
/// with the function's schema that refuses to run: values are bound into the SQL before a
/// statement executes, so this one only ever answers "which columns?".
pub fn unbound(
    name: &'static str,
    exprs: &[Expr],
    schema: impl FnOnce() -> SchemaRef,
) -> Option<Arc<dyn TableProvider>> {
    use datafusion::common::tree_node::TreeNode;
    let placeholders = exprs.iter().any(|e| {
        e.exists(|x| Ok(matches!(x, Expr::Placeholder(_))))
            .unwrap_or(false)
    });
    if !placeholders {
        return None;
    }
    Some(Arc::new(FunctionTable {
        name,
        call: None,
        schema: schema(),
        plan: Arc::new(move |_| {
            Box::pin(async move {
                datafusion::common::plan_err!("{name}: its parameters have no values bound")
            })
        }),
    }))
}
