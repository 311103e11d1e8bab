//! One loaded model version: its sessions, its tensors' specs, its dynamic batcher and its
//! statistics.
//!
//! `Session::run` takes `&mut`, so a version holds `instance_count` sessions and a semaphore
//! hands them out. Sessions run on blocking threads, not on the IO runtime, with one exception:
//! a model whose executions take under [`INLINE_COMPUTE`] (a sigmoid takes 2 µs) runs on the
//! calling task when a session is free, because handing it to another thread would cost ten
//! times the work.
//!
//! A dynamically batched version has its own scheduler thread, which gathers requests for up
//! to the queue delay (with the precision of a thread timeout, not of the runtime's 1 ms timer
//! wheel), concatenates them and runs them. It learns the compute time per row at each batch
//! size (by powers of two) and forms batches no larger than the size with the lowest time per
//! row, trying a neighbouring size now and then: a model that gains nothing from batching, as
//! the spindle detector on a CPU, then runs request by request without waiting out the delay.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::ValueType;
use tokio::sync::{Semaphore, oneshot};

use crate::config::{Device, ModelConfig};
use crate::error::{Error, Result};
use crate::metrics::{InferenceMetrics, ModelLabels};
use crate::tensor::{DType, Tensor, concat, split};

/// An input or output as the model declares it; -1 for a dimension of any size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// A model version's counters, as ModelStatistics reports them.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: (u64, u64),
    pub fail: (u64, u64),
    pub queue: (u64, u64),
    pub compute_input: (u64, u64),
    pub compute_infer: (u64, u64),
    pub compute_output: (u64, u64),
    /// Per batch size: executions and nanoseconds of input, inference and output.
    pub batches: BTreeMap<u64, (u64, u64, u64, u64)>,
}

fn add(d: &mut (u64, u64), t: Duration) {
    d.0 += 1;
    d.1 += u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
}

/// Executions shorter than this run on the calling task when a session is free.
pub const INLINE_COMPUTE: Duration = Duration::from_micros(50);

/// What one execution took.
#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    input: Duration,
    infer: Duration,
    output: Duration,
}

pub struct ModelVersion {
    pub tenant: String,
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    sessions: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
    batcher: Option<Batcher>,
    /// Exponential average of an execution's nanoseconds; 0 until the first.
    compute_ns: AtomicU64,
    /// Time per row by batch size, for the batcher.
    curve: Mutex<BatchCurve>,
    stats: Mutex<Stats>,
    metrics: InferenceMetrics,
    labels: ModelLabels,
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn spec(name: &str, ty: &ValueType, what: &str) -> Result<TensorSpec> {
    match ty {
        ValueType::Tensor {
            ty: element, shape, ..
        } => {
            let dtype = DType::from_ort(*element).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "{what} '{name}' holds {element} elements, which this node does not serve"
                ))
            })?;
            Ok(TensorSpec {
                name: name.to_string(),
                dtype,
                shape: shape.to_vec(),
            })
        }
        other => Err(Error::FailedPrecondition(format!(
            "{what} '{name}' is a {other}, not a tensor: KServe v2 carries only tensors \
             (for a classifier, export it without the ZipMap / sequence-of-maps output)"
        ))),
    }
}

fn build_session(env: &Environment, bytes: &[u8], config: &ModelConfig) -> Result<Session> {
    let builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort::Error::from)?
        .with_intra_threads(config.intra_op_threads)
        .map_err(ort::Error::from)?;
    let mut builder = match config.device {
        Device::Cpu => builder,
        Device::Cuda(device) => cuda(builder, device)?,
    };
    builder
        .commit_from_memory(bytes)
        .map_err(|e| Error::FailedPrecondition(format!("the ONNX model does not load: {e}")))
}

#[cfg(feature = "cuda")]
fn cuda(
    builder: ort::session::builder::SessionBuilder,
    device: i32,
) -> Result<ort::session::builder::SessionBuilder> {
    use ort::ep::{self, ExecutionProvider};
    let available = ep::CUDA::is_available().map_err(|e| {
        Error::FailedPrecondition(format!(
            "cuda:{device}: cannot ask ONNX Runtime for CUDA: {e}"
        ))
    })?;
    if !available {
        return Err(Error::FailedPrecondition(format!(
            "cuda:{device}: this ONNX Runtime library has no CUDA execution provider; point \
             --ort-library at libonnxruntime from the onnxruntime-gpu wheel"
        )));
    }
    builder
        .with_execution_providers([ep::CUDA::default()
            .with_device_id(device)
            .build()
            .error_on_failure()])
        .map_err(|e| {
            Error::FailedPrecondition(format!(
                "cuda:{device}: the CUDA execution provider failed to register: {e}"
            ))
        })
}

