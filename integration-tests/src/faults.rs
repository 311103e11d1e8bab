//! An object store that fails on command, to play crashes and outages in-process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

type Rule = Box<dyn Fn(&Path) -> bool + Send + Sync>;

/// Wraps a store: a put fails when `fail_put` says so (while `enabled`), and every delete fails
/// while `fail_deletes` is set.
pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    fail_put: Rule,
    pub enabled: AtomicBool,
    pub fail_deletes: AtomicBool,
}

impl Faulty {
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        fail_put: impl Fn(&Path) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            fail_put: Box::new(fail_put),
            enabled: AtomicBool::new(true),
            fail_deletes: AtomicBool::new(false),
        }
    }

    /// Stops every fault.
    pub fn heal(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.fail_deletes.store(false, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: "injected fault".into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.enabled.load(Ordering::SeqCst) && (self.fail_put)(location) {
            return Err(injected());
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return locations.map(|_| Err(injected())).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
