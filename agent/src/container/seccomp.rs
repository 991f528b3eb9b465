//! Seccomp profiles: the agent's default one and custom ones from requests.

use carapace_agent_client::pb;
use carapace_agent_client::pb::seccomp::Kind;
use serde_json::{json, Value};

use super::error::ContainerError;

/// Longest custom profile accepted.
pub const MAX_PROFILE_LEN: usize = 1 << 20;

/// Syscalls the default profile refuses with EPERM: kernel modules, kexec,
/// reboot, clock setting, mount and namespace changes, keyrings, tracing
/// other processes, BPF, perf, NUMA policy, userfaultfd, swap, quotas.
pub const DEFAULT_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The default profile as an OCI `linux.seccomp` object.
pub fn default_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{
            "names": DEFAULT_DENIED,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
    })
}

/// The `linux.seccomp` object for a request, `None` for unconfined.
pub fn profile(s: Option<&pb::Seccomp>) -> Result<Option<Value>, ContainerError> {
    let Some(s) = s else { return Ok(None) };
    match Kind::try_from(s.kind) {
        Ok(Kind::Unconfined) => Ok(None),
        Ok(Kind::RuntimeDefault) => Ok(Some(default_profile())),
        Ok(Kind::Custom) => {
            if s.profile_json.len() > MAX_PROFILE_LEN {
                return Err(ContainerError::invalid("seccomp.profile_json: too long"));
            }
            let v: Value = serde_json::from_str(&s.profile_json)
                .map_err(|e| ContainerError::invalid(format!("seccomp.profile_json: {e}")))?;
            serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(v.clone()).map_err(|e| {
                ContainerError::invalid(format!(
                    "seccomp.profile_json: not an OCI seccomp object: {e}"
                ))
            })?;
            Ok(Some(v))
        }
        Err(_) => Err(ContainerError::invalid(format!("seccomp.kind {}: unknown", s.kind))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        assert!(profile(None).unwrap().is_none());
        let d = profile(Some(&pb::Seccomp {
            kind: Kind::RuntimeDefault as i32,
            profile_json: String::new(),
        }))
        .unwrap()
        .unwrap();
        let parsed: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(d).unwrap();
        assert_eq!(parsed.syscalls().as_ref().unwrap()[0].names().len(), DEFAULT_DENIED.len());
        let custom = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#;
        assert!(profile(Some(&pb::Seccomp {
            kind: Kind::Custom as i32,
            profile_json: custom.into()
        }))
        .unwrap()
        .is_some());
        for bad in ["", "{", r#"{"defaultAction":"NOPE"}"#, "[1,2]"] {
            assert!(
                profile(Some(&pb::Seccomp { kind: Kind::Custom as i32, profile_json: bad.into() }))
                    .is_err(),
                "{bad}"
            );
        }
        assert!(profile(Some(&pb::Seccomp { kind: 99, profile_json: String::new() })).is_err());
    }
}
