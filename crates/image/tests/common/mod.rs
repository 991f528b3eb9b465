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
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd").args(["-Bbn", user, pass]).output().expect("htpasswd (apache2-utils)");
            assert!(out.status.success());
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: carapace-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let mut reg = TestRegistry { addr, child, dir, images: HashMap::new() };
        reg.wait_ready();
        let mut push = Command::new(repo_root().join("tests/images/build-and-push.sh"));
        push.arg(&reg.addr);
        if let Some((u, p)) = auth {
            push.arg(format!("{u}:{p}"));
        }
        let out = push.output().unwrap();
        assert!(out.status.success(), "pushing test images: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (name, digest) = line.split_once(' ').unwrap();
            reg.images.insert(name.to_string(), digest.to_string());
        }
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes());
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.") {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("docker-registry exited {st}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "registry not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
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
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Layer digests of a pushed image manifest (read from the registry's storage).
    pub fn manifest(&self, name: &str) -> serde_json::Value {
        let data = fs::read(self.blob_file(&self.digest(name))).unwrap();
        serde_json::from_slice(&data).unwrap()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
