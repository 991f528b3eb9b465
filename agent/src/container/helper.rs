//! libcontainer's process-creating calls, in a single-threaded helper
//! process.
//!
//! libcontainer creates a container (and an exec) by cloning an
//! intermediate process from the calling process. The agent is a
//! multi-threaded tokio program: a clone child gets a copy of whatever lock
//! another thread held at that instant (an allocator or stdio lock, say)
//! and, when it takes that lock, waits forever. Then `build()` never
//! returns, the agent stays blocked holding the reaper's spawn lock, and
//! every later RPC hangs. So the agent never calls `build()` itself: it
//! runs `/proc/self/exe` with [`HELPER_ARG`] (a fresh process with one
//! thread), which does the call and exits.
//!
//! The helper reads one [`BuildRequest`] (JSON) on stdin, gets the new
//! process's stdio pipes as fds 3, 4 and 5 (or a console socket path), and
//! prints one [`BuildResponse`] (JSON) on stdout. The container's process is
//! a child of the helper; when the helper exits it is re-parented to the
//! agent (PID 1). The agent holds [`Reaper::lock`] from before the helper
//! starts until it has reaped the helper and watched the new pid, so the
//! reaper neither steals the helper's status nor drops the new process's.
//! A helper that does not finish within [`HELPER_TIMEOUT`] is killed with
//! its process group: the call fails, the agent goes on.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::ContainerError;
use super::seccomp::ExecSeccomp;
use super::stdio::ChildStdio;
use super::youki;
use crate::reaper::Reaper;

/// The first argument that makes `carapace-agent` the helper.
pub const HELPER_ARG: &str = "__carapace-runtime-helper";

/// How long one helper may take before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests and responses are small; anything larger is refused.
const MAX_MESSAGE: u64 = 4 << 20;

/// The fds the helper finds the process's stdin, stdout and stderr on.
const STDIO_FDS: [RawFd; 3] = [3, 4, 5];

/// What the helper creates.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOp {
    /// A container from `bundle/config.json`, waiting for start.
    Create { bundle: PathBuf },
    /// One more process in a running container.
    Exec { process_file: PathBuf, seccomp: Option<Box<ExecSeccomp>> },
}

/// One helper's job.
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildRequest {
    pub id: String,
    pub state_root: PathBuf,
    /// `Some`: the process gets a terminal whose master is sent over this
    /// socket; `None`: its stdio are the helper's fds 3, 4 and 5.
    pub console_socket: Option<PathBuf>,
    pub op: BuildOp,
}

/// The helper's answer.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildResponse {
    /// The new process (container init or exec).
    Pid(i32),
    /// libcontainer's error with its sources.
    Error(String),
}

/// Runs `req` in a helper process with `stdio`. Returns the new process's
/// pid, watched by `reaper`.
pub fn run(reaper: &Reaper, req: &BuildRequest, stdio: ChildStdio) -> Result<i32, ContainerError> {
    let what = match req.op {
        BuildOp::Create { .. } => "create",
        BuildOp::Exec { .. } => "exec",
    };
    let body = serde_json::to_vec(req)
        .map_err(|e| ContainerError::Runtime(format!("{what}: encode helper request: {e}")))?;
    // Above the fds the child's stdio are moved to, and closed on exec:
    // only the dup2'd copies reach the helper.
    let fds = match &stdio {
        ChildStdio::Pipes { stdin, stdout, stderr } => {
            let high = |fd: &OwnedFd| {
                nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))
                    // SAFETY: a new fd that nothing else owns.
                    .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
                    .map_err(|e| ContainerError::io("dup stdio for the helper", e.into()))
            };
            Some([high(stdin)?, high(stdout)?, high(stderr)?])
        }
        ChildStdio::Console { .. } => None,
    };
    drop(stdio);

    let mut guard = reaper.lock();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let Some(fds) = &fds {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for (src, dst) in raw.iter().zip(STDIO_FDS) {
                    if libc::dup2(*src, dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ContainerError::io(format!("{what}: start the runtime helper"), e))?;
    drop(fds);
    let pid = Pid::from_raw(child.id() as i32);
    let written = child.stdin.take().map(|mut w| w.write_all(&body));
    let mut stdout = child.stdout.take();
    let status = wait_exit(pid, HELPER_TIMEOUT);
    let out = match (&status, stdout.as_mut()) {
        (Ok(_), Some(r)) => read_available(r),
        _ => Vec::new(),
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(e.context(what));
        }
    };
    let resp = parse_response(&out, status);
    let pid = match resp {
        Ok(BuildResponse::Pid(p)) => p,
        Ok(BuildResponse::Error(msg)) => return Err(youki::classify(what, &msg)),
        Err(msg) => {
            let w = match written {
                Some(Err(e)) => format!(" (request not delivered: {e})"),
                _ => String::new(),
            };
            return Err(ContainerError::Runtime(format!("{what}: runtime helper: {msg}{w}")));
        }
    };
    guard.watch(pid);
    drop(guard);
    Ok(pid)
}

