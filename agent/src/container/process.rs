//! One process the agent started in a container (init or exec): its pid,
//! its pipes and its exit, recorded once the reaper collected it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use carapace_agent_client::pb::{ExitReason, WaitProcessResponse};
use tokio::sync::watch;

use super::cgroup;
use super::stdio::ProcessIo;
use crate::reaper::{ExitStatus, Reaper};

pub struct Proc {
    pub pid: i32,
    pub started_at_ms: AtomicU64,
    pub io: ProcessIo,
    exit: watch::Sender<Option<WaitProcessResponse>>,
    /// Set when the agent SIGKILLed it after a stop grace period.
    pub killed: AtomicBool,
}

/// Exit code and reason the way Kubernetes reports them.
pub fn describe(status: ExitStatus, oom_killed: bool, killed: bool) -> (i32, i32, ExitReason) {
    let (code, sig) = match status {
        ExitStatus::Exited(c) => (c, 0),
        ExitStatus::Signaled { signal, .. } => (128 + signal, signal),
    };
    let reason = if oom_killed {
        ExitReason::OomKilled
    } else if killed {
        ExitReason::Killed
    } else if code == 0 {
        ExitReason::Completed
    } else {
        ExitReason::Error
    };
    (code, sig, reason)
}

impl Proc {
    pub fn new(pid: i32, io: ProcessIo) -> Arc<Proc> {
        let (exit, _) = watch::channel(None);
        Arc::new(Proc {
            pid,
            started_at_ms: AtomicU64::new(0),
            io,
            exit,
            killed: AtomicBool::new(false),
        })
    }

    /// Waits (in a task) for the reaper to collect the process and records
    /// the exit. `oom_cgroup`: the cgroup whose `memory.events` decide
    /// OOMKilled (the container's init only).
    pub fn spawn_waiter(self: &Arc<Self>, reaper: Reaper, oom_cgroup: Option<PathBuf>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let status = reaper.wait(me.pid).await;
            let status = status.unwrap_or_else(|| {
                tracing::warn!(pid = me.pid, "reaper lost the process; reporting exit 255");
                ExitStatus::Exited(255)
            });
            let oom = oom_cgroup.map(|d| cgroup::oom_kills(&d) > 0).unwrap_or(false);
            let (exit_code, signal, reason) =
                describe(status, oom, me.killed.load(Ordering::SeqCst));
            let why = reason.as_str_name();
            tracing::info!(pid = me.pid, exit_code, reason = why, "container process exited");
            me.exit.send_replace(Some(WaitProcessResponse {
                exit_code,
                signal,
                exit_reason: reason as i32,
                started_at_unix_ms: me.started_at_ms.load(Ordering::SeqCst),
                finished_at_unix_ms: super::common::now_unix_ms(),
            }));
        });
    }

    pub fn exited(&self) -> Option<WaitProcessResponse> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> WaitProcessResponse {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self: cannot happen while we hold self.
                return WaitProcessResponse {
                    exit_code: 255,
                    exit_reason: ExitReason::Unspecified as i32,
                    ..Default::default()
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(describe(ExitStatus::Exited(0), false, false), (0, 0, ExitReason::Completed));
        assert_eq!(describe(ExitStatus::Exited(3), false, false), (3, 0, ExitReason::Error));
        let k = ExitStatus::Signaled { signal: 9, core_dumped: false };
        assert_eq!(describe(k, true, false), (137, 9, ExitReason::OomKilled));
        assert_eq!(describe(k, false, true), (137, 9, ExitReason::Killed));
    }
}
