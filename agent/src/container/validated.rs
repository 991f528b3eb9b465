//! A `CreateContainerRequest` parsed once into a checked type ("parse, then
//! build"): [`ValidatedContainer::parse`] checks the whole request (id,
//! process, rootfs, mounts resolved inside the rootfs, capabilities,
//! seccomp, resources, sysctls) before the agent changes anything, and the
//! spec builder ([`super::spec`]) takes only the result. The field checks
//! themselves are in [`super::validate`] and [`super::path`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use carapace_agent_client::{pb, ALL_CAPABILITIES, DEFAULT_CAPABILITIES};
use pb::NamespaceMode;
use serde_json::Value;

use super::error::ContainerError;
use super::path::{check_absolute, resolve_in_root};
use super::validate::{check_id, check_process, check_resources, normalize_capability, MAX_MOUNTS};
use super::{podns, seccomp};

/// Paths masked in a container unless the request lists its own.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in a container unless the request lists its own.
pub const DEFAULT_READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Mount types a request may ask for.
pub const MOUNT_TYPES: &[&str] = &["bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue"];

/// A container or exec id (`[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`): safe as a
/// file and cgroup name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    /// `what` names the field in the error ("container id", "exec id").
    pub fn parse(what: &str, id: &str) -> Result<ContainerId, ContainerError> {
        check_id(what, id)?;
        Ok(ContainerId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked process description (a container's init or an exec).
#[derive(Debug, Clone)]
pub struct ValidProcess(pb::Process);

impl ValidProcess {
    pub fn parse(p: Option<&pb::Process>) -> Result<ValidProcess, ContainerError> {
        check_process(p).map(|p| ValidProcess(p.clone()))
    }

    pub fn get(&self) -> &pb::Process {
        &self.0
    }
}

/// One mount of the request, checked; the destination resolved in the rootfs.
#[derive(Debug, Clone)]
pub struct ValidMount {
    destination: PathBuf,
    ty: String,
    source: String,
    options: Vec<String>,
}

impl ValidMount {
    pub fn parse(rootfs: &Path, m: &pb::Mount) -> Result<ValidMount, ContainerError> {
        check_absolute("mount.destination", &m.destination)?;
        let destination = resolve_in_root(rootfs, &m.destination)?;
        if destination == Path::new("/") {
            return Err(ContainerError::invalid("mount.destination: cannot mount over /"));
        }
        let ty = if m.r#type.is_empty() { "bind" } else { m.r#type.as_str() };
        if !MOUNT_TYPES.contains(&ty) {
            return Err(ContainerError::invalid(format!(
                "mount {}: type {ty:?} not allowed (one of {MOUNT_TYPES:?})",
                m.destination
            )));
        }
        if m.options.len() > 64 {
            return Err(ContainerError::invalid("mount.options: too many"));
        }
        for o in &m.options {
            if o.is_empty() || o.len() > 256 || o.contains('\0') || o.contains(',') {
                return Err(ContainerError::invalid(format!("mount option {o:?}: malformed")));
            }
        }
        let mut options = m.options.clone();
        let source = if ty == "bind" {
            check_absolute("mount.source", &m.source)?;
            if std::fs::symlink_metadata(&m.source).is_err() {
                return Err(ContainerError::invalid(format!(
                    "mount.source {:?}: does not exist in the guest",
                    m.source
                )));
            }
            if !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.insert(0, "rbind".into());
            }
            m.source.clone()
        } else {
            if m.source.len() > 256 || m.source.contains('\0') {
                return Err(ContainerError::invalid("mount.source: malformed"));
            }
            if m.source.is_empty() {
                ty.to_owned()
            } else {
                m.source.clone()
            }
        };
        Ok(ValidMount { destination, ty: ty.to_owned(), source, options })
    }

    /// The destination relative to the rootfs (starts with `/`, no symlink).
    pub fn destination(&self) -> &Path {
        &self.destination
    }

    pub fn ty(&self) -> &str {
        &self.ty
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn options(&self) -> &[String] {
        &self.options
    }
}

/// The security settings of a container, normalised.
#[derive(Debug, Clone)]
pub struct ValidSecurity {
    privileged: bool,
    no_new_privs: bool,
    capabilities: Vec<String>,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    seccomp: Option<Value>,
}

impl ValidSecurity {
    pub fn parse(sec: &pb::Security) -> Result<ValidSecurity, ContainerError> {
        Ok(ValidSecurity {
            privileged: sec.privileged,
            no_new_privs: sec.no_new_privs,
            capabilities: capabilities(sec)?,
            masked_paths: paths_or_default(
                &sec.masked_paths,
                DEFAULT_MASKED_PATHS,
                "masked_paths",
            )?,
            readonly_paths: paths_or_default(
                &sec.readonly_paths,
                DEFAULT_READONLY_PATHS,
                "readonly_paths",
            )?,
            seccomp: seccomp::profile(sec.seccomp.as_ref())?,
        })
    }

    pub fn privileged(&self) -> bool {
        self.privileged
    }

    pub fn no_new_privs(&self) -> bool {
        self.no_new_privs
    }

    /// `CAP_` names, no duplicates.
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    pub fn masked_paths(&self) -> &[String] {
        &self.masked_paths
    }

    pub fn readonly_paths(&self) -> &[String] {
        &self.readonly_paths
    }

    /// The OCI `linux.seccomp` object, `None` for unconfined.
    pub fn seccomp(&self) -> Option<&Value> {
        self.seccomp.as_ref()
    }
}

/// Which namespaces a container shares with its pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedNamespaces {
    pub network: bool,
    pub ipc: bool,
    pub uts: bool,
    /// The pod's PID namespace (only when asked for: POD mode).
    pub pid: bool,
}

impl SharedNamespaces {
    fn parse(ns: &pb::Namespaces) -> SharedNamespaces {
        let shared = |m: i32| !matches!(NamespaceMode::try_from(m), Ok(NamespaceMode::Container));
        SharedNamespaces {
            network: shared(ns.network),
            ipc: shared(ns.ipc),
            uts: shared(ns.uts),
            pid: matches!(NamespaceMode::try_from(ns.pid), Ok(NamespaceMode::Pod)),
        }
    }

    /// Whether the container joins any of the pod's network, IPC or UTS namespaces.
    pub fn any_pod_ns(&self) -> bool {
        self.network || self.ipc || self.uts
    }
}

/// A whole CreateContainerRequest, checked.
#[derive(Debug, Clone)]
pub struct ValidatedContainer {
    id: ContainerId,
    rootfs: PathBuf,
    rootfs_readonly: bool,
    process: ValidProcess,
    hostname: String,
    resources: pb::Resources,
    mounts: Vec<ValidMount>,
    mounts_etc_hosts: bool,
    security: ValidSecurity,
    namespaces: SharedNamespaces,
    pod_sysctls: HashMap<String, String>,
    annotations: HashMap<String, String>,
}

impl ValidatedContainer {
    /// Checks everything in `req`. Reads the filesystem (the rootfs and
    /// bind sources must exist, mount destinations are resolved in the
    /// rootfs) but changes nothing.
    pub fn parse(req: &pb::CreateContainerRequest) -> Result<ValidatedContainer, ContainerError> {
        let id = ContainerId::parse("container id", &req.id)?;
        let rootfs = check_rootfs(&req.rootfs_path)?;
        let process = ValidProcess::parse(req.process.as_ref())?;
        let resources = req.resources.unwrap_or_default();
        check_resources(&resources)?;
        if req.mounts.len() > MAX_MOUNTS {
            return Err(ContainerError::invalid("mounts: too many"));
        }
        if req.hostname.len() > 64 || req.hostname.contains(['\0', '/', '\n']) {
            return Err(ContainerError::invalid("hostname: malformed"));
        }
        let security = ValidSecurity::parse(&req.security.clone().unwrap_or_default())?;
        let mounts =
            req.mounts.iter().map(|m| ValidMount::parse(&rootfs, m)).collect::<Result<_, _>>()?;
        podns::check_sysctls(&req.pod_sysctls)?;
        Ok(ValidatedContainer {
            id,
            rootfs,
            rootfs_readonly: req.rootfs_readonly,
            process,
            hostname: req.hostname.clone(),
            resources,
            mounts,
            mounts_etc_hosts: mounts_at(req, "/etc/hosts"),
            security,
            namespaces: SharedNamespaces::parse(&req.namespaces.unwrap_or_default()),
            pod_sysctls: req.pod_sysctls.clone(),
            annotations: req.annotations.clone(),
        })
    }

    pub fn id(&self) -> &ContainerId {
        &self.id
    }

    /// The rootfs directory, canonicalized (absolute, in the guest).
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    pub fn rootfs_readonly(&self) -> bool {
        self.rootfs_readonly
    }

    pub fn process(&self) -> &ValidProcess {
        &self.process
    }

    /// The pod hostname; empty when the request set none.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn resources(&self) -> &pb::Resources {
        &self.resources
    }

    pub fn mounts(&self) -> &[ValidMount] {
        &self.mounts
    }

    /// Whether the request mounts something at /etc/hosts itself.
    pub fn mounts_etc_hosts(&self) -> bool {
        self.mounts_etc_hosts
    }

    pub fn security(&self) -> &ValidSecurity {
        &self.security
    }

    pub fn namespaces(&self) -> SharedNamespaces {
        self.namespaces
    }

    pub fn pod_sysctls(&self) -> &HashMap<String, String> {
        &self.pod_sysctls
    }

    pub fn annotations(&self) -> &HashMap<String, String> {
        &self.annotations
    }
}

/// Whether the request mounts something at `dest` (compared by path
/// components: "/etc//hosts/" is "/etc/hosts").
pub fn mounts_at(req: &pb::CreateContainerRequest, dest: &str) -> bool {
    req.mounts
        .iter()
        .any(|m| Path::new(&m.destination).components().eq(Path::new(dest).components()))
}

/// Checks the rootfs field: absolute, no `..`, an existing directory.
/// Returns it canonicalized.
pub fn check_rootfs(p: &str) -> Result<PathBuf, ContainerError> {
    check_absolute("rootfs_path", p)?;
    let canon = std::fs::canonicalize(p)
        .map_err(|e| ContainerError::invalid(format!("rootfs_path {p:?}: {e}")))?;
    if !canon.is_dir() {
        return Err(ContainerError::invalid(format!("rootfs_path {p:?}: not a directory")));
    }
    if canon == Path::new("/") {
        return Err(ContainerError::invalid(
            "rootfs_path: the guest's / is not a container rootfs",
        ));
    }
    Ok(canon)
}

/// Capability set of a container from its security settings: all when
/// privileged, the list when given (or when `capabilities_exact`, even if it
/// is empty), else the default set.
pub fn capabilities(sec: &pb::Security) -> Result<Vec<String>, ContainerError> {
    if sec.privileged {
        return Ok(ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect());
    }
    if sec.capabilities.is_empty() && !sec.capabilities_exact {
        return Ok(DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect());
    }
    let mut out = Vec::new();
    for c in &sec.capabilities {
        let n = normalize_capability(c)?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

fn paths_or_default(
    given: &[String],
    default: &[&str],
    what: &str,
) -> Result<Vec<String>, ContainerError> {
    if given.is_empty() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    for p in given {
        check_absolute(what, p)?;
    }
    Ok(given.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(root: &Path) -> pb::CreateContainerRequest {
        pb::CreateContainerRequest {
            id: "c1".into(),
            process: Some(pb::Process { args: vec!["sh".into()], ..Default::default() }),
            rootfs_path: root.display().to_string(),
            ..Default::default()
        }
    }

    fn invalid(r: &pb::CreateContainerRequest) -> String {
        match ValidatedContainer::parse(r) {
            Err(ContainerError::Invalid(m)) => m,
            other => panic!("{r:?}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for id in ["", "../x", ".hidden", "a/b", "a b", "é"] {
            let r = pb::CreateContainerRequest { id: id.into(), ..good(t.path()) };
            assert!(invalid(&r).contains("container id"), "{id:?}");
        }
        let r = pb::CreateContainerRequest { id: "a".repeat(129), ..good(t.path()) };
        invalid(&r);
        let v = ValidatedContainer::parse(&good(t.path())).unwrap();
        assert_eq!(v.id().as_str(), "c1");
        assert!(ContainerId::parse("exec id", "x/y").is_err());
    }

    #[test]
    fn mount_destinations_are_resolved_and_cannot_leave_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", t.path().join("up")).unwrap();
        let with = |dest: &str| pb::CreateContainerRequest {
            mounts: vec![pb::Mount {
                destination: dest.into(),
                r#type: "tmpfs".into(),
                ..Default::default()
            }],
            ..good(t.path())
        };
        invalid(&with("/../../etc"));
        invalid(&with("relative"));
        // A link to above the rootfs ends at the rootfs: mounting over / is refused.
        assert!(invalid(&with("/up")).contains("cannot mount over /"));
        let v = ValidatedContainer::parse(&with("/abs/x")).unwrap();
        assert_eq!(v.mounts()[0].destination(), Path::new("/etc/x"));
        let v = ValidatedContainer::parse(&with("/up/etc/y")).unwrap();
        assert_eq!(v.mounts()[0].destination(), Path::new("/etc/y"));
        assert_eq!(v.mounts()[0].source(), "tmpfs");
        // The rootfs itself must be a directory other than the guest's /.
        invalid(&pb::CreateContainerRequest { rootfs_path: "/".into(), ..good(t.path()) });
        let up = format!("{}/../x", t.path().display());
        invalid(&pb::CreateContainerRequest { rootfs_path: up, ..good(t.path()) });
    }

    #[test]
    fn capabilities_are_normalised_and_unknown_ones_refused() {
        let t = tempfile::tempdir().unwrap();
        let with = |caps: &[&str]| pb::CreateContainerRequest {
            security: Some(pb::Security {
                capabilities: caps.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..good(t.path())
        };
        let v = ValidatedContainer::parse(&with(&["net_admin", "CAP_KILL", "kill"])).unwrap();
        assert_eq!(v.security().capabilities(), ["CAP_NET_ADMIN", "CAP_KILL"]);
        assert!(invalid(&with(&["CAP_NOPE"])).contains("unknown"));
        invalid(&with(&["cap kill"]));
        let bad_seccomp = pb::CreateContainerRequest {
            security: Some(pb::Security {
                seccomp: Some(pb::Seccomp {
                    kind: pb::seccomp::Kind::Custom as i32,
                    profile_json: "{not json".into(),
                }),
                ..Default::default()
            }),
            ..good(t.path())
        };
        invalid(&bad_seccomp);
    }

    #[test]
    fn namespaces_default_to_the_pod_ones_except_pid() {
        let t = tempfile::tempdir().unwrap();
        let v = ValidatedContainer::parse(&good(t.path())).unwrap();
        let ns = v.namespaces();
        assert!(ns.network && ns.ipc && ns.uts && !ns.pid && ns.any_pod_ns());
        let r = pb::CreateContainerRequest {
            namespaces: Some(pb::Namespaces {
                network: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Container as i32,
                uts: NamespaceMode::Container as i32,
                pid: NamespaceMode::Pod as i32,
            }),
            ..good(t.path())
        };
        let ns = ValidatedContainer::parse(&r).unwrap().namespaces();
        assert!(!ns.any_pod_ns() && ns.pid);
    }
}
