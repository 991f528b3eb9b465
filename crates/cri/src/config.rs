//! The daemon's TOML configuration (default `/etc/carapace/config.toml`; embedded defaults when
//! the file is absent) and its validation.
//!
//! ```toml
//! listen = "unix:///run/carapace/carapace.sock"
//! state_dir = "/var/lib/carapace/state"
//! run_dir = "/run/carapace"
//! cgroup_driver = "cgroupfs"          # or "systemd"
//! # vmm_binary = "/usr/local/bin/carapace"   # default: this executable
//! # vmm_kick_interval_ms = 100              # env CARAPACE_VMM_KICK_MS overrides
//! agent_timeout_s = 120
//! stop_timeout_s = 10
//! # max_concurrent_boots = 2               # default: the host's CPU count
//!
//! [profiles.default]
//! vcpus = 1
//! mem_mib = 256
//! kernel = "/var/lib/carapace/guest/vmlinux"
//! initramfs = "/var/lib/carapace/guest/initramfs.cpio"
//! # a pod's VM is sized from its resources (limits) between vcpus/mem_mib and these:
//! max_vcpus = 8
//! max_mem_mib = 16384
//! guest_overhead_mib = 64                 # added to the pod's memory limit
//!
//! [runtime_handlers]
//! "" = "default"       # the empty handler: the default RuntimeClass
//! big = "big"
//!
//! [images]                                  # the ImageService
//! root = "/var/lib/carapace/images"
//! pinned_images = ["registry.k8s.io/pause:3.9"]   # reported pinned: kubelet's GC keeps them
//! [images.registries.mirrors]
//! "registry.k8s.io" = ["http://127.0.0.1:5000"]
//! [images.registries]
//! insecure = ["127.0.0.1:5000"]
//!
//! [cni]                                     # pod networking (see `config::cni`)
//! enabled = true                            # false: pods get loopback only
//! conf_dir = "/etc/cni/net.d"
//! bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
//! # netns_dir = "<run_dir>/netns"
//!
//! [streaming]                               # exec/attach/port-forward URLs (see `streaming`)
//! address = "127.0.0.1"
//! port = 0                                  # any free port
//! # tls_cert_file = "/etc/carapace/stream.crt"  # both or neither: https:// URLs
//! # tls_key_file = "/etc/carapace/stream.key"   # PKCS#8 PEM
//!
//! [pods]                                    # each pod's own disk (see `pod_disk`)
//! # disk_dir = "<state_dir>/pod-disks"      # sparse ext4 images, one per pod
//! shared_dir_size_mib = 10240               # bounds the shared dir, staging and logs
//! serial_log_max_bytes = 1048576            # then rotated once to serial.log.1
//! # vmm_log_max_bytes = 1048576; guest_warnings_per_second = 10; shared_dir_max_open_files = 65536
//! ```

pub mod cni;
pub mod streaming;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carapace_image::ImageServiceConfig;
use serde::{Deserialize, Serialize};

pub use cni::{CniConfig, RawCniConfig};
pub use streaming::StreamingConfig;

use crate::pod_disk::{PodsConfig, RawPodsConfig};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/carapace/config.toml";
/// The CRI socket kubelet and crictl connect to.
pub const DEFAULT_LISTEN: &str = "unix:///run/carapace/carapace.sock";
/// Durable records of sandboxes.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/carapace/state";
/// Per-pod runtime files (vsock socket, serial log).
pub const DEFAULT_RUN_DIR: &str = "/run/carapace";
/// The guest kernel and initramfs of the default profile.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/carapace/guest";
/// The profile the empty runtime handler names by default.
pub const DEFAULT_PROFILE: &str = "default";
/// Environment variable that sets (and overrides) the VMM's vCPU kick period.
pub const KICK_ENV: &str = "CARAPACE_VMM_KICK_MS";

/// The longest `run_dir` for which every pod's vsock socket path fits in `sun_path` (108 bytes
/// with the NUL): `<run_dir>/pods/<64 hex>/vsock` plus the `_<port>` suffix the VMM may append.
pub const MAX_RUN_DIR_LEN: usize =
    107 - ("/pods/".len() + 64 + "/vsock".len() + "_4294967295".len());

