//! A pod VM with a host directory shared in (`carapace vmm --shared-dir DIR`, virtio-fs; the
//! agent mounts it at /run/carapace/shared) and its agent client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};

use crate::{repo_root, GuestImage, VmOptions, VmProcess};

/// How long the guest agent may take to answer after the VMM started.
pub const AGENT_DEADLINE: Duration = Duration::from_secs(120);
/// Timeout of each agent call.
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Memory of a shared-dir VM.
pub const SHARED_DIR_VM_MEM_MIB: u32 = 512;

/// Lays the busybox test rootfs at `dest` (tests/rootfs/busybox.sh).
pub fn busybox_rootfs(dest: &Path) -> Result<()> {
    let st = Command::new(repo_root().join("tests/rootfs/busybox.sh"))
        .arg(dest)
        .stdout(Stdio::null())
        .status()
        .context("run tests/rootfs/busybox.sh")?;
    ensure!(st.success(), "tests/rootfs/busybox.sh {}: {st}", dest.display());
    Ok(())
}

/// Writes `<dir>/initramfs.cpio`: the guest's initramfs `base` followed by a cpio archive
/// with the busybox test rootfs at `guest_path` (relative, e.g. `testroot`); the kernel
/// unpacks both, so the rootfs sits in guest RAM (the initramfs) at `/<guest_path>`.
pub fn initramfs_with_busybox(base: &Path, dir: &Path, guest_path: &str) -> Result<PathBuf> {
    let stage = dir.join("stage");
    busybox_rootfs(&stage.join(guest_path))?;
    let extra = dir.join("extra.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$1\" && find . -mindepth 1 | LC_ALL=C sort \
             | cpio --quiet -o -H newc --owner=0:0 > \"$2\"",
        )
        .arg("sh")
        .arg(&stage)
        .arg(&extra)
        .status()
        .context("cpio (Debian package cpio)")?;
    ensure!(st.success(), "cpio of {}: {st}", stage.display());
    let out = dir.join("initramfs.cpio");
    let mut all = std::fs::read(base).with_context(|| format!("read {}", base.display()))?;
    all.extend(std::fs::read(&extra)?);
    std::fs::write(&out, all)?;
    Ok(out)
}

/// A running VM with a private temporary directory shared into it. Dropping it kills the VMM,
/// then removes the directory.
pub struct SharedDirVm {
    /// The VMM process (declared first: dropped, so killed, before the directory goes).
    pub vm: VmProcess,
    /// The host side of the shared directory.
    pub shared: tempfile::TempDir,
}

impl SharedDirVm {
    /// Creates the shared directory (a temporary directory named with `dir_prefix`), lets
    /// `prepare` fill it before boot, then starts the VM with it shared.
    pub fn boot(
        image: &GuestImage,
        dir_prefix: &str,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Self> {
        let shared = tempfile::Builder::new().prefix(dir_prefix).tempdir()?;
        prepare(shared.path())?;
        let opts = VmOptions {
            mem_mib: SHARED_DIR_VM_MEM_MIB,
            extra_args: vec!["--shared-dir".into(), shared.path().display().to_string()],
            ..Default::default()
        };
        let vm = VmProcess::spawn(image, &opts)?;
        Ok(SharedDirVm { vm, shared })
    }

    /// The host side of the shared directory.
    pub fn shared_path(&self) -> &Path {
        self.shared.path()
    }

    /// Waits for the guest agent (up to [`AGENT_DEADLINE`]) and returns a client whose calls
    /// time out after [`AGENT_CALL_TIMEOUT`].
    pub async fn connect_agent(&self) -> Result<AgentClient> {
        Ok(AgentClient::connect(&self.vm.vsock_path(), AGENT_VSOCK_PORT, AGENT_DEADLINE)
            .await
            .context("agent not reached")?
            .with_call_timeout(AGENT_CALL_TIMEOUT))
    }
}
