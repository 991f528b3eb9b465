//! Ending the guest: stop remaining processes, sync, restart.
//!
//! The VMM treats the guest's reset (i8042 pulse from
//! reboot(LINUX_REBOOT_CMD_RESTART)) as a clean exit of the VM.

use std::time::Duration;

use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Makes Ctrl+Alt+Del arrive at PID 1 as SIGINT instead of an immediate
/// reboot, so it takes the graceful path.
pub fn disable_ctrl_alt_del() -> nix::Result<()> {
    set_cad_enabled(false)
}

/// PF_KTHREAD in /proc/<pid>/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// From the text of /proc/<pid>/stat: true if the process is a live
/// (not zombie) user-space process; `None` if the text is malformed.
pub fn stat_is_live_user_process(stat: &str) -> Option<bool> {
    // "pid (comm) state ppid pgrp session tty_nr tpgid flags ..."; comm may
    // contain spaces and parentheses, so split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let flags = fields.nth(5)?.parse::<u64>().ok()?;
    Some(flags & PF_KTHREAD == 0 && state != "Z" && state != "X")
}

/// Live user-space processes other than ourselves.
pub fn other_user_processes() -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(1);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_is_live_user_process(&s))
                .unwrap_or(false)
        })
        .collect()
}

/// As PID 1: SIGTERM every other user process, wait up to `grace` for them
/// to go, SIGKILL what is left. Returns at once when there is nothing to
/// stop (kill(-1) cannot tell: it also "succeeds" on kernel threads).
pub fn terminate_all(grace: Duration) {
    let left = other_user_processes();
    if left.is_empty() {
        return;
    }
    tracing::info!(
        count = left.len(),
        grace_ms = grace.as_millis() as u64,
        "stopping remaining processes"
    );
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let end = std::time::Instant::now() + grace;
    while std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        if other_user_processes().is_empty() {
            return;
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
}

/// Syncs and restarts the guest. Never returns: if reboot(2) fails the
/// agent (PID 1) must still not exit, so it parks forever.
pub fn restart() -> ! {
    nix::unistd::sync();
    tracing::info!("restarting the guest");
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    tracing::error!(error = %e, "reboot(RESTART) failed; halting in place");
    park_forever()
}

/// Sleeps forever (PID 1 must never exit).
pub fn park_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_classification() {
        let user = "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5 100 1";
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0";
        let zombie = "43 (sh) Z 1 43 43 0 -1 4227076 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        let odd = "44 (a) b (c) R 1 44 44 0 -1 4194304 0 0";
        assert_eq!(stat_is_live_user_process(user), Some(true));
        assert_eq!(stat_is_live_user_process(kthread), Some(false));
        assert_eq!(stat_is_live_user_process(zombie), Some(false));
        assert_eq!(stat_is_live_user_process(odd), Some(true));
        assert_eq!(stat_is_live_user_process("garbage"), None);
        assert_eq!(stat_is_live_user_process("1 (x) S 0 0"), None);
    }

    #[test]
    fn live_process_list_sees_a_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(other_user_processes().contains(&pid));
        assert!(!other_user_processes().contains(&(std::process::id() as i32)));
        child.kill().unwrap();
        // Killed: gone from the list once dead (a zombie does not count).
        // The reaper test may reap it first, so wait() may fail.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while other_user_processes().contains(&pid) {
            assert!(std::time::Instant::now() < end, "killed child still listed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }
}
