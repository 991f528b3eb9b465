//! Limits the guest runs into through virtio-fs, made visible on the host: each is passed on
//! to the guest as the error it is and logged, rate-limited per call site, with what was hit.

use std::io;

/// Passes `r` on; a full pod disk (ENOSPC, EDQUOT: the `[pods]` bound the daemon mounted
/// under the shared dir) is logged, rate-limited, so the host sees why the guest fails.
pub(super) fn note_full<T>(op: &'static str, r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            crate::guest_warn!(op, "the pod's disk is full: the guest's write fails with ENOSPC");
        }
    }
    r
}

/// Passes `r` on; the open file limit (EMFILE, ENFILE: the passthrough server holds a
/// descriptor per inode the guest knows, bounded by `shared_dir_max_open_files`) is logged,
/// rate-limited, so the host sees why the guest's lookups and opens fail.
pub(super) fn note_fds<T>(op: &'static str, r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
            crate::guest_warn!(
                op,
                "virtio-fs: the open file limit is reached (the guest holds too many files): \
                 its lookups and opens fail with EMFILE until it forgets some"
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn err(errno: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn the_open_file_limit_is_logged_and_passed_on() {
        let log = logged(|| {
            let e = note_fds("lookup", err(libc::EMFILE)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
            assert!(note_fds("open", Ok(7)).is_ok());
            assert!(note_fds("open", err(libc::ENOENT)).is_err());
        });
        assert_eq!(log.matches("open file limit is reached").count(), 1, "{log}");
        assert!(log.contains("lookup"), "{log}");
    }

    #[test]
    fn a_full_disk_is_logged_and_passed_on() {
        let log = logged(|| {
            let e = note_full("write", err(libc::ENOSPC)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
            assert!(note_full("write", err(libc::EIO)).is_err());
        });
        assert_eq!(log.matches("the pod's disk is full").count(), 1, "{log}");
    }
}