#[cfg(not(feature = "cuda"))]
fn cuda(
    _builder: ort::session::builder::SessionBuilder,
    device: i32,
) -> Result<ort::session::builder::SessionBuilder> {
    Err(Error::FailedPrecondition(format!(
        "cuda:{device}: this build has no CUDA support; build with `--features cuda` and use \
         the onnxruntime-gpu library"
    )))
}

impl ModelVersion {
    /// Builds the version's sessions from its ONNX bytes. Blocking: call it off the IO runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        env: &Environment,
        tenant: &str,
        name: &str,
        version: u64,
        bytes: &[u8],
        config: ModelConfig,
        metrics: InferenceMetrics,
    ) -> Result<Arc<Self>> {
        let mut sessions = Vec::with_capacity(config.instance_count);
        for _ in 0..config.instance_count {
            sessions.push(build_session(env, bytes, &config)?);
        }
        let first = &sessions[0];
        let inputs = first
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype(), "input"))
            .collect::<Result<Vec<_>>>()?;
        let outputs = first
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype(), "output"))
            .collect::<Result<Vec<_>>>()?;
        let batch_dim = |s: &TensorSpec| s.shape.first() == Some(&-1);
        if config.max_batch_size > 0 && !inputs.iter().chain(&outputs).all(batch_dim) {
            return Err(Error::FailedPrecondition(format!(
                "max_batch_size is {} but not every input and output of the model has a \
                 dynamic first dimension",
                config.max_batch_size
            )));
        }
        let labels = ModelLabels {
            model: name.to_string(),
        };
        let permits = Arc::new(Semaphore::new(config.instance_count));
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Internal("a model version must be loaded within the node's runtime".into())
        })?;
        let curve = Mutex::new(BatchCurve::new(config.max_batch_size));
        let version_arc = Arc::new_cyclic(|me: &std::sync::Weak<ModelVersion>| {
            let batcher = config.dynamic_batching.as_ref().map(|b| {
                Batcher::start(
                    me.clone(),
                    format!("batch-{name}"),
                    b.max_queue_size,
                    b.max_queue_delay(),
                    runtime.clone(),
                )
            });
            Self {
                tenant: tenant.to_string(),
                name: name.to_string(),
                version,
                config,
                inputs,
                outputs,
                sessions: Mutex::new(sessions),
                permits,
                batcher,
                compute_ns: AtomicU64::new(0),
                curve,
                stats: Mutex::new(Stats::default()),
                metrics,
                labels,
            }
        });
        if let Some(b) = &version_arc.batcher {
            b.spawn()?;
        }
        Ok(version_arc)
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks a request's inputs against the model and puts them in the model's order.
    pub fn check(&self, mut given: Vec<Tensor>) -> Result<Vec<Tensor>> {
        for t in &given {
            if !self.inputs.iter().any(|s| s.name == t.name) {
                let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::invalid(
                    format!("inputs[{}]", t.name),
                    format!("the model has no such input (it has {})", names.join(", ")),
                ));
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        let mut rows = None;
        for s in &self.inputs {
            let field = format!("inputs[{}]", s.name);
            let at = given
                .iter()
                .position(|t| t.name == s.name)
                .ok_or_else(|| Error::invalid(&field, "missing"))?;
            let t = given.swap_remove(at);
            if given.iter().any(|o| o.name == s.name) {
                return Err(Error::invalid(&field, "given more than once"));
            }
            if t.dtype != s.dtype {
                return Err(Error::invalid(
                    format!("{field}.datatype"),
                    format!(
                        "{} given, the model takes {}",
                        t.dtype.name(),
                        s.dtype.name()
                    ),
                ));
            }
            let fits = t.shape.len() == s.shape.len()
                && t.shape.iter().zip(&s.shape).all(|(&g, &w)| w < 0 || g == w);
            if !fits {
                return Err(Error::invalid(
                    format!("{field}.shape"),
                    format!(
                        "{:?} given, the model takes {:?} (-1: any size)",
                        t.shape, s.shape
                    ),
                ));
            }
            if self.config.max_batch_size > 0 {
                let r = t.rows();
                if r > self.config.max_batch_size {
                    return Err(Error::invalid(
                        format!("{field}.shape"),
                        format!(
                            "a batch of {r} is above the model's max_batch_size of {}",
                            self.config.max_batch_size
                        ),
                    ));
                }
                if *rows.get_or_insert(r) != r {
                    return Err(Error::invalid(
                        format!("{field}.shape"),
                        "inputs disagree on the batch size",
                    ));
                }
            }
            ordered.push(t);
        }
        Ok(ordered)
    }

    /// Runs checked inputs (in the model's order); every output comes back, in the model's
    /// order. Batched with other requests when the model has a dynamic batcher.
    pub async fn infer(self: &Arc<Self>, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let started = Instant::now();
        let result = match &self.batcher {
            Some(b) => b.submit(self, inputs).await,
            None => {
                // Without a batch dimension a request is one item, whatever its shape.
                let rows = if self.config.max_batch_size > 0 {
                    inputs.first().map_or(1, Tensor::rows)
                } else {
                    1
                };
                let permit = Arc::clone(&self.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Unavailable("the model is unloading".into()))?;
                let queued = started.elapsed();
                // A fast model runs here: a permit is held for microseconds, so waiting for
                // one on the runtime is cheaper than any hand-off to a thread.
                let r = if self.is_fast() {
                    let r = self.with_session(|m, s| m.run_on(s, &inputs));
                    drop(permit);
                    r
                } else {
                    self.execute(permit, move |m, s| m.run_on(s, &inputs)).await
                };
                if let Ok((_, timing)) = &r {
                    self.record_execution(1, rows, queued, *timing);
                }
                r.map(|(out, _)| out)
            }
        };
        let took = started.elapsed();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                add(&mut stats.success, took);
                self.metrics.request(&self.labels, true);
            }
            Err(_) => {
                add(&mut stats.fail, took);
                self.metrics.request(&self.labels, false);
            }
        }
        result
    }

    /// Whether executions are short enough to run on the calling task.
    fn is_fast(&self) -> bool {
        let ns = self.compute_ns.load(Ordering::Relaxed);
        ns > 0 && u128::from(ns) < INLINE_COMPUTE.as_nanos()
    }

    fn record_execution(&self, requests: usize, rows: usize, queued: Duration, t: Timing) {
        let took = u64::try_from((t.input + t.infer + t.output).as_nanos()).unwrap_or(u64::MAX);
        let old = self.compute_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            took.max(1)
        } else {
            (old / 8) * 7 + took / 8
        };
        self.compute_ns.store(new.max(1), Ordering::Relaxed);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.last_inference_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        stats.inference_count += rows as u64;
        stats.execution_count += 1;
        for _ in 0..requests {
            add(&mut stats.queue, queued);
        }
        add(&mut stats.compute_input, t.input);
        add(&mut stats.compute_infer, t.infer);
        add(&mut stats.compute_output, t.output);
        let b = stats.batches.entry(rows as u64).or_default();
        b.0 += 1;
        b.1 += u64::try_from(t.input.as_nanos()).unwrap_or(u64::MAX);
        b.2 += u64::try_from(t.infer.as_nanos()).unwrap_or(u64::MAX);
        b.3 += u64::try_from(t.output.as_nanos()).unwrap_or(u64::MAX);
        drop(stats);
        self.metrics.executed(&self.labels, rows, queued, t.infer);
    }

    /// Runs `work` on a free session, on a blocking thread.
    async fn execute<R: Send + 'static>(
        self: &Arc<Self>,
        permit: tokio::sync::OwnedSemaphorePermit,
        work: impl FnOnce(&ModelVersion, &mut Session) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.with_session(work)
        })
        .await
        .map_err(|e| Error::Internal(format!("inference task: {e}")))?
    }

    /// Runs `work` on a free session, here. The caller holds a permit.
    fn with_session<R>(
        &self,
        work: impl FnOnce(&ModelVersion, &mut Session) -> Result<R>,
    ) -> Result<R> {
        let mut session = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| Error::Internal("no free session under a permit".into()))?;
        let result = work(self, &mut session);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        result
    }

    fn run_on(&self, session: &mut Session, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Timing)> {
        let t0 = Instant::now();
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), t.to_ort()?)))
            .collect::<Result<Vec<_>>>()?;
        let t1 = Instant::now();
        let mut outputs = session
            .run(ort::session::SessionInputs::from(values))
            .map_err(|e| match e.code() {
                ort::ErrorCode::InvalidArgument => Error::invalid("inputs", e.to_string()),
                _ => Error::Runtime(e.to_string()),
            })?;
        let t2 = Instant::now();
        let out = self
            .outputs
            .iter()
            .map(|s| {
                let v = outputs
                    .remove(&s.name)
                    .ok_or_else(|| Error::Internal(format!("output {} missing", s.name)))?;
                Tensor::from_ort(&s.name, &v)
            })
            .collect::<Result<Vec<_>>>()?;
        let t3 = Instant::now();
        Ok((
            out,
            Timing {
                input: t1 - t0,
                infer: t2 - t1,
                output: t3 - t2,
            },
        ))
    }

    /// Requests waiting in the batcher.
    pub fn pending(&self) -> usize {
        self.batcher
            .as_ref()
            .map_or(0, |b| b.depth.load(Ordering::Relaxed))
    }
}

