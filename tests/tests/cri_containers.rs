//! End-to-end: containers through the CRI daemon, inside pod VMs. A throwaway `docker-registry`
//! on 127.0.0.1 serves the project's test images (tests/images/build-and-push.sh); the daemon
//! pulls them through its ImageService, then runs pod → create → start → exec → logs → stop →
//! remove. Needs a KVM that boots Linux; `make test-e2e` runs it (in the test host here).
//! Over 600 lines on purpose: one job (the container API end to end), and every test shares
//! the registry, daemon and pod helpers of this file.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic;
use carapace_tests::cri::{
    container_config, container_status as status, create_container as create, e2e_dns,
    pod_config as base_pod_config, pull_image, run_pod, runtime,
    wait_container_state as wait_state, with_log, Daemon, DaemonOptions,
};
use carapace_tests::registry::Registry;
use tonic::transport::Channel;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_CRI_CONTAINERS_E2E_DAEMON";
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;

/// Not a test: the daemon process of the tests below when `carapace serve` is not available.
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

/// The test registry with the test images pushed.
fn start_registry() -> Result<Registry> {
    Registry::start("reg", "info")
}

/// A daemon process with private state/run/image dirs under /tmp, pulling from `registry`.
fn start_daemon(registry: &Registry) -> Result<Daemon> {
    Daemon::start(DaemonOptions {
        dir_prefix: "cric",
        insecure_registry: Some(registry.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        ..Default::default()
    })
}

fn pod_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    let mut cfg = base_pod_config("e2e", name, 0, &d.logs_dir(name));
    cfg.dns_config = Some(e2e_dns());
    cfg
}

fn container(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    let mut cfg = container_config(name, image, command);
    cfg.envs = vec![cri::KeyValue { key: "GREETING".into(), value: "hi there".into() }];
    cfg.labels = [("role".to_string(), name.to_string())].into();
    cfg
}

