//! Coordinator metrics, with units in their names. No label carries a tenant, a session or a
//! subject.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct CoordinatorMetrics {
    pub sessions_active: Gauge,
    pub windows: Counter,
    pub window_errors: Counter,
    pub outcomes: Counter,
    /// A window's last sample acknowledged to its feedback sent.
    pub window_seconds: Histogram,
}

impl CoordinatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("gbrain_coordinator");
        r.register(
            "sessions_active",
            "Loop sessions running now",
            m.sessions_active.clone(),
        );
        r.register(
            "windows",
            "Windows decoded with a prediction",
            m.windows.clone(),
        );
        r.register(
            "window_errors",
            "Windows whose feedback carries an error (no node answered by the deadline)",
            m.window_errors.clone(),
        );
        r.register(
            "outcomes",
            "Windows whose true class was reported",
            m.outcomes.clone(),
        );
        r.register(
            "window_duration_seconds",
            "From a window's last sample received by ingest to its feedback sent",
            m.window_seconds.clone(),
        );
        m
    }

    /// Metrics that go nowhere (for tests and tools).
    pub fn unregistered() -> Self {
        Self {
            sessions_active: Gauge::default(),
            windows: Counter::default(),
            window_errors: Counter::default(),
            outcomes: Counter::default(),
            // 100 µs to about 3 s.
            window_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
        }
    }
}
