//! Starting a pod's VM as a detached `carapace vmm` process, waiting for its agent, stopping it.
//!
//! The VMM runs in its own session (setsid): signals to the daemon's process group or terminal
//! do not reach it and the daemon can exit or restart without touching running pods.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use carapace_podfs::MountNs;
use carapace_vmm::{MountNsConfig, NetConfig, VmConfig, VsockConfig};

use crate::config::{Config, VmProfile};
use crate::procfs;
use crate::record::VmmProcess;
use crate::sizing::VmSize;

/// How often liveness is polled while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long the last resort (SIGKILL) may take to show.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why a VM could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    #[error("cannot write the VM config {}: {source}", path.display())]
    WriteConfig { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot start {binary} vmm: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("the VMM process {pid} vanished right after it started")]
    Vanished { pid: i32 },
    #[error("the VMM exited before the guest agent answered: {log}")]
    Exited { log: String },
    #[error("the guest agent did not answer within {timeout:?}: {last}; serial console: {serial}")]
    AgentTimeout { timeout: Duration, last: String, serial: String },
    #[error("the VMM process {pid} did not exit even after SIGKILL")]
    Unkillable { pid: i32 },
    #[error("the VMM process {pid} is not running")]
    NotRunning { pid: i32 },
    #[error("cannot reach the mount namespace of the VMM process {pid}: {source}")]
    MountNs { pid: i32, source: carapace_podfs::Error },
}

/// The files one VM uses.
#[derive(Debug, Clone)]
pub struct VmFiles<'a> {
    /// The VM's [`VmConfig`] as JSON, what `carapace vmm --config` reads.
    pub vm_config: &'a Path,
    pub vsock: &'a Path,
    pub serial_log: &'a Path,
    pub vmm_log: &'a Path,
    /// Shared into the guest by virtio-fs (the agent mounts it at `/run/carapace/shared`).
    pub shared_dir: &'a Path,
    /// The pod's run dir: the VMM gets a mount namespace of its own that keeps only this of
    /// the pods' root ([`carapace_vmm::MountNsConfig`]); the caller's namespace when None.
    pub pod_dir: Option<&'a Path>,
}

/// The pod's NIC: a tap opened in the pod's network namespace (IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR) and the MAC the guest's interface gets. The VMM inherits the tap as
/// [`VMM_TAP_FD`]; it never enters the namespace.
#[derive(Debug)]
pub struct VmNet {
    pub tap: OwnedFd,
    pub mac: String,
}

/// The descriptor number the VMM finds the pod's tap at.
pub const VMM_TAP_FD: i32 = 3;

/// The guest's vsock CID (each VM has its own vsock device, so every guest can use the first).
const GUEST_CID: u64 = carapace_vmm::MIN_GUEST_CID;

/// The VM of `profile`, `size`d for its pod, with these files (and a NIC on [`VMM_TAP_FD`]
/// when `net` is given).
pub fn vm_config(
    cfg: &Config,
    profile: &VmProfile,
    size: VmSize,
    files: &VmFiles<'_>,
    net: Option<&VmNet>,
) -> VmConfig {
    VmConfig {
        vcpus: size.vcpus,
        mem_mib: size.mem_mib,
        serial_log: Some(files.serial_log.to_path_buf()),
        serial_log_max_bytes: cfg.pods.serial_log_max_bytes,
        vmm_log: Some(files.vmm_log.to_path_buf()),
        vmm_log_max_bytes: cfg.pods.vmm_log_max_bytes,
        guest_warnings_per_second: cfg.pods.guest_warnings_per_second,
        shared_dir_max_open_files: cfg.pods.shared_dir_max_open_files,
        vsock: Some(VsockConfig { guest_cid: GUEST_CID, uds_path: files.vsock.to_path_buf() }),
        shared_dir: Some(files.shared_dir.to_path_buf()),
        net: net.map(|n| NetConfig { tap_fd: VMM_TAP_FD, mac: n.mac.clone() }),
        mount_ns: files
            .pod_dir
            .map(|keep| MountNsConfig { prune_below: cfg.pods_dir(), keep: keep.to_path_buf() }),
        kick_interval: cfg.vmm_kick_interval_ms.map(Duration::from_millis),
        stop_timeout: cfg.stop_timeout,
        ..profile.vm_shape()
    }
}