/// Waits until the file has a line containing all of `parts`; returns the file.
async fn wait_log(path: &Path, parts: &[&str]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return Ok(text);
        }
        ensure!(Instant::now() < deadline, "no line with {parts:?} in {}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the CRI log line shape: `<RFC3339Nano> <stream> <F|P> <text>`.
fn log_lines(text: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let (ts, stream, tag) =
            (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let msg = f.next().unwrap_or("");
        ensure!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "bad timestamp in {l:?}"
        );
        ensure!(stream == "stdout" || stream == "stderr", "bad stream in {l:?}");
        ensure!(tag == "F" || tag == "P", "bad tag in {l:?}");
        out.push((stream.to_string(), tag.to_string(), msg.to_string()));
    }
    Ok(out)
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn containers_run_exec_log_stop_and_remove() {
    let reg = start_registry().expect("test registry");
    let d = start_daemon(&reg).expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        let missing = reg.image("test/nothere:latest");
        pull_image(&mut images, &busybox).await?;

        let pod_cfg = pod_config(&d, "web");
        let pod = run_pod(&mut c, &pod_cfg).await?;

        // Errors: missing image, unknown pod, unknown container IDs.
        let e = create(&mut c, &pod, &pod_cfg, container("x", &missing, &["true"]))
            .await
            .expect_err("missing image");
        ensure!(
            e.code() == tonic::Code::NotFound && e.message().contains("pull it first"),
            "{e:?}"
        );
        let unknown = "f".repeat(64);
        let e = create(&mut c, &unknown, &pod_cfg, container("x", &busybox, &["true"]))
            .await
            .expect_err("unknown pod");
        ensure!(e.code() == tonic::Code::NotFound, "{e:?}");
        let e = c
            .start_container(cri::StartContainerRequest { container_id: unknown.clone() })
            .await
            .expect_err("start");
        ensure!(e.code() == tonic::Code::NotFound, "{e:?}");
        // Stopping what is not there is not an error (CRI idempotence, as containerd).
        c.stop_container(cri::StopContainerRequest { container_id: unknown.clone(), timeout: 1 })
            .await
            .context("StopContainer of an unknown ID must succeed")?;
        let e = status(&mut c, &unknown).await.expect_err("status");
        ensure!(format!("{e:#}").contains("not found"), "{e:#}");
        let e = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: unknown.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await
            .expect_err("exec");
        ensure!(e.code() == tonic::Code::NotFound, "{e:?}");
        c.remove_container(cri::RemoveContainerRequest { container_id: unknown.clone() }).await?;

        // A long-running container with a volume.
        let vol = tempfile::Builder::new().prefix("vol").tempdir_in("/tmp")?;
        std::fs::write(vol.path().join("hello"), "from the host\n")?;
        let mut cfg = container(
            "server",
            &busybox,
            &["sh", "-c", "echo started; echo $GREETING; sleep 1000"],
        );
        let ro = tempfile::Builder::new().prefix("volro").tempdir_in("/tmp")?;
        std::fs::write(ro.path().join("config"), "read me\n")?;
        cfg.mounts = vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: vol.path().display().to_string(),
                ..Default::default()
            },
            cri::Mount {
                container_path: "/etc/app".into(),
                host_path: ro.path().display().to_string(),
                readonly: true,
                ..Default::default()
            },
        ];
        let server =
            create(&mut c, &pod, &pod_cfg, cfg.clone()).await.context("CreateContainer")?;
        ensure!(status(&mut c, &server).await?.state == CREATED);
        let e = create(&mut c, &pod, &pod_cfg, cfg).await.expect_err("duplicate name");
        ensure!(e.code() == tonic::Code::AlreadyExists && e.message().contains(&server), "{e:?}");
        c.start_container(cri::StartContainerRequest { container_id: server.clone() })
            .await
            .context("StartContainer")?;
        let st = status(&mut c, &server).await?;
        ensure!(st.state == RUNNING && st.started_at > 0, "{st:?}");
        let ps = c
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await?;
        let cs = ps.into_inner().containers_statuses;
        ensure!(cs.len() == 1 && cs[0].id == server && cs[0].state == RUNNING, "{cs:?}");
        ensure!(st.image_id.starts_with("sha256:"), "{st:?}");
        ensure!(
            st.mounts.len() == 2 && st.mounts[0].container_path == "/data" && st.mounts[1].readonly,
            "{st:?}"
        );
        let log_path = d.logs_dir("web").join("server/0.log");
        ensure!(st.log_path == log_path.display().to_string(), "{st:?}");
        let text = wait_log(&log_path, &["stdout F started"]).await?;
        wait_log(&log_path, &["stdout F hi there"]).await?;
        log_lines(&text)?;

        // ExecSync: output, exit codes, the volume both ways, the pod's hostname.
        let exec = |cmd: &[&str]| cri::ExecSyncRequest {
            container_id: server.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let r = c.exec_sync(exec(&["cat", "/data/hello"])).await.context("ExecSync")?.into_inner();
        ensure!(r.exit_code == 0 && r.stdout == b"from the host\n", "{r:?}");
        let r = c.exec_sync(exec(&["sh", "-c", "echo oops >&2; exit 7"])).await?.into_inner();
        ensure!(r.exit_code == 7 && r.stderr == b"oops\n" && r.stdout.is_empty(), "{r:?}");
        let r = c
            .exec_sync(exec(&["sh", "-c", "echo written > /data/from-guest && cat /etc/hostname"]))
            .await?
            .into_inner();
        ensure!(r.exit_code == 0 && r.stdout == b"web\n", "{r:?}");
        ensure!(std::fs::read_to_string(vol.path().join("from-guest"))? == "written\n");
        let r = c
            .exec_sync(exec(&["sh", "-c", "cat /etc/app/config && touch /etc/app/new"]))
            .await?
            .into_inner();
        ensure!(r.stdout == b"read me\n" && r.exit_code != 0, "read-only volume: {r:?}");
        ensure!(!ro.path().join("new").exists(), "a read-only volume was written");
        let mut short = exec(&["sleep", "100"]);
        short.timeout = 1;
        let e = c.exec_sync(short).await.expect_err("exec timeout");
        ensure!(e.code() == tonic::Code::DeadlineExceeded, "{e:?}");
        // critest's next step: the timed-out command was killed and the next exec answers.
        let mut after = exec(&["sh", "-c", "ps -o args | grep -xF 'sleep 100' || true"]);
        after.timeout = 30;
        let r = c.exec_sync(after).await.context("ExecSync after a timed-out one")?.into_inner();
        ensure!(r.exit_code == 0 && r.stdout.is_empty(), "the timed-out sleep lives on: {r:?}");

        // Stats of the running container (also inside the pod's stats).
        let s = c
            .container_stats(cri::ContainerStatsRequest { container_id: server.clone() })
            .await?
            .into_inner()
            .stats
            .context("no stats")?;
        ensure!(
            s.cpu.is_some() && s.memory.as_ref().is_some_and(|m| m.working_set_bytes.is_some()),
            "{s:?}"
        );
        let ps = c
            .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
            .await?
            .into_inner();
        let n = ps.stats.and_then(|s| s.linux).map_or(0, |l| l.containers.len());
        ensure!(n == 1, "pod stats carry {n} containers");
        // The same figures as CRI metrics, each one described.
        let described: Vec<String> = c
            .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await?
            .into_inner()
            .descriptors
            .into_iter()
            .map(|d| d.name)
            .collect();
        let pm = c
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await?
            .into_inner()
            .pod_metrics;
        let mine = pm.iter().find(|m| m.pod_sandbox_id == pod).context("no metrics for the pod")?;
        let cm = mine
            .container_metrics
            .iter()
            .find(|m| m.container_id == server)
            .context("no metrics for the container")?;
        let names: Vec<&str> =
            cm.metrics.iter().chain(&mine.metrics).map(|m| m.name.as_str()).collect();
        ensure!(names.contains(&"container_memory_working_set_bytes"), "{names:?}");
        ensure!(names.contains(&"carapace_pod_vm_memory_rss_bytes"), "{names:?}");
        ensure!(
            names.iter().all(|n| described.iter().any(|d| d == n)),
            "undescribed metric in {names:?}"
        );

        // The job: stdout and stderr apart in the CRI log, exit code 3; its events.
        let mut events = c.get_container_events(cri::GetEventsRequest {}).await?.into_inner();
        let job = create(
            &mut c,
            &pod,
            &pod_cfg,
            container("job", &busybox, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
        )
        .await
        .context("CreateContainer job")?;
        c.start_container(cri::StartContainerRequest { container_id: job.clone() }).await?;
        let st = wait_state(&mut c, &job, EXITED).await?;
        ensure!(
            st.exit_code == 3 && st.reason == "Error" && st.finished_at >= st.started_at,
            "{st:?}"
        );
        let job_log = d.logs_dir("web").join("job/0.log");
        let text = wait_log(&job_log, &["stderr F err"]).await?;
        let lines = log_lines(&text)?;
        ensure!(lines.contains(&("stdout".into(), "F".into(), "out".into())), "{text}");
        ensure!(lines.contains(&("stderr".into(), "F".into(), "err".into())), "{text}");
        let mut seen = Vec::new();
        while !seen.contains(&(cri::ContainerEventType::ContainerStoppedEvent as i32)) {
            let ev = tokio::time::timeout(Duration::from_secs(60), events.message())
                .await
                .context("no container event within 60 s")??
                .context("event stream ended")?;
            if ev.container_id == job {
                seen.push(ev.container_event_type);
            }
        }
        let want = [
            cri::ContainerEventType::ContainerCreatedEvent as i32,
            cri::ContainerEventType::ContainerStartedEvent as i32,
            cri::ContainerEventType::ContainerStoppedEvent as i32,
        ];
        ensure!(seen == want, "events of the job: {seen:?}");
        let e = c
            .start_container(cri::StartContainerRequest { container_id: job.clone() })
            .await
            .expect_err("restart");
        ensure!(e.code() == tonic::Code::FailedPrecondition, "{e:?}");

        // A container with a terminal: its output is one stream (stdout) in the CRI log.
        let mut term_cfg = container("term", &busybox, &["sh", "-c", "tty; echo done"]);
        term_cfg.tty = true;
        let term =
            create(&mut c, &pod, &pod_cfg, term_cfg).await.context("CreateContainer term")?;
        c.start_container(cri::StartContainerRequest { container_id: term.clone() }).await?;
        let st = wait_state(&mut c, &term, EXITED).await?;
        ensure!(st.exit_code == 0, "{st:?}");
        let text = wait_log(&d.logs_dir("web").join("term/0.log"), &["done"]).await?;
        let lines = log_lines(&text)?;
        ensure!(lines.iter().all(|(stream, _, _)| stream == "stdout"), "{text}");
        ensure!(
            lines.iter().any(|(_, _, t)| t.trim_end_matches('\r').starts_with("/dev/pts/")),
            "{text}"
        );
        c.remove_container(cri::RemoveContainerRequest { container_id: term }).await?;

        // Lists and filters.
        let list = |f: cri::ContainerFilter| cri::ListContainersRequest { filter: Some(f) };
        let all = c.list_containers(list(Default::default())).await?.into_inner().containers;
        ensure!(all.len() == 2, "{all:?}");
        let exited = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: EXITED }),
            ..Default::default()
        };
        let ex = c.list_containers(list(exited)).await?.into_inner().containers;
        ensure!(ex.len() == 1 && ex[0].id == job, "{ex:?}");
        let by_label = cri::ContainerFilter {
            label_selector: HashMap::from([("role".to_string(), "server".to_string())]),
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        };
        let l = c.list_containers(list(by_label)).await?.into_inner().containers;
        ensure!(l.len() == 1 && l[0].id == server, "{l:?}");

        // Log rotation: the old file is renamed away, the next lines go to a new file.
        std::fs::rename(&log_path, log_path.with_extension("log.1"))?;
        c.reopen_container_log(cri::ReopenContainerLogRequest { container_id: server.clone() })
            .await?;
        ensure!(log_path.exists(), "ReopenContainerLog did not create a new file");

        // Stop (idempotent), remove (idempotent); the volume keeps its files.
        c.stop_container(cri::StopContainerRequest { container_id: server.clone(), timeout: 2 })
            .await?;
        let st = status(&mut c, &server).await?;
        ensure!(st.state == EXITED && st.finished_at > 0, "{st:?}");
        c.stop_container(cri::StopContainerRequest { container_id: server.clone(), timeout: 2 })
            .await?;
        let e = c.exec_sync(exec(&["true"])).await.expect_err("exec in a stopped container");
        ensure!(e.code() == tonic::Code::FailedPrecondition, "{e:?}");
        for id in [&server, &job] {
            c.remove_container(cri::RemoveContainerRequest { container_id: id.to_string() })
                .await?;
            c.remove_container(cri::RemoveContainerRequest { container_id: id.to_string() })
                .await?;
        }
        ensure!(c
            .list_containers(list(Default::default()))
            .await?
            .into_inner()
            .containers
            .is_empty());
        let deleted = cri::ContainerEventType::ContainerDeletedEvent as i32;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), events.message())
                .await
                .context("no DELETED event within 60 s")??
                .context("event stream ended")?;
            if ev.container_id == job && ev.container_event_type == deleted {
                break;
            }
        }
        ensure!(
            std::fs::read_to_string(vol.path().join("hello"))? == "from the host\n",
            "volume lost its file"
        );
        let shared = d.pods_dir().join(&pod).join("shared");
        let left: Vec<_> = std::fs::read_dir(&shared)?.flatten().map(|e| e.file_name()).collect();
        ensure!(left.is_empty(), "container files left in {}: {left:?}", shared.display());

        // A container left running goes with its pod; the name is free again after removal.
        let again =
            create(&mut c, &pod, &pod_cfg, container("server", &busybox, &["sleep", "1000"]))
                .await?;
        c.start_container(cri::StartContainerRequest { container_id: again.clone() }).await?;
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        ensure!(status(&mut c, &again).await?.state == EXITED);
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        ensure!(c
            .list_containers(list(Default::default()))
            .await?
            .into_inner()
            .containers
            .is_empty());
        ensure!(
            std::fs::read_to_string(vol.path().join("hello"))? == "from the host\n",
            "volume lost its file"
        );
        ensure!(d.vmm_processes().is_empty(), "VMM left running");
        ensure!(std::fs::read_dir(d.pods_dir())?.count() == 0, "pod files left");
        Ok(())
    });
    with_log(&d, r);
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn containers_survive_a_daemon_restart() {
    let reg = start_registry().expect("test registry");
    let mut d = start_daemon(&reg).expect("daemon");
    let rt = runtime();
    let r = rt.block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;
        let pod_cfg = pod_config(&d, "db");
        let pod = run_pod(&mut c, &pod_cfg).await?;
        let long = create(
            &mut c,
            &pod,
            &pod_cfg,
            container("long", &busybox, &["sh", "-c", "echo one; sleep 8; echo two; sleep 1000"]),
        )
        .await?;
        let short = create(
            &mut c,
            &pod,
            &pod_cfg,
            container("short", &busybox, &["sh", "-c", "sleep 3; exit 4"]),
        )
        .await?;
        for id in [&long, &short] {
            c.start_container(cri::StartContainerRequest { container_id: id.to_string() }).await?;
        }
        wait_log(&d.logs_dir("db").join("long/0.log"), &["stdout F one"]).await?;
        // A second running pod with its own container: both must come back after the restart.
        let web_cfg = pod_config(&d, "web");
        let web = run_pod(&mut c, &web_cfg).await?;
        let serve =
            create(&mut c, &web, &web_cfg, container("serve", &busybox, &["sleep", "1000"]))
                .await?;
        c.start_container(cri::StartContainerRequest { container_id: serve.clone() }).await?;
        Ok::<_, anyhow::Error>((pod, long, short, web, serve))
    });
    let (pod, long, short, web, serve) = with_log(&d, r);
    d.kill9();
    std::thread::sleep(Duration::from_secs(5)); // "short" exits while the daemon is down
    d.restart().expect("daemon restart");
    let r = rt.block_on(async {
        let mut c = d.client().await?;
        let pods =
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await?.into_inner().items;
        for id in [&pod, &web] {
            let p = pods
                .iter()
                .find(|p| &p.id == id)
                .with_context(|| format!("pod {id} not listed after restart"))?;
            ensure!(
                p.state == cri::PodSandboxState::SandboxReady as i32,
                "pod {id} not ready after restart: {p:?}"
            );
        }
        let listed =
            c.list_containers(cri::ListContainersRequest::default()).await?.into_inner().containers;
        ensure!(listed.len() == 3, "containers listed after restart: {listed:?}");
        ensure!(
            status(&mut c, &serve).await?.state == RUNNING,
            "second pod's container not running after restart"
        );
        ensure!(
            status(&mut c, &long).await?.state == RUNNING,
            "long-running container not running after restart"
        );
        // Log forwarding resumed: what it printed after the daemon died reaches the log.
        wait_log(&d.logs_dir("db").join("long/0.log"), &["stdout F two"]).await?;
        let st = wait_state(&mut c, &short, EXITED).await?;
        ensure!(st.exit_code == 4, "exit code after restart: {st:?}");
        let r = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: long.clone(),
                cmd: vec!["echo".into(), "ok".into()],
                timeout: 60,
            })
            .await?
            .into_inner();
        ensure!(r.stdout == b"ok\n", "{r:?}");
        c.stop_container(cri::StopContainerRequest { container_id: long.clone(), timeout: 0 })
            .await?;
        ensure!(status(&mut c, &long).await?.state == EXITED);
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        // The second pod: stopped (its container with it), then removed.
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: web.clone() }).await?;
        ensure!(
            status(&mut c, &serve).await?.state == EXITED,
            "StopPodSandbox left its container running"
        );
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: web.clone() }).await?;
        ensure!(c
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .is_empty());
        ensure!(c
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .is_empty());
        ensure!(d.vmm_processes().is_empty(), "VMM left running");
        Ok(())
    });
    with_log(&d, r);
}