/// A request waiting to be batched.
struct Pending {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
}

impl Pending {
    /// The trailing dimensions of every input: requests that agree can share a batch.
    fn fits_with(&self, other: &Pending) -> bool {
        self.inputs
            .iter()
            .zip(&other.inputs)
            .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// Time per row at each batch size, by powers of two: bucket `b` holds batches of
/// `2^b ..= 2^(b+1) - 1` rows.
#[derive(Debug)]
struct BatchCurve {
    per_row_ns: Vec<f64>,
    runs: u64,
}

impl BatchCurve {
    /// Every so many executions the batcher tries a neighbouring size again.
    const RECHECK: u64 = 64;

    fn new(max_batch_size: usize) -> Self {
        Self {
            per_row_ns: vec![0.0; Self::bucket(max_batch_size.max(1)) + 1],
            runs: 0,
        }
    }

    fn bucket(rows: usize) -> usize {
        (usize::BITS - 1 - rows.max(1).leading_zeros()) as usize
    }

    fn learn(&mut self, rows: usize, took: Duration) {
        let b = Self::bucket(rows).min(self.per_row_ns.len() - 1);
        let x = took.as_nanos() as f64 / rows.max(1) as f64;
        let old = self.per_row_ns[b];
        self.per_row_ns[b] = if old == 0.0 { x } else { 0.8 * old + 0.2 * x };
        self.runs += 1;
    }

    /// The most rows the next batch may hold, and whether it may wait out the queue delay for
    /// them: a larger size being tried takes only what is already queued, so that trying it
    /// never delays a caller.
    fn cap(&self, max_batch_size: usize) -> (usize, bool) {
        let known = |b: &usize| self.per_row_ns[*b] > 0.0;
        let Some(best) = (0..self.per_row_ns.len())
            .filter(known)
            .min_by(|a, b| self.per_row_ns[*a].total_cmp(&self.per_row_ns[*b]))
        else {
            return (max_batch_size, true);
        };
        let top = self.per_row_ns.len() - 1;
        let below = best.checked_sub(1);
        let above = (best < top).then_some(best + 1);
        let unknown = below.filter(|b| !known(b)).or(above.filter(|b| !known(b)));
        let recheck = if self.runs.is_multiple_of(Self::RECHECK) {
            if (self.runs / Self::RECHECK).is_multiple_of(2) {
                below.or(above)
            } else {
                above.or(below)
            }
        } else {
            None
        };
        let b = unknown.or(recheck).unwrap_or(best);
        (((1usize << (b + 1)) - 1).min(max_batch_size), b <= best)
    }
}

/// Holds requests for up to the queue delay and runs them as one batch, on its own thread.
struct Batcher {
    tx: std::sync::mpsc::Sender<Pending>,
    depth: Arc<AtomicUsize>,
    max_queue_size: usize,
    /// The scheduler, until it is spawned.
    start: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    name: String,
}

impl Batcher {
    fn start(
        model: std::sync::Weak<ModelVersion>,
        name: String,
        max_queue_size: usize,
        delay: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&depth);
        Self {
            tx,
            depth,
            max_queue_size,
            start: Mutex::new(Some(Box::new(move || {
                batch_loop(model, rx, d, delay, runtime)
            }))),
            name,
        }
    }

    /// Starts the scheduler thread; it ends when the version is dropped.
    fn spawn(&self) -> Result<()> {
        let Some(run) = self.start.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        let mut name = self.name.clone();
        name.truncate(15);
        std::thread::Builder::new()
            .name(name)
            .spawn(run)
            .map(drop)
            .map_err(|e| Error::Internal(format!("starting the batcher thread: {e}")))
    }

    async fn submit(&self, model: &Arc<ModelVersion>, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let depth = self.depth.fetch_add(1, Ordering::AcqRel);
        if depth >= self.max_queue_size {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted(format!(
                "model {}: {depth} requests are queued, the most it holds is {}",
                model.name, self.max_queue_size
            )));
        }
        model.metrics.pending(&model.labels, 1);
        let (reply, rx) = oneshot::channel();
        let rows = inputs.first().map_or(1, Tensor::rows);
        let pending = Pending {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        if self.tx.send(pending).is_err() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            model.metrics.pending(&model.labels, -1);
            return Err(Error::Unavailable(format!(
                "model {} is unloading",
                model.name
            )));
        }
        let waited = match model
            .config
            .dynamic_batching
            .as_ref()
            .and_then(|b| b.timeout())
        {
            Some(limit) => tokio::time::timeout(limit, rx).await.map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "model {}: not run within its {} µs timeout",
                    model.name,
                    limit.as_micros()
                ))
            })?,
            None => rx.await,
        };
        waited.map_err(|_| Error::Unavailable(format!("model {} is unloading", model.name)))?
    }
}

