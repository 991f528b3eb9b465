//! What /proc says about a VMM process: is it still the process we started (PID + start time),
//! is it alive, how much CPU and memory it uses.

use std::path::Path;

use crate::record::VmmProcess;

/// The fields of /proc/<pid>/stat carapace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (R, S, D, Z, T, X...).
    pub state: char,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Clock ticks since boot when the process started.
    pub start_time: u64,
}

/// Parses the text of /proc/<pid>/stat. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        utime_ticks: field(14)?.parse().ok()?,
        stime_ticks: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// Reads /proc/<pid>/stat.
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Whether `p` still runs: same PID and start time, and not a zombie.
pub fn is_alive(p: &VmmProcess) -> bool {
    match read_stat(p.pid) {
        Some(st) => st.start_time == p.start_time && st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

/// Sends `sig` to `p` only if it is still the process we started.
pub fn signal(p: &VmmProcess, sig: libc::c_int) -> bool {
    if !is_alive(p) {
        return false;
    }
    // SAFETY: kill(2) with a checked positive PID has no memory effects.
    unsafe { libc::kill(p.pid, sig) == 0 }
}

/// Clock ticks per second (for utime/stime).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time (user + system) of `p` in nanoseconds.
pub fn cpu_nanos(p: &VmmProcess) -> Option<u64> {
    let st = read_stat(p.pid).filter(|st| st.start_time == p.start_time)?;
    let ticks = st.utime_ticks + st.stime_ticks;
    Some(ticks.saturating_mul(1_000_000_000) / clock_ticks_per_sec())
}

/// Resident set size of `p` in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_bytes(p: &VmmProcess) -> Option<u64> {
    if !is_alive(p) {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
    parse_vm_rss(&text)
}

/// Whether the NUL-separated `cmdline` has the arguments `window` one after the other.
pub fn cmdline_has(cmdline: &[u8], window: &[&[u8]]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    !window.is_empty() && args.windows(window.len()).any(|w| w == window)
}

/// Every live process of this user whose command line has the arguments `window` one after
/// the other (e.g. `vmm --config <file>`: the VMM of one pod, found without its PID).
pub fn find_by_args(window: &[&[u8]]) -> Vec<VmmProcess> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let own = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(md) = e.metadata() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        if std::os::unix::fs::MetadataExt::uid(&md) != me || !cmdline_has(&cmdline, window) {
            continue;
        }
        if let Some(st) = read_stat(pid) {
            let p = VmmProcess { pid, start_time: st.start_time };
            if is_alive(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The VmRSS line of /proc/<pid>/status, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 3 0 98765 \
                    1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_stat(text).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!((st.utime_ticks, st.stime_ticks), (7, 3));
        assert_eq!(st.start_time, 98765);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = std::process::id() as i32;
        let st = read_stat(pid).unwrap();
        let me = VmmProcess { pid, start_time: st.start_time };
        assert!(is_alive(&me));
        assert!(cpu_nanos(&me).is_some());
        assert!(rss_bytes(&me).unwrap() > 0);
        let reused = VmmProcess { pid, start_time: st.start_time + 1 };
        assert!(!is_alive(&reused));
        assert!(!signal(&reused, 0));
        assert!(!is_alive(&VmmProcess { pid: -1, start_time: 0 }));
    }

    #[test]
    fn command_lines_are_matched_argument_by_argument() {
        let cl = b"/usr/bin/carapace\0vmm\0--config\0/run/p/abc/vm.json\0";
        let w: [&[u8]; 3] = [b"vmm", b"--config", b"/run/p/abc/vm.json"];
        assert!(cmdline_has(cl, &w));
        assert!(!cmdline_has(cl, &[b"vmm", b"--config", b"/run/p/ab/vm.json"]));
        assert!(!cmdline_has(b"x\0vmm --config /run/p/abc/vm.json\0", &w));
        assert!(!cmdline_has(cl, &[]));
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30; :", "sh", "find-me", "--token", "procfs-test-7f3a"])
            .spawn()
            .unwrap();
        // vfork-style spawn returns once the child's exec has switched its memory, which can be
        // before the kernel has filled in its argument area (an empty cmdline for a moment).
        let mut found = Vec::new();
        for _ in 0..500 {
            found = find_by_args(&[b"find-me", b"--token", b"procfs-test-7f3a"]);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![child.id() as i32]);
    }

    #[test]
    fn vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  1024 kB\n"), Some(1024 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
