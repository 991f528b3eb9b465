//! `make bench-cri`: the whole CRI lifecycle of a pod through `carapace serve`, timed per step.
//!
//! Starts a throwaway `docker-registry` on 127.0.0.1 with the project's test images
//! (tests/images/build-and-push.sh), starts `carapace serve` with state/run/image dirs in a private
//! directory under /tmp (the daemon passes CARAPACE_VMM_KICK_MS on to its VMMs), pulls
//! test/busybox:latest through the daemon's ImageService, then for N pods (BENCH_N, default 10):
//! RunPodSandbox, CreateContainer (a long-running `sleep` under a shell that exits on SIGTERM,
//! since a bare `sleep` as its namespace's PID 1 ignores SIGTERM and every stop would take the
//! whole grace period), StartContainer, ExecSync (`echo hi`), StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox, each timed from request to answer.
//!
//! Prints the median ms of each step (runp, create, start, exec, stop, rm, stopp, rmp); the last
//! line is `cri lifecycle: median total <X> ms over <N> pods`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_tests::{carapace_bin, median_ms, GuestImage};

const STEPS: [&str; 8] = ["runp", "create", "start", "exec", "stop", "rm", "stopp", "rmp"];
const STOP_TIMEOUT_S: i64 = 10;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `docker-registry` on 127.0.0.1 with the test images pushed.
struct Registry {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("benchreg").tempdir_in("/tmp")?;
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            );
            std::fs::write(dir.path().join("config.yml"), config)?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("docker-registry (Debian package docker-registry)")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let ready = loop {
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    let _ = s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes());
                    let mut buf = String::new();
                    let _ = s.read_to_string(&mut buf);
                    if buf.contains("Docker-Distribution-Api-Version") {
                        break true;
                    }
                }
                if child.try_wait()?.is_some() || Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !ready {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("registry on {addr} did not start (attempt {attempt})");
                continue;
            }
            let out = Command::new(repo_root().join("tests/images/build-and-push.sh")).arg(&addr).output()?;
            let reg = Registry { addr, child, _dir: dir };
            ensure!(out.status.success(), "pushing test images: {}", String::from_utf8_lossy(&out.stderr));
            return Ok(reg);
        }
        bail!("docker-registry did not start")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `carapace serve` with private state/run/image dirs under /tmp.
struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(registry: &str) -> Result<Daemon> {
        let image = GuestImage::from_env()?;
        // Short: pods' vsock socket paths live under run_dir and must fit a Unix socket address.
        let dir = tempfile::Builder::new().prefix("bcri").tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("cri.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"unix://{sock}\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n\
                 vmm_binary = \"{bin}\"\nagent_timeout_s = 120\nstop_timeout_s = 10\n\
                 [images]\nroot = \"{d}/images\"\n[images.registries]\ninsecure = [\"{registry}\"]\n\
                 [profiles.default]\nkernel = \"{k}\"\ninitramfs = \"{i}\"\n",
                sock = socket.display(),
                d = d.display(),
                bin = carapace_bin().display(),
                k = image.kernel.display(),
                i = image.initramfs.display()
            ),
        )?;
        let log = std::fs::File::create(d.join("daemon.log"))?;
        let child = Command::new(carapace_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("CARAPACE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} serve", carapace_bin().display()))?;
        let mut daemon = Daemon { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Some(st) = daemon.child.try_wait()? {
                bail!("daemon exited ({st})\n{}", daemon.log());
            }
            if Instant::now() > deadline {
                bail!("daemon did not listen within 30 s\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// VMM processes started for this daemon (their command line names its run dir).
    fn vmm_processes(&self) -> Vec<i32> {
        let needle = self.dir.path().join("run").display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            if !zombie && pid != self.child.id() as i32 && String::from_utf8_lossy(&cmdline).contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.vmm_processes() {
            // SAFETY: kill(2) on a VMM whose command line names this bench's private directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = carapace_cri::volumes::unmount_all_under(&self.dir.path().join("run"));
    }
}

fn pod_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: d.dir.path().join("logs").join(name).display().to_string(),
        ..Default::default()
    }
}

fn container(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "sleeper".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait $!"].iter().map(|s| s.to_string()).collect(),
        log_path: "sleeper/0.log".into(),
        ..Default::default()
    }
}

fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10).max(1);
    let reg = Registry::start()?;
    let daemon = Daemon::start(&reg.addr)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res = rt.block_on(lifecycles(&daemon, &reg.addr, n));
    let mut per_pod = match res {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n--- daemon log ---\n{}", daemon.log()),
    };
    let left = daemon.vmm_processes();
    ensure!(left.is_empty(), "VMMs left running after RemovePodSandbox: {left:?}");

    let mut parts = Vec::new();
    for (s, name) in STEPS.iter().enumerate() {
        let mut v: Vec<f64> = per_pod.iter().map(|p| p[s]).collect();
        let m = median_ms(&mut v).unwrap_or(f64::NAN);
        parts.push(format!("{name} {m:.0}"));
    }
    println!("cri steps (median ms over {n} pods, carapace): {}", parts.join(", "));
    let mut totals: Vec<f64> = per_pod.iter_mut().map(|p| p.iter().sum()).collect();
    let total = median_ms(&mut totals).unwrap_or(f64::NAN);
    println!("cri lifecycle: median total {total:.0} ms over {n} pods");
    Ok(())
}

/// Pulls busybox, then runs N pod lifecycles; returns the step times (ms) of each pod.
async fn lifecycles(d: &Daemon, registry: &str, n: usize) -> Result<Vec<[f64; 8]>> {
    let mut c = carapace_cri::client::connect(&d.socket).await?;
    let mut images = carapace_cri::client::connect_images(&d.socket).await?;
    let busybox = format!("{registry}/test/busybox:latest");
    let t = Instant::now();
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: busybox.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .context("PullImage")?;
    println!("pull {busybox} through the daemon: {:.0} ms (not counted)", t.elapsed().as_secs_f64() * 1000.0);

    let mut all = Vec::new();
    for i in 0..n {
        let mut times = [0f64; 8];
        let mut step = 0;
        let mut lap = |t: &mut Instant| {
            times[step] = t.elapsed().as_secs_f64() * 1000.0;
            step += 1;
            *t = Instant::now();
        };
        let pod_cfg = pod_config(d, &format!("bench-{i}"));
        let mut t = Instant::now();
        let pod = c
            .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_cfg.clone()), runtime_handler: String::new() })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        lap(&mut t);
        let cid = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container(&busybox)),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        lap(&mut t);
        c.start_container(cri::StartContainerRequest { container_id: cid.clone() }).await.context("StartContainer")?;
        lap(&mut t);
        let r = c
            .exec_sync(cri::ExecSyncRequest { container_id: cid.clone(), cmd: vec!["echo".into(), "hi".into()], timeout: 60 })
            .await
            .context("ExecSync")?
            .into_inner();
        lap(&mut t);
        ensure!(r.exit_code == 0 && r.stdout == b"hi\n", "ExecSync answered {r:?}");
        t = Instant::now();
        c.stop_container(cri::StopContainerRequest { container_id: cid.clone(), timeout: STOP_TIMEOUT_S })
            .await
            .context("StopContainer")?;
        lap(&mut t);
        c.remove_container(cri::RemoveContainerRequest { container_id: cid.clone() }).await.context("RemoveContainer")?;
        lap(&mut t);
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.context("StopPodSandbox")?;
        lap(&mut t);
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })
            .await
            .context("RemovePodSandbox")?;
        lap(&mut t);
        let line: Vec<String> = STEPS.iter().zip(times.iter()).map(|(s, v)| format!("{s} {v:.0}")).collect();
        println!("pod {}: {} (ms), total {:.0} ms", i + 1, line.join(", "), times.iter().sum::<f64>());
        all.push(times);
    }
    Ok(all)
}
