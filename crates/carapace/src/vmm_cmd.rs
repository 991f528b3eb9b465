//! `carapace vmm`: one microVM in this process.
//!
//! Exit status: 0 when the guest reset itself or stopped gracefully, 1 on error (one line on
//! stderr: "carapace vmm: error: ..."), 2 when it had to be stopped by force.
//! SIGTERM/SIGINT ask the guest to shut down (Ctrl+Alt+Del); after --stop-timeout-ms, or on a
//! second signal, the VM is stopped by force.
//!
//! `--config FILE` reads the whole VM from a JSON [`VmConfig`] (what the CRI daemon writes); the
//! other flags describe the same type by hand and cannot be mixed with it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use carapace_vmm::{build_vm, ExitReason, NetConfig, VmConfig, VmHandle, VsockConfig};

/// Arguments of `carapace vmm`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmmArgs {
    /// The whole VM as a JSON VmConfig file (as the CRI daemon writes it).
    #[arg(long, conflicts_with_all = [
        "kernel", "initramfs", "vcpus", "mem_mib", "cmdline_extra", "serial_log",
        "serial_log_max_bytes", "vmm_log", "vmm_log_max_bytes", "guest_warnings_per_second",
        "shared_dir_max_open_files", "vsock_uds",
        "vsock_cid", "no_rng", "shared_dir", "kick_interval_ms", "kvm_device", "stop_timeout_ms",
        "net_tap_fd", "net_mac",
    ])]
    pub config: Option<PathBuf>,
    /// Uncompressed guest kernel (vmlinux ELF).
    #[arg(long, required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio archive) handed to the kernel.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = carapace_vmm::DEFAULT_VCPUS)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = carapace_vmm::DEFAULT_MEM_MIB)]
    pub mem_mib: u32,
    /// Appended to the kernel command line.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub cmdline_extra: String,
    /// File receiving the guest's serial console (discarded when absent).
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    /// Cap of the serial log in bytes (rotated once to `<file>.1` when reached).
    #[arg(long, default_value_t = carapace_vmm::DEFAULT_SERIAL_LOG_MAX_BYTES)]
    pub serial_log_max_bytes: u64,
    /// File for this VMM's own log lines (capped, rotated once; stdout and stderr follow it).
    /// Without it they go to stderr.
    #[arg(long)]
    pub vmm_log: Option<PathBuf>,
    /// Cap of the VMM log in bytes.
    #[arg(long, default_value_t = carapace_vmm::config::DEFAULT_VMM_LOG_MAX_BYTES)]
    pub vmm_log_max_bytes: u64,
    /// Guest-triggered warnings logged per second and call site (the rest are counted).
    #[arg(long, default_value_t = carapace_vmm::config::DEFAULT_GUEST_WARNINGS_PER_SECOND)]
    pub guest_warnings_per_second: u32,
    /// Open file limit of the process when it serves --shared-dir (bounds what a guest pins).
    #[arg(long, default_value_t = carapace_vmm::config::DEFAULT_SHARED_DIR_MAX_OPEN_FILES)]
    pub shared_dir_max_open_files: u64,
    /// Host Unix socket of the guest's virtio-vsock device (no vsock device when absent).
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// Guest vsock CID.
    #[arg(long, default_value_t = 3)]
    pub vsock_cid: u64,
    /// Do not give the guest a virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Host directory shared read-write with the guest through virtio-fs (tag `carapace`; the
    /// agent mounts it at /run/carapace/shared). No virtio-fs device when absent.
    #[arg(long)]
    pub shared_dir: Option<PathBuf>,
    /// Inherited descriptor of a tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) for a virtio-net NIC
    /// (no NIC when absent).
    #[arg(long, requires = "net_mac")]
    pub net_tap_fd: Option<i32>,
    /// MAC address of the NIC ("aa:bb:cc:dd:ee:ff", unicast).
    #[arg(long, requires = "net_tap_fd")]
    pub net_mac: Option<String>,
    /// Interrupt every vCPU this often (for hosts whose timer interrupts do not force exits).
    #[arg(long)]
    pub kick_interval_ms: Option<u64>,
    /// KVM device.
    #[arg(long, default_value = carapace_vmm::DEFAULT_KVM_PATH)]
    pub kvm_device: PathBuf,
    /// After SIGTERM/SIGINT, how long the guest gets to shut down before it is stopped by force.
    #[arg(long, default_value_t = DEFAULT_STOP_TIMEOUT_MS)]
    pub stop_timeout_ms: u64,
}

