//! Tests of the runtime over records in a state dir (no VM: the pods' VMMs are this test
//! process or long gone).

use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1 as cri;

use super::*;
use crate::procfs;
use crate::record::{ContainerPhase, ContainerRecord, SandboxPhase, VmmProcess};
use crate::store::tests::{container, sample};
use crate::store::Store;

fn cfg(dir: &Path) -> Arc<Config> {
    let text = format!("run_dir = {:?}\nstate_dir = {:?}", dir.join("r"), dir.join("s"));
    Arc::new(Config::from_toml_str(&text, Path::new("t"), None).unwrap())
}

fn runtime_with(dir: &Path, pods: &[SandboxRecord], ctrs: &[ContainerRecord]) -> Runtime {
    let cfg = cfg(dir);
    let sstore: Store = Store::open(&cfg.state_dir).unwrap();
    for p in pods {
        sstore.save(p).unwrap();
    }
    let cstore: Store<ContainerRecord> = Store::open(&cfg.state_dir).unwrap();
    for c in ctrs {
        cstore.save(c).unwrap();
    }
    Runtime::open(cfg).unwrap()
}

#[test]
fn reload_marks_dead_vms_stopped_and_keeps_names_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store: Store = Store::open(&c.state_dir).unwrap();
    // A record whose VMM is this very process (alive), and one whose VMM is long gone.
    let me = std::process::id() as i32;
    let mut live = sample(&"a".repeat(64), "live");
    live.vmm = Some(VmmProcess { pid: me, start_time: procfs::read_stat(me).unwrap().start_time });
    let mut dead = sample(&"b".repeat(64), "dead");
    dead.vmm = Some(VmmProcess { pid: me, start_time: 1 });
    store.save(&live).unwrap();
    store.save(&dead).unwrap();
    let m = Runtime::open(c.clone()).unwrap();
    let ready = SandboxFilter { state: Some(0), ..Default::default() };
    let ids: Vec<String> = m.list_pods(&ready).into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![live.id.clone()]);
    assert_eq!(m.list_pods(&SandboxFilter::default()).len(), 2);
    let (recs, _) = store.load_all().unwrap();
    let dead_now = recs.iter().find(|r| r.id == dead.id).unwrap();
    assert_eq!(dead_now.phase, SandboxPhase::Stopped);
    assert!(dead_now.stopped_at.is_some());
    // Status by unique prefix; NotFound and ambiguity errors.
    let st = m.pod_status("aaaa", true).unwrap();
    assert_eq!(st.status.unwrap().state, cri::PodSandboxState::SandboxReady as i32);
    assert!(st.info["info"].contains("\"live\""));
    assert!(matches!(m.pod_status("c", false), Err(CriError::NotFound(_))));
    assert!(matches!(m.pod_status("../x", false), Err(CriError::NotFound(_))));
    assert!(matches!(m.pod_status("", false), Err(CriError::InvalidArgument(_))));
    // Stats of the live one carry CPU and memory.
    let s = m.pod_stats(&live.id).unwrap();
    let linux = s.linux.unwrap();
    assert!(linux.cpu.is_some() && linux.memory.is_some());
    assert_eq!(m.list_pod_stats(&SandboxFilter::default()).len(), 1);
    drop(m);
    // A second daemon on the same state dir is refused while the first holds the lock.
    let m1 = Runtime::open(c.clone()).unwrap();
    let err = Runtime::open(c).err().unwrap().to_string();
    assert!(err.contains("another carapace daemon"), "{err}");
    drop(m1);
}

#[tokio::test]
async fn remove_of_a_stopped_sandbox_deletes_everything_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store: Store = Store::open(&c.state_dir).unwrap();
    let mut rec = sample(&"d".repeat(64), "gone");
    rec.vmm = Some(VmmProcess { pid: std::process::id() as i32, start_time: 1 });
    rec.run_dir = c.pod_run_dir(&rec.id);
    fs::create_dir_all(&rec.run_dir).unwrap();
    fs::write(rec.run_dir.join("serial.log"), "x").unwrap();
    store.save(&rec).unwrap();
    let m = Runtime::open(c.clone()).unwrap();
    m.stop_pod(&rec.id).await.unwrap();
    m.stop_pod(&rec.id).await.unwrap();
    m.remove_pod(&rec.id).await.unwrap();
    m.remove_pod(&rec.id).await.unwrap();
    assert!(!rec.run_dir.exists());
    assert!(store.load_all().unwrap().0.is_empty());
    // Stopping a sandbox that is gone is not an error (CRI idempotence, as containerd).
    m.stop_pod(&rec.id).await.unwrap();
    assert!(matches!(m.stop_pod("").await, Err(CriError::InvalidArgument(_))));
}

