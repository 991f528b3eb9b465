//! A throwaway `docker-registry` (Debian package) on 127.0.0.1 with the project's test images.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRegistry {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
    /// "test/busybox:latest" -> manifest (or index) digest, as pushed.
    pub images: HashMap<String, String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestRegistry {
    /// Starts a registry (with htpasswd basic auth if `auth` is given) and pushes the images.
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success());
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
        }
        // The free port can be taken by someone else before the registry binds it: retry.
        let mut attempt = 0;
        let (addr, child) = loop {
            attempt += 1;
            let addr = format!("127.0.0.1:{}", free_port());
            let mut child = spawn_registry(dir.path(), &addr, auth.is_some());
            match wait_ready(&addr, &mut child) {
                Ok(()) => break (addr, child),
                Err(why) if attempt < 3 => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("registry on {addr} did not start ({why}), retrying");
                }
                Err(why) => panic!(
                    "registry on {addr}: {why}: {}",
                    fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                ),
            }
        };
        let mut reg = TestRegistry { addr, child, dir, images: HashMap::new() };
        let mut push = Command::new(repo_root().join("tests/images/build-and-push.sh"));
        push.arg(&reg.addr);
        if let Some((u, p)) = auth {
            push.arg(format!("{u}:{p}"));
        }
        let out = push.output().unwrap();
        assert!(
            out.status.success(),
            "pushing test images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (name, digest) = line.split_once(' ').unwrap();
            reg.images.insert(name.to_string(), digest.to_string());
        }
        reg
    }

    /// `HOST:PORT/REPO:TAG` or `HOST:PORT/REPO@DIGEST` of a pushed image.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    pub fn digest(&self, name: &str) -> String {
        self.images[name].clone()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times a blob was served (GET, from the access log).
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest}");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// The registry's own file for a blob (to corrupt it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Layer digests of a pushed image manifest (read from the registry's storage).
    pub fn manifest(&self, name: &str) -> serde_json::Value {
        let data = fs::read(self.blob_file(&self.digest(name))).unwrap();
        serde_json::from_slice(&data).unwrap()
    }
}

fn spawn_registry(dir: &Path, addr: &str, htpasswd: bool) -> Child {
    let mut config = format!(
        "version: 0.1\nlog:\n  level: info\
         \nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\
         \nhttp:\n  addr: {addr}\n",
        dir.join("storage").display()
    );
    if htpasswd {
        config += &format!(
            "auth:\n  htpasswd:\n    realm: carapace-test\n    path: {}\n",
            dir.join("htpasswd").display()
        );
    }
    fs::write(dir.join("config.yml"), config).unwrap();
    let log = fs::File::create(dir.join("registry.log")).unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package docker-registry)")
}

fn wait_ready(addr: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes());
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.") && buf.contains("Docker-Distribution-Api-Version") {
                return Ok(());
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("docker-registry exited {st}"));
        }
        if Instant::now() > deadline {
            return Err("not ready after 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