/// Runs `cfg` in `pod` to completion; returns (exit code, stdout lines) from its CRI log.
async fn run_to_exit(
    c: &mut RuntimeServiceClient<Channel>,
    d: &Daemon,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> Result<(i32, Vec<String>)> {
    let log =
        d.logs_dir(&pod_cfg.metadata.as_ref().context("pod metadata")?.name).join(&cfg.log_path);
    let id = create(c, pod, pod_cfg, cfg).await.context("CreateContainer")?;
    c.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .context("StartContainer")?;
    let st = wait_state(c, &id, EXITED).await?;
    // The log task writes the last lines as it sees the exit: give it a moment to catch up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stdout F __end__") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = log_lines(&text)?
        .into_iter()
        .filter(|(s, _, _)| s == "stdout")
        .map(|(_, _, m)| m)
        .collect::<Vec<_>>();
    c.remove_container(cri::RemoveContainerRequest { container_id: id }).await?;
    Ok((st.exit_code, out))
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn each_test_image_runs_with_its_entrypoint_env_workdir_and_user() {
    let reg = start_registry().expect("test registry");
    let d = start_daemon(&reg).expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let [busybox, app, multi] =
            ["test/busybox:latest", "test/app:1.0", "test/multi:latest"].map(|i| reg.image(i));
        for image in [&busybox, &app, &multi] {
            pull_image(&mut images, image).await?;
        }
        let pod_cfg = pod_config(&d, "images");
        let pod = run_pod(&mut c, &pod_cfg).await?;

        // test/app with no command: ENTRYPOINT ["/bin/sh","-c"] + CMD ["echo hello from app"].
        let mut cfg = container("app-default", &app, &[]);
        cfg.log_path = "app-default/0.log".into();
        let (code, out) = run_to_exit(&mut c, &d, &pod, &pod_cfg, cfg).await?;
        ensure!(
            code == 0 && out.first().map(String::as_str) == Some("hello from app"),
            "app default: {code} {out:?}"
        );

        // test/app with args only: the entrypoint stays, CMD is replaced; USER 1000, WORKDIR /app,
        // image ENV (FOO) plus the container's (GREETING); the zstd layer's files, the cleanup
        // layer's whiteout (/etc/motd gone) and opaque dir (/data holds only `new`).
        let mut cfg = container("app-args", &app, &[]);
        cfg.args =
            vec!["id -u; id -g; pwd; echo FOO=$FOO; echo GREETING=$GREETING; ./hello-link.sh; \
             test -e /etc/motd && echo motd || echo no-motd; ls /data; echo __end__"
                .into()];
        let (code, out) = run_to_exit(&mut c, &d, &pod, &pod_cfg, cfg).await?;
        let want = [
            "1000",
            "1000",
            "/app",
            "FOO=bar",
            "GREETING=hi there",
            "hello from app: FOO=bar",
            "no-motd",
            "new",
            "__end__",
        ];
        ensure!(
            code == 0 && out == want,
            "app with args: exit {code}, stdout {out:?}, want {want:?}"
        );

        // test/busybox (Docker schema2): root, PATH from the image.
        let cfg =
            container("bb", &busybox, &["sh", "-c", "id -u; echo PATH=$PATH; pwd; echo __end__"]);
        let (code, out) = run_to_exit(&mut c, &d, &pod, &pod_cfg, cfg).await?;
        ensure!(code == 0 && out == ["0", "PATH=/bin", "/", "__end__"], "busybox: {code} {out:?}");

        // test/multi (OCI index): the linux/amd64 image was selected, and it runs here.
        let cfg = container("multi", &multi, &["sh", "-c", "uname -m; echo __end__"]);
        let (code, out) = run_to_exit(&mut c, &d, &pod, &pod_cfg, cfg).await?;
        ensure!(code == 0 && out == ["x86_64", "__end__"], "multi: {code} {out:?}");

        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
        ensure!(d.vmm_processes().is_empty(), "VMM left running");
        Ok(())
    });
    with_log(&d, r);
}

