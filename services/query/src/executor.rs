//! A dedicated runtime for DataFusion execution, so that CPU-heavy queries never stall the
//! gRPC runtime that serves uploads, health checks and other queries' streams
//! (InfluxDB's `DedicatedExecutor`).

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct Executor {
    handle: Handle,
    /// Held so that dropping the executor shuts the runtime down without blocking.
    runtime: Mutex<Option<Runtime>>,
}

impl Executor {
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(format!("gbrain-{name}"))
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Runs `fut` on the executor's threads.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let runtime = match self.runtime.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_on_its_own_threads_and_drops_inside_async_code() {
        let executor = Executor::new("test", 1).unwrap();
        let name = executor
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("gbrain-test"));
        drop(executor);
    }
}