const DEFAULT_STOP_TIMEOUT_MS: u64 = carapace_vmm::config::DEFAULT_STOP_TIMEOUT.as_millis() as u64;

impl VmmArgs {
    /// The VM configuration: the `--config` file, else what the flags describe.
    pub fn load(&self) -> Result<VmConfig, carapace_vmm::ConfigError> {
        match &self.config {
            Some(path) => VmConfig::from_json_file(path),
            None => Ok(self.to_config()),
        }
    }

    /// The VM configuration the flags describe.
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            // clap requires --kernel without --config.
            kernel: self.kernel.clone().unwrap_or_default(),
            initramfs: self.initramfs.clone(),
            cmdline_extra: self.cmdline_extra.clone(),
            serial_log: self.serial_log.clone(),
            serial_log_max_bytes: self.serial_log_max_bytes,
            vmm_log: self.vmm_log.clone(),
            vmm_log_max_bytes: self.vmm_log_max_bytes,
            guest_warnings_per_second: self.guest_warnings_per_second,
            shared_dir_max_open_files: self.shared_dir_max_open_files,
            vsock: self
                .vsock_uds
                .clone()
                .map(|uds_path| VsockConfig { guest_cid: self.vsock_cid, uds_path }),
            rng: !self.no_rng,
            shared_dir: self.shared_dir.clone(),
            net: match (self.net_tap_fd, &self.net_mac) {
                (Some(tap_fd), Some(mac)) => Some(NetConfig { tap_fd, mac: mac.clone() }),
                _ => None,
            },
            // a config file's matter: the daemon's pods root and pod dir
            mount_ns: None,
            kick_interval: self.kick_interval_ms.map(Duration::from_millis),
            kvm_path: self.kvm_device.clone(),
            stop_timeout: Duration::from_millis(self.stop_timeout_ms),
        }
    }
}

/// One line, whatever the error text contains.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A line on stderr, or in the VMM log when the config names one (the daemon's pods: `vmm.log`
/// on the pod's own disk, which the guest can fill): a failed write is dropped (`eprintln!`
/// would panic, and a panic aborts the VMM).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // Through the capped VMM log once it is open (which also counts the line), else stderr.
    let _ = crate::vmm_log::LogWriter.write_all(format!("{line}\n").as_bytes());
}

fn fail(message: &str) -> ExitCode {
    say(format_args!("carapace vmm: error: {}", one_line(message)));
    ExitCode::from(1)
}