/// The `Name:\tvalue` field of a /proc/<pid>/status text.
fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string())
    })
}

/// What critest checks, through the daemon: pod sysctls (and RunPodSandbox refusing a
/// non-namespaced one), drop ALL capabilities, RuntimeDefault seccomp in an ExecSync process,
/// StopContainer of `sh -c top` ending it by SIGTERM, and PID 1 of a POD-mode PID namespace.
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn critest_security_semantics_through_the_daemon() {
    let reg = start_registry().expect("test registry");
    let d = start_daemon(&reg).expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;

        let mut bad = pod_config(&d, "badsysctl");
        bad.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [("kernel.core_pattern".to_string(), "|/bin/sh".to_string())].into(),
            ..Default::default()
        });
        let e = c
            .run_pod_sandbox(carapace_tests::cri::run_pod_request(bad))
            .await
            .expect_err("a non-namespaced sysctl");
        ensure!(
            e.code() == tonic::Code::InvalidArgument
                && e.message().contains("config.linux.sysctls"),
            "{e:?}"
        );

        let mut pod_cfg = pod_config(&d, "crit");
        pod_cfg.linux = Some(cri::LinuxPodSandboxConfig {
            sysctls: [
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                ("fs.mqueue.msg_max".to_string(), "100".to_string()),
            ]
            .into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let pod = run_pod(&mut c, &pod_cfg).await?;
        let exec = |id: &str, cmd: &[&str]| cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };

        // Drop ALL + RuntimeDefault seccomp + the pod's PID namespace; sysctls seen inside.
        let mut cfg = container("confined", &busybox, &["sleep", "1000"]);
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile::default()),
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let confined = create(&mut c, &pod, &pod_cfg, cfg).await.context("create confined")?;
        c.start_container(cri::StartContainerRequest { container_id: confined.clone() }).await?;
        let r = c.exec_sync(exec(&confined, &["cat", "/proc/self/status"])).await?.into_inner();
        let st = String::from_utf8_lossy(&r.stdout).into_owned();
        ensure!(r.exit_code == 0, "{r:?}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            ensure!(
                status_field(&st, set).as_deref() == Some("0000000000000000"),
                "drop ALL: {set} in {st}"
            );
        }
        ensure!(status_field(&st, "Seccomp").as_deref() == Some("2"), "exec seccomp: {st}");
        let r = c.exec_sync(exec(&confined, &["cat", "/proc/1/cmdline"])).await?.into_inner();
        ensure!(!String::from_utf8_lossy(&r.stdout).contains("sleep"), "PID 1: {r:?}");
        let r = c
            .exec_sync(exec(
                &confined,
                &["cat", "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/fs/mqueue/msg_max"],
            ))
            .await?
            .into_inner();
        ensure!(r.stdout == b"1\n100\n", "sysctls: {r:?}");

        // `sh -c top` (critest's default container) stops on the SIGTERM.
        let top = create(&mut c, &pod, &pod_cfg, container("top", &busybox, &["sh", "-c", "top"]))
            .await
            .context("create top")?;
        c.start_container(cri::StartContainerRequest { container_id: top.clone() }).await?;
        let running = exec(&top, &["sh", "-c", "ps -o comm | grep -qx top"]);
        let mut seen = false;
        for _ in 0..50 {
            if c.exec_sync(running.clone()).await?.into_inner().exit_code == 0 {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(seen, "top never ran in its container");
        // Execs while a container writes without pause (top redraws): each one is created by
        // the agent's runtime helper; none may hang the agent (issue 11's execSync wedge).
        for i in 0..20 {
            let r = c
                .exec_sync(exec(&top, &["echo", &format!("exec {i}")]))
                .await
                .with_context(|| format!("exec {i} beside a chatty container"))?
                .into_inner();
            ensure!(r.exit_code == 0 && r.stdout == format!("exec {i}\n").as_bytes(), "{r:?}");
        }
        c.stop_container(cri::StopContainerRequest { container_id: top.clone(), timeout: 60 })
            .await
            .context("StopContainer top")?;
        let st = status(&mut c, &top).await?;
        ensure!(st.state == EXITED && st.exit_code == 143, "top did not end by SIGTERM: {st:?}");

        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        Ok(())
    });
    with_log(&d, r);
}

