//! Ingest metrics, with units in their names. Labels never carry tenant data beyond the
//! outcome of an operation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug)]
pub struct IngestMetrics {
    pub uploads: Family<OutcomeLabels, Counter>,
    pub upload_bytes: Counter,
    pub uploads_active: Gauge,
    pub source_bytes: Counter,
    pub stored_bytes: Counter,
    pub samples: Counter,
    pub events: Counter,
    pub convert_seconds: Histogram,
    pub gc_objects_deleted: Counter,
    pub live: LiveMetrics,
}

/// Live streams: the write-ahead log and the flushes to Parquet.
#[derive(Clone, Debug)]
pub struct LiveMetrics {
    /// Each write-and-sync round of the write-ahead log (acks wait for it).
    pub wal_sync_seconds: Histogram,
    /// Each flush pass over every stream.
    pub flush_seconds: Histogram,
    /// Parquet files written by flushes and compactions.
    pub files: Counter,
    /// Values (samples times channels) acknowledged and not yet in Parquet.
    pub held_values: Gauge,
}

impl Default for LiveMetrics {
    fn default() -> Self {
        Self {
            wal_sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            files: Counter::default(),
            held_values: Gauge::default(),
        }
    }
}

impl IngestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            uploads: Family::default(),
            upload_bytes: Counter::default(),
            uploads_active: Gauge::default(),
            source_bytes: Counter::default(),
            stored_bytes: Counter::default(),
            samples: Counter::default(),
            events: Counter::default(),
            convert_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            gc_objects_deleted: Counter::default(),
            live: LiveMetrics::default(),
        };
        let r = registry.sub_registry_with_prefix("gbrain_ingest");
        r.register(
            "uploads",
            "Finished uploads by outcome (committed, deduplicated, rejected, failed)",
            m.uploads.clone(),
        );
        r.register(
            "upload_bytes",
            "Bytes received in upload chunks",
            m.upload_bytes.clone(),
        );
        r.register(
            "uploads_active",
            "Upload streams open now",
            m.uploads_active.clone(),
        );
        r.register(
            "source_bytes",
            "Bytes of committed source files",
            m.source_bytes.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes stored for committed recordings",
            m.stored_bytes.clone(),
        );
        r.register("samples", "Samples committed", m.samples.clone());
        r.register("events", "Events committed", m.events.clone());
        r.register(
            "convert_duration_seconds",
            "Time from a finished upload to its committed recording",
            m.convert_seconds.clone(),
        );
        r.register(
            "gc_objects_deleted",
            "Objects of interrupted uploads and writes collected",
            m.gc_objects_deleted.clone(),
        );
        r.register(
            "wal_sync_duration_seconds",
            "Write-ahead log write-and-sync rounds (live acks wait for one)",
            m.live.wal_sync_seconds.clone(),
        );
        r.register(
            "live_flush_duration_seconds",
            "Passes flushing live streams' held samples to Parquet",
            m.live.flush_seconds.clone(),
        );
        r.register(
            "live_files_written",
            "Parquet files written by live-stream flushes and compactions",
            m.live.files.clone(),
        );
        r.register(
            "live_held_values",
            "Live values (samples times channels) acknowledged and not yet in Parquet",
            m.live.held_values.clone(),
        );
        m
    }
}