/// A configuration that cannot be used; the message names the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// How the host's cgroups are managed (reported to kubelet by `RuntimeConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// One VM shape a runtime handler can name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmProfile {
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    #[serde(default = "default_kernel")]
    pub kernel: PathBuf,
    #[serde(default = "default_initramfs")]
    pub initramfs: PathBuf,
    /// Appended to the guest kernel command line.
    #[serde(default)]
    pub cmdline_extra: String,
    /// Most vCPUs a pod's VM gets from its resources (`vcpus` is the least).
    #[serde(default = "default_max_vcpus")]
    pub max_vcpus: u8,
    /// Most memory a pod's VM gets from its resources (`mem_mib` is the least).
    #[serde(default = "default_max_mem_mib")]
    pub max_mem_mib: u32,
    /// Memory the guest keeps for itself (kernel, agent, page cache) on top of the pod's
    /// memory limit when its VM is sized.
    #[serde(default = "default_guest_overhead_mib")]
    pub guest_overhead_mib: u32,
}

fn default_vcpus() -> u8 {
    carapace_vmm::DEFAULT_VCPUS
}
fn default_mem_mib() -> u32 {
    carapace_vmm::DEFAULT_MEM_MIB
}
fn default_max_vcpus() -> u8 {
    8
}
fn default_max_mem_mib() -> u32 {
    16 << 10
}
fn default_guest_overhead_mib() -> u32 {
    64
}
fn default_kernel() -> PathBuf {
    Path::new(DEFAULT_GUEST_DIR).join("vmlinux")
}
fn default_initramfs() -> PathBuf {
    Path::new(DEFAULT_GUEST_DIR).join("initramfs.cpio")
}

impl VmProfile {
    /// The VM this profile describes, without any per-pod files (for checking its values).
    pub fn vm_shape(&self) -> carapace_vmm::VmConfig {
        carapace_vmm::VmConfig {
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            initramfs: Some(self.initramfs.clone()),
            cmdline_extra: self.cmdline_extra.clone(),
            ..carapace_vmm::VmConfig::new(&self.kernel)
        }
    }
}

impl Default for VmProfile {
    fn default() -> Self {
        VmProfile {
            vcpus: default_vcpus(),
            mem_mib: default_mem_mib(),
            kernel: default_kernel(),
            initramfs: default_initramfs(),
            cmdline_extra: String::new(),
            max_vcpus: default_max_vcpus(),
            max_mem_mib: default_max_mem_mib(),
            guest_overhead_mib: default_guest_overhead_mib(),
        }
    }
}

/// The file as written (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    cgroup_driver: Option<CgroupDriver>,
    vmm_binary: Option<PathBuf>,
    vmm_kick_interval_ms: Option<u64>,
    agent_timeout_s: Option<u64>,
    stop_timeout_s: Option<u64>,
    max_concurrent_boots: Option<usize>,
    #[serde(default)]
    profiles: BTreeMap<String, VmProfile>,
    #[serde(default)]
    runtime_handlers: BTreeMap<String, String>,
    #[serde(default)]
    images: ImageServiceConfig,
    #[serde(default)]
    cni: RawCniConfig,
    #[serde(default)]
    streaming: StreamingConfig,
    #[serde(default)]
    pods: RawPodsConfig,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Path of the CRI Unix socket (the `unix://` prefix removed).
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_driver: CgroupDriver,
    /// The `carapace` executable whose `vmm` subcommand runs each pod's VM.
    pub vmm_binary: PathBuf,
    /// `--kick-interval-ms` for every VMM (emulated test hosts; real hardware needs none).
    pub vmm_kick_interval_ms: Option<u64>,
    /// How long RunPodSandbox waits for the guest agent to answer.
    pub agent_timeout: Duration,
    /// How long each stop step (agent shutdown, SIGTERM) may take before the next one.
    pub stop_timeout: Duration,
    /// At most this many pod VMs boot at once (the rest of the RunPodSandbox calls wait their
    /// turn): a burst of boots shares the host's CPUs instead of starving every guest at once.
    pub max_concurrent_boots: usize,
    pub profiles: BTreeMap<String, VmProfile>,
    /// Runtime handler (RuntimeClass handler) → profile name; "" is the default handler.
    pub runtime_handlers: BTreeMap<String, String>,
    /// The ImageService: store root, registry mirrors and plain-HTTP registries.
    pub images: ImageServiceConfig,
    /// Pod networking: CNI config dir, plugin dirs, the pods' netns files.
    pub cni: CniConfig,
    /// The streaming server (Exec, Attach): where it listens.
    pub streaming: StreamingConfig,
    /// Each pod's own disk: where the images are, how big.
    pub pods: PodsConfig,
}

