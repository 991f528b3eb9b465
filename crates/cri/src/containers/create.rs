//! CreateContainer, in two steps: parse the CRI request once into a checked [`ContainerSpec`]
//! (name, image, volumes, log path, process settings, security), then build everything from
//! that type only: the rootfs and volumes in the pod's shared dir, the record, and the agent's
//! CreateContainerRequest ([`agent_request`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use carapace_agent_client::pb;
use carapace_podfs::Access;
use k8s_cri::v1 as cri;

use super::agent::{agent_of, call};
use super::{convert, security, Container, ContainerTable, Pods};
use crate::error::CriError;
use crate::ids;
use crate::merge;
use crate::record::{
    resolv_conf, ContainerPhase, ContainerRecord, MountRecord, ProcessSpec, SandboxRecord,
    CONTAINER_RECORD_VERSION,
};
use crate::sizing;
use crate::util::{now_nanos, sandbox_state};
use crate::validate;
use crate::vmm;
use crate::volumes;

/// Where the agent mounts the pod's shared dir in the guest.
pub use carapace_agent_client::GUEST_SHARED_DIR;
/// Longest container name.
const MAX_NAME: usize = 253;

/// The guest's path of `rel` in container `cid`'s part of the shared dir: the one place the
/// daemon names [`GUEST_SHARED_DIR`].
pub fn guest_path(cid: &str, rel: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{cid}/{rel}")
}

/// A container name and attempt, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerName {
    pub name: String,
    pub attempt: u32,
}

impl ContainerName {
    pub fn parse(md: Option<&cri::ContainerMetadata>) -> Result<ContainerName, CriError> {
        let md = md.cloned().unwrap_or_default();
        if md.name.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: config.metadata.name is required".into(),
            ));
        }
        if md.name.len() > MAX_NAME || md.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(CriError::InvalidArgument(format!(
                "container name {:?} must be at most {MAX_NAME} bytes without '/' or control \
                 characters",
                md.name
            )));
        }
        Ok(ContainerName { name: md.name, attempt: md.attempt })
    }
}

/// A volume of the request, checked (absolute paths, a host path, no image volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_read_only: bool,
    pub selinux_relabel: bool,
    pub propagation: i32,
}

impl Volume {
    fn parse(i: usize, m: &cri::Mount) -> Result<Volume, CriError> {
        let container_path =
            validate::absolute_path(&format!("mounts[{i}].container_path"), &m.container_path)?;
        if m.image.as_ref().is_some_and(|s| !s.image.is_empty()) {
            return Err(CriError::InvalidArgument(format!(
                "mounts[{i}]: image volumes are not supported by carapace yet"
            )));
        }
        let host_path = validate::absolute_path(&format!("mounts[{i}].host_path"), &m.host_path)?;
        Ok(Volume {
            container_path: container_path.display().to_string(),
            host_path: host_path.display().to_string(),
            readonly: m.readonly,
            recursive_read_only: m.readonly && m.recursive_read_only,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
        })
    }

    /// The record of volume `i` of container `cid` whose files are in `dir` (the bind mount is
    /// made later).
    fn record(&self, i: usize, cid: &str, dir: &Path) -> MountRecord {
        MountRecord {
            container_path: self.container_path.clone(),
            host_path: self.host_path.clone(),
            readonly: self.readonly,
            recursive_read_only: self.recursive_read_only,
            selinux_relabel: self.selinux_relabel,
            propagation: self.propagation,
            shared_path: dir.join("mounts").join(i.to_string()),
            guest_path: guest_path(cid, &format!("mounts/{i}")),
        }
    }
}

/// Everything a CreateContainer request asks for, checked once; nothing after [`parse`]
/// looks at the CRI request again.
///
/// [`parse`]: ContainerSpec::parse
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: ContainerName,
    pub image: String,
    pub volumes: Vec<Volume>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The CRI log file (under the pod's log directory); empty: no log.
    pub log_path: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub envs: Vec<cri::KeyValue>,
    pub working_dir: String,
    pub tty: bool,
    pub stdin: bool,
    /// Close the container's stdin when the first attacher that wrote to it detaches.
    pub stdin_once: bool,
    pub resources: Option<cri::LinuxContainerResources>,
    /// The security context the user is resolved from (with the image's USER and the
    /// rootfs's accounts once they exist).
    pub run_as: Option<cri::LinuxContainerSecurityContext>,
    /// The agent's security settings (capabilities, seccomp, paths).
    pub security: pb::Security,
    pub readonly_rootfs: bool,
    /// The agent's PID namespace mode.
    pub pid_mode: i32,
}

