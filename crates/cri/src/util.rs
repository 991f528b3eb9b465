//! Small helpers the sandbox and container parts share: time, map conversion, the CRI state of
//! a record, and the poison-tolerant lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::procfs;
use crate::record::{ContainerPhase, ContainerRecord, SandboxPhase, SandboxRecord};

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch (as the agent reports times) in nanoseconds; now when the
/// agent gave none.
pub fn nanos_of_unix_ms(ms: u64) -> i64 {
    if ms > 0 {
        i64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
    } else {
        now_nanos()
    }
}

/// A record's ordered map as the hash map CRI messages carry.
pub fn hash_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Locks `m`; a panic in another holder does not make the data unusable (every writer
/// replaces whole values).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a record's sandbox is ready now: recorded ready and its VMM alive.
pub fn sandbox_state(rec: &SandboxRecord) -> cri::PodSandboxState {
    let alive = rec.vmm.as_ref().is_some_and(procfs::is_alive);
    if rec.phase == SandboxPhase::Ready && alive {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

/// The CRI state of a container record.
pub fn container_state(rec: &ContainerRecord) -> cri::ContainerState {
    match rec.phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_times_become_nanoseconds() {
        assert_eq!(nanos_of_unix_ms(5), 5_000_000);
        assert!(nanos_of_unix_ms(0) > 0, "no time from the agent: now");
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 1);
    }
}