impl Config {
    /// Embedded defaults (what the daemon uses when no config file exists).
    pub fn defaults() -> Config {
        // Cannot fail: the defaults are valid by construction (checked by a unit test).
        Config::from_toml_str("", Path::new("<embedded defaults>"), None)
            .unwrap_or_else(|_| unreachable_defaults())
    }

    /// Reads `path`; a missing file at the default path means embedded defaults, a missing file
    /// the user named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let kick_env = std::env::var(KICK_ENV).ok();
        let kick_env = match kick_env.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ConfigError::Invalid(format!("{KICK_ENV}={v:?} is not a number of milliseconds"))
            })?),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_str(&text, path, kick_env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                tracing::info!(path = %path.display(), "no config file: using embedded defaults");
                Config::from_toml_str("", path, kick_env)
            }
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parses and validates TOML text; `kick_override` (from the environment) wins over the file.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        kick_override: Option<u64>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let listen = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let socket = parse_listen(&listen)?;
        let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let run_dir = raw.run_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
        for (key, dir) in [("state_dir", &state_dir), ("run_dir", &run_dir)] {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {:?} must be an absolute path",
                    dir.display()
                )));
            }
        }
        let run_len = run_dir.as_os_str().len();
        if run_len > MAX_RUN_DIR_LEN {
            return Err(ConfigError::Invalid(format!(
                "run_dir = {:?} is {run_len} bytes long; pods' vsock socket paths must fit in a \
                 Unix socket address, so run_dir may be at most {MAX_RUN_DIR_LEN} bytes",
                run_dir.display()
            )));
        }
        let vmm_binary = match raw.vmm_binary {
            Some(p) => p,
            None => std::env::current_exe().map_err(|e| {
                ConfigError::Invalid(format!(
                    "cannot find this executable to run `vmm` ({e}); set vmm_binary"
                ))
            })?,
        };
        let mut profiles = raw.profiles;
        profiles.entry(DEFAULT_PROFILE.to_string()).or_default();
        for (name, p) in &profiles {
            // The VMM's own limits (the same check `carapace vmm` makes before it boots).
            p.vm_shape()
                .validate_limits()
                .map_err(|e| ConfigError::Invalid(format!("profiles.{name}.{}: {e}", e.field())))?;
            // The largest VM a pod may get must boot too.
            carapace_vmm::VmConfig { vcpus: p.max_vcpus, mem_mib: p.max_mem_mib, ..p.vm_shape() }
                .validate_limits()
                .map_err(|e| {
                    ConfigError::Invalid(format!("profiles.{name}.max_{}: {e}", e.field()))
                })?;
            if p.max_vcpus < p.vcpus || p.max_mem_mib < p.mem_mib {
                return Err(ConfigError::Invalid(format!(
                    "profiles.{name}: max_vcpus ({}) and max_mem_mib ({}) must be at least vcpus \
                     ({}) and mem_mib ({})",
                    p.max_vcpus, p.max_mem_mib, p.vcpus, p.mem_mib
                )));
            }
            if p.guest_overhead_mib >= p.mem_mib {
                return Err(ConfigError::Invalid(format!(
                    "profiles.{name}.guest_overhead_mib ({}) must be below mem_mib ({}): \
                     containers need some of the VM",
                    p.guest_overhead_mib, p.mem_mib
                )));
            }
            for (key, file) in [("kernel", &p.kernel), ("initramfs", &p.initramfs)] {
                if !file.is_absolute() {
                    return Err(ConfigError::Invalid(format!(
                        "profiles.{name}.{key} = {:?} must be an absolute path",
                        file.display()
                    )));
                }
            }
        }
        let mut runtime_handlers = raw.runtime_handlers;
        runtime_handlers.entry(String::new()).or_insert_with(|| DEFAULT_PROFILE.to_string());
        for (handler, profile) in &runtime_handlers {
            if !profiles.contains_key(profile) {
                let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                return Err(ConfigError::Invalid(format!(
                    "runtime_handlers.{handler:?} names profile {profile:?}, which is not defined \
                     (profiles: {})",
                    known.join(", ")
                )));
            }
        }
        let kick = kick_override.or(raw.vmm_kick_interval_ms);
        if kick == Some(0) {
            return Err(ConfigError::Invalid(
                "vmm_kick_interval_ms must be at least 1 (leave it out for no kick)".into(),
            ));
        }
        if !raw.images.root.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "images.root = {:?} must be an absolute path",
                raw.images.root.display()
            )));
        }
        let agent_timeout_s = raw.agent_timeout_s.unwrap_or(120);
        let stop_timeout_s = raw.stop_timeout_s.unwrap_or(10);
        if agent_timeout_s == 0 || stop_timeout_s == 0 {
            return Err(ConfigError::Invalid(
                "agent_timeout_s and stop_timeout_s must be at least 1".into(),
            ));
        }
        let max_concurrent_boots = match raw.max_concurrent_boots {
            Some(0) => {
                return Err(ConfigError::Invalid("max_concurrent_boots must be at least 1".into()))
            }
            Some(n) => n,
            None => default_concurrent_boots(),
        };
        let cni = CniConfig::from_raw(raw.cni, &run_dir).map_err(ConfigError::Invalid)?;
        let pods = PodsConfig::from_raw(raw.pods, &state_dir).map_err(ConfigError::Invalid)?;
        Ok(Config {
            pods,
            cni,
            socket,
            state_dir,
            run_dir,
            cgroup_driver: raw.cgroup_driver.unwrap_or_default(),
            vmm_binary,
            vmm_kick_interval_ms: kick,
            agent_timeout: Duration::from_secs(agent_timeout_s),
            stop_timeout: Duration::from_secs(stop_timeout_s),
            max_concurrent_boots,
            profiles,
            runtime_handlers,
            images: raw.images,
            streaming: raw.streaming,
        })
    }

    /// The profile a runtime handler names (`""` = the default handler).
    pub fn profile_for_handler(&self, handler: &str) -> Option<(&str, &VmProfile)> {
        let name = self.runtime_handlers.get(handler)?;
        self.profiles.get(name).map(|p| (name.as_str(), p))
    }

    /// The directory of every pod's runtime files.
    pub fn pods_dir(&self) -> PathBuf {
        self.run_dir.join("pods")
    }

    /// Directory of one pod's runtime files.
    pub fn pod_run_dir(&self, id: &str) -> PathBuf {
        self.pods_dir().join(id)
    }
}

