//! Legacy devices and the buses that route vCPU exits to devices.

pub mod i8042;
pub mod mmio_bus;
pub mod pio_bus;
pub mod serial;
pub mod virtio;

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if another thread panicked while holding it (the device state is still the
/// best we have; a VMM thread must not panic because another one did).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