impl ContainerSpec {
    /// Checks the request's config for a container named `name` in pod `sb`.
    pub fn parse(
        config: cri::ContainerConfig,
        name: ContainerName,
        sb: &SandboxRecord,
    ) -> Result<ContainerSpec, CriError> {
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: config.image.image is required".into(),
            ));
        }
        if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
            return Err(CriError::InvalidArgument(
                "devices are not supported by carapace (the pod runs in a VM without host devices)"
                    .into(),
            ));
        }
        let volumes = config
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| Volume::parse(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let linux = config.linux.unwrap_or_default();
        let sc = linux.security_context;
        let security = security::agent_security(sc.as_ref())?;
        // kubelet sends `<name>/<attempt>.log`, relative to the pod's log directory; it may not
        // point elsewhere (the daemon appends guest output to it as root).
        let log_path = if config.log_path.is_empty() || sb.log_directory.is_empty() {
            String::new()
        } else {
            let rel = validate::relative_path("log_path", &config.log_path)?;
            Path::new(&sb.log_directory).join(rel).display().to_string()
        };
        if let Some(s) = sc.as_ref() {
            if s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty() {
                return Err(CriError::InvalidArgument(
                    "security_context.run_as_group is set without run_as_user or run_as_username: \
                     a group needs a user"
                        .into(),
                ));
            }
        }
        let ns = sc.as_ref().and_then(|s| s.namespace_options.as_ref());
        Ok(ContainerSpec {
            name,
            image,
            volumes,
            labels: config.labels.into_iter().collect(),
            annotations: config.annotations.into_iter().collect(),
            log_path,
            command: config.command,
            args: config.args,
            envs: config.envs,
            working_dir: config.working_dir,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            resources: linux.resources,
            readonly_rootfs: sc.as_ref().is_some_and(|s| s.readonly_rootfs),
            pid_mode: ns.map_or(pb::NamespaceMode::Pod as i32, |n| convert::pid_mode(n.pid)),
            run_as: sc,
            security,
        })
    }
}

