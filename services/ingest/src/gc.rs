//! Garbage collection: uploads past their time to live (unfinished ones, and finished ones
//! whose staged bytes a crash kept from being deleted), writes whose commit never came, and
//! files a compaction replaced once no snapshot reads them.
//!
//! Both are found through the catalog, never by listing the data, so a recording that is
//! committed can never be mistaken for garbage: its pending write was cleared in the same
//! transaction that made it visible.

use std::sync::Arc;
use std::time::Duration;

use gbrain_storage::staging::delete_prefix;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use crate::{Ingest, Result};

/// How long a write may stay uncommitted before its objects count as garbage. Conversions
/// take seconds; an hour leaves room for the slowest object store.
pub const WRITE_GRACE: Duration = Duration::from_secs(3600);

/// What one pass collected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub uploads: usize,
    pub writes: usize,
    /// Files replaced by compactions.
    pub replaced: usize,
}

impl Ingest {
    /// One pass over expired uploads and abandoned writes.
    pub async fn collect_garbage(&self) -> Result<GcReport> {
        let now = self.clock.now_ns();
        let mut report = GcReport::default();
        let upload_cutoff = now - self.config.upload_ttl.as_nanos() as i64;
        for up in self.catalog.expired_uploads(upload_cutoff).await? {
            // A stream writing it here now keeps it, however old.
            if self.sessions.is_active(&up.tenant, &up.upload_id) {
                continue;
            }
            self.staging.delete(&up.tenant, &up.upload_id).await?;
            self.catalog
                .delete_upload(&up.tenant, &up.upload_id)
                .await?;
            self.sessions.forget(&up.tenant, &up.upload_id);
            report.uploads += 1;
        }
        let grace = WRITE_GRACE.min(self.config.upload_ttl);
        let write_cutoff = now - grace.as_nanos() as i64;
        for w in self.catalog.abandoned_writes(write_cutoff).await? {
            for prefix in &w.prefixes {
                delete_prefix(&self.store, &prefix.as_str().into()).await?;
            }
            self.catalog.end_write(&w.write_id).await?;
            report.writes += 1;
        }
        // Replaced files wait as long as writes do, for queries that planned with them.
        for (tenant, path) in self.catalog.removed_files(write_cutoff, 10_000).await? {
            match self.store.delete(&path.as_str().into()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(gbrain_storage::Error::from(e).into()),
            }
            self.catalog.forget_file(&tenant, &path).await?;
            report.replaced += 1;
        }
        if report != GcReport::default() {
            self.metrics
                .gc_objects_deleted
                .inc_by((report.uploads + report.writes + report.replaced) as u64);
            tracing::info!(
                uploads = report.uploads,
                writes = report.writes,
                replaced = report.replaced,
                "garbage collected"
            );
        }
        Ok(report)
    }
}

/// Collects garbage every `interval` until `shutdown`.
pub async fn run_gc(ingest: Arc<Ingest>, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = ingest.collect_garbage().await {
            tracing::warn!(error = %e, "garbage collection failed; retrying next pass");
        }
    }
}
