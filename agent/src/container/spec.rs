//! Building the OCI runtime spec (config.json) of a container from a
//! [`ValidatedContainer`]: everything from the request was checked (and mount
//! destinations resolved in the rootfs) when it was parsed; this only writes.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::error::ContainerError;
use super::validated::{ValidMount, ValidProcess, ValidatedContainer};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Namespaces the container joins (`Some(path)`) or gets new (`None`).
#[derive(Debug, Clone, Default)]
pub struct NamespacePlan {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// Everything besides the request that goes into the spec.
#[derive(Debug, Clone)]
pub struct SpecContext {
    pub namespaces: NamespacePlan,
    /// cgroup v2 path relative to /sys/fs/cgroup, e.g. "/carapace/<id>".
    pub cgroup_path: String,
    /// A file holding the pod hostname, bind-mounted to /etc/hostname.
    pub hostname_file: Option<PathBuf>,
    /// The pod's hosts file (ConfigureNetwork), bind-mounted read-only to
    /// /etc/hosts unless the request mounts something there itself.
    pub hosts_file: Option<PathBuf>,
}

fn user_json(u: Option<&carapace_agent_client::pb::User>) -> Value {
    let u = u.cloned().unwrap_or_default();
    json!({ "uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids })
}

/// The process part of the spec.
pub fn process_json(p: &ValidProcess, caps: &[String], no_new_privs: bool) -> Value {
    let p = p.get();
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_owned());
    }
    let cwd = if p.cwd.is_empty() { "/" } else { p.cwd.as_str() };
    let mut v = json!({
        "terminal": p.tty,
        "user": user_json(p.user.as_ref()),
        "args": p.args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
    });
    // Only when true: libcontainer 0.7 loads the seccomp filter before
    // dropping capabilities only when the field is absent; `false` makes it
    // load the filter after the drop, which the kernel refuses (EACCES).
    if no_new_privs {
        v["noNewPrivileges"] = json!(true);
    }
    v
}

/// The process of an exec that needs a whole OCI process (a terminal): the
/// container's own process (capabilities, no_new_privs, rlimits) with the
/// exec's args, env (added to the container's, overriding by key), cwd,
/// user and terminal.
pub fn exec_process_json(init: &Value, p: &ValidProcess) -> Value {
    let p = p.get();
    let mut v = init.clone();
    let mut env: Vec<String> = init["env"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for kv in &p.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    v["args"] = json!(p.args);
    v["env"] = json!(env);
    v["terminal"] = json!(p.tty);
    if !p.cwd.is_empty() {
        v["cwd"] = json!(p.cwd);
    }
    if p.user.is_some() {
        v["user"] = user_json(p.user.as_ref());
    }
    v
}

fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ]
}

fn mount_json(m: &ValidMount) -> Value {
    json!({
        "destination": m.destination(),
        "type": m.ty(),
        "source": m.source(),
        "options": m.options(),
    })
}

fn ns_json(kind: &str, path: &Option<PathBuf>) -> Value {
    match path {
        Some(p) => json!({"type": kind, "path": p}),
        None => json!({"type": kind}),
    }
}

