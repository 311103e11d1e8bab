//! Inference metrics, with units in their names. The `model` label is the model's name, which
//! operators choose; no tensor data reaches a metric.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub outcome: &'static str,
}

fn latency() -> Histogram {
    // 10 µs to about 84 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 24))
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

#[derive(Clone, Debug)]
pub struct InferenceMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Requests waiting in a model's batcher: the autoscaling signal.
    pub pending_requests: Family<ModelLabels, Gauge>,
    pub batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub queue_seconds: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub compute_seconds: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub loaded_versions: Gauge,
}

impl Default for InferenceMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            pending_requests: Family::default(),
            batch_size: Family::new_with_constructor(batch_sizes),
            queue_seconds: Family::new_with_constructor(latency),
            compute_seconds: Family::new_with_constructor(latency),
            loaded_versions: Gauge::default(),
        }
    }
}

impl InferenceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("gbrain_inference");
        r.register(
            "requests",
            "Finished inference requests by model and outcome (success, failure)",
            m.requests.clone(),
        );
        r.register(
            "pending_requests",
            "Requests waiting for a batch, per model: scale on this",
            m.pending_requests.clone(),
        );
        r.register(
            "batch_size",
            "Items per model execution",
            m.batch_size.clone(),
        );
        r.register(
            "queue_seconds",
            "Time a request waited before its execution began",
            m.queue_seconds.clone(),
        );
        r.register(
            "compute_seconds",
            "Time ONNX Runtime took for one execution",
            m.compute_seconds.clone(),
        );
        r.register(
            "loaded_versions",
            "Model versions loaded and ready",
            m.loaded_versions.clone(),
        );
        m
    }

    pub fn request(&self, labels: &ModelLabels, ok: bool) {
        self.requests
            .get_or_create(&RequestLabels {
                model: labels.model.clone(),
                outcome: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    pub fn pending(&self, labels: &ModelLabels, delta: i64) {
        self.pending_requests.get_or_create(labels).inc_by(delta);
    }

    pub fn executed(&self, labels: &ModelLabels, rows: usize, queued: Duration, compute: Duration) {
        self.batch_size.get_or_create(labels).observe(rows as f64);
        self.queue_seconds
            .get_or_create(labels)
            .observe(queued.as_secs_f64());
        self.compute_seconds
            .get_or_create(labels)
            .observe(compute.as_secs_f64());
    }
}