/// One boot per host CPU.
fn default_concurrent_boots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cold]
fn unreachable_defaults() -> Config {
    // Only reached if current_exe() fails; fall back to a name the PATH can resolve.
    Config {
        socket: PathBuf::from("/run/carapace/carapace.sock"),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        cgroup_driver: CgroupDriver::Cgroupfs,
        vmm_binary: PathBuf::from("carapace"),
        vmm_kick_interval_ms: None,
        agent_timeout: Duration::from_secs(120),
        stop_timeout: Duration::from_secs(10),
        max_concurrent_boots: default_concurrent_boots(),
        profiles: BTreeMap::from([(DEFAULT_PROFILE.to_string(), VmProfile::default())]),
        runtime_handlers: BTreeMap::from([(String::new(), DEFAULT_PROFILE.to_string())]),
        images: ImageServiceConfig::default(),
        cni: CniConfig::defaults(Path::new(DEFAULT_RUN_DIR)),
        streaming: StreamingConfig::default(),
        pods: PodsConfig::defaults(Path::new(DEFAULT_STATE_DIR)),
    }
}

/// `unix:///path` or a bare absolute path → the socket path.
pub fn parse_listen(listen: &str) -> Result<PathBuf, ConfigError> {
    let path = listen.strip_prefix("unix://").unwrap_or(listen);
    if !path.starts_with('/') {
        return Err(ConfigError::Invalid(format!(
            "listen = {listen:?}: only Unix sockets are supported, as unix:///absolute/path"
        )));
    }
    if path.len() > 107 {
        return Err(ConfigError::Invalid(format!(
            "listen = {listen:?}: a Unix socket path may be at most 107 bytes"
        )));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"), None)
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::defaults());
        assert_eq!(c.socket, PathBuf::from("/run/carapace/carapace.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/carapace/state"));
        assert_eq!(c.run_dir, PathBuf::from("/run/carapace"));
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        let (name, p) = c.profile_for_handler("").unwrap();
        assert_eq!(name, "default");
        assert_eq!((p.vcpus, p.mem_mib), (1, 256));
        assert_eq!(p.kernel, PathBuf::from("/var/lib/carapace/guest/vmlinux"));
        assert_eq!(p.initramfs, PathBuf::from("/var/lib/carapace/guest/initramfs.cpio"));
        assert_eq!(c.vmm_binary, std::env::current_exe().unwrap());
        assert!(c.profile_for_handler("nope").is_none());
        assert_eq!(c.images.root, PathBuf::from("/var/lib/carapace/images"));
        assert!(c.images.registries.mirrors.is_empty());
        assert_eq!(c.cni.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni.netns_dir, PathBuf::from("/run/carapace/netns"));
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.max_concurrent_boots, cpus);
        assert_eq!(parse("max_concurrent_boots = 3").unwrap().max_concurrent_boots, 3);
    }

    #[test]
    fn cni_section_sets_dirs_and_netns_follows_run_dir() {
        let c = parse("run_dir = \"/r\"\n[cni]\nconf_dir = \"/c\"\nbin_dirs = [\"/b\"]").unwrap();
        assert_eq!(c.cni.conf_dir, PathBuf::from("/c"));
        assert_eq!(c.cni.bin_dirs, vec![PathBuf::from("/b")]);
        assert_eq!(c.cni.netns_dir, PathBuf::from("/r/netns"));
    }

    #[test]
    fn images_section_sets_store_mirrors_and_insecure_registries() {
        let c = parse(
            r#"
            [images]
            root = "/tmp/img"
            pinned_images = ["busybox"]
            [images.registries.mirrors]
            "registry.k8s.io" = ["http://127.0.0.1:5000"]
            [images.registries]
            insecure = ["127.0.0.1:5000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.images.root, PathBuf::from("/tmp/img"));
        assert_eq!(c.images.registries.mirrors["registry.k8s.io"], vec!["http://127.0.0.1:5000"]);
        assert_eq!(c.images.registries.insecure, vec!["127.0.0.1:5000"]);
        assert_eq!(c.images.pinned_images, vec!["busybox"]);
    }

    #[test]
    fn handlers_name_profiles() {
        let c = parse(
            r#"
            listen = "unix:///tmp/x/cri.sock"
            cgroup_driver = "systemd"
            vmm_kick_interval_ms = 100
            [profiles.big]
            vcpus = 2
            mem_mib = 1024
            [runtime_handlers]
            big = "big"
            "#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x/cri.sock"));
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(c.vmm_kick_interval_ms, Some(100));
        assert_eq!(c.profile_for_handler("big").unwrap().1.mem_mib, 1024);
        assert_eq!(c.profile_for_handler("").unwrap().0, "default");
    }

    #[test]
    fn kick_override_wins() {
        let c =
            Config::from_toml_str("vmm_kick_interval_ms = 5", Path::new("t"), Some(100)).unwrap();
        assert_eq!(c.vmm_kick_interval_ms, Some(100));
    }

    #[test]
    fn invalid_configs_say_which_key() {
        let cases = [
            ("listen = \"tcp://1.2.3.4:5\"", "only Unix sockets"),
            ("state_dir = \"relative\"", "state_dir"),
            ("run_dir = \"/a/very/long/run/directory/that/cannot/hold/sockets\"", "run_dir"),
            ("[runtime_handlers]\nfoo = \"missing\"", "runtime_handlers.\"foo\""),
            ("[profiles.x]\nvcpus = 0", "profiles.x.vcpus"),
            ("[profiles.x]\nmem_mib = 1", "profiles.x.mem_mib"),
            ("[profiles.x]\nkernel = \"vmlinux\"", "profiles.x.kernel"),
            ("[profiles.x]\nmemory = 5", "unknown field"),
            ("bogus_key = 1", "unknown field"),
            ("cgroup_driver = \"cgroupv3\"", "cgroup_driver"),
            ("listen = ", "test.toml"),
            ("vmm_kick_interval_ms = 0", "vmm_kick_interval_ms"),
            ("max_concurrent_boots = 0", "max_concurrent_boots"),
            ("[images]\nroot = \"rel\"", "images.root"),
            ("[images]\nmirrors = 1", "unknown field"),
            ("[cni]\nconf_dir = \"net.d\"", "cni.conf_dir"),
            ("[cni]\nplugins = 1", "unknown field"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: error {err:?} does not mention {want:?}");
        }
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert!(Config::load(&p, false).is_ok());
        let err = Config::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }

    #[test]
    fn run_dir_limit_keeps_socket_paths_short() {
        let run = "/".to_string() + &"r".repeat(MAX_RUN_DIR_LEN - 1);
        let c = parse(&format!("run_dir = {run:?}")).unwrap();
        let sock = c.pod_run_dir(&"a".repeat(64)).join("vsock");
        assert!(sock.as_os_str().len() + "_4294967295".len() <= 107);
    }
}
