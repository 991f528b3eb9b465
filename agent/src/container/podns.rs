//! The pod's shared namespaces (network, IPC, UTS) inside the guest.
//!
//! The VM is the pod. The agent creates one network, IPC and UTS namespace
//! for the pod's containers the first time a container asks for them: a
//! short-lived thread unshares them, brings up `lo`, sets the hostname and
//! bind-mounts its namespace files to `<dir>/{net,ipc,uts}`, which keeps
//! the namespaces alive with no process in them. Containers join them by
//! path (OCI `linux.namespaces[].path`). The agent itself stays in the
//! guest's initial namespaces.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::ContainerError;

/// Where the namespace files are bind-mounted.
pub const POD_NS_DIR: &str = "/run/carapace/pod/ns";

#[derive(Debug, Clone)]
pub struct PodNamespaces {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl PodNamespaces {
    /// Creates the namespaces under `dir` (idempotent: reuses mounted ones).
    pub fn create(dir: &Path, hostname: &str) -> Result<PodNamespaces, ContainerError> {
        let ns = PodNamespaces { net: dir.join("net"), ipc: dir.join("ipc"), uts: dir.join("uts") };
        std::fs::create_dir_all(dir)
            .map_err(|e| ContainerError::io(format!("mkdir {}", dir.display()), e))?;
        let ns2 = ns.clone();
        let hostname = hostname.to_owned();
        run_in_thread(move || {
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .map_err(|e| ContainerError::io("unshare pod namespaces", e.into()))?;
            if !hostname.is_empty() {
                nix::unistd::sethostname(&hostname)
                    .map_err(|e| ContainerError::io("sethostname", e.into()))?;
            }
            if let Err(e) = loopback_up() {
                tracing::warn!(error = %e, "cannot bring up lo in the pod network namespace");
            }
            let tid = nix::unistd::gettid();
            for (kind, target) in [("net", &ns2.net), ("ipc", &ns2.ipc), ("uts", &ns2.uts)] {
                std::fs::write(target, b"")
                    .map_err(|e| ContainerError::io(format!("create {}", target.display()), e))?;
                let src = format!("/proc/self/task/{tid}/ns/{kind}");
                mount(
                    Some(src.as_str()),
                    target.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| {
                    ContainerError::io(format!("bind {src} to {}", target.display()), e.into())
                })?;
            }
            Ok(())
        })?;
        tracing::info!(dir = %dir.display(), "pod namespaces created");
        Ok(ns)
    }

    /// Sets the pod hostname (UTS is shared: the last one set wins).
    pub fn set_hostname(&self, hostname: &str) -> Result<(), ContainerError> {
        let uts = self.uts.clone();
        let hostname = hostname.to_owned();
        run_in_thread(move || {
            let f = std::fs::File::open(&uts)
                .map_err(|e| ContainerError::io(format!("open {}", uts.display()), e))?;
            setns(&f, CloneFlags::CLONE_NEWUTS)
                .map_err(|e| ContainerError::io("setns uts", e.into()))?;
            nix::unistd::sethostname(&hostname)
                .map_err(|e| ContainerError::io("sethostname", e.into()))
        })
    }
}

/// Runs `f` on a fresh thread (namespace changes stay on that thread and
/// die with it).
fn run_in_thread<F>(f: F) -> Result<(), ContainerError>
where
    F: FnOnce() -> Result<(), ContainerError> + Send + 'static,
{
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|_| Err(ContainerError::Runtime("namespace thread panicked".into())))
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
