//! CreateContainer: parse the request into a [`ValidatedContainer`] (before
//! the id is reserved or anything changes), then set up the pod namespaces,
//! the bundle and the container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carapace_agent_client::pb;

use super::common::{blocking_err, lock, now_unix_ms};
use super::entry::Entry;
use super::error::ContainerError;
use super::process::Proc;
use super::spec::{self, NamespacePlan, SpecContext};
use super::table::{Containers, PodState};
use super::validated::ValidatedContainer;
use super::{cgroup, podns, runtime, stdio};

impl Containers {
    /// CreateContainer.
    pub async fn create(&self, req: pb::CreateContainerRequest) -> Result<i32, ContainerError> {
        self.enabled()?;
        let v = tokio::task::spawn_blocking(move || check(&req))
            .await
            .map_err(blocking_err)
            .and_then(|r| r)
            .inspect_err(|e| tracing::warn!(error = %e, "create container refused"))?;
        let id = v.id().clone();
        {
            let map = lock(&self.inner.map);
            let mut reserved = lock(&self.inner.reserved);
            if map.contains_key(id.as_str()) || !reserved.insert(id.to_string()) {
                return Err(ContainerError::AlreadyExists(format!("container {:?}", id.as_str())));
            }
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.create_blocking(&v))
            .await
            .map_err(blocking_err)
            .and_then(|r| r);
        let out = match r {
            Ok(entry) => {
                let pid = entry.init.pid;
                let oom_dir = entry.cgroup_dir.clone();
                entry.init.spawn_waiter(self.inner.reaper.clone(), Some(oom_dir));
                lock(&self.inner.map).insert(id.to_string(), entry);
                tracing::info!(id = %id, pid, "container created");
                Ok(pid)
            }
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "create container failed");
                Err(e)
            }
        };
        lock(&self.inner.reserved).remove(id.as_str());
        out
    }

    fn pod_namespaces(
        &self,
        hostname: &str,
        sysctls: &HashMap<String, String>,
    ) -> Result<podns::PodNamespaces, ContainerError> {
        let mut pod = lock(&self.inner.pod);
        match &mut *pod {
            Some(st) => {
                if !hostname.is_empty() {
                    st.ns.set_hostname(hostname)?;
                }
                if !st.sysctls_set {
                    st.ns.apply_sysctls(sysctls)?;
                    st.sysctls_set = true;
                }
                Ok(st.ns.clone())
            }
            None => {
                let ns =
                    podns::PodNamespaces::create(&self.inner.cfg.pod_ns_dir, hostname, sysctls)?;
                *pod = Some(PodState { ns: ns.clone(), sysctls_set: true });
                Ok(ns)
            }
        }
    }

    /// The pod's PID namespace, created with its holder process on first use
    /// (again if the holder died).
    fn pod_pid_ns(&self) -> Result<PathBuf, ContainerError> {
        let mut holder = lock(&self.inner.pod_pid);
        if let Some(h) = holder.as_ref().filter(|h| h.alive()) {
            return Ok(h.ns_path());
        }
        let h = podns::PidHolder::spawn(&self.inner.reaper)?;
        let path = h.ns_path();
        *holder = Some(h);
        Ok(path)
    }

    fn create_blocking(&self, v: &ValidatedContainer) -> Result<Arc<Entry>, ContainerError> {
        let cfg = &self.inner.cfg;
        let id = v.id().as_str();
        let shared = v.namespaces();
        let mut plan = NamespacePlan::default();
        if shared.any_pod_ns() {
            let pod = self.pod_namespaces(v.hostname(), v.pod_sysctls())?;
            plan.network = shared.network.then(|| pod.net.clone());
            plan.ipc = shared.ipc.then(|| pod.ipc.clone());
            plan.uts = shared.uts.then(|| pod.uts.clone());
        }
        if shared.pid {
            plan.pid = Some(self.pod_pid_ns()?);
        }

        let bundle = cfg.bundle_root.join(id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| ContainerError::io(format!("mkdir {}", bundle.display()), e))?;
        let r = self.create_in_bundle(v, plan, &bundle);
        if r.is_err() {
            runtime::cleanup_failed(id, &cfg.state_root);
            let _ = std::fs::remove_dir_all(&bundle);
        }
        r
    }

    fn create_in_bundle(
        &self,
        v: &ValidatedContainer,
        plan: NamespacePlan,
        bundle: &Path,
    ) -> Result<Arc<Entry>, ContainerError> {
        let cfg = &self.inner.cfg;
        let id = v.id().as_str();
        let hostname_file = if v.hostname().is_empty() {
            None
        } else {
            let f = bundle.join("hostname");
            std::fs::write(&f, format!("{}\n", v.hostname()))
                .map_err(|e| ContainerError::io(format!("write {}", f.display()), e))?;
            Some(f)
        };
        let hosts_file = lock(&self.inner.pod_hosts).clone();
        let ctx = SpecContext {
            namespaces: plan,
            cgroup_path: cgroup::spec_path(id),
            hostname_file,
            hosts_file,
        };
        let spec = spec::build_spec(v, &ctx)?;
        let cfg_json = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&spec)
            .map_err(|e| ContainerError::Runtime(format!("serialize spec: {e}")))?;
        std::fs::write(&cfg_json, text)
            .map_err(|e| ContainerError::io(format!("write {}", cfg_json.display()), e))?;
        std::fs::create_dir_all(&cfg.state_root)
            .map_err(|e| ContainerError::io(format!("mkdir {}", cfg.state_root.display()), e))?;

        let p = v.process().get();
        let (child, agent) = if p.tty {
            stdio::create_tty(&bundle.join("console.sock"), p.stdin)?
        } else {
            stdio::create(p.stdin)?
        };
        let (container, pid) =
            runtime::create(&self.inner.reaper, id, &cfg.state_root, bundle, child)?;
        let io = match agent.start(&format!("c-{pid}")) {
            Ok(io) => io,
            Err(e) => {
                // The process exists but has no terminal: it must not stay.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(e);
            }
        };
        Ok(Arc::new(Entry::new(
            v.id().clone(),
            now_unix_ms(),
            cgroup::dir(&cfg.cgroup_root, id),
            bundle.to_path_buf(),
            container,
            Proc::new(pid, io),
        )))
    }
}