/// Starts the VMM detached; returns its identity. The child is reaped by a background task
/// when it exits while this daemon runs (after a daemon restart, by init). With `net`, the
/// VMM inherits the tap as fd [`VMM_TAP_FD`] (the caller may close its own copy afterwards).
pub fn spawn(
    cfg: &Config,
    profile: &VmProfile,
    size: VmSize,
    files: &VmFiles<'_>,
    net: Option<&VmNet>,
) -> Result<VmmProcess, VmmProcessError> {
    let config = vm_config(cfg, profile, size, files, net);
    std::fs::write(files.vm_config, config.to_json()).map_err(|source| {
        VmmProcessError::WriteConfig { path: files.vm_config.to_path_buf(), source }
    })?;
    let binary = cfg.vmm_binary.display().to_string();
    let spawn_err = |source| VmmProcessError::Spawn { binary: binary.clone(), source };
    // Appended to, as the VMM itself opens it (`vmm_log`, capped there).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(files.vmm_log)
        .map_err(spawn_err)?;
    let log2 = log.try_clone().map_err(spawn_err)?;
    // A close-on-exec copy numbered above the target, so the child's dup2 always moves it
    // (and clears close-on-exec on the copy at VMM_TAP_FD only).
    let tap = match net {
        Some(n) => Some(dup_above(&n.tap, VMM_TAP_FD + 1).map_err(spawn_err)?),
        None => None,
    };
    let tap_raw = tap.as_ref().map(|t| t.as_raw_fd());
    let mut cmd = tokio::process::Command::new(&cfg.vmm_binary);
    cmd.arg("vmm")
        .arg("--config")
        .arg(files.vm_config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    // SAFETY: setsid and dup2 are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = tap_raw {
                if libc::dup2(fd, VMM_TAP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(tap);
    let mut child = spawned.map_err(spawn_err)?;
    let pid = child.id().map(|p| p as i32).ok_or(VmmProcessError::Vanished { pid: -1 })?;
    // A just-forked child is visible in /proc at once; only a failed exec can end it this fast.
    let start_time = procfs::read_stat(pid).map(|st| st.start_time);
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::info!(pid, %status, "VMM exited"),
            Err(e) => tracing::warn!(pid, error = %e, "waiting for the VMM failed"),
        }
    });
    match start_time {
        Some(start_time) => Ok(VmmProcess { pid, start_time }),
        None => Err(VmmProcessError::Vanished { pid }),
    }
}

