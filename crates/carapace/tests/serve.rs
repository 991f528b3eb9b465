//! `carapace serve` as kubelet starts it: one socket serving the RuntimeService and the
//! ImageService, a clean stop on SIGTERM, clear errors for bad configs. No VM is booted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carapace_cri::client;
use carapace_cri::k8s_cri::v1::{ImageFsInfoRequest, ListImagesRequest, VersionRequest};

const CARAPACE: &str = env!("CARGO_BIN_EXE_carapace");

fn write_config(dir: &Path) -> std::path::PathBuf {
    let d = dir.display();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"unix://{d}/cri.sock\"\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\n\
             [images]\nroot = \"{d}/images\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn wait_for_socket(child: &mut Child, sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("carapace serve exited early: {status}");
        }
        assert!(Instant::now() < deadline, "carapace serve did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serves_runtime_and_image_service_on_one_socket_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let sock = dir.path().join("cri.sock");
    let mut child = Command::new(CARAPACE)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_socket(&mut child, &sock);
    // Owner and group only, as containerd's socket.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "the CRI socket's mode is {mode:o}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut runtime = client::connect(&sock).await.unwrap();
        let v = runtime.version(VersionRequest::default()).await.unwrap().into_inner();
        assert_eq!(v.runtime_name, "carapace");
        assert_eq!(v.runtime_api_version, "v1");
        let mut images = client::connect_images(&sock).await.unwrap();
        let list = images.list_images(ListImagesRequest::default()).await.unwrap().into_inner();
        assert!(list.images.is_empty(), "fresh store lists images: {:?}", list.images);
        let fs = images.image_fs_info(ImageFsInfoRequest::default()).await.unwrap().into_inner();
        let mount = &fs.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint;
        assert!(mount.starts_with(&dir.path().display().to_string()), "image fs at {mount}");
    });

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "carapace serve exit status after SIGTERM: {status}");
    assert!(!sock.exists(), "the socket was left behind");
}

#[test]
fn a_bad_config_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[images]\nroot = \"relative\"\n").unwrap();
    let out = Command::new(CARAPACE).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("images.root"), "{stderr}");
}