fn resources_json(r: &carapace_agent_client::pb::Resources) -> Value {
    let mut out = serde_json::Map::new();
    if r.memory_limit_bytes > 0 {
        out.insert("memory".into(), json!({"limit": r.memory_limit_bytes}));
    }
    if r.cpu_quota_us > 0 || r.cpu_period_us > 0 {
        let mut cpu = serde_json::Map::new();
        if r.cpu_quota_us > 0 {
            cpu.insert("quota".into(), json!(r.cpu_quota_us));
        }
        cpu.insert(
            "period".into(),
            json!(if r.cpu_period_us > 0 { r.cpu_period_us } else { 100_000 }),
        );
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if r.pids_limit > 0 {
        out.insert("pids".into(), json!({"limit": r.pids_limit}));
    }
    if r.cpu_weight > 0 {
        out.insert("unified".into(), json!({"cpu.weight": r.cpu_weight.to_string()}));
    }
    Value::Object(out)
}

/// The whole config.json of a container.
pub fn build_spec(c: &ValidatedContainer, ctx: &SpecContext) -> Result<Value, ContainerError> {
    let sec = c.security();
    let mut mounts = default_mounts();
    if let Some(h) = &ctx.hostname_file {
        mounts.push(json!({
            "destination": "/etc/hostname", "type": "bind", "source": h,
            "options": ["rbind", "rprivate", "ro"],
        }));
    }
    if let Some(h) = ctx.hosts_file.as_ref().filter(|_| !c.mounts_etc_hosts()) {
        mounts.push(json!({
            "destination": "/etc/hosts", "type": "bind", "source": h,
            "options": ["rbind", "rprivate", "ro"],
        }));
    }
    mounts.extend(c.mounts().iter().map(mount_json));

    let ns = &ctx.namespaces;
    let mut namespaces = vec![json!({"type": "mount"})];
    namespaces.push(ns_json("pid", &ns.pid));
    namespaces.push(ns_json("network", &ns.network));
    namespaces.push(ns_json("ipc", &ns.ipc));
    namespaces.push(ns_json("uts", &ns.uts));

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": ctx.cgroup_path,
        "resources": resources_json(c.resources()),
    });
    if !sec.privileged() {
        linux["maskedPaths"] = json!(sec.masked_paths());
        linux["readonlyPaths"] = json!(sec.readonly_paths());
    }
    if let Some(s) = sec.seccomp() {
        linux["seccomp"] = s.clone();
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process_json(c.process(), sec.capabilities(), sec.no_new_privs()),
        "root": { "path": c.rootfs(), "readonly": c.rootfs_readonly() },
        "mounts": mounts,
        "linux": linux,
        "annotations": c.annotations(),
    });
    // A hostname only in a private UTS namespace: the pod's is set by the
    // agent itself (see podns).
    if ns.uts.is_none() && !c.hostname().is_empty() {
        spec["hostname"] = json!(c.hostname());
    }
    // Round-trip through the spec crate: what libcontainer will read.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| ContainerError::invalid(format!("spec: {e}")))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::validated::check_rootfs;
    use carapace_agent_client::{pb, DEFAULT_CAPABILITIES};
    use std::path::Path;

    fn build(r: &pb::CreateContainerRequest, c: &SpecContext) -> Result<Value, ContainerError> {
        build_spec(&ValidatedContainer::parse(r)?, c)
    }

    fn vp(p: pb::Process) -> ValidProcess {
        ValidProcess::parse(Some(&p)).unwrap()
    }

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", t.path().join("evil2")).unwrap();
        t
    }

    fn req(root: &Path) -> pb::CreateContainerRequest {
        pb::CreateContainerRequest {
            id: "c1".into(),
            process: Some(pb::Process {
                args: vec!["sh".into(), "-c".into(), "true".into()],
                env: vec!["A=b".into()],
                user: Some(pb::User { uid: 1000, gid: 1000, additional_gids: vec![10] }),
                ..Default::default()
            }),
            rootfs_path: root.display().to_string(),
            rootfs_readonly: true,
            hostname: "pod".into(),
            resources: Some(pb::Resources {
                memory_limit_bytes: 32 << 20,
                pids_limit: 20,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ctx(_root: &Path) -> SpecContext {
        SpecContext {
            namespaces: NamespacePlan {
                network: Some("/run/carapace/pod/ns/net".into()),
                ipc: Some("/run/carapace/pod/ns/ipc".into()),
                uts: Some("/run/carapace/pod/ns/uts".into()),
                pid: None,
            },
            cgroup_path: "/carapace/c1".into(),
            hostname_file: Some("/run/carapace/containers/c1/hostname".into()),
            hosts_file: None,
        }
    }

    #[test]
    fn builds_a_spec_libcontainer_can_read() {
        let t = rootfs();
        let rq = req(t.path());
        let spec = build(&rq, &ctx(t.path())).unwrap();
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(parsed.root().as_ref().unwrap().readonly(), Some(true));
        let p = parsed.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[10u32][..]));
        assert!(p.env().as_ref().unwrap().iter().any(|e| e.starts_with("PATH=")));
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/carapace/c1")));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(32 << 20));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 20);
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 5);
        // Shared UTS: the spec carries no hostname.
        assert!(parsed.hostname().is_none());
        assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
        let caps = p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hostname"));
        assert!(spec["process"].get("noNewPrivileges").is_none());
        let nnp = process_json(&vp(rq.process.clone().unwrap()), &[], true);
        assert_eq!(nnp["noNewPrivileges"], true);
    }

    #[test]
    fn mount_destinations_resolve_inside_the_rootfs() {
        let t = rootfs();
        let mut r = req(t.path());
        r.mounts = vec![
            pb::Mount {
                destination: "/evil/x".into(),
                source: "/tmp".into(),
                ..Default::default()
            },
            pb::Mount {
                destination: "/evil2/y".into(),
                r#type: "tmpfs".into(),
                ..Default::default()
            },
        ];
        let spec = build(&r, &ctx(t.path())).unwrap();
        let dests: Vec<String> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect();
        assert!(dests.contains(&"/etc/x".to_owned()), "{dests:?}");
        assert!(dests.contains(&"/etc/y".to_owned()), "{dests:?}");
        let bind = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/x")
            .unwrap();
        assert_eq!(bind["options"][0], "rbind");
    }

    #[test]
    fn hostile_requests_are_refused() {
        let t = rootfs();
        let c = ctx(t.path());
        let bad = |f: &dyn Fn(&mut pb::CreateContainerRequest)| {
            let mut r = req(t.path());
            f(&mut r);
            let e = build(&r, &c).unwrap_err();
            assert!(matches!(e, ContainerError::Invalid(_)), "{e}");
        };
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/../../etc".into(),
                source: "/tmp".into(),
                ..Default::default()
            }]
        });
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/x".into(),
                source: "/tmp/../etc".into(),
                ..Default::default()
            }]
        });
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/x".into(),
                source: "/does/not/exist".into(),
                ..Default::default()
            }]
        });
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/x".into(),
                r#type: "ext4".into(),
                source: "/dev/vda".into(),
                ..Default::default()
            }]
        });
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/".into(),
                r#type: "tmpfs".into(),
                ..Default::default()
            }]
        });
        bad(&|r| {
            r.mounts = vec![pb::Mount {
                destination: "/x".into(),
                r#type: "tmpfs".into(),
                options: vec!["a,b".into()],
                ..Default::default()
            }]
        });
        bad(&|r| r.process = None);
        bad(&|r| r.hostname = "a/b".into());
        bad(&|r| {
            r.security =
                Some(pb::Security { capabilities: vec!["CAP_NOPE".into()], ..Default::default() })
        });
        bad(&|r| {
            r.security =
                Some(pb::Security { masked_paths: vec!["relative".into()], ..Default::default() })
        });
        bad(&|r| r.resources = Some(pb::Resources { pids_limit: -5, ..Default::default() }));
        assert!(check_rootfs("/").is_err());
        assert!(check_rootfs("relative").is_err());
        assert!(check_rootfs("/nonexistent/rootfs").is_err());
        assert!(check_rootfs(&format!("{}/../x", t.path().display())).is_err());
        assert!(check_rootfs(&t.path().display().to_string()).is_ok());
    }

    #[test]
    fn an_exact_empty_capability_list_means_none_an_unflagged_one_the_default_set() {
        let t = rootfs();
        let c = ctx(t.path());
        let mut r = req(t.path());
        r.security = Some(pb::Security { capabilities_exact: true, ..Default::default() });
        let spec = build(&r, &c).unwrap();
        let caps = &spec["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps[set], json!([]), "{set}: {caps}");
        }
        // Inheritable and ambient stay absent: the container inherits the
        // agent's, which are empty.
        assert!(caps.get("inheritable").is_none() && caps.get("ambient").is_none(), "{caps}");
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        let p = parsed.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        assert!(p.bounding().as_ref().unwrap().is_empty());
        r.security = Some(pb::Security::default());
        let spec = build(&r, &c).unwrap();
        let n = spec["process"]["capabilities"]["bounding"].as_array().unwrap().len();
        assert_eq!(n, DEFAULT_CAPABILITIES.len());
        r.security = Some(pb::Security {
            capabilities: vec!["CAP_KILL".into()],
            capabilities_exact: true,
            ..Default::default()
        });
        let spec = build(&r, &c).unwrap();
        assert_eq!(spec["process"]["capabilities"]["effective"], json!(["CAP_KILL"]));
        // Privileged wins over an exact empty list.
        r.security =
            Some(pb::Security { privileged: true, capabilities_exact: true, ..Default::default() });
        let spec = build(&r, &c).unwrap();
        assert!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len() > 30);
    }

    #[test]
    fn private_uts_carries_the_hostname_and_privileged_gets_all_caps() {
        let t = rootfs();
        let mut c = ctx(t.path());
        c.namespaces.uts = None;
        let mut r = req(t.path());
        r.security = Some(pb::Security { privileged: true, ..Default::default() });
        let spec = build(&r, &c).unwrap();
        assert_eq!(spec["hostname"], "pod");
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len() > 30);
    }

    #[test]
    fn a_terminal_exec_keeps_the_container_process_and_overrides_its_own_fields() {
        let init = process_json(
            &vp(pb::Process {
                args: vec!["sleep".into()],
                env: vec!["A=1".into(), "B=2".into()],
                ..Default::default()
            }),
            &["CAP_KILL".to_owned()],
            true,
        );
        let p = pb::Process {
            args: vec!["sh".into()],
            env: vec!["B=3".into(), "C=4".into()],
            cwd: "/work".into(),
            user: Some(pb::User { uid: 7, gid: 8, additional_gids: vec![] }),
            tty: true,
            stdin: true,
        };
        let v = exec_process_json(&init, &vp(p));
        assert_eq!(v["args"], json!(["sh"]));
        let env: Vec<&str> =
            v["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(
            env.contains(&"A=1")
                && env.contains(&"B=3")
                && env.contains(&"C=4")
                && !env.contains(&"B=2"),
            "{env:?}"
        );
        assert_eq!((v["terminal"].clone(), v["cwd"].clone()), (json!(true), json!("/work")));
        assert_eq!(v["user"]["uid"], json!(7));
        assert_eq!(v["capabilities"], init["capabilities"]);
        assert_eq!(v["noNewPrivileges"], json!(true));
        let plain = exec_process_json(
            &init,
            &vp(pb::Process { args: vec!["id".into()], ..Default::default() }),
        );
        assert_eq!(
            (plain["cwd"].clone(), plain["user"].clone()),
            (init["cwd"].clone(), init["user"].clone())
        );
    }

    #[test]
    fn the_pod_hosts_file_is_mounted_unless_the_request_mounts_etc_hosts() {
        let t = rootfs();
        let src = t.path().join("hosts-src");
        std::fs::write(&src, "x").unwrap();
        let mut c = ctx(t.path());
        let hosts_mounts = |spec: &Value| -> Vec<Value> {
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["destination"] == "/etc/hosts")
                .cloned()
                .collect()
        };
        let rq = req(t.path());
        assert!(hosts_mounts(&build(&rq, &c).unwrap()).is_empty());
        c.hosts_file = Some("/run/carapace/pod/hosts".into());
        let m = hosts_mounts(&build(&rq, &c).unwrap());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["source"], "/run/carapace/pod/hosts");
        assert!(m[0]["options"].as_array().unwrap().contains(&json!("ro")));
        // kubelet's own etc-hosts wins (any spelling of the path).
        let mut own = req(t.path());
        own.mounts.push(pb::Mount {
            destination: "/etc//hosts/".into(),
            source: src.display().to_string(),
            ..Default::default()
        });
        let m = hosts_mounts(&build(&own, &c).unwrap());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["source"], src.display().to_string());
    }
}