/// The mount namespace of the VMM `p`, where the pod's volumes are attached; None when it
/// shares the daemon's (a VMM started without [`MountNsConfig`]). The namespace is opened
/// first and `p` checked after, so the handle is that very process's.
pub fn mount_ns(p: &VmmProcess) -> Result<Option<MountNs>, VmmProcessError> {
    let ns_err = |source| VmmProcessError::MountNs { pid: p.pid, source };
    let ns = match MountNs::of_process(p.pid) {
        Ok(ns) => ns,
        Err(_) if !procfs::is_alive(p) => return Err(VmmProcessError::NotRunning { pid: p.pid }),
        Err(e) => return Err(ns_err(e)),
    };
    if !procfs::is_alive(p) {
        return Err(VmmProcessError::NotRunning { pid: p.pid });
    }
    if ns.is_current().map_err(ns_err)? {
        return Ok(None);
    }
    Ok(Some(ns))
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_above(fd: &OwnedFd, min: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The VMM processes of the VM whose config file is `vm_config` (`carapace vmm --config
/// <vm_config>`, found in /proc by their arguments) and `recorded` when it still runs: a VMM
/// the daemon started but whose PID it had not saved yet is found too.
pub fn find_vmms(vm_config: &Path, recorded: Option<VmmProcess>) -> Vec<VmmProcess> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = procfs::find_by_args(&[b"vmm", b"--config", vm_config.as_os_str().as_bytes()]);
    if let Some(p) = recorded.filter(procfs::is_alive) {
        if !found.contains(&p) {
            found.push(p);
        }
    }
    found
}

/// SIGKILLs `procs` and waits (blocking, up to 5 s each) until they are gone; returns those
/// still alive after that.
pub fn kill_blocking(procs: &[VmmProcess]) -> Vec<VmmProcess> {
    for p in procs {
        procfs::signal(p, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + KILL_WAIT;
    loop {
        let alive: Vec<VmmProcess> = procs.iter().copied().filter(procfs::is_alive).collect();
        if alive.is_empty() || std::time::Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `n` non-empty lines of a log file, joined on one line (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// Waits until the agent answers Health through `vsock`, the VMM dies, or `timeout` passes.
pub async fn wait_agent(
    p: &VmmProcess,
    files: &VmFiles<'_>,
    timeout: Duration,
) -> Result<carapace_agent_client::pb::HealthResponse, VmmProcessError> {
    let connect = async {
        let agent = AgentClient::connect(files.vsock, AGENT_VSOCK_PORT, timeout).await?;
        agent.health().await
    };
    let died = async {
        while procfs::is_alive(p) {
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        r = connect => r.map_err(|e| VmmProcessError::AgentTimeout {
            timeout,
            last: e.to_string(),
            serial: log_tail(files.serial_log, 5),
        }),
        () = died => Err(VmmProcessError::Exited { log: log_tail(files.vmm_log, 5) }),
    }
}

/// Waits up to `limit` for `p` to end; true when it did.
pub async fn wait_exit(p: &VmmProcess, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !procfs::is_alive(p) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    AlreadyGone,
    AgentShutdown,
    Terminated,
    Killed,
}

/// Stops the VM: the agent's Shutdown, then SIGTERM (the VMM asks the guest, then stops it by
/// force), then SIGKILL. No error when it is already gone.
pub async fn stop(
    p: &VmmProcess,
    vsock: &Path,
    step: Duration,
) -> Result<StopOutcome, VmmProcessError> {
    if !procfs::is_alive(p) {
        return Ok(StopOutcome::AlreadyGone);
    }
    let ask = async {
        let agent = AgentClient::connect(vsock, AGENT_VSOCK_PORT, Duration::from_secs(2)).await?;
        agent.shutdown().await
    };
    match tokio::time::timeout(step, ask).await {
        Ok(Ok(())) => {
            if wait_exit(p, step).await {
                return Ok(StopOutcome::AgentShutdown);
            }
            tracing::info!(pid = p.pid, "guest did not stop after the agent's Shutdown");
        }
        Ok(Err(e)) => tracing::info!(pid = p.pid, error = %e, "agent Shutdown failed"),
        Err(_) => tracing::info!(pid = p.pid, "agent Shutdown timed out"),
    }
    if procfs::signal(p, libc::SIGTERM) {
        // The VMM itself forces the VM off `step` after SIGTERM; allow it a little longer.
        if wait_exit(p, step + Duration::from_secs(2)).await {
            return Ok(StopOutcome::Terminated);
        }
        tracing::warn!(pid = p.pid, "VMM still running after SIGTERM: killing it");
    } else if !procfs::is_alive(p) {
        return Ok(StopOutcome::Terminated);
    }
    procfs::signal(p, libc::SIGKILL);
    if wait_exit(p, KILL_WAIT).await {
        Ok(StopOutcome::Killed)
    } else {
        Err(VmmProcessError::Unkillable { pid: p.pid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(dir: &Path, binary: &Path) -> Config {
        let mut c = Config::from_toml_str(
            &format!("run_dir = {:?}\nstate_dir = {:?}", dir.join("r"), dir.join("s")),
            Path::new("t"),
            Some(100),
        )
        .unwrap();
        c.vmm_binary = binary.to_path_buf();
        c.stop_timeout = Duration::from_secs(1);
        c
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-vmm");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_vm_config_carries_profile_files_and_kick() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Path::new("/bin/true"));
        let pod = c.pods_dir().join("p1");
        let files = VmFiles {
            vm_config: Path::new("/r/vm.json"),
            vsock: Path::new("/r/v"),
            serial_log: Path::new("/r/s"),
            vmm_log: Path::new("/r/l"),
            shared_dir: Path::new("/r/shared"),
            pod_dir: Some(&pod),
        };
        let size = VmSize { vcpus: 2, mem_mib: 1088 };
        let v = vm_config(&c, &VmProfile::default(), size, &files, None);
        assert_eq!((v.vcpus, v.mem_mib), (2, 1088), "the pod's size, not the profile's");
        assert_eq!(v.net, None);
        assert_eq!(v.kernel, PathBuf::from("/var/lib/carapace/guest/vmlinux"));
        assert_eq!(v.vsock.as_ref().unwrap().uds_path, PathBuf::from("/r/v"));
        assert_eq!(v.serial_log, Some(PathBuf::from("/r/s")));
        assert_eq!(v.vmm_log, Some(PathBuf::from("/r/l")), "the VMM caps its own log");
        assert_eq!(v.vmm_log_max_bytes, c.pods.vmm_log_max_bytes);
        assert_eq!(v.guest_warnings_per_second, c.pods.guest_warnings_per_second);
        assert_eq!(v.shared_dir_max_open_files, c.pods.shared_dir_max_open_files);
        assert_eq!(v.kick_interval, Some(Duration::from_millis(100)));
        assert_eq!(v.stop_timeout, Duration::from_millis(1000));
        assert_eq!(v.shared_dir, Some(PathBuf::from("/r/shared")));
        let ns = v.mount_ns.as_ref().expect("a mount namespace of its own");
        assert_eq!(ns.prune_below, c.pods_dir());
        assert_eq!(ns.keep, pod);
        v.validate_limits().unwrap();
        let a = v.to_json();
        assert!(a.contains("\"kick_interval_ms\": 100"), "{a}");
        assert!(a.contains("\"stop_timeout_ms\": 1000"), "{a}");
    }

    #[tokio::test]
    async fn a_vmm_that_fails_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let bin =
            script(dir.path(), "echo 'carapace vmm: error: kernel is not an ELF' >&2; exit 1");
        let c = cfg(dir.path(), &bin);
        let log = dir.path().join("vmm.log");
        let files = VmFiles {
            vm_config: &dir.path().join("vm.json"),
            vsock: &dir.path().join("v"),
            serial_log: &dir.path().join("s"),
            vmm_log: &log,
            shared_dir: dir.path(),
            pod_dir: None,
        };
        let p = match spawn(
            &c,
            &VmProfile::default(),
            VmProfile::default().default_size(),
            &files,
            None,
        ) {
            Ok(p) => p,
            // Exited before /proc was read: also fine.
            Err(VmmProcessError::Vanished { .. }) => return,
            Err(e) => panic!("{e}"),
        };
        let err = wait_agent(&p, &files, Duration::from_secs(20)).await.unwrap_err().to_string();
        assert!(err.contains("kernel is not an ELF"), "{err}");
    }

    #[tokio::test]
    async fn the_tap_is_inherited_as_fd_3_and_named_in_the_vm_config() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("fd3");
        let bin = script(dir.path(), &format!("readlink /proc/$$/fd/3 > {}", seen.display()));
        let c = cfg(dir.path(), &bin);
        let tap_file = dir.path().join("not-really-a-tap");
        let tap = OwnedFd::from(std::fs::File::create(&tap_file).unwrap());
        let net = VmNet { tap, mac: "02:00:00:00:00:07".into() };
        let config = dir.path().join("vm.json");
        let files = VmFiles {
            vm_config: &config,
            vsock: &dir.path().join("v"),
            serial_log: &dir.path().join("s"),
            vmm_log: &dir.path().join("vmm.log"),
            shared_dir: dir.path(),
            pod_dir: None,
        };
        match spawn(
            &c,
            &VmProfile::default(),
            VmProfile::default().default_size(),
            &files,
            Some(&net),
        ) {
            Ok(_) | Err(VmmProcessError::Vanished { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&seen).map(|s| s.is_empty()).unwrap_or(true) {
            assert!(std::time::Instant::now() < deadline, "fake VMM never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = std::fs::read_to_string(&seen).unwrap();
        assert_eq!(target.trim(), tap_file.to_str().unwrap());
        let v = VmConfig::from_json_file(&config).unwrap();
        assert_eq!(v.net, Some(NetConfig { tap_fd: 3, mac: "02:00:00:00:00:07".into() }));
        // The daemon's own descriptor is untouched.
        assert!(std::fs::metadata(format!("/proc/self/fd/{}", net.tap.as_raw_fd())).is_ok());
    }

    #[tokio::test]
    async fn a_vmm_that_ignores_sigterm_is_killed_and_runs_in_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "trap '' TERM; while :; do sleep 0.1; done");
        let c = cfg(dir.path(), &bin);
        let log = dir.path().join("vmm.log");
        let vsock = dir.path().join("v");
        let files = VmFiles {
            vm_config: &dir.path().join("vm.json"),
            vsock: &vsock,
            serial_log: &dir.path().join("s"),
            vmm_log: &log,
            shared_dir: dir.path(),
            pod_dir: None,
        };
        let p = spawn(&c, &VmProfile::default(), VmProfile::default().default_size(), &files, None)
            .unwrap();
        assert!(procfs::is_alive(&p));
        // SAFETY: getsid has no memory effects.
        let (sid, mine) = unsafe { (libc::getsid(p.pid), libc::getsid(0)) };
        assert_eq!(sid, p.pid, "VMM is not a session leader");
        assert_ne!(sid, mine);
        let err = wait_agent(&p, &files, Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, VmmProcessError::AgentTimeout { .. }), "{err}");
        let outcome = stop(&p, &vsock, Duration::from_millis(300)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Killed);
        assert!(!procfs::is_alive(&p));
        assert_eq!(
            stop(&p, &vsock, Duration::from_millis(300)).await.unwrap(),
            StopOutcome::AlreadyGone
        );
    }
}