/// The scheduler thread: waits for a request, then for a free session, gathers what else
/// arrives within the delay (up to the learned cap), and runs the batch here, or on a
/// blocking thread when other sessions can run beside it.
fn batch_loop(
    model: std::sync::Weak<ModelVersion>,
    rx: std::sync::mpsc::Receiver<Pending>,
    depth: Arc<AtomicUsize>,
    delay: Duration,
    runtime: tokio::runtime::Handle,
) {
    use std::sync::mpsc::TryRecvError;
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let Some(m) = model.upgrade() else { return };
        // Wait for a free session first: while every session is busy, requests gather.
        let Ok(permit) = runtime.block_on(Arc::clone(&m.permits).acquire_owned()) else {
            return;
        };
        let (cap, may_wait) = m
            .curve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cap(m.config.max_batch_size);
        let until = if may_wait {
            first.enqueued + delay
        } else {
            first.enqueued
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < cap {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => rx.recv_timeout(left).ok(),
                    _ => None,
                },
            };
            let Some(p) = next else { break };
            if p.reply.is_closed() {
                // Its caller gave up (deadline, cancellation): drop it unrun.
                depth.fetch_sub(1, Ordering::AcqRel);
                m.metrics.pending(&m.labels, -1);
                continue;
            }
            if rows + p.rows > cap || !p.fits_with(&batch[0]) {
                carried = Some(p);
                break;
            }
            rows += p.rows;
            batch.push(p);
        }
        depth.fetch_sub(batch.len(), Ordering::AcqRel);
        m.metrics.pending(&m.labels, -(batch.len() as i64));
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if m.config.instance_count == 1 || m.is_fast() {
            run_batch(&m, batch, permit);
        } else {
            runtime.spawn_blocking(move || run_batch(&m, batch, permit));
        }
    }
}

