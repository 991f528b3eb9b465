//! Seccomp profiles: the agent's default one and custom ones from requests.

use std::collections::HashMap;

use carapace_agent_client::pb;
use carapace_agent_client::pb::seccomp::Kind;
use libcontainer::workload::{
    default::get_executor, Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, Spec};
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

/// Capabilities an exec process of a confined container holds on top of the container's until
/// [`ExecSeccomp`] loaded the filter and dropped them: loading a filter without
/// no_new_privileges needs CAP_SYS_ADMIN, shrinking the bounding set CAP_SETPCAP.
pub const EXEC_SETUP_CAPABILITIES: &[&str] = &["CAP_SYS_ADMIN", "CAP_SETPCAP"];

/// The seccomp filter of an exec process. libcontainer 0.7's tenant (exec) builder keeps only
/// the namespaces, cgroup, personality and time offsets of the container's `linux` section, so
/// an exec would run unconfined. This executor runs in the exec process right before its
/// execve: it loads the container's filter and drops the process to the container's
/// capabilities (the order of runc's `setns` init: filter first, then the capability drop,
/// unless no_new_privileges is set, which lets an unprivileged process load it last).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecSeccomp {
    profile: LinuxSeccomp,
    caps: LinuxCapabilities,
}

impl ExecSeccomp {
    /// From a container's config.json (the one the agent wrote): `None` when the container
    /// runs without a filter.
    pub fn from_spec(spec: &Value) -> Result<Option<ExecSeccomp>, ContainerError> {
        let Some(profile) = spec["linux"].get("seccomp") else { return Ok(None) };
        let profile: LinuxSeccomp = serde_json::from_value(profile.clone())
            .map_err(|e| ContainerError::Runtime(format!("the container's seccomp: {e}")))?;
        let caps: LinuxCapabilities =
            serde_json::from_value(spec["process"]["capabilities"].clone()).map_err(|e| {
                ContainerError::Runtime(format!("the container's capabilities: {e}"))
            })?;
        Ok(Some(ExecSeccomp { profile, caps }))
    }

    fn load(&self) -> Result<(), ExecutorError> {
        match libcontainer::seccomp::initialize_seccomp(&self.profile) {
            Ok(None) => Ok(()),
            Ok(Some(fd)) => {
                // SAFETY: the notify fd is ours alone; nothing would answer it.
                unsafe { libc::close(fd) };
                Err(ExecutorError::Other(
                    "seccomp: SCMP_ACT_NOTIFY profiles are not supported for exec".into(),
                ))
            }
            Err(e) => Err(ExecutorError::Other(format!("seccomp: {e}"))),
        }
    }

    fn drop_capabilities(&self) -> Result<(), ExecutorError> {
        let syscall = libcontainer::syscall::syscall::create_syscall();
        libcontainer::capabilities::drop_privileges(&self.caps, syscall.as_ref())
            .map_err(|e| ExecutorError::Other(format!("drop capabilities: {e}")))
    }
}

impl Executor for ExecSeccomp {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) only reads a flag of this process.
        let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
        if nnp {
            self.drop_capabilities()?;
            self.load()?;
        } else {
            self.load()?;
            self.drop_capabilities()?;
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        get_executor().setup_envs(envs)
    }
}

/// The capabilities of an OCI process JSON (a terminal exec's) with
/// [`EXEC_SETUP_CAPABILITIES`] added to its bounding, effective and permitted sets.
pub fn with_setup_capabilities(process: &mut Value) {
    for set in ["bounding", "effective", "permitted"] {
        let list = &mut process["capabilities"][set];
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(a) = list.as_array_mut() {
            for c in EXEC_SETUP_CAPABILITIES {
                if !a.iter().any(|x| x == c) {
                    a.push(json!(c));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_confinement_comes_from_the_containers_spec() {
        let spec = json!({
            "process": {"capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                         "permitted": ["CAP_KILL"]}},
            "linux": {"seccomp": default_profile()},
        });
        let x = ExecSeccomp::from_spec(&spec).unwrap().expect("a filter");
        assert_eq!(x.caps.bounding().as_ref().unwrap().len(), 1);
        assert!(x.caps.inheritable().is_none() && x.caps.ambient().is_none());
        assert!(ExecSeccomp::from_spec(&json!({"process": {}, "linux": {}})).unwrap().is_none());
        let bad = json!({"process": {}, "linux": {"seccomp": {"defaultAction": "NOPE"}}});
        assert!(ExecSeccomp::from_spec(&bad).is_err());
        let mut p = spec["process"].clone();
        with_setup_capabilities(&mut p);
        with_setup_capabilities(&mut p);
        assert_eq!(
            p["capabilities"]["effective"],
            json!(["CAP_KILL", "CAP_SYS_ADMIN", "CAP_SETPCAP"])
        );
        let mut none = json!({"args": ["sh"]});
        with_setup_capabilities(&mut none);
        assert_eq!(none["capabilities"]["bounding"], json!(["CAP_SYS_ADMIN", "CAP_SETPCAP"]));
    }

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
        let custom = concat!(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","#,
            r#""syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#
        );
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
