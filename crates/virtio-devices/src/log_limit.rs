//! Rate limiting of log messages a guest can trigger.
//!
//! Every malformed register write, descriptor chain or packet is worth a warning, but a hostile
//! guest can produce millions per second and flood the host's log. [`guest_warn!`] logs at most
//! [`GUEST_WARNINGS_PER_SECOND`] messages per second from each call site (one call site is one
//! kind of fault of one device); the first message of a later second is followed by one line
//! counting the messages suppressed since. The rate is the process's setting
//! ([`set_guest_warnings_per_second`], from the VM config), [`GUEST_WARNINGS_PER_SECOND`] until
//! it is set.
//!
//! [`guest_warn!`]: crate::guest_warn

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Default messages per second and call site that [`guest_warn!`](crate::guest_warn) lets
/// through.
pub const GUEST_WARNINGS_PER_SECOND: u32 = 10;
/// Highest accepted setting: more would no longer protect the host's log.
pub const MAX_GUEST_WARNINGS_PER_SECOND: u32 = 10_000;
const WINDOW: Duration = Duration::from_secs(1);

static RATE: AtomicU32 = AtomicU32::new(GUEST_WARNINGS_PER_SECOND);

/// Sets the rate of every [`guest_warn!`](crate::guest_warn) call site of this process,
/// clamped to 1..=[`MAX_GUEST_WARNINGS_PER_SECOND`].
pub fn set_guest_warnings_per_second(per_second: u32) {
    RATE.store(per_second.clamp(1, MAX_GUEST_WARNINGS_PER_SECOND), Ordering::Relaxed);
}

/// The rate [`guest_warn!`](crate::guest_warn) applies now.
pub fn guest_warnings_per_second() -> u32 {
    RATE.load(Ordering::Relaxed)
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

/// Admits at most `per_second` events per one-second window (the process's setting when
/// `per_second` is None).
#[derive(Debug)]
pub struct LogLimiter {
    per_second: Option<u32>,
    state: Mutex<State>,
}

impl LogLimiter {
    /// A limiter at the process's rate ([`set_guest_warnings_per_second`]).
    pub const fn new() -> LogLimiter {
        LogLimiter::with_state(None)
    }

    /// A limiter at a fixed rate.
    pub const fn with_rate(per_second: u32) -> LogLimiter {
        LogLimiter::with_state(Some(per_second))
    }

    const fn with_state(per_second: Option<u32>) -> LogLimiter {
        LogLimiter {
            per_second,
            state: Mutex::new(State { window_start: None, emitted: 0, suppressed: 0 }),
        }
    }

    fn rate(&self) -> u32 {
        self.per_second.unwrap_or_else(guest_warnings_per_second)
    }

    /// Whether a message at `now` may be logged: `Some(k)` if so, with `k` the number of
    /// messages suppressed since the last one logged; `None` if it must be dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        match s.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {
                if s.emitted < self.rate() {
                    s.emitted += 1;
                    Some(0)
                } else {
                    s.suppressed = s.suppressed.saturating_add(1);
                    None
                }
            }
            _ => {
                let suppressed = std::mem::take(&mut s.suppressed);
                s.window_start = Some(now);
                s.emitted = 1;
                Some(suppressed)
            }
        }
    }
}

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter::new()
    }
}

/// `tracing::warn!` for messages a guest can trigger, rate-limited per call site (see the
/// module documentation of `log_limit`).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        if let Some(suppressed) = LIMIT.admit(::std::time::Instant::now()) {
            $crate::__tracing::warn!($($arg)+);
            if suppressed > 0 {
                $crate::__tracing::warn!(
                    "suppressed {suppressed} messages like the previous one (guest-triggered, \
                     more than {} per second)",
                    $crate::log_limit::guest_warnings_per_second()
                );
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_n_per_window_then_counts_the_rest() {
        let l = LogLimiter::with_rate(3);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(1)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(2)), Some(0));
        for i in 0..1000 {
            assert_eq!(l.admit(t0 + Duration::from_millis(3 + i % 900)), None);
        }
        // The next window lets one through and reports what was dropped.
        assert_eq!(l.admit(t0 + Duration::from_millis(1000)), Some(1000));
        assert_eq!(l.admit(t0 + Duration::from_millis(1001)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(1002)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(1003)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(5)), Some(1));
    }

    #[test]
    fn the_process_rate_is_read_at_each_message_and_clamped() {
        // The only test that changes the process's rate; it restores the default.
        let l = LogLimiter::new();
        let t0 = Instant::now();
        set_guest_warnings_per_second(2);
        assert_eq!(guest_warnings_per_second(), 2);
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        set_guest_warnings_per_second(3);
        assert_eq!(l.admit(t0), Some(0), "a raised rate applies to the current window");
        set_guest_warnings_per_second(0);
        assert_eq!(guest_warnings_per_second(), 1, "at least one per second");
        set_guest_warnings_per_second(u32::MAX);
        assert_eq!(guest_warnings_per_second(), MAX_GUEST_WARNINGS_PER_SECOND);
        set_guest_warnings_per_second(GUEST_WARNINGS_PER_SECOND);
    }

    #[test]
    fn the_macro_limits_each_call_site() {
        // Expands and runs; a flood from one call site costs nothing but the counter.
        for i in 0..10_000 {
            crate::guest_warn!("test flood {i}");
        }
    }
}
