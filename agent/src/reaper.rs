//! Reaping children as PID 1.
//!
//! Every process whose parent dies is re-parented to PID 1, so the agent
//! must collect their exit statuses or they stay zombies. The reaper runs
//! `waitpid(-1, WNOHANG)` on every SIGCHLD. Processes the agent itself starts
//! (containers, execs: later) must not lose their status to it, so:
//!
//! * spawn the child while holding [`Reaper::lock`], then [`ReaperGuard::watch`]
//!   its pid before dropping the guard — the reaper takes the same lock
//!   before calling waitpid, so it cannot reap the child in between;
//! * that spawn lock is not the lock of the recorded statuses: a slow spawn
//!   (up to the container runtime helper's timeout) delays reaping, never
//!   [`Reaper::wait`] or [`Reaper::take_exit`], and the SIGCHLD loop waits
//!   for it on a blocking thread, not on an async worker;
//! * the exit status of a watched pid is kept until [`Reaper::wait`] or
//!   [`Reaper::take_exit`] collects it, and is also broadcast to
//!   [`Reaper::subscribe`]rs;
//! * statuses of unwatched pids (orphans) are logged and dropped.
//!
//! Do not use `tokio::process` or `std::process::Child::wait` in the agent:
//! their own waitpid calls race with this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::broadcast;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

/// One reaped, watched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitEvent {
    pub pid: i32,
    pub status: ExitStatus,
}

#[derive(Debug, Default)]
struct State {
    /// Watched pids: `None` while running, `Some` once reaped and not taken.
    watched: HashMap<i32, Option<ExitStatus>>,
}

/// The shared reaper. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    /// Held by whoever spawns children and by [`Reaper::reap_now`].
    spawn: Arc<Mutex<()>>,
    /// Held only for map updates, never across a system call that blocks.
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<ExitEvent>,
}

/// Held while spawning a child; see the module docs.
pub struct ReaperGuard<'a> {
    _spawn: MutexGuard<'a, ()>,
    reaper: &'a Reaper,
}

impl ReaperGuard<'_> {
    /// Keep the exit status of `pid` for [`Reaper::wait`].
    pub fn watch(&mut self, pid: i32) {
        self.reaper.state().watched.insert(pid, None);
    }
}

impl Default for Reaper {
    fn default() -> Self {
        Self::new()
    }
}

