//! Facts about the guest for `Health`: /proc/meminfo, /proc/uptime,
//! online CPUs and uname.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysInfoError {
    #[error("cannot read {path}: {reason}")]
    Read { path: &'static str, reason: String },
    #[error("{path}: {what}")]
    Parse { path: &'static str, what: String },
}

/// Memory figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Everything `Health` reports about the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// uname release (`uname -r`).
    pub kernel_version: String,
    /// uname version, the build string (`uname -v`).
    pub kernel_build: String,
    pub uptime: Duration,
    pub boot_time_unix_ms: u64,
    pub memory: MemInfo,
    pub cpus: u32,
}

const MEMINFO: &str = "/proc/meminfo";
const UPTIME: &str = "/proc/uptime";
const CPU_ONLINE: &str = "/sys/devices/system/cpu/online";

fn meminfo_kib(line_rest: &str) -> Option<u64> {
    let mut parts = line_rest.split_ascii_whitespace();
    let value = parts.next()?.parse::<u64>().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Parses /proc/meminfo. MemAvailable falls back to MemFree on kernels
/// without it.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, SysInfoError> {
    let mut total = None;
    let mut available = None;
    let mut free = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            _ => continue,
        };
        *slot = Some(meminfo_kib(rest).ok_or_else(|| SysInfoError::Parse {
            path: MEMINFO,
            what: format!("bad line {line:?}"),
        })?);
    }
    let total_bytes =
        total.ok_or(SysInfoError::Parse { path: MEMINFO, what: "no MemTotal".into() })?;
    let available_bytes = available
        .or(free)
        .ok_or(SysInfoError::Parse { path: MEMINFO, what: "no MemAvailable or MemFree".into() })?;
    Ok(MemInfo { total_bytes, available_bytes })
}

/// Parses the first field of /proc/uptime ("12345.67 ...") without floats.
pub fn parse_uptime(text: &str) -> Result<Duration, SysInfoError> {
    let bad = || SysInfoError::Parse {
        path: UPTIME,
        what: format!("bad content {:?}", text.chars().take(64).collect::<String>()),
    };
    let first = text.split_ascii_whitespace().next().ok_or_else(bad)?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs = secs.parse::<u64>().map_err(|_| bad())?;
    // Keep at most nanosecond precision.
    let mut nanos: u32 = 0;
    let mut scale: u32 = 100_000_000;
    for digit in frac.bytes().take(9) {
        nanos += u32::from(digit - b'0') * scale;
        scale /= 10;
    }
    Ok(Duration::new(secs, nanos))
}

/// Counts CPUs in a kernel CPU list such as "0-3,6,8-9".
pub fn parse_cpu_list(text: &str) -> Result<u32, SysInfoError> {
    let bad = || SysInfoError::Parse {
        path: CPU_ONLINE,
        what: format!("bad CPU list {:?}", text.chars().take(64).collect::<String>()),
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let n = match part.split_once('-') {
            Some((a, b)) => {
                let a = a.parse::<u32>().map_err(|_| bad())?;
                let b = b.parse::<u32>().map_err(|_| bad())?;
                b.checked_sub(a).and_then(|d| d.checked_add(1)).ok_or_else(bad)?
            }
            None => {
                part.parse::<u32>().map_err(|_| bad())?;
                1
            }
        };
        count = count.checked_add(n).ok_or_else(bad)?;
    }
    Ok(count)
}

fn read(path: &'static str) -> Result<String, SysInfoError> {
    std::fs::read_to_string(path).map_err(|e| SysInfoError::Read { path, reason: e.to_string() })
}

/// Current uptime from /proc/uptime.
pub fn uptime() -> Result<Duration, SysInfoError> {
    parse_uptime(&read(UPTIME)?)
}

/// Online CPUs; falls back to the scheduler's view if sysfs is absent.
pub fn cpus() -> u32 {
    match read(CPU_ONLINE).and_then(|t| parse_cpu_list(&t)) {
        Ok(n) => n,
        Err(_) => std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
    }
}

/// Wall-clock boot time in ms since the epoch: now minus uptime.
pub fn boot_time_unix_ms(now: SystemTime, uptime: Duration) -> u64 {
    let now_ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let now_ms = u64::try_from(now_ms).unwrap_or(u64::MAX);
    let up_ms = u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(up_ms)
}

/// Gathers all facts.
pub fn facts() -> Result<Facts, SysInfoError> {
    let uts = nix::sys::utsname::uname()
        .map_err(|e| SysInfoError::Read { path: "uname(2)", reason: e.to_string() })?;
    let uptime = uptime()?;
    let memory = parse_meminfo(&read(MEMINFO)?)?;
    Ok(Facts {
        kernel_version: uts.release().to_string_lossy().into_owned(),
        kernel_build: uts.version().to_string_lossy().into_owned(),
        uptime,
        boot_time_unix_ms: boot_time_unix_ms(SystemTime::now(), uptime),
        memory,
        cpus: cpus(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "MemTotal:       24545472 kB\n\
MemFree:         1234567 kB\n\
MemAvailable:   20000000 kB\n\
Buffers:          123456 kB\n\
HugePages_Total:       0\n";

    #[test]
    fn meminfo_sample() {
        let m = parse_meminfo(SAMPLE).unwrap();
        assert_eq!(m.total_bytes, 24_545_472 * 1024);
        assert_eq!(m.available_bytes, 20_000_000 * 1024);
    }

    #[test]
    fn meminfo_falls_back_to_memfree() {
        let m = parse_meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").unwrap();
        assert_eq!(m.available_bytes, 40 * 1024);
    }

    #[test]
    fn meminfo_errors() {
        assert!(parse_meminfo("").is_err());
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: x kB\nMemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 1 MB\nMemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 18446744073709551615 kB\nMemFree: 1 kB\n").is_err());
    }

    #[test]
    fn uptime_parsing() {
        assert_eq!(parse_uptime("12345.67 54321.00\n").unwrap(), Duration::from_millis(12_345_670));
        assert_eq!(parse_uptime("3.5").unwrap(), Duration::from_millis(3500));
        assert_eq!(parse_uptime("7 1").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_uptime("0.1234567891234 0").unwrap(), Duration::new(0, 123_456_789));
        for bad in ["", "   ", "abc", "-1.0", "1.x", ".5", "1e3", "99999999999999999999999.0"] {
            assert!(parse_uptime(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n").unwrap(), 1);
        assert_eq!(parse_cpu_list("0-3").unwrap(), 4);
        assert_eq!(parse_cpu_list("0-3,6,8-9\n").unwrap(), 7);
        for bad in ["", "a", "3-1", "0-", "-", "0,,1", "0-4294967295,0-4294967295"] {
            assert!(parse_cpu_list(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn boot_time_is_now_minus_uptime() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(boot_time_unix_ms(now, Duration::from_millis(2_500)), 7_500);
        assert_eq!(boot_time_unix_ms(now, Duration::from_secs(100)), 0);
    }

    #[test]
    fn live_facts_are_sane() {
        let f = facts().unwrap();
        assert!(!f.kernel_version.is_empty());
        assert!(f.memory.total_bytes > 0);
        assert!(f.memory.available_bytes <= f.memory.total_bytes);
        assert!(f.cpus >= 1);
        assert!(f.uptime > Duration::ZERO);
    }
}