/// The pod's resources (what kubelet sends as `linux.resources`) for `cpus` and `mem` bytes.
fn resources(cpus: i64, mem: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: cpus * 100_000,
        memory_limit_in_bytes: mem,
        ..Default::default()
    }
}

/// The guest's CPU count and MemTotal (MiB) as a container sees them.
async fn guest_cpus_and_mem(
    c: &mut RuntimeServiceClient<Channel>,
    cid: &str,
) -> Result<(u32, u64)> {
    let cmd = "grep -c ^processor /proc/cpuinfo; awk '/^MemTotal:/ {print int($2/1024)}' \
               /proc/meminfo";
    let r = c
        .exec_sync(cri::ExecSyncRequest {
            container_id: cid.into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: 60,
        })
        .await?
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    ensure!(r.exit_code == 0, "cpus/meminfo: {r:?}");
    let mut l = out.lines();
    let cpus = l.next().unwrap_or("").trim().parse().with_context(|| format!("cpus in {out:?}"))?;
    let mem = l.next().unwrap_or("").trim().parse().with_context(|| format!("mem in {out:?}"))?;
    Ok((cpus, mem))
}

/// The VM size the daemon recorded for a pod (PodSandboxStatus verbose info).
async fn recorded_vm_size(c: &mut RuntimeServiceClient<Channel>, pod: &str) -> Result<(u64, u64)> {
    let st = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info = st.info.get("info").context("no verbose info")?;
    let v: serde_json::Value = serde_json::from_str(info)?;
    let size = &v["vm_size"];
    let (cpus, mem) = (size["vcpus"].as_u64(), size["mem_mib"].as_u64());
    Ok((cpus.context("vm_size.vcpus")?, mem.context("vm_size.mem_mib")?))
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn pods_get_vms_sized_from_their_resources() {
    let reg = start_registry().expect("test registry");
    let d = start_daemon(&reg).expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;

        // 2 CPUs and 1 GiB (as kubelet sums the containers' limits): a VM with 2 vCPUs and
        // 1 GiB plus the guest's overhead (64 MiB by default).
        let mut big_cfg = pod_config(&d, "sized");
        big_cfg.linux = Some(cri::LinuxPodSandboxConfig {
            resources: Some(resources(2, 1 << 30)),
            overhead: Some(resources(0, 32 << 20)),
            ..Default::default()
        });
        let big = run_pod(&mut c, &big_cfg).await?;
        ensure!(recorded_vm_size(&mut c, &big).await? == (2, 1088), "recorded size of the big pod");
        let mut cfg = container("hog", &busybox, &["sleep", "100000"]);
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(resources(2, 1 << 30)),
            ..Default::default()
        });
        let hog = create(&mut c, &big, &big_cfg, cfg).await.context("create hog")?;
        c.start_container(cri::StartContainerRequest { container_id: hog.clone() }).await?;
        let (cpus, mem) = guest_cpus_and_mem(&mut c, &hog).await?;
        ensure!(cpus == 2 && mem >= 1024, "the big pod's guest has {cpus} CPUs and {mem} MiB");
        // 900 MiB allocated and touched (dd fills its one 900 MiB buffer from /dev/zero)
        // within the container's 1 GiB limit: no OOM kill.
        let r = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: hog.clone(),
                cmd: ["busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=900M", "count=1"]
                    .map(String::from)
                    .to_vec(),
                timeout: 300,
            })
            .await?
            .into_inner();
        ensure!(r.exit_code == 0, "900 MiB in a 1 GiB container: {r:?}");
        ensure!(status(&mut c, &hog).await?.state == RUNNING, "the container did not survive");

        // More than the VM holds: CreateContainer and UpdateContainerResources say so.
        let mut cfg = container("greedy", &busybox, &["sleep", "100000"]);
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(resources(1, 2 << 30)),
            ..Default::default()
        });
        let e = create(&mut c, &big, &big_cfg, cfg).await.expect_err("2 GiB in a 1 GiB VM");
        ensure!(
            e.code() == tonic::Code::ResourceExhausted
                && e.message().contains("asks for 2048 MiB of memory")
                && e.message().contains("1088 MiB"),
            "{e:?}"
        );
        let e = c
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: hog.clone(),
                linux: Some(resources(4, 1 << 30)),
                ..Default::default()
            })
            .await
            .expect_err("4 CPUs in a 2-vCPU VM");
        ensure!(
            e.code() == tonic::Code::ResourceExhausted && e.message().contains("2 vCPU"),
            "{e:?}"
        );
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: hog.clone(),
            linux: Some(resources(1, 512 << 20)),
            ..Default::default()
        })
        .await
        .context("UpdateContainerResources within the VM")?;

        // No resources: the profile's size (1 vCPU, 256 MiB).
        let small_cfg = pod_config(&d, "unsized");
        let small = run_pod(&mut c, &small_cfg).await?;
        ensure!(recorded_vm_size(&mut c, &small).await? == (1, 256), "recorded size, no limits");
        let plain =
            create(&mut c, &small, &small_cfg, container("plain", &busybox, &["sleep", "100000"]))
                .await
                .context("create plain")?;
        c.start_container(cri::StartContainerRequest { container_id: plain.clone() }).await?;
        let (cpus, mem) = guest_cpus_and_mem(&mut c, &plain).await?;
        ensure!(cpus == 1 && mem <= 256, "the unsized pod's guest has {cpus} CPUs and {mem} MiB");

        for pod in [big, small] {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
        }
        Ok(())
    });
    with_log(&d, r);
}
