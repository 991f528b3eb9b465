//! The CRI daemon under test and CRI request helpers: a `carapace serve` process with private
//! state/run/image dirs under /tmp, driven over its socket like kubelet.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::image_service_client::ImageServiceClient;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic::transport::Channel;

use crate::{carapace_bin, wait_child, GuestImage};

/// Name of the `#[test]` function a test binary re-executes itself as to be the daemon (see
/// [`DaemonOptions::fallback_env`] and [`daemon_process`]).
pub const DAEMON_TEST_NAME: &str = "daemon_process";

/// How long the daemon may take to listen on its socket.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

/// The body of a test binary's `daemon_process` test: when `env` names a config file, runs the
/// CRI daemon with it in this process and exits; otherwise returns (a normal test run).
pub fn daemon_process(env: &str) {
    let Some(path) = std::env::var_os(env) else { return };
    let cfg = carapace_cri::Config::load(Path::new(&path), true).expect("daemon config");
    if let Err(e) = carapace_cri::serve_blocking(cfg) {
        eprintln!("daemon: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// Whether the `carapace` binary under test has the `serve` subcommand.
pub fn carapace_has_serve() -> bool {
    Command::new(carapace_bin())
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The daemon's `[cni]` directories: network configs, plugin binaries, the pods' netns files.
#[derive(Debug, Clone)]
pub struct CniDirs {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub netns_dir: PathBuf,
}

/// How to start a [`Daemon`].
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Prefix of the private directory under /tmp; keep it short, the pods' vsock socket paths
    /// live under it and must fit a Unix socket address.
    pub dir_prefix: &'static str,
    /// A registry (`host:port`) the daemon may pull from over plain HTTP.
    pub insecure_registry: Option<String>,
    /// When set and `carapace` has no `serve` yet, the current test binary is re-executed as the
    /// daemon (its [`DAEMON_TEST_NAME`] test, with this variable naming the config file).
    pub fallback_env: Option<&'static str>,
    /// `CARAPACE_LOG` of the daemon.
    pub log_level: &'static str,
    /// Pod networking with these dirs; None: `[cni] enabled = false` (pods get loopback only).
    pub cni: Option<CniDirs>,
    /// More config (whole TOML tables, e.g. `[streaming]`), appended to the generated one.
    pub extra_config: String,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            dir_prefix: "cri",
            insecure_registry: None,
            fallback_env: None,
            log_level: "info",
            cni: None,
            extra_config: String::new(),
        }
    }
}

/// The daemon config: state, run and image dirs under `dir`, listening on `socket`, VMMs from
/// the `carapace` binary under test booting `image`; pulls from `insecure_registry` over HTTP;
/// pod networking with `cni`'s dirs, or disabled.
pub fn config_toml(
    dir: &Path,
    socket: &Path,
    image: &GuestImage,
    insecure_registry: Option<&str>,
    cni: Option<&CniDirs>,
) -> String {
    let registries = match insecure_registry {
        Some(r) => format!("[images.registries]\ninsecure = [\"{r}\"]\n"),
        None => String::new(),
    };
    let cni = match cni {
        Some(c) => {
            let bins: Vec<String> =
                c.bin_dirs.iter().map(|b| format!("{:?}", b.display().to_string())).collect();
            format!(
                "[cni]\nenabled = true\nconf_dir = {:?}\nbin_dirs = [{}]\nnetns_dir = {:?}\n",
                c.conf_dir.display().to_string(),
                bins.join(", "),
                c.netns_dir.display().to_string()
            )
        }
        None => "[cni]\nenabled = false\n".to_string(),
    };
    format!(
        "listen = \"unix://{sock}\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n\
         vmm_binary = \"{bin}\"\nagent_timeout_s = 120\nstop_timeout_s = 10\n\
         [images]\nroot = \"{d}/images\"\n{registries}{cni}\
         [profiles.default]\nkernel = \"{k}\"\ninitramfs = \"{i}\"\n",
        sock = socket.display(),
        d = dir.display(),
        bin = carapace_bin().display(),
        k = image.kernel.display(),
        i = image.initramfs.display()
    )
}

/// A CRI daemon process with private state/run/image dirs under /tmp (Unix sockets need a local
/// fs). Dropping it kills the daemon and every VMM it started and unmounts what is left under
/// its run dir.
pub struct Daemon {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    opts: DaemonOptions,
    child: Option<Child>,
}

impl Daemon {
    /// Writes the daemon's config (guest image from the environment) and starts it.
    pub fn start(opts: DaemonOptions) -> Result<Daemon> {
        let image = GuestImage::from_env()?;
        let dir = tempfile::Builder::new().prefix(opts.dir_prefix).tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("cri.sock");
        let config = d.join("config.toml");
        let base =
            config_toml(d, &socket, &image, opts.insecure_registry.as_deref(), opts.cni.as_ref());
        std::fs::write(&config, base + &opts.extra_config)?;
        let mut daemon = Daemon { dir, config, socket, opts, child: None };
        daemon.restart()?;
        Ok(daemon)
    }

    /// Starts the daemon process (again) and waits until it listens; its output is appended to
    /// the daemon log.
    pub fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let mut cmd = match self.opts.fallback_env {
            Some(env) if !carapace_has_serve() => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args([
                    "--exact",
                    DAEMON_TEST_NAME,
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(env, &self.config);
                c
            }
            _ => {
                let mut c = Command::new(carapace_bin());
                c.arg("serve").arg("--config").arg(&self.config);
                c
            }
        };
        // CARAPACE_E2E_DAEMON_LOG overrides the level of every test daemon (debugging a run).
        let level = std::env::var("CARAPACE_E2E_DAEMON_LOG");
        cmd.env("CARAPACE_LOG", level.as_deref().unwrap_or(self.opts.log_level))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().with_context(|| format!("start the daemon ({cmd:?})"))?);
        let deadline = Instant::now() + LISTEN_DEADLINE;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(st) = exited {
                self.child = None;
                bail!("daemon exited ({st})\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon did not listen within {} s\n{}",
                    LISTEN_DEADLINE.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILLs the daemon (its VMMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit that removed the socket.
    pub fn terminate(&mut self) -> Result<()> {
        let mut c = self.child.take().context("daemon not running")?;
        // SAFETY: kill(2) on the daemon process this harness started.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = wait_child(&mut c, Duration::from_secs(30))?;
        ensure!(st.success(), "daemon exited with {st} after SIGTERM\n{}", self.log());
        ensure!(!self.socket.exists(), "daemon left its socket behind after SIGTERM");
        Ok(())
    }

    /// The daemon's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The private directory (config, socket, state, run, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pods' run dirs (vsock sockets, serial log, shared dir of each VM).
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.path().join("run/pods")
    }

    /// The sandbox records.
    pub fn records_dir(&self) -> PathBuf {
        self.dir.path().join("state/sandboxes")
    }

    /// The container records.
    pub fn container_records_dir(&self) -> PathBuf {
        self.dir.path().join("state/containers")
    }

    /// A private directory for the pods' CRI logs (`log_directory` of pod configs).
    pub fn logs_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The CRI log directory of the pod named `pod` (under [`Daemon::logs_root`]).
    pub fn logs_dir(&self, pod: &str) -> PathBuf {
        self.logs_root().join(pod)
    }

    /// VMM processes started for this daemon (their command line names its pods' run dir).
    pub fn vmm_processes(&self) -> Vec<i32> {
        let needle = self.pods_dir().display().to_string();
        let daemon = self.child.as_ref().map(|c| c.id() as i32);
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            if !zombie && Some(pid) != daemon && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Fails unless no VMM process, pod file, socket, record, pod disk image or mount (a pod
    /// disk's loop mount among them) is left.
    pub fn assert_clean(&self) -> Result<()> {
        let procs = self.vmm_processes();
        ensure!(procs.is_empty(), "VMM processes left behind: {procs:?}");
        let disks = self.dir.path().join("state/pod-disks");
        for d in [self.pods_dir(), self.records_dir(), self.container_records_dir(), disks] {
            let left: Vec<_> = std::fs::read_dir(&d)
                .map(|r| r.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            ensure!(left.is_empty(), "left behind in {}: {left:?}", d.display());
        }
        let root = self.dir.path().display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&root)).collect();
        ensure!(mounts.is_empty(), "mounts left behind: {mounts:?}");
        Ok(())
    }

    /// A RuntimeService client on the daemon's socket.
    pub async fn client(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(carapace_cri::client::connect(&self.socket).await?)
    }

    /// An ImageService client on the daemon's socket.
    pub async fn image_client(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(carapace_cri::client::connect_images(&self.socket).await?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Never leave a VM running after a failed test.
        for pid in self.vmm_processes() {
            // SAFETY: kill(2) on a PID whose command line names this daemon's private directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Volumes bound under the run dir must not outlive the daemon (tempdir removal would
        // otherwise walk into them).
        let _ = carapace_cri::volumes::unmount_all_under(&self.dir.path().join("run"));
    }
}

/// Unwraps `r`, or panics with the error and the daemon's log.
pub fn with_log<T>(d: &Daemon, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:#}\n--- daemon log ---\n{}", d.log()),
    }
}

/// A single-threaded tokio runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// The base config of a pod named `name`: metadata (uid `uid-<name>`), hostname and log directory.
pub fn pod_config(
    namespace: &str,
    name: &str,
    attempt: u32,
    log_directory: &Path,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        ..Default::default()
    }
}

/// The DNS config the e2e pods get: one cluster DNS server, one search domain, `ndots:5`.
pub fn e2e_dns() -> cri::DnsConfig {
    cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    }
}

/// Puts the pod in the host's network namespace (no CNI needed for runc-based peers; carapace
/// pods have their own kernel and ignore it).
pub fn use_host_network(cfg: &mut cri::PodSandboxConfig) {
    cfg.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // A host-network pod shares the host's UTS namespace: runc refuses to set a hostname there.
    cfg.hostname = String::new();
}

/// A RunPodSandbox request for `config` with the default runtime handler.
pub fn run_pod_request(config: cri::PodSandboxConfig) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }
}

/// RunPodSandbox of `config` with the default handler; returns the pod sandbox ID.
pub async fn run_pod(
    c: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
) -> Result<String> {
    Ok(c.run_pod_sandbox(run_pod_request(config.clone()))
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id)
}

/// The base config of a container named `name` (attempt 0) running `command` (empty: the
/// image's) from `image`, logging to `<name>/0.log` in the pod's log directory.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// The network status (pod IP, additional IPs) PodSandboxStatus reports for pod `id`.
pub async fn pod_network(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<cri::PodSandboxNetworkStatus> {
    c.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
        .await
        .context("PodSandboxStatus")?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .context("no network status")
}

/// Creates and starts a container named `name` running `command` from `image` in pod `pod`
/// (whose config is `pod_cfg`); waits up to a minute until it runs and returns its ID.
pub async fn start_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    name: &str,
    image: &str,
    command: &[&str],
) -> Result<String> {
    let id = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config(name, image, command)),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    c.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no container status")?;
        if st.state == cri::ContainerState::ContainerRunning as i32 {
            return Ok(id);
        }
        ensure!(Instant::now() < deadline, "container {name} not running: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pulls `image` through an ImageService.
pub async fn pull_image(images: &mut ImageServiceClient<Channel>, image: &str) -> Result<()> {
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("PullImage {image}"))?;
    Ok(())
}

/// CreateContainer of `cfg` in `pod`; the container's ID.
pub async fn create_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> std::result::Result<String, carapace_cri::tonic::Status> {
    Ok(c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg.clone()),
    })
    .await?
    .into_inner()
    .container_id)
}

