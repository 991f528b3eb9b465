//! The host ⇄ guest contract of carapace besides the gRPC API: names and sets that the daemon
//! (`carapace-cri`), the VMM (`carapace-vmm`) and the guest agent (`carapace-agent`) must agree
//! on. Each is defined here once; `carapace-agent-client` re-exports them next to the API
//! (`proto/agent.proto`), so the daemon and the agent reach them through the contract crate,
//! and the VMM, which does not speak the API, depends on this crate alone.
//!
//! No dependencies: the agent is linked statically and the VMM stays small.

#![forbid(unsafe_code)]

/// The guest vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The guest vsock port of the agent's port forwarding: one vsock connection per forwarded TCP
/// connection. The host writes `PORT <n>\n`; the agent connects to `localhost:<n>` in the pod's
/// network namespace and answers `OK\n` (then the connection carries the TCP stream's bytes
/// both ways) or `ERR <reason>\n` (then closes).
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1025;

/// The longest request or answer line of the port forwarding handshake, newline included.
pub const PORT_FORWARD_MAX_LINE: usize = 256;

/// virtio-fs tag of the pod's shared directory (the VMM's `--shared-dir`), which the agent
/// mounts at [`GUEST_SHARED_DIR`].
pub const SHARED_FS_TAG: &str = "carapace";

/// Where the agent mounts the pod's shared directory (virtio-fs tag [`SHARED_FS_TAG`]) in the
/// guest: container rootfs and volumes live below it. Absent when the VM has no shared
/// directory.
pub const GUEST_SHARED_DIR: &str = "/run/carapace/shared";

/// The capabilities a non-privileged container gets when its request names none (the set
/// containerd and CRI-O use); the daemon starts CRI's add/drop lists from it.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of the guest kernel (Linux 6.1: up to CAP_CHECKPOINT_RESTORE): what a
/// privileged container gets, and CRI's `add: ["ALL"]`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Longest sysctl name and value a pod may set.
pub const MAX_SYSCTL_NAME: usize = 256;
pub const MAX_SYSCTL_VALUE: usize = 4096;

/// Whether a pod may set this sysctl: a name in the dotted form whose kernel setting belongs to
/// the pod's own IPC or network namespace (`kernel.shm*`, `kernel.msg*`, `kernel.sem`,
/// `fs.mqueue.*`, `net.*`), and safe to turn into a path under /proc/sys (dots to slashes):
/// components of `[A-Za-z0-9_-]`, never empty, so no '/', no '..' and no leading or trailing
/// dot. The daemon checks it at RunPodSandbox, the agent again before writing.
pub fn namespaced_sysctl(name: &str) -> bool {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_SYSCTL_NAME
        && name.split('.').all(|c| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return false;
    }
    let component = |prefix: &str| name.strip_prefix(prefix).is_some_and(|r| !r.is_empty());
    name == "kernel.sem"
        || (name.starts_with("kernel.shm") && !name["kernel.".len()..].contains('.'))
        || (name.starts_with("kernel.msg") && !name["kernel.".len()..].contains('.'))
        || component("fs.mqueue.")
        || component("net.")
}

/// Whether a sysctl value is acceptable: at most [`MAX_SYSCTL_VALUE`] bytes of printable ASCII
/// (spaces and tabs allowed: `kernel.sem` takes four numbers).
pub fn valid_sysctl_value(value: &str) -> bool {
    value.len() <= MAX_SYSCTL_VALUE
        && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_namespaced_sysctls_are_allowed() {
        for ok in [
            "kernel.shm_rmid_forced",
            "kernel.shmmax",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.eth-0.forwarding",
            "net.core.somaxconn",
        ] {
            assert!(namespaced_sysctl(ok), "{ok}");
        }
        for bad in [
            "",
            "kernel.hostname",
            "kernel.pid_max",
            "kernel.semx",
            "kernel.shm.x",
            "vm.overcommit_memory",
            "fs.mqueue.",
            "fs.mqueue",
            "net.",
            "net",
            "net..ipv4",
            "net.ipv4/../../kernel/core_pattern",
            "net.ipv4.conf.all/forwarding",
            ".net.ipv4",
            "net.ipv4.",
            "net.ipv4.ip forward",
            "net.ipv4.\0",
            "kernel/shm_rmid_forced",
        ] {
            assert!(!namespaced_sysctl(bad), "{bad:?}");
        }
        assert!(!namespaced_sysctl(&format!("net.{}", "a".repeat(MAX_SYSCTL_NAME))));
        assert!(valid_sysctl_value("1") && valid_sysctl_value("250 32000\t100 128"));
        assert!(!valid_sysctl_value("1\n2") && !valid_sysctl_value("\0"));
        assert!(!valid_sysctl_value(&"1".repeat(MAX_SYSCTL_VALUE + 1)));
    }

    #[test]
    fn the_default_set_is_a_subset_of_all_and_names_are_unique() {
        for set in [DEFAULT_CAPABILITIES, ALL_CAPABILITIES] {
            for (i, c) in set.iter().enumerate() {
                assert!(c.starts_with("CAP_"), "{c}");
                assert!(!set[..i].contains(c), "{c} twice");
            }
        }
        for c in DEFAULT_CAPABILITIES {
            assert!(ALL_CAPABILITIES.contains(c), "{c} is not in ALL_CAPABILITIES");
        }
        assert_eq!(ALL_CAPABILITIES.len(), 41, "CAP_CHOWN (0) ..= CAP_CHECKPOINT_RESTORE (40)");
    }

    #[test]
    fn the_shared_dir_is_absolute_and_the_tag_fits_virtio_fs() {
        assert!(GUEST_SHARED_DIR.starts_with('/'));
        // virtio-fs's config space holds a tag of at most 36 bytes.
        assert!(!SHARED_FS_TAG.is_empty() && SHARED_FS_TAG.len() <= 36);
    }
}