/// Runs one batch under `permit` and answers each request with its rows of the outputs.
fn run_batch(
    m: &Arc<ModelVersion>,
    mut batch: Vec<Pending>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total: usize = rows.iter().sum();
    let queued = batch[0].enqueued.elapsed();
    let parts: Vec<Vec<Tensor>> = batch
        .iter_mut()
        .map(|p| std::mem::take(&mut p.inputs))
        .collect();
    let started = Instant::now();
    let result = m.with_session(|m, session| {
        let inputs = if parts.len() == 1 {
            parts.into_iter().next().unwrap_or_default()
        } else {
            (0..m.inputs.len())
                .map(|i| {
                    let column: Vec<&Tensor> = parts.iter().map(|p| &p[i]).collect();
                    concat(&m.inputs[i].name, &column)
                })
                .collect::<Result<Vec<_>>>()?
        };
        let (outputs, timing) = m.run_on(session, &inputs)?;
        let per_request: Vec<Vec<Tensor>> = if rows.len() == 1 {
            vec![outputs]
        } else {
            let mut per_output = outputs
                .iter()
                .map(|t| split(t, &rows))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Internal(e.to_string()))?;
            (0..rows.len())
                .map(|i| {
                    per_output
                        .iter_mut()
                        .map(|parts| std::mem::replace(&mut parts[i], empty()))
                        .collect()
                })
                .collect()
        };
        Ok((per_request, timing))
    });
    drop(permit);
    let took = started.elapsed();
    match result {
        Ok((per_request, timing)) => {
            m.curve
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .learn(total, took);
            m.record_execution(batch.len(), total, queued, timing);
            for (p, mine) in batch.into_iter().zip(per_request) {
                let _ = p.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            // Every request of the batch gets the error, with its code.
            for p in batch {
                let _ = p.reply.send(Err(e.replicate()));
            }
        }
    }
}

