//! Small helpers the container modules share: the clock, the
//! poison-tolerant lock and the error of a failed blocking task.

use std::sync::{Mutex, MutexGuard};

use super::error::ContainerError;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Locks `m`, also when a thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error of a `spawn_blocking` task that did not finish.
pub fn blocking_err(e: tokio::task::JoinError) -> ContainerError {
    ContainerError::Runtime(format!("worker thread failed: {e}"))
}