#[tokio::test]
async fn unknown_ids_get_not_found_and_stop_and_removal_are_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let m = runtime_with(d.path(), &[], &[]);
    let unknown = "e".repeat(64);
    assert!(matches!(m.container_status(&unknown, false), Err(CriError::NotFound(_))));
    assert!(matches!(m.container_status("", false), Err(CriError::InvalidArgument(_))));
    assert!(matches!(m.container_status("../x", false), Err(CriError::NotFound(_))));
    assert!(matches!(m.start_container(&unknown).await, Err(CriError::NotFound(_))));
    m.stop_container(&unknown, 1).await.unwrap();
    assert!(matches!(m.stop_container("", 1).await, Err(CriError::InvalidArgument(_))));
    assert!(matches!(
        m.exec_sync(&unknown, vec!["true".into()], 1).await,
        Err(CriError::NotFound(_))
    ));
    assert!(matches!(m.exec_sync(&unknown, vec![], 1).await, Err(CriError::InvalidArgument(_))));
    assert!(matches!(m.container_stats(&unknown).await, Err(CriError::NotFound(_))));
    assert!(matches!(m.reopen_container_log(&unknown), Err(CriError::NotFound(_))));
    assert!(matches!(
        m.update_container_resources(&unknown, None).await,
        Err(CriError::NotFound(_))
    ));
    m.remove_container(&unknown).await.unwrap();
    assert!(m.list_containers(&ContainerFilter::default()).is_empty());
    // CreateContainer: unknown pod, missing config.
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: unknown.clone(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
            ..Default::default()
        }),
        sandbox_config: None,
    };
    assert!(matches!(m.create_container(req).await, Err(CriError::NotFound(_))));
    let req = cri::CreateContainerRequest { pod_sandbox_id: unknown, ..Default::default() };
    assert!(matches!(m.create_container(req).await, Err(CriError::InvalidArgument(_))));
}

#[tokio::test]
async fn reload_keeps_states_ends_containers_of_dead_vms_and_drops_orphans() {
    let d = tempfile::tempdir().unwrap();
    // A pod whose VM is long gone (a PID with the wrong start time).
    let mut pod = sample(&"b".repeat(64), "web");
    pod.vmm = Some(VmmProcess { pid: std::process::id() as i32, start_time: 1 });
    let mut running = container(&"a1".repeat(32), &pod.id, "server");
    running.phase = ContainerPhase::Running;
    running.started_at = 5;
    running.dir = d.path().join("c1");
    let mut done = container(&"a2".repeat(32), &pod.id, "job");
    done.phase = ContainerPhase::Exited;
    done.exit_code = 3;
    done.dir = d.path().join("c2");
    let mut orphan = container(&"a3".repeat(32), &"9".repeat(64), "lost");
    orphan.dir = d.path().join("c3");
    std::fs::create_dir_all(orphan.dir.join("rootfs")).unwrap();
    let m =
        runtime_with(d.path(), &[pod.clone()], &[running.clone(), done.clone(), orphan.clone()]);
    let all = m.list_containers(&ContainerFilter::default());
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(!orphan.dir.exists(), "orphan's files kept");
    let s = m.container_status(&running.id[..8], false).unwrap().status.unwrap();
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 255);
    assert!(s.message.contains("VM"), "{}", s.message);
    let s = m.container_status(&done.id, true).unwrap();
    assert_eq!(s.status.unwrap().exit_code, 3);
    assert!(s.info["info"].contains("\"job\""));
    // An ambiguous prefix is refused; a running-only action on an exited one is a precondition.
    assert!(matches!(m.container_status("a", false), Err(CriError::InvalidArgument(_))));
    assert!(matches!(m.start_container(&done.id).await, Err(CriError::FailedPrecondition(_))));
    assert!(matches!(
        m.exec_sync(&done.id, vec!["true".into()], 1).await,
        Err(CriError::FailedPrecondition(_))
    ));
    assert!(matches!(m.reopen_container_log(&done.id), Err(CriError::FailedPrecondition(_))));
    // Stopping an exited container: no error.
    m.stop_container(&done.id, 1).await.unwrap();
    // Remove (the pod's VM is down: no agent call) deletes record and files; idempotent.
    let mut events = m.container_events();
    m.remove_container(&done.id).await.unwrap();
    m.remove_container(&done.id).await.unwrap();
    let ev = events.try_recv().unwrap();
    assert_eq!(ev.container_id, done.id);
    assert_eq!(ev.container_event_type, cri::ContainerEventType::ContainerDeletedEvent as i32);
    assert_eq!(m.list_containers(&ContainerFilter::default()).len(), 1);
    // Removing the pod removes its remaining containers and their records.
    m.remove_pod(&pod.id).await.unwrap();
    assert!(m.list_containers(&ContainerFilter::default()).is_empty());
    let store: Store<ContainerRecord> = Store::open(&d.path().join("s")).unwrap();
    assert!(store.load_all().unwrap().0.is_empty());
}