/// The agent's CreateContainerRequest for a container whose record and files are made.
pub fn agent_request(
    rec: &ContainerRecord,
    spec: &ContainerSpec,
    sb: &SandboxRecord,
    mounts: Vec<pb::Mount>,
) -> pb::CreateContainerRequest {
    let hostname = sb.hostname.as_str();
    pb::CreateContainerRequest {
        id: rec.id.clone(),
        process: Some(pb::Process {
            args: rec.process.args.clone(),
            env: rec.process.env.clone(),
            cwd: rec.process.cwd.clone(),
            user: Some(pb::User {
                uid: rec.process.uid,
                gid: rec.process.gid,
                additional_gids: rec.process.additional_gids.clone(),
            }),
            tty: spec.tty,
            stdin: spec.stdin,
        }),
        rootfs_path: guest_path(&rec.id, "rootfs"),
        rootfs_readonly: spec.readonly_rootfs,
        mounts,
        hostname: hostname.to_string(),
        namespaces: Some(pb::Namespaces { pid: spec.pid_mode, ..Default::default() }),
        resources: rec.resources.as_ref().map(convert::agent_resources),
        security: Some(spec.security.clone()),
        annotations: rec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        // Checked at RunPodSandbox; the agent applies them when it makes the pod's namespaces.
        pod_sysctls: sb.security.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A bind mount of a path in the shared dir, as the agent takes it.
fn bind(destination: String, source: String, readonly: bool) -> pb::Mount {
    pb::Mount {
        destination,
        source,
        r#type: "bind".into(),
        options: vec!["rbind".into(), if readonly { "ro".into() } else { "rw".into() }],
    }
}

/// Undoes a half-made container: its bind mounts and files.
fn discard(dir: &Path) {
    if let Err(e) = volumes::remove_tree(dir) {
        tracing::error!(
            dir = %dir.display(),
            error = %e,
            "cannot remove a failed container's files",
        );
    }
}

impl ContainerTable {
    /// CreateContainer.
    pub async fn create(
        self: &Arc<Self>,
        pods: &dyn Pods,
        req: cri::CreateContainerRequest,
    ) -> Result<String, CriError> {
        let config = req.config.ok_or_else(|| {
            CriError::InvalidArgument("CreateContainer: config is required".into())
        })?;
        let name = ContainerName::parse(config.metadata.as_ref())?;
        // NotFound (or InvalidArgument) for the sandbox first, as kubelet expects.
        let sb = pods.pod(&req.pod_sandbox_id)?;
        let spec = ContainerSpec::parse(config, name, &sb)?;
        if sandbox_state(&sb) != cri::PodSandboxState::SandboxReady {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready: containers can only be created in a running pod",
                sb.id
            )));
        }
        if let Some(r) = &spec.resources {
            let what = format!("container {:?}", spec.name.name);
            sizing::check_container_fits(&what, r, sb.vm_size(), &sb.profile)?;
        }
        let images = self.images()?;
        let image = images
            .container_image(&spec.image)
            .map_err(|source| CriError::Image { image: spec.image.clone(), source })?
            .ok_or_else(|| {
                CriError::NotFound(format!("image {} is not present; pull it first", spec.image))
            })?;
        let image_ref = images
            .resolve(&spec.image)
            .and_then(|r| r.repo_digests.first().cloned())
            .unwrap_or_else(|| image.id.clone());
        let id = ids::new_id().map_err(CriError::NewId)?;
        let dir = sb.shared_dir().join(&id);
        let rec = ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            name: spec.name.name.clone(),
            attempt: spec.name.attempt,
            image: spec.image.clone(),
            image_id: image.id.clone(),
            image_ref,
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            log_path: spec.log_path.clone(),
            phase: ContainerPhase::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: ProcessSpec::default(),
            mounts: spec.volumes.iter().enumerate().map(|(i, v)| v.record(i, &id, &dir)).collect(),
            dir: dir.clone(),
            resources: spec.resources.clone(),
            stop_signal: image.config.stop_signal.clone(),
        };
        // Reserve the name (CRI: one container per name and attempt in a pod).
        let name_key = rec.pod_unique_name();
        {
            let mut index = self.index();
            if let Some(other) = index.names.get(&name_key) {
                return Err(CriError::AlreadyExists(format!(
                    "a container named {:?} (attempt {}) already exists in pod sandbox {} with \
                     ID {other}; remove it first or use another attempt number",
                    spec.name.name, spec.name.attempt, sb.id
                )));
            }
            index.names.insert(name_key.clone(), id.clone());
        }
        let made = self.make(&sb, rec, &spec, image).await;
        match made {
            Ok(rec) if pods.pod(&sb.id).is_err() => {
                // The pod was removed while the container was being made: undo it.
                self.index().names.remove(&name_key);
                discard(&rec.dir);
                self.store.remove(&rec.id)?;
                Err(CriError::NotFound(format!(
                    "pod sandbox {} was removed while the container was created",
                    sb.id
                )))
            }
            Ok(rec) => {
                self.index().by_id.insert(id.clone(), Container::new(rec.clone()));
                self.emit(&rec, cri::ContainerEventType::ContainerCreatedEvent);
                tracing::info!(
                    %id,
                    name = %spec.name.name,
                    pod = %sb.id,
                    image = %spec.image,
                    "container created",
                );
                Ok(id)
            }
            Err(err) => {
                self.index().names.remove(&name_key);
                Err(err)
            }
        }
    }

    /// Builds the rootfs and mounts, asks the agent to create the container, saves the record;
    /// on error removes what it made.
    async fn make(
        &self,
        sb: &SandboxRecord,
        rec: ContainerRecord,
        spec: &ContainerSpec,
        image: carapace_image::ContainerImage,
    ) -> Result<ContainerRecord, CriError> {
        let dir = rec.dir.clone();
        let result = self.make_in(sb, rec, spec, image).await;
        if result.is_err() {
            discard(&dir);
        }
        result
    }

    async fn make_in(
        &self,
        sb: &SandboxRecord,
        mut rec: ContainerRecord,
        spec: &ContainerSpec,
        image: carapace_image::ContainerImage,
    ) -> Result<ContainerRecord, CriError> {
        // Everything is made in the pod's staging dir, which the guest cannot see, and exposed
        // in the shared dir by one rename that follows no guest-controlled name (crates/podfs).
        let prepare = |source| CriError::Prepare { id: rec.id.clone(), source };
        let pod = carapace_podfs::PodDir::open(&sb.run_dir).map_err(prepare)?;
        let staged = pod.stage(&rec.id).map_err(prepare)?;
        let layers = image.layers.clone();
        let target = staged.path().join("rootfs");
        // A copied tree is simple and always correct; an overlay of the store's layers
        // (virtio-fs of a host overlay mount) would save the copy: a later optimisation.
        tokio::task::spawn_blocking(move || carapace_image::flatten_layers(&layers, &target))
            .await?
            .map_err(|source| CriError::Rootfs { image: rec.image.clone(), source })?;
        let accounts = merge::Accounts::read_beneath(staged.dir(), Path::new("rootfs"));
        let args = merge::command(&image.config, &spec.command, &spec.args, &rec.image)
            .map_err(CriError::InvalidArgument)?;
        let user = merge::user(&image.config, spec.run_as.as_ref(), &accounts)
            .map_err(CriError::InvalidArgument)?;
        rec.process = ProcessSpec {
            args,
            env: merge::env(&image.config.env, &spec.envs),
            cwd: merge::working_dir(&image.config, &spec.working_dir),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            tty: spec.tty,
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
        };
        // Volumes are attached in the VMM's mount namespace only: nothing in the host's pins
        // a host path the pod uses (its owner may unmount or remove it; the kernel then
        // detaches the pod's copy), as runc's mounts live in the container's namespace.
        let vmm_ns = match (rec.mounts.is_empty(), sb.vmm) {
            (false, Some(p)) => vmm::mount_ns(&p).map_err(|source| CriError::Vmm {
                context: format!("the VM of pod sandbox {}", sb.id),
                source,
            })?,
            _ => None,
        };
        let mut mounts = Vec::new();
        for m in &rec.mounts {
            let rel = m.shared_path.strip_prefix(&rec.dir).unwrap_or(&m.shared_path);
            let access = match (m.readonly, m.recursive_read_only) {
                (false, _) => Access::ReadWrite,
                (true, false) => Access::ReadOnlyTop,
                (true, true) => Access::ReadOnly,
            };
            let mount_err = |e: carapace_podfs::Error| CriError::Mount {
                container_path: m.container_path.clone(),
                source: e.into(),
            };
            staged
                .bind_in(vmm_ns.as_ref(), Path::new(&m.host_path), rel, access)
                .map_err(mount_err)?;
            mounts.push(bind(m.container_path.clone(), m.guest_path.clone(), m.readonly));
            if access == Access::ReadOnlyTop {
                // The guest sees the whole volume as one mount: the host's submounts, writable
                // unless they are read-only themselves, get binds of their own on top.
                for sub in volumes::submounts(Path::new(&m.host_path)) {
                    let at = |base: &str| format!("{base}/{}", sub.display());
                    mounts.push(bind(at(&m.container_path), at(&m.guest_path), false));
                }
            }
        }
        mounts.extend(write_etc_files(sb, &rec, &staged)?);
        staged.expose().map_err(|source| CriError::Prepare { id: rec.id.clone(), source })?;
        let areq = agent_request(&rec, spec, sb, mounts);
        let agent = agent_of(sb).await?;
        call("agent CreateContainer", agent.grpc().create_container(areq)).await?;
        if let Err(e) = self.store.save(&rec) {
            let mut g = agent.grpc();
            let req = pb::RemoveContainerRequest { id: rec.id.clone(), force: true };
            let _ = call("agent RemoveContainer", g.remove_container(req)).await;
            return Err(e.into());
        }
        Ok(rec)
    }
}

/// The pod's hostname and DNS as files of the container (unless the client mounts its own),
/// and their bind mounts.
fn write_etc_files(
    sb: &SandboxRecord,
    rec: &ContainerRecord,
    staged: &carapace_podfs::Staged,
) -> Result<Vec<pb::Mount>, CriError> {
    let has = |p: &str| rec.mounts.iter().any(|m| m.container_path == p);
    let mut etc = Vec::new();
    if !has("/etc/hostname") {
        etc.push(("hostname", format!("{}\n", sb.hostname)));
    }
    if let Some(dns) = sb.dns.as_ref().filter(|_| !has("/etc/resolv.conf")) {
        etc.push(("resolv.conf", resolv_conf(dns)));
    }
    let mut mounts = Vec::new();
    for (name, text) in etc {
        staged
            .write_file(&Path::new("etc").join(name), text.as_bytes(), 0o644)
            .map_err(|source| CriError::Prepare { id: rec.id.clone(), source })?;
        mounts.push(bind(
            format!("/etc/{name}"),
            guest_path(&rec.id, &format!("etc/{name}")),
            false,
        ));
    }
    Ok(mounts)
}

#[cfg(test)]
#[path = "create_tests.rs"]
mod tests;
