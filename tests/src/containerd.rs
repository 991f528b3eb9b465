//! The peer the benchmarks compare against: containerd 1.6 + runc (Debian packages) with a
//! private root/state/socket under /tmp, driven through its CRI socket by the same client as
//! carapace, and the pause-like sandbox image it needs (tests/images/push-pause.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{repo_root, which};

/// containerd's CRI plugin's `[cni]` dirs (containerd 1.6 takes one bin dir).
#[derive(Debug, Clone)]
pub struct ContainerdCni {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// How to start [`Containerd`].
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// A registry (`host:port`) pulled from over plain HTTP.
    pub registry: String,
    /// The pod sandbox image (see [`push_pause_image`]).
    pub sandbox_image: String,
    /// Pod networking from these dirs; None: empty private dirs (host-network pods only).
    pub cni: Option<ContainerdCni>,
}

/// Pushes test/pause:latest (busybox `sleep`) to `registry`; returns its reference.
pub fn push_pause_image(registry: &str) -> Result<String> {
    ensure!(
        which("containerd").is_some(),
        "containerd is not installed (Debian package containerd)"
    );
    let work = tempfile::Builder::new().prefix("bpause").tempdir_in("/tmp")?;
    let out = Command::new(repo_root().join("tests/images/push-pause.sh"))
        .arg(registry)
        .arg(work.path())
        .output()
        .context("push the pause image")?;
    ensure!(out.status.success(), "pushing test/pause: {}", String::from_utf8_lossy(&out.stderr));
    Ok(format!("{registry}/test/pause:latest"))
}

/// The config.toml of a containerd whose root, state and sockets are under `dir`.
pub fn config_toml(dir: &Path, socket: &Path, opts: &ContainerdOptions) -> String {
    let (bin_dir, conf_dir) = match &opts.cni {
        Some(c) => (c.bin_dir.clone(), c.conf_dir.clone()),
        None => (dir.join("cni/bin"), dir.join("cni/conf")),
    };
    format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         [grpc]\n  address = \"{sock}\"\n\
         [ttrpc]\n  address = \"{d}/ttrpc.sock\"\n\
         [plugins.{cri}]\n  sandbox_image = \"{sandbox_image}\"\n\
         \x20 restrict_oom_score_adj = true\n\
         [plugins.{cri}.containerd]\n  snapshotter = \"overlayfs\"\n\
         \x20 default_runtime_name = \"runc\"\n\
         [plugins.{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.{cri}.cni]\n  bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n\
         [plugins.{cri}.registry.mirrors.\"{registry}\"]\n\
         \x20 endpoint = [\"http://{registry}\"]\n",
        cri = "\"io.containerd.grpc.v1.cri\"",
        d = dir.display(),
        sock = socket.display(),
        sandbox_image = opts.sandbox_image,
        bin = bin_dir.display(),
        conf = conf_dir.display(),
        registry = opts.registry,
    )
}

/// A containerd process with a private root/state/socket under /tmp; killed (and its shims and
/// containers with it, through runc) on drop.
pub struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start(opts: &ContainerdOptions) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("bctd").tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        for sub in ["cni/bin", "cni/conf", "logs"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let config = d.join("config.toml");
        std::fs::write(&config, config_toml(d, &socket, opts))?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("containerd (Debian package containerd)")?;
        let mut c = Containerd { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&c.socket).is_err() {
            if let Some(st) = c.child.try_wait()? {
                bail!("containerd exited ({st})\n{}", c.log());
            }
            if Instant::now() > deadline {
                bail!("containerd did not listen within 60 s\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A private directory for the pods' CRI logs.
    pub fn logs_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The tail of containerd's log.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let mut start = s.len().saturating_sub(4000);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd; every pod was removed already, so only their mounts remain.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_the_cri_plugin_at_the_given_cni_dirs_or_private_ones() {
        let d = Path::new("/tmp/bctd1");
        let mut opts = ContainerdOptions {
            registry: "127.0.0.1:5000".into(),
            sandbox_image: "127.0.0.1:5000/test/pause:latest".into(),
            cni: None,
        };
        let text = config_toml(d, &d.join("c.sock"), &opts);
        assert!(text.contains("bin_dir = \"/tmp/bctd1/cni/bin\""), "{text}");
        assert!(text.contains("sandbox_image = \"127.0.0.1:5000/test/pause:latest\""), "{text}");
        assert!(text.contains("endpoint = [\"http://127.0.0.1:5000\"]"), "{text}");
        opts.cni =
            Some(ContainerdCni { conf_dir: "/tmp/n/net.d".into(), bin_dir: "/usr/lib/cni".into() });
        let text = config_toml(d, &d.join("c.sock"), &opts);
        assert!(
            text.contains("bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"/tmp/n/net.d\""),
            "{text}"
        );
    }
}