/// Exit status for how the VM ended.
pub fn exit_code(reason: &ExitReason) -> u8 {
    match reason {
        ExitReason::GuestReset | ExitReason::Stopped { graceful: true } => 0,
        ExitReason::Stopped { graceful: false } => 2,
        ExitReason::GuestPanic | ExitReason::TripleFault { .. } | ExitReason::Error(_) => 1,
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM/SIGINT in the calling thread (and the threads it starts afterwards), so that
/// only the stop thread receives them, through sigtimedwait.
fn block_stop_signals() -> Result<(), String> {
    let set = stop_signals();
    // SAFETY: `set` is a valid, initialised signal set; no old mask is requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("cannot block SIGTERM/SIGINT: {}", std::io::Error::from_raw_os_error(rc)))
    }
}

/// Waits up to `limit` for SIGTERM/SIGINT; returns the signal if one came.
fn wait_stop_signal(limit: Duration) -> Option<libc::c_int> {
    let set = stop_signals();
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timeout; the siginfo output is not requested.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

const POLL: Duration = Duration::from_millis(100);
/// Ctrl+Alt+Del is pressed again this often while the guest is still up: a press that arrives
/// while the guest's keyboard driver is still starting is lost.
const RETRY_CAD: Duration = Duration::from_secs(2);

/// The stop thread: first signal → graceful stop; second signal or timeout → force stop.
fn stop_on_signals(handle: VmHandle, timeout: Duration) {
    loop {
        if handle.exit_reason().is_some() {
            return;
        }
        if let Some(sig) = wait_stop_signal(POLL) {
            tracing::info!(signal = sig, "stop requested: asking the guest to shut down");
            break;
        }
    }
    let started = Instant::now();
    handle.graceful_stop();
    let mut last_try = Instant::now();
    while handle.exit_reason().is_none() {
        if started.elapsed() >= timeout {
            tracing::info!(timeout_ms = timeout.as_millis() as u64, "guest did not stop in time");
            handle.force_stop();
            return;
        }
        if wait_stop_signal(POLL).is_some() {
            tracing::info!("second stop signal: stopping the VM now");
            handle.force_stop();
            return;
        }
        if last_try.elapsed() >= RETRY_CAD {
            handle.graceful_stop();
            last_try = Instant::now();
        }
    }
}

/// Runs `carapace vmm`.
pub fn run(args: VmmArgs) -> ExitCode {
    if let Err(e) = block_stop_signals() {
        return fail(&e);
    }
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(path) = &config.vmm_log {
        if let Err(e) = crate::vmm_log::open(path, config.vmm_log_max_bytes) {
            return fail(&e.to_string());
        }
    }
    // Before any thread exists (unshare requires a single-threaded process) and before
    // anything of the pod is opened, so the shared dir is served from this namespace.
    if let Some(ns) = &config.mount_ns {
        match carapace_podfs::enter_private_mount_ns(&ns.prune_below, &ns.keep) {
            Ok(detached) => tracing::debug!(detached, "in a mount namespace of its own"),
            Err(e) => return fail(&format!("cannot enter a mount namespace of its own: {e}")),
        }
    }
    let vm = match build_vm(&config) {
        Ok(vm) => vm,
        Err(e) => return fail(&e.to_string()),
    };
    let handle = vm.handle();
    let timeout = config.stop_timeout;
    let stopper = std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || stop_on_signals(handle, timeout));
    if let Err(e) = stopper {
        return fail(&format!("cannot start the signal thread: {e}"));
    }
    let reason = vm.run();
    tracing::info!(%reason, "VM ended");
    let code = exit_code(&reason);
    match code {
        0 => {}
        2 => say(format_args!("carapace vmm: guest did not shut down; stopped by force")),
        _ => say(format_args!("carapace vmm: error: {}", one_line(&reason.to_string()))),
    }
    // The stop thread notices the exit within one poll period; the process ends with us.
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: VmmArgs,
    }

    #[test]
    fn defaults() {
        let c = Cli::parse_from(["vmm", "--kernel", "/k"]).args;
        assert_eq!((c.vcpus, c.mem_mib, c.vsock_cid, c.stop_timeout_ms), (1, 256, 3, 10_000));
        assert_eq!(c.kvm_device, PathBuf::from("/dev/kvm"));
        let cfg = c.to_config();
        assert!(cfg.rng);
        assert!(cfg.vsock.is_none());
        assert!(cfg.kick_interval.is_none());
        assert!(cfg.shared_dir.is_none());
        assert!(cfg.net.is_none());
    }

    #[test]
    fn the_nic_flags_come_together() {
        let c = Cli::parse_from([
            "vmm",
            "--kernel",
            "/k",
            "--net-tap-fd",
            "3",
            "--net-mac",
            "02:00:00:00:00:01",
        ]);
        assert_eq!(
            c.args.to_config().net,
            Some(NetConfig { tap_fd: 3, mac: "02:00:00:00:00:01".into() })
        );
        assert!(Cli::try_parse_from(["vmm", "--kernel", "/k", "--net-tap-fd", "3"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "/k", "--net-mac", "02:00:00:00:00:01"])
            .is_err());
        assert!(Cli::try_parse_from(["vmm", "--config", "/c", "--net-tap-fd", "3"]).is_err());
    }

    #[test]
    fn all_options() {
        let c = Cli::parse_from([
            "vmm",
            "--kernel",
            "/k",
            "--initramfs",
            "/i",
            "--vcpus",
            "2",
            "--mem-mib",
            "512",
            "--cmdline-extra",
            "-- agent-arg",
            "--serial-log",
            "/s",
            "--serial-log-max-bytes",
            "65536",
            "--vsock-uds",
            "/v",
            "--vsock-cid",
            "7",
            "--no-rng",
            "--kick-interval-ms",
            "100",
            "--kvm-device",
            "/dev/x",
            "--stop-timeout-ms",
            "5",
            "--shared-dir",
            "/srv/pod",
            "--vmm-log",
            "/l",
            "--vmm-log-max-bytes",
            "8192",
            "--guest-warnings-per-second",
            "3",
            "--shared-dir-max-open-files",
            "4096",
        ])
        .args;
        let cfg = c.to_config();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.mem_mib, 512);
        assert_eq!(cfg.cmdline_extra, "-- agent-arg");
        assert_eq!(cfg.vsock, Some(VsockConfig { guest_cid: 7, uds_path: "/v".into() }));
        assert!(!cfg.rng);
        assert_eq!(cfg.kick_interval, Some(Duration::from_millis(100)));
        assert_eq!(cfg.kvm_path, PathBuf::from("/dev/x"));
        assert_eq!(c.stop_timeout_ms, 5);
        assert_eq!(cfg.shared_dir, Some(PathBuf::from("/srv/pod")));
        assert_eq!(cfg.serial_log_max_bytes, 65536);
        assert_eq!(cfg.vmm_log, Some(PathBuf::from("/l")));
        assert_eq!(cfg.vmm_log_max_bytes, 8192);
        assert_eq!(cfg.guest_warnings_per_second, 3);
        assert_eq!(cfg.shared_dir_max_open_files, 4096);
    }

    #[test]
    fn a_config_file_describes_the_same_vm_and_excludes_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        let mut want = VmConfig::new("/k");
        want.vsock = Some(VsockConfig { guest_cid: 3, uds_path: "/v".into() });
        want.kick_interval = Some(Duration::from_millis(100));
        std::fs::write(&path, want.to_json()).unwrap();
        let c = Cli::parse_from(["vmm", "--config", path.to_str().unwrap()]).args;
        assert_eq!(c.load().unwrap(), want);
        let flags = Cli::parse_from(["vmm", "--kernel", "/k", "--vsock-uds", "/v"]).args;
        assert_eq!(flags.load().unwrap().vsock, want.vsock);
        assert!(Cli::try_parse_from(["vmm", "--config", "/c", "--kernel", "/k"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--config", "/c", "--vcpus", "2"]).is_err());
        assert!(Cli::try_parse_from(["vmm"]).is_err(), "neither --config nor --kernel");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&ExitReason::GuestReset), 0);
        assert_eq!(exit_code(&ExitReason::Stopped { graceful: true }), 0);
        assert_eq!(exit_code(&ExitReason::Stopped { graceful: false }), 2);
        assert_eq!(exit_code(&ExitReason::TripleFault { vcpu: 0, registers: String::new() }), 1);
        assert_eq!(exit_code(&ExitReason::Error("x".into())), 1);
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a\nb\n  c"), "a b c");
    }
}
