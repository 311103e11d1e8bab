//! Dedicated runtimes for CPU-heavy work, so that it never stalls the gRPC runtime that serves
//! uploads, health checks, live streams and the closed loop (InfluxDB's `DedicatedExecutor`).
//!
//! - [`Executor::new`]: threads at the process's own priority, for work a user waits on
//!   (DataFusion queries).
//! - [`Executor::background`]: threads at the lowest CPU priority (nice 19 on Linux), for work
//!   nobody waits on by the millisecond: encoding, writing and merging live flushes. On a busy
//!   machine the scheduler then runs the real-time path (chunk → window → feedback) first and
//!   gives the background what is left, instead of slicing time evenly between them (RocksDB
//!   lowers its compaction threads the same way). Background work still gets every idle
//!   cycle; when there are none, live streams' held samples grow to their bound and acks slow
//!   down, as they do for a slow disk.

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// The nice value of background threads: the lowest priority (under contention a nice-19
/// thread gets about 1.5% of the CPU a nice-0 thread gets).
pub const BACKGROUND_NICE: i32 = 19;

#[derive(Debug)]
pub struct Executor {
    handle: Handle,
    /// Held so that dropping the executor shuts the runtime down without blocking.
    runtime: Mutex<Option<Runtime>>,
}

impl Executor {
    /// A runtime of `threads` workers, named `gbrain-<name>`, at the process's priority.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        Self::build(name, threads, None)
    }

    /// A runtime of `threads` workers whose threads, its blocking ones included, run at the
    /// lowest CPU priority ([`BACKGROUND_NICE`]). Where the priority cannot be lowered (not
    /// Linux), they run at the process's own and say so once.
    pub fn background(name: &str, threads: usize) -> std::io::Result<Self> {
        Self::build(name, threads, Some(BACKGROUND_NICE))
    }

    fn build(name: &str, threads: usize, nice: Option<i32>) -> std::io::Result<Self> {
        let mut builder = Builder::new_multi_thread();
        builder
            .worker_threads(threads.max(1))
            .thread_name(format!("gbrain-{name}"))
            .enable_all();
        if let Some(nice) = nice {
            let name = name.to_string();
            builder.on_thread_start(move || lower_priority(&name, nice));
        }
        let runtime = builder.build()?;
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

    /// The runtime's handle: its `spawn_blocking` runs blocking work on the executor's
    /// blocking threads, also from inside futures running elsewhere.
    pub fn handle(&self) -> &Handle {
        &self.handle
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

/// Sets the calling thread's nice value (on Linux a thread's nice value is its own), unless it
/// is already at least that low.
#[cfg(target_os = "linux")]
fn lower_priority(name: &str, nice: i32) {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if current < nice
        && let Err(e) = rustix::process::setpriority_process(Some(tid), nice)
    {
        warn_once(name, &e.to_string());
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(name: &str, _nice: i32) {
    warn_once(name, "thread priorities are only lowered on Linux");
}

fn warn_once(name: &str, reason: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            executor = name,
            reason,
            "background threads run at normal priority"
        );
    });
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_threads_run_at_a_lower_priority() {
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let executor = Executor::background("test-bg", 1).unwrap();
        let on = |tid: rustix::process::Pid| rustix::process::getpriority_process(Some(tid));
        let worker = executor
            .spawn(async move { on(rustix::thread::gettid()) })
            .await
            .unwrap()
            .unwrap();
        let blocking = executor
            .handle()
            .spawn_blocking(move || on(rustix::thread::gettid()))
            .await
            .unwrap()
            .unwrap();
        let expected = own.max(BACKGROUND_NICE);
        assert_eq!((worker, blocking), (expected, expected));
        // This thread (not the executor's) keeps its priority.
        assert_eq!(
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            own
        );
    }
}
