//! The pod's shared namespaces (network, IPC, UTS) inside the guest.
//!
//! The VM is the pod. The agent creates one network, IPC and UTS namespace
//! for the pod's containers the first time a container asks for them: a
//! short-lived thread unshares them, brings up `lo`, sets the hostname and
//! bind-mounts its namespace files to `<dir>/{net,ipc,uts}`, which keeps
//! the namespaces alive with no process in them. Containers join them by
//! path (OCI `linux.namespaces[].path`). The agent itself stays in the
//! guest's initial namespaces. The pod's sysctls are written in the same
//! thread right after the unshare, so they land in the pod's IPC and network
//! namespaces.
//!
//! The pod's PID namespace (containers in NAMESPACE_MODE_POD) gets its own
//! PID 1, a holder process (the agent forked after `unshare(CLONE_NEWPID)`,
//! the role of Kubernetes' pause process): it only reaps the orphans of the
//! namespace, and keeps the namespace alive when containers come and go.
//! Containers join it through `/proc/<holder>/ns/pid`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::ContainerError;
use crate::reaper::Reaper;

/// Where the namespace files are bind-mounted.
pub const POD_NS_DIR: &str = "/run/carapace/pod/ns";

#[derive(Debug, Clone)]
pub struct PodNamespaces {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl PodNamespaces {
    /// Creates the namespaces under `dir` (idempotent: reuses mounted ones)
    /// and sets the pod's `sysctls` in them (checked with [`check_sysctls`]).
    pub fn create(
        dir: &Path,
        hostname: &str,
        sysctls: &HashMap<String, String>,
    ) -> Result<PodNamespaces, ContainerError> {
        check_sysctls(sysctls)?;
        let ns = PodNamespaces { net: dir.join("net"), ipc: dir.join("ipc"), uts: dir.join("uts") };
        std::fs::create_dir_all(dir)
            .map_err(|e| ContainerError::io(format!("mkdir {}", dir.display()), e))?;
        let ns2 = ns.clone();
        let hostname = hostname.to_owned();
        let sysctls = sysctls.clone();
        run_in_thread(move || {
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .map_err(|e| ContainerError::io("unshare pod namespaces", e.into()))?;
            if !hostname.is_empty() {
                nix::unistd::sethostname(&hostname)
                    .map_err(|e| ContainerError::io("sethostname", e.into()))?;
            }
            write_sysctls(&sysctls)?;
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

    /// Sets the pod's `sysctls` (checked with [`check_sysctls`]) in the
    /// existing namespaces: for a pod whose namespaces were made before its
    /// first container (ConfigureNetwork).
    pub fn apply_sysctls(&self, sysctls: &HashMap<String, String>) -> Result<(), ContainerError> {
        check_sysctls(sysctls)?;
        if sysctls.is_empty() {
            return Ok(());
        }
        let (net, ipc) = (self.net.clone(), self.ipc.clone());
        let sysctls = sysctls.clone();
        run_in_thread(move || {
            for (path, flag) in [(&net, CloneFlags::CLONE_NEWNET), (&ipc, CloneFlags::CLONE_NEWIPC)]
            {
                let f = std::fs::File::open(path)
                    .map_err(|e| ContainerError::io(format!("open {}", path.display()), e))?;
                setns(&f, flag).map_err(|e| {
                    ContainerError::io(format!("setns {}", path.display()), e.into())
                })?;
            }
            write_sysctls(&sysctls)
        })
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

/// Longest sysctl list a pod may set.
pub const MAX_SYSCTLS: usize = 64;

/// Checks the pod's sysctls: few, namespaced names, sane values.
pub fn check_sysctls(sysctls: &HashMap<String, String>) -> Result<(), ContainerError> {
    if sysctls.len() > MAX_SYSCTLS {
        return Err(ContainerError::invalid(format!("pod_sysctls: more than {MAX_SYSCTLS}")));
    }
    for (name, value) in sysctls {
        if !carapace_agent_client::namespaced_sysctl(name) {
            return Err(ContainerError::invalid(format!(
                "pod_sysctls: {name:?} is not a namespaced sysctl (kernel.shm*, kernel.msg*, \
                 kernel.sem, fs.mqueue.*, net.*)"
            )));
        }
        if !carapace_agent_client::valid_sysctl_value(value) {
            return Err(ContainerError::invalid(format!(
                "pod_sysctls: value of {name}: malformed"
            )));
        }
    }
    Ok(())
}

/// Writes checked sysctls. /proc/sys/net, kernel.shm*, fs.mqueue: the
/// namespaces of the task that opens the file, i.e. the calling thread's.
fn write_sysctls(sysctls: &HashMap<String, String>) -> Result<(), ContainerError> {
    let mut names: Vec<&String> = sysctls.keys().collect();
    names.sort();
    for name in names {
        let path = sysctl_path(name)?;
        std::fs::write(&path, &sysctls[name]).map_err(|e| {
            ContainerError::io(format!("sysctl {name} (write {})", path.display()), e)
        })?;
        tracing::info!(name = %name, value = %sysctls[name], "pod sysctl set");
    }
    Ok(())
}

/// `/proc/sys/<name with '.' as '/'>` for a checked name.
fn sysctl_path(name: &str) -> Result<PathBuf, ContainerError> {
    if !carapace_agent_client::namespaced_sysctl(name) {
        return Err(ContainerError::invalid(format!("sysctl {name:?}: not allowed")));
    }
    Ok(Path::new("/proc/sys").join(name.replace('.', "/")))
}

/// The PID 1 of the pod's PID namespace.
#[derive(Debug, Clone)]
pub struct PidHolder {
    pub pid: i32,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PidHolder {
    /// Forks the holder into a new PID namespace (from a fresh thread that
    /// unshares CLONE_NEWPID; the agent stays in its own). Its exit is
    /// watched: [`PidHolder::alive`] turns false when the reaper collects it.
    /// Call from within the tokio runtime.
    pub fn spawn(reaper: &Reaper) -> Result<PidHolder, ContainerError> {
        let r = reaper.clone();
        let pid = std::thread::spawn(move || -> Result<i32, ContainerError> {
            unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| ContainerError::io("unshare pid namespace", e.into()))?;
            let mut guard = r.lock();
            // SAFETY: fork in a multi-threaded process; the child only makes
            // async-signal-safe system calls on its stack (holder_main) and
            // never returns.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                holder_main();
            }
            if pid < 0 {
                return Err(ContainerError::io("fork pid holder", std::io::Error::last_os_error()));
            }
            guard.watch(pid);
            Ok(pid)
        })
        .join()
        .unwrap_or_else(|_| Err(ContainerError::Runtime("namespace thread panicked".into())))?;
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (a, r) = (alive.clone(), reaper.clone());
        tokio::runtime::Handle::current().spawn(async move {
            let status = r.wait(pid).await;
            a.store(false, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(pid, ?status, "the pod's PID namespace holder exited");
        });
        tracing::info!(pid, "pod PID namespace created");
        Ok(PidHolder { pid, alive })
    }

    pub fn alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The namespace file containers join.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }
}

/// The holder's life: PID 1 of the pod's PID namespace, reaping whatever is
/// re-parented to it. Only async-signal-safe calls (it runs right after a
/// fork of a multi-threaded process).
fn holder_main() -> ! {
    // SAFETY: plain system calls on local, initialized values.
    unsafe {
        // Nothing of the agent's: no fds but stdio, default signal handlers.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let name = b"pod-pid-holder\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            let mut sig: libc::c_int = 0;
            libc::sigwait(&set, &mut sig);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_checked_and_become_paths_under_proc_sys() {
        let m = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(check_sysctls(&m(&[
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "100")
        ]))
        .is_ok());
        for bad in [
            m(&[("kernel.core_pattern", "|/bin/sh")]),
            m(&[("net.ipv4/../../kernel/core_pattern", "x")]),
            m(&[("net..ipv4", "1")]),
            m(&[("net.ipv4.ip_forward", "1\n2")]),
        ] {
            assert!(matches!(check_sysctls(&bad), Err(ContainerError::Invalid(_))), "{bad:?}");
        }
        let many: HashMap<String, String> =
            (0..=MAX_SYSCTLS).map(|i| (format!("net.ipv4.x{i}"), "1".to_string())).collect();
        assert!(check_sysctls(&many).is_err());
        assert_eq!(
            sysctl_path("fs.mqueue.msg_max").unwrap(),
            Path::new("/proc/sys/fs/mqueue/msg_max")
        );
        assert!(sysctl_path("vm.swappiness").is_err());
    }
}
