//! One loaded model version: its sessions, its tensors' specs, its dynamic batcher and its
//! statistics.
//!
//! Sessions run on blocking threads, never on the IO runtime. `Session::run` takes `&mut`, so
//! a version holds `instance_count` sessions and a semaphore hands them out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::ValueType;
use tokio::sync::{Semaphore, mpsc, oneshot};

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
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<ModelVersion>| {
            let batcher = config
                .dynamic_batching
                .as_ref()
                .map(|b| Batcher::start(me.clone(), b.max_queue_size, b.max_queue_delay()));
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
                stats: Mutex::new(Stats::default()),
                metrics,
                labels,
            }
        }))
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
                let r = self.execute(inputs, permit).await;
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

    fn record_execution(&self, requests: usize, rows: usize, queued: Duration, t: Timing) {
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

    /// Runs one execution on a free session, on a blocking thread.
    async fn execute(
        self: &Arc<Self>,
        inputs: Vec<Tensor>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(Vec<Tensor>, Timing)> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut session = this
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or_else(|| Error::Internal("no free session under a permit".into()))?;
            let result = this.run_on(&mut session, &inputs);
            this.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(session);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("inference task: {e}")))?
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

/// Holds requests for up to the queue delay and runs them as one batch.
struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    depth: Arc<AtomicUsize>,
    max_queue_size: usize,
}

impl Batcher {
    fn start(model: std::sync::Weak<ModelVersion>, max_queue_size: usize, delay: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        tokio::spawn(batch_loop(model, rx, Arc::clone(&depth), delay));
        Self {
            tx,
            depth,
            max_queue_size,
        }
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

async fn batch_loop(
    model: std::sync::Weak<ModelVersion>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    depth: Arc<AtomicUsize>,
    delay: Duration,
) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Some(m) = model.upgrade() else { return };
        // Wait for a free session first: while every session is busy, requests gather.
        let Ok(permit) = Arc::clone(&m.permits).acquire_owned().await else {
            return;
        };
        let max_rows = m.config.max_batch_size;
        let mut rows = first.rows;
        let mut batch = vec![first];
        let until = tokio::time::Instant::from_std(batch[0].enqueued + delay);
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::time::timeout_at(until, rx.recv())
                    .await
                    .unwrap_or_default(),
            };
            let Some(p) = next else { break };
            if p.reply.is_closed() {
                // Its caller gave up (deadline, cancellation): drop it unrun.
                depth.fetch_sub(1, Ordering::AcqRel);
                m.metrics.pending(&m.labels, -1);
                continue;
            }
            if rows + p.rows > max_rows || !p.fits_with(&batch[0]) {
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
        let m2 = Arc::clone(&m);
        tokio::spawn(async move { run_batch(m2, batch, permit).await });
    }
}

async fn run_batch(
    m: Arc<ModelVersion>,
    batch: Vec<Pending>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let queued = batch[0].enqueued.elapsed();
    let inputs = if batch.len() == 1 {
        Ok(batch[0].inputs.clone())
    } else {
        (0..m.inputs.len())
            .map(|i| {
                let parts: Vec<&Tensor> = batch.iter().map(|p| &p.inputs[i]).collect();
                concat(&m.inputs[i].name, &parts)
            })
            .collect::<Result<Vec<_>>>()
    };
    let result = match inputs {
        Ok(inputs) => m.execute(inputs, permit).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((outputs, timing)) => {
            m.record_execution(batch.len(), rows.iter().sum(), queued, timing);
            if batch.len() == 1 {
                if let Some(p) = batch.into_iter().next() {
                    let _ = p.reply.send(Ok(outputs));
                }
                return;
            }
            let split_outputs = outputs
                .iter()
                .map(|t| split(t, &rows))
                .collect::<Result<Vec<_>>>();
            match split_outputs {
                Ok(mut per_output) => {
                    for (i, p) in batch.into_iter().enumerate() {
                        let mine = per_output
                            .iter_mut()
                            .map(|parts| std::mem::replace(&mut parts[i], empty()))
                            .collect();
                        let _ = p.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for p in batch {
                        let _ = p.reply.send(Err(Error::Internal(message.clone())));
                    }
                }
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