/// Parses `req` and builds its spec once with placeholder namespaces and
/// files, so that nothing the spec crate would refuse gets past this point.
fn check(req: &pb::CreateContainerRequest) -> Result<ValidatedContainer, ContainerError> {
    let v = ValidatedContainer::parse(req)?;
    let ctx = SpecContext {
        namespaces: NamespacePlan::default(),
        cgroup_path: cgroup::spec_path(v.id().as_str()),
        hostname_file: None,
        hosts_file: None,
    };
    spec::build_spec(&v, &ctx)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::Config;
    use crate::reaper::Reaper;

    fn enabled_in(t: &tempfile::TempDir) -> Containers {
        Containers::build(Reaper::new(), Config::under(t.path()), None)
    }

    // Bad ids, paths escaping the rootfs and bad capabilities are refused by the
    // parse, before the id is reserved and before anything is made.
    #[tokio::test]
    async fn invalid_requests_change_nothing_and_never_touch_a_reservation() {
        let t = tempfile::tempdir().unwrap();
        let c = enabled_in(&t);
        let root = t.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let good = pb::CreateContainerRequest {
            id: "c1".into(),
            process: Some(pb::Process { args: vec!["/bin/sh".into()], ..Default::default() }),
            rootfs_path: root.display().to_string(),
            ..Default::default()
        };
        let mount = |dest: &str| pb::Mount {
            destination: dest.into(),
            r#type: "tmpfs".into(),
            ..Default::default()
        };
        let cases = [
            pb::CreateContainerRequest { id: "../c1".into(), ..good.clone() },
            pb::CreateContainerRequest { id: "c1/x".into(), ..good.clone() },
            pb::CreateContainerRequest { mounts: vec![mount("/../../etc")], ..good.clone() },
            pb::CreateContainerRequest { mounts: vec![mount("/up")], ..good.clone() },
            pb::CreateContainerRequest {
                security: Some(pb::Security {
                    capabilities: vec!["CAP_NOT_A_CAP".into()],
                    ..Default::default()
                }),
                ..good.clone()
            },
            pb::CreateContainerRequest {
                pod_sysctls: [("kernel.hostname".to_owned(), "x".to_owned())].into(),
                ..good.clone()
            },
        ];
        // Another create of "c1" is under way: an invalid request with that id is
        // refused as invalid and leaves the reservation alone.
        lock(&c.inner.reserved).insert("c1".to_owned());
        for req in cases {
            let e = c.create(req.clone()).await.unwrap_err();
            assert!(matches!(e, ContainerError::Invalid(_)), "{req:?}: {e}");
        }
        assert_eq!(*lock(&c.inner.reserved), ["c1".to_owned()].into());
        assert!(lock(&c.inner.map).is_empty());
        assert!(lock(&c.inner.pod).is_none(), "pod namespaces made for an invalid request");
        assert!(lock(&c.inner.pod_pid).is_none());
        for dir in ["bundles", "ns", "state", "cgroup"] {
            assert!(!t.path().join(dir).exists(), "{dir} made for an invalid request");
        }
        // A valid request for the reserved id is a duplicate.
        let e = c.create(good).await.unwrap_err();
        assert!(matches!(e, ContainerError::AlreadyExists(_)), "{e}");
    }
}