impl Reaper {
    pub fn new() -> Reaper {
        let (events, _) = broadcast::channel(256);
        Reaper {
            spawn: Arc::new(Mutex::new(())),
            state: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map itself is still consistent (single inserts/removes).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock out the reaper while spawning a child.
    pub fn lock(&self) -> ReaperGuard<'_> {
        let spawn = self.spawn.lock().unwrap_or_else(|p| p.into_inner());
        ReaperGuard { _spawn: spawn, reaper: self }
    }

    /// Exit events of watched pids, as they are reaped.
    pub fn subscribe(&self) -> broadcast::Receiver<ExitEvent> {
        self.events.subscribe()
    }

    /// Takes the recorded exit status of a watched `pid`, if it has exited.
    pub fn take_exit(&self, pid: i32) -> Option<ExitStatus> {
        let mut st = self.state();
        match st.watched.get(&pid) {
            Some(Some(status)) => {
                let status = *status;
                st.watched.remove(&pid);
                Some(status)
            }
            _ => None,
        }
    }

    /// Stops watching `pid` (its status will be dropped when reaped).
    pub fn unwatch(&self, pid: i32) {
        self.state().watched.remove(&pid);
    }

    /// Waits for a watched `pid` to exit. `None` if `pid` is not watched.
    pub async fn wait(&self, pid: i32) -> Option<ExitStatus> {
        let mut rx = self.subscribe();
        loop {
            {
                let st = self.state();
                match st.watched.get(&pid) {
                    None => return None,
                    Some(Some(_)) => {
                        drop(st);
                        return self.take_exit(pid);
                    }
                    Some(None) => {}
                }
            }
            match rx.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Reaps every exited child now. Returns how many were reaped. Blocks
    /// while a child is being spawned ([`Reaper::lock`]).
    pub fn reap_now(&self) -> usize {
        let _spawn = self.spawn.lock().unwrap_or_else(|p| p.into_inner());
        let mut reaped = 0;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    (pid.as_raw(), ExitStatus::Signaled { signal: sig as i32, core_dumped: core })
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            };
            reaped += 1;
            let mut st = self.state();
            match st.watched.get_mut(&pid) {
                Some(slot) => {
                    *slot = Some(status);
                    tracing::debug!(pid, ?status, "watched process exited");
                    // No receivers is fine: the status stays in the map.
                    let _ = self.events.send(ExitEvent { pid, status });
                }
                None => tracing::debug!(pid, ?status, "reaped orphan"),
            }
        }
        reaped
    }

    /// Runs the SIGCHLD loop on the current tokio runtime.
    pub fn start(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = self.clone();
        Ok(tokio::spawn(async move {
            // Children that exited before the handler existed, then one
            // round per SIGCHLD (signals that arrive during a round are
            // merged into the next one).
            loop {
                let r = reaper.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || r.reap_now()).await {
                    tracing::error!(error = %e, "reaper round failed");
                }
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        }))
    }
}

/// Tests that wait for children take this: the reaper's test reaps with
/// waitpid(-1) and would steal their statuses.
#[cfg(test)]
pub(crate) static CHILD_TESTS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // The reaper under test does the waiting, not `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn spawn_sh(reaper: &Reaper, script: &str, watch: bool) -> i32 {
        let mut g = reaper.lock();
        let child = std::process::Command::new("/bin/sh").arg("-c").arg(script).spawn().unwrap();
        let pid = child.id() as i32;
        if watch {
            g.watch(pid);
        }
        pid
    }

    // One test only: waitpid(-1) in parallel tests would steal each other's
    // children.
    #[test]
    fn reaps_and_reports_watched_children() {
        let _one = CHILD_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(reaps_and_reports());
    }

    async fn reaps_and_reports() {
        let reaper = Reaper::new();
        let task = reaper.start().unwrap();
        let mut events = reaper.subscribe();

        let a = spawn_sh(&reaper, "exit 3", true);
        let b = spawn_sh(&reaper, "kill -TERM $$", true);
        let orphan = spawn_sh(&reaper, "exit 0", false);

        let wa = tokio::time::timeout(Duration::from_secs(10), reaper.wait(a)).await.unwrap();
        assert_eq!(wa, Some(ExitStatus::Exited(3)));
        let wb = tokio::time::timeout(Duration::from_secs(10), reaper.wait(b)).await.unwrap();
        assert_eq!(wb, Some(ExitStatus::Signaled { signal: libc::SIGTERM, core_dumped: false }));

        // Both watched exits were broadcast.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
                .unwrap();
            seen.push(ev.pid);
        }
        seen.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(seen, want);

        // Taken statuses are gone; the orphan was never recorded.
        assert_eq!(reaper.take_exit(a), None);
        assert_eq!(reaper.wait(orphan).await, None);

        // The orphan was reaped by the reaper (no zombie left in /proc).
        let gone = async {
            while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await.unwrap();
        task.abort();
    }

    #[test]
    fn a_slow_spawn_holds_back_reaping_but_not_the_recorded_statuses() {
        let reaper = Reaper::new();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let r = reaper.clone();
        let spawner = std::thread::spawn(move || {
            let mut g = r.lock();
            g.watch(4242);
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        held_rx.recv().unwrap();
        // With the spawn lock held elsewhere, status lookups still answer.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let r = reaper.clone();
        std::thread::spawn(move || {
            done_tx.send((r.take_exit(4242), r.take_exit(1))).unwrap();
        });
        let got = done_rx.recv_timeout(Duration::from_secs(10));
        release_tx.send(()).unwrap();
        spawner.join().unwrap();
        assert_eq!(got.expect("take_exit blocked behind a spawn"), (None, None));
        reaper.unwatch(4242);
    }
}
