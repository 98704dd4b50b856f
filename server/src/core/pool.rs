//! The CPU pool: a dedicated rayon pool for FDE encoding, search and decoding, bridged to async callers.
//!
//! Tokio's workers must stay free to accept connections and move bytes; a Chamfer re-rank or a batch encode
//! takes milliseconds of pure CPU, so it runs here and the handler awaits a oneshot. A panic in a task becomes
//! an `Internal` error for that request instead of taking a worker (or the process) down.
use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::sync::oneshot;

use crate::error::ServiceError;

/// A named rayon pool.
pub struct CpuPool {
    pool: rayon::ThreadPool,
}

impl CpuPool {
    /// Starts `threads` threads named `chamfer-cpu-N`.
    pub fn new(threads: usize) -> Result<CpuPool, ServiceError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("chamfer-cpu-{i}"))
            .build()
            .map_err(|e| ServiceError::Internal(format!("cannot start the CPU pool: {e}")))?;
        Ok(CpuPool { pool })
    }

    /// Runs `f` on the pool and awaits its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.pool.spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
                Err(ServiceError::Internal(format!(
                    "a CPU task panicked: {}",
                    panic_message(&p)
                )))
            });
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| ServiceError::Internal("a CPU task was dropped".into()))?
    }

    /// Runs `f` inside the pool (so nested rayon calls use it) on the current thread.
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