/// A helper wait that ran out.
#[derive(Debug)]
struct HelperWaitError(String);

impl HelperWaitError {
    fn context(self, what: &str) -> ContainerError {
        ContainerError::Runtime(format!("{what}: runtime helper {}", self.0))
    }
}

/// Waits for `pid` (a child) to exit, at most `timeout`.
fn wait_exit(pid: Pid, timeout: Duration) -> Result<WaitStatus, HelperWaitError> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(200);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(s),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(HelperWaitError(format!("cannot be waited for: {e}"))),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HelperWaitError(format!(
                "did not finish within {}s; killed",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// What the exited helper left in its stdout pipe. Non-blocking: the new
/// process might hold the write end too.
fn read_available(r: &mut std::process::ChildStdout) -> Vec<u8> {
    let _ = nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut out = Vec::new();
    let _ = r.take(MAX_MESSAGE).read_to_end(&mut out);
    out
}

/// The helper's answer, or why there is none.
fn parse_response(out: &[u8], status: WaitStatus) -> Result<BuildResponse, String> {
    match serde_json::from_slice::<BuildResponse>(out) {
        Ok(r) => Ok(r),
        Err(_) if out.is_empty() => Err(format!("gave no answer ({})", describe(status))),
        Err(e) => Err(format!("unreadable answer ({e}; {})", describe(status))),
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// The helper process: `carapace-agent __carapace-runtime-helper`. Returns
/// the exit code.
pub fn helper_main() -> i32 {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_MESSAGE).read_to_end(&mut body) {
        return answer(&BuildResponse::Error(format!("read request: {e}")));
    }
    let req: BuildRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return answer(&BuildResponse::Error(format!("parse request: {e}"))),
    };
    let stdio = match req.console_socket {
        Some(socket) => ChildStdio::Console { socket },
        // SAFETY: the agent put the process's stdio on these fds for us;
        // nothing else in this process owns them.
        None => unsafe {
            ChildStdio::Pipes {
                stdin: OwnedFd::from_raw_fd(STDIO_FDS[0]),
                stdout: OwnedFd::from_raw_fd(STDIO_FDS[1]),
                stderr: OwnedFd::from_raw_fd(STDIO_FDS[2]),
            }
        },
    };
    let r = match req.op {
        BuildOp::Create { bundle } => youki::create_here(&req.id, &req.state_root, &bundle, stdio),
        BuildOp::Exec { process_file, seccomp } => {
            youki::exec_here(&req.id, &req.state_root, process_file, seccomp.map(|b| *b), stdio)
        }
    };
    answer(&match r {
        Ok(pid) => BuildResponse::Pid(pid),
        Err(msg) => BuildResponse::Error(msg),
    })
}

fn answer(resp: &BuildResponse) -> i32 {
    let Ok(text) = serde_json::to_vec(resp) else { return 3 };
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_json() {
        let req = BuildRequest {
            id: "c1".into(),
            state_root: "/run/x".into(),
            console_socket: Some("/run/x/c.sock".into()),
            op: BuildOp::Exec { process_file: "/b/p.json".into(), seccomp: None },
        };
        let text = serde_json::to_string(&req).unwrap();
        let back: BuildRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id, "c1");
        assert!(matches!(back.op, BuildOp::Exec { seccomp: None, .. }));
        let a = serde_json::to_vec(&BuildResponse::Pid(42)).unwrap();
        assert_eq!(parse_response(&a, WaitStatus::Exited(Pid::from_raw(1), 0)).unwrap(), {
            BuildResponse::Pid(42)
        });
    }

    #[test]
    fn a_helper_without_an_answer_says_how_it_ended() {
        let st = WaitStatus::Signaled(Pid::from_raw(1), nix::sys::signal::Signal::SIGSEGV, false);
        let e = parse_response(b"", st).unwrap_err();
        assert!(e.contains("no answer") && e.contains("SIGSEGV"), "{e}");
        let e = parse_response(b"{\"pid\":", WaitStatus::Exited(Pid::from_raw(1), 0)).unwrap_err();
        assert!(e.contains("unreadable answer") && e.contains("exit status 0"), "{e}");
    }

    // wait_exit is what waits for the child here.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn a_helper_that_overstays_is_reported_and_one_that_exits_is_waited_for() {
        let _one = crate::reaper::CHILD_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let child = Command::new("/bin/sh").arg("-c").arg("sleep 5").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let e = wait_exit(pid, Duration::from_millis(50)).unwrap_err();
        assert!(e.0.contains("did not finish within"), "{}", e.0);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let st = wait_exit(pid, Duration::from_secs(10)).unwrap();
        assert!(matches!(st, WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)));
    }
}
