//! Poison-tolerant locking, the one helper every carapace VMM thread uses.
//!
//! A poisoned mutex means another thread panicked while holding it. In the VMM process a panic
//! aborts (see `carapace_vmm::install_panic_abort`), so poisoning only shows in library use and
//! tests; there the state behind the lock is still the best there is, and a thread must not
//! panic because another one did.

use std::sync::{Condvar, Mutex, MutexGuard, WaitTimeoutResult};
use std::time::Duration;

/// Locks `m`, poisoned or not.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait_timeout_while`], poisoned or not.
pub fn wait_timeout_while<'a, T, F>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: F,
) -> (MutexGuard<'a, T>, WaitTimeoutResult)
where
    F: FnMut(&mut T) -> bool,
{
    cond.wait_timeout_while(guard, timeout, condition).unwrap_or_else(|p| p.into_inner())
}

/// [`Condvar::wait`], poisoned or not.
pub fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn poisoned_mutex_still_locks() {
        let m = Arc::new(Mutex::new(7));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
