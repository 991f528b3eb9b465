//! Standard streams of PID 1: the kernel opens /dev/console as fds 0-2 for
//! init when the initramfs has it; if not, reopen it once devtmpfs is up.

use std::os::fd::{AsRawFd, IntoRawFd};

use nix::fcntl::{fcntl, FcntlArg};

/// True if `fd` is open.
fn fd_open(fd: i32) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Points any closed fd among 0, 1, 2 at /dev/console. Returns how many fds
/// were fixed.
pub fn ensure_stdio_on_console() -> std::io::Result<usize> {
    let missing: Vec<i32> = (0..3).filter(|fd| !fd_open(*fd)).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let console = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console")?;
    let cfd = console.as_raw_fd();
    let mut fixed = 0;
    for fd in &missing {
        if *fd == cfd {
            continue;
        }
        nix::unistd::dup2(cfd, *fd)?;
        fixed += 1;
    }
    if missing.contains(&cfd) {
        // open() landed on one of the missing low fds: keep it open.
        let _ = console.into_raw_fd();
        fixed += 1;
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_already_open_is_left_alone() {
        // The test harness has fds 0-2 open.
        assert!(fd_open(2));
        assert_eq!(ensure_stdio_on_console().unwrap(), 0);
        assert!(!fd_open(-1));
    }
}