fn empty() -> Tensor {
    Tensor {
        name: String::new(),
        dtype: DType::F32,
        shape: Vec::new(),
        data: bytes::Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the batcher's choice against a cost model: `per_row(rows)` nanoseconds a row,
    /// with `queued` requests of one row always waiting. Returns the caps it chose.
    fn drive(max: usize, queued: usize, per_row: impl Fn(usize) -> f64, runs: usize) -> Vec<usize> {
        let mut curve = BatchCurve::new(max);
        let mut caps = Vec::new();
        for _ in 0..runs {
            let (cap, _) = curve.cap(max);
            let rows = cap.min(queued);
            curve.learn(
                rows,
                Duration::from_nanos((per_row(rows) * rows as f64) as u64),
            );
            caps.push(cap);
        }
        caps
    }

    #[test]
    fn a_model_that_gains_nothing_from_batching_runs_request_by_request() {
        // The spindle detector on a CPU: a batch of 8 is slower per window than one alone.
        let caps = drive(32, 64, |rows| 52e6 * (1.0 + 0.03 * rows as f64), 200);
        assert_eq!(caps[0], 32, "nothing known: the first batch may be full");
        let settled = &caps[20..];
        let alone = settled.iter().filter(|&&c| c == 1).count();
        assert!(
            alone * 100 >= settled.len() * 95,
            "after learning, at least 95% of batches run alone: {settled:?}"
        );
        assert!(settled.iter().all(|&c| c <= 3), "{settled:?}");
    }

    #[test]
    fn a_model_that_gains_from_batching_gets_full_batches() {
        // A tiny model: 2 µs a call whatever the batch.
        let caps = drive(1024, 64, |rows| 2000.0 / rows as f64, 200);
        let settled = &caps[20..];
        let big = settled.iter().filter(|&&c| c >= 64).count();
        assert!(
            big * 100 >= settled.len() * 95,
            "after learning, batches take every queued request: {settled:?}"
        );
    }

    #[test]
    fn a_cap_never_exceeds_the_maximum() {
        let curve = BatchCurve::new(5);
        assert_eq!(curve.cap(5), (5, true));
        let mut curve = BatchCurve::new(5);
        curve.learn(4, Duration::from_micros(4));
        for _ in 0..200 {
            let (cap, _) = curve.cap(5);
            assert!(cap <= 5);
            curve.learn(cap, Duration::from_micros(1));
        }
    }

    #[test]
    fn trying_a_larger_batch_never_waits_for_it() {
        // One caller at a time: batches of one are all the batcher sees. Trying two must not
        // make that caller wait out the queue delay.
        let mut curve = BatchCurve::new(32);
        curve.learn(1, Duration::from_millis(50));
        for _ in 0..100 {
            let (cap, may_wait) = curve.cap(32);
            assert!(cap == 1 || !may_wait, "cap {cap} waits");
            curve.learn(1, Duration::from_millis(50));
        }
    }
}