/// ContainerStatus of `id`.
pub async fn container_status(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<cri::ContainerStatus> {
    c.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no status")
}

/// Polls ContainerStatus until `id` is in `state` (2 min at most).
pub async fn wait_container_state(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    state: i32,
) -> Result<cri::ContainerStatus> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = container_status(c, id).await?;
        if s.state == state {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "container {id} stayed in state {} (want {state})",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_config_is_accepted_by_the_daemon() {
        let image =
            GuestImage { kernel: "/g/vmlinux".into(), initramfs: "/g/initramfs.cpio".into() };
        let d = Path::new("/tmp/cri123");
        let dirs = CniDirs {
            conf_dir: d.join("net.d"),
            bin_dirs: vec![d.join("bin"), "/usr/lib/cni".into()],
            netns_dir: d.join("netns"),
        };
        for (registry, cni) in [(None, None), (Some("127.0.0.1:5000"), Some(&dirs))] {
            let text = config_toml(d, &d.join("cri.sock"), &image, registry, cni);
            let cfg =
                carapace_cri::Config::from_toml_str(&text, Path::new("t"), None).expect(&text);
            assert_eq!(cfg.socket, d.join("cri.sock"));
            assert_eq!(cfg.state_dir, d.join("state"));
            assert_eq!(cfg.run_dir, d.join("run"));
            assert_eq!(cfg.profiles["default"].kernel, image.kernel);
            let insecure: Vec<String> = registry.into_iter().map(String::from).collect();
            assert_eq!(cfg.images.registries.insecure, insecure);
            assert_eq!(cfg.cni.enabled, cni.is_some());
            if let Some(c) = cni {
                assert_eq!(
                    (&cfg.cni.conf_dir, &cfg.cni.bin_dirs, &cfg.cni.netns_dir),
                    (&c.conf_dir, &c.bin_dirs, &c.netns_dir)
                );
            }
        }
    }

    #[test]
    fn pod_and_container_configs() {
        let mut pod = pod_config("e2e", "web", 2, Path::new("/logs/web"));
        assert_eq!(
            pod.metadata.as_ref().map(|m| (m.uid.as_str(), m.attempt)),
            Some(("uid-web", 2))
        );
        assert_eq!((pod.hostname.as_str(), pod.log_directory.as_str()), ("web", "/logs/web"));
        use_host_network(&mut pod);
        assert!(pod.hostname.is_empty());
        let net = pod
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .map(|n| n.network);
        assert_eq!(net, Some(cri::NamespaceMode::Node as i32));
        let c = container_config("job", "reg/img:1", &["sh", "-c", "true"]);
        assert_eq!((c.log_path.as_str(), c.command.len()), ("job/0.log", 3));
        assert!(container_config("app", "reg/img:1", &[]).command.is_empty());
    }
}