/// A stand-in VMM: a shell looping forever whose command line ends with `args`.
fn fake_vmm(args: &[&str]) -> std::process::Child {
    std::process::Command::new("/bin/sh")
        .args(["-c", "while :; do sleep 0.1; done", "fake"])
        .args(args)
        .spawn()
        .unwrap()
}

fn identity(c: &std::process::Child) -> VmmProcess {
    let pid = c.id() as i32;
    // Wait until the shell runs with its own command line (not the test's, just forked).
    for _ in 0..500 {
        let cl = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cl.starts_with(b"/bin/sh\0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    VmmProcess { pid, start_time: procfs::read_stat(pid).unwrap().start_time }
}

/// The daemon died during RunPodSandbox: once after spawning the VMM but before saving its
/// PID (the old code left that VMM running for good, its record Stopped), once after. Both
/// VMMs are killed on reload and their sandboxes are stopped; a Ready sandbox's VMM is kept.
#[test]
fn reload_kills_the_vmm_of_a_sandbox_that_was_still_starting() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store: Store = Store::open(&c.state_dir).unwrap();
    let config_of = |id: &str| c.pod_run_dir(id).join("vm.json").display().to_string();
    let (a, b, r) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let mut unrecorded = fake_vmm(&["vmm", "--config", &config_of(&a)]);
    let mut recorded = fake_vmm(&["vmm", "--config", "/elsewhere/vm.json"]);
    let mut ready = fake_vmm(&["vmm", "--config", &config_of(&r)]);
    let _ = identity(&unrecorded);
    let mut pods = Vec::new();
    for (id, phase, vmm) in [
        (&a, SandboxPhase::Starting, None),
        (&b, SandboxPhase::Starting, Some(identity(&recorded))),
        (&r, SandboxPhase::Ready, Some(identity(&ready))),
    ] {
        let mut rec = sample(id, &id[..1]);
        rec.phase = phase;
        rec.vmm = vmm;
        rec.run_dir = c.pod_run_dir(id);
        store.save(&rec).unwrap();
        pods.push(rec);
    }
    let m = Runtime::open(c.clone()).unwrap();
    // Killed (zombies of this test until reaped here).
    for child in [&mut unrecorded, &mut recorded] {
        let st = child.try_wait().unwrap();
        assert!(st.is_some(), "the VMM of a starting sandbox survived the reload");
    }
    assert!(procfs::is_alive(pods[2].vmm.as_ref().unwrap()), "a ready sandbox's VMM was killed");
    let (recs, _) = store.load_all().unwrap();
    for rec in &recs {
        let want = if rec.id == r { SandboxPhase::Ready } else { SandboxPhase::Stopped };
        assert_eq!(rec.phase, want, "{}", rec.id);
    }
    let not_ready = SandboxFilter { state: Some(1), ..Default::default() };
    assert_eq!(m.list_pods(&not_ready).len(), 2);
    let _ = ready.kill();
    let _ = ready.wait();
}

/// A CNI cache entry whose sandbox has no record (its RunPodSandbox or removal died with the
/// previous daemon) gets DEL at start; a known sandbox's network is left alone.
#[test]
fn reload_tears_down_the_network_of_sandboxes_that_no_longer_exist() {
    use std::os::unix::fs::PermissionsExt;

    use crate::cni::cache::{Cache, CacheEntry, PodIdentity, CACHE_VERSION};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = d.join("plugin.log");
    let plugin = bin.join("rec");
    std::fs::write(
        &plugin,
        format!("#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >>{log:?}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "run_dir = {:?}\nstate_dir = {:?}\n[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}]",
        d.join("r"),
        d.join("s"),
        d.join("net.d"),
        bin
    );
    let c = Arc::new(Config::from_toml_str(&text, Path::new("t"), None).unwrap());
    let me = std::process::id() as i32;
    let mut known = sample(&"a".repeat(64), "known");
    known.vmm = Some(VmmProcess { pid: me, start_time: procfs::read_stat(me).unwrap().start_time });
    let store: Store = Store::open(&c.state_dir).unwrap();
    store.save(&known).unwrap();
    let cache = Cache::new(c.state_dir.join("cni"));
    let gone = "f".repeat(64);
    for id in [&known.id, &gone] {
        cache
            .save(&CacheEntry {
                version: CACHE_VERSION,
                network_name: "n".into(),
                ifname: "eth0".into(),
                config: r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"rec"}]}"#.into(),
                config_source: "test".into(),
                netns: c.cni.netns_dir.join(id),
                result: Some(serde_json::json!({"cniVersion":"1.0.0"})),
                runtime_config: Default::default(),
                pod: PodIdentity {
                    sandbox_id: id.clone(),
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                },
            })
            .unwrap();
    }
    let _m = Runtime::open(c.clone()).unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), format!("DEL {gone}\n"));
    assert_eq!(cache.sandbox_ids(), vec![known.id.clone()]);
}
