//! A throwaway local image registry: Debian's `docker-registry` on 127.0.0.1 with the project's
//! test images pushed (tests/images/build-and-push.sh).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::repo_root;

/// A `docker-registry` on 127.0.0.1 with the test images pushed; killed on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`, the registry part of image references.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry (storage and log in a private directory under /tmp named with
    /// `dir_prefix`, log level `log_level`) and pushes the test images; three tries at a free port.
    pub fn start(dir_prefix: &str, log_level: &str) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix(dir_prefix).tempdir_in("/tmp")?;
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: {log_level}\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n",
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
                    let _ = s
                        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes());
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
            let out = Command::new(repo_root().join("tests/images/build-and-push.sh"))
                .arg(&addr)
                .output()?;
            let reg = Registry { addr, child, dir };
            ensure!(
                out.status.success(),
                "pushing test images: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(reg);
        }
        bail!("docker-registry did not start")
    }

    /// The reference of test image `name` (e.g. `test/busybox:latest`) in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// The registry's own file holding blob `digest` (`sha256:<hex>`), to corrupt it: the
    /// registry serves it as it is, so a test can play a registry that lies about content.
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or("");
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{prefix}/{hex}/data"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
