//! The guest's early mounts, done by the agent as PID 1.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One filesystem to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags =
    MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In order: /proc first (mountinfo is read from it), /dev before its
/// subdirectories, /sys before /sys/fs/cgroup.
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Symlinks in /dev that programs expect.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {target}: {source}")]
    Mkdir {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {fstype} on {target} failed: {errno}")]
    Mount { fstype: &'static str, target: &'static str, errno: Errno },
}

/// Decodes the octal escapes (`\040` etc.) the kernel uses in mountinfo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = oct.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in /proc/self/mountinfo text (5th field).
pub fn parse_mountinfo_targets(text: &str) -> Vec<String> {
    text.lines().filter_map(|line| line.split(' ').nth(4)).map(unescape_mountinfo).collect()
}

fn mounted_targets() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo_targets(&t))
        .unwrap_or_default()
}

fn mkdir_p(target: &'static str) -> Result<(), MountError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .map_err(|source| MountError::Mkdir { target, source })
}

fn mount_one(spec: &MountSpec) -> Result<(), MountError> {
    mkdir_p(spec.target)?;
    match mount(Some(spec.source), spec.target, Some(spec.fstype), spec.flags, spec.data) {
        Ok(()) => Ok(()),
        // Already mounted (e.g. the kernel mounted devtmpfs itself).
        Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(MountError::Mount { fstype: spec.fstype, target: spec.target, errno }),
    }
}

/// Mounts everything in [`MOUNTS`] that is not mounted yet, then creates
/// [`DEV_LINKS`]. Keeps going after a failure: the agent can still serve
/// its API without, say, cgroup2. Returns the failures for logging.
pub fn mount_all() -> Vec<MountError> {
    let mut errors = Vec::new();
    for spec in MOUNTS {
        // /proc is needed to know what is mounted; read it fresh each time
        // (cheap, and the first iteration mounts it).
        let already = Path::new("/proc/self/mountinfo").exists()
            && mounted_targets().iter().any(|t| t == spec.target);
        if already {
            continue;
        }
        if let Err(e) = mount_one(spec) {
            errors.push(e);
        }
    }
    for (to, link) in DEV_LINKS {
        if let Err(e) = std::os::unix::fs::symlink(to, link) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                tracing::debug!(link, error = %e, "cannot create /dev symlink");
            }
        }
    }
    errors
}

pub use carapace_agent_client::SHARED_FS_TAG;
/// Where the guest's virtio devices appear in sysfs.
pub const SYSFS_VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
/// virtio-fs's device ID (26) as sysfs prints it in `<device>/device`.
const VIRTIO_ID_FS_SYSFS: &str = "0x001a";

/// What became of the pod's shared directory at boot.
#[derive(Debug)]
pub enum SharedDir {
    /// Mounted at `carapace_agent_client::GUEST_SHARED_DIR`.
    Mounted,
    /// The VM has no virtio-fs device: nothing to mount.
    NoDevice,
    Failed(MountError),
}

/// Whether a virtio-fs device is listed under `devices` (a sysfs `bus/virtio/devices` dir).
/// Probing sysfs instead of trying the mount keeps the kernel from logging "tag not found"
/// in VMs started without a shared directory.
pub fn virtio_fs_present(devices: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(devices) else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("device"))
            .is_ok_and(|id| id.trim() == VIRTIO_ID_FS_SYSFS)
    })
}

/// Mounts the virtio-fs tag [`SHARED_FS_TAG`] at `carapace_agent_client::GUEST_SHARED_DIR`
/// if the VM has a virtio-fs device.
pub fn mount_shared_dir() -> SharedDir {
    if !virtio_fs_present(Path::new(SYSFS_VIRTIO_DEVICES)) {
        return SharedDir::NoDevice;
    }
    let spec = MountSpec {
        source: SHARED_FS_TAG,
        target: carapace_agent_client::GUEST_SHARED_DIR,
        fstype: "virtiofs",
        flags: MsFlags::empty(),
        data: None,
    };
    match mount_one(&spec) {
        Ok(()) => SharedDir::Mounted,
        Err(e) => SharedDir::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_fs_found_by_device_id() {
        let sys = tempfile::tempdir().unwrap();
        assert!(!virtio_fs_present(&sys.path().join("missing")));
        for (name, id) in [("virtio0", "0x0013\n"), ("virtio1", "0x0004\n")] {
            std::fs::create_dir(sys.path().join(name)).unwrap();
            std::fs::write(sys.path().join(name).join("device"), id).unwrap();
        }
        assert!(!virtio_fs_present(sys.path()));
        std::fs::create_dir(sys.path().join("virtio2")).unwrap();
        std::fs::write(sys.path().join("virtio2/device"), "0x001a\n").unwrap();
        assert!(virtio_fs_present(sys.path()));
    }

    #[test]
    fn mountinfo_targets() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    23 1 0:22 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                    24 1 0:23 / /odd\\134name rw - tmpfs tmpfs rw\n\
                    garbage\n\
                    25 1 0:24 / /bad\\9 rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo_targets(text),
            vec!["/proc", "/mnt/with space", "/odd\\name", "/bad\\9"]
        );
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape_mountinfo("\\"), "\\");
        assert_eq!(unescape_mountinfo("a\\04"), "a\\04");
        assert_eq!(unescape_mountinfo("\\777"), "\\777");
    }

    #[test]
    fn mount_order_is_parent_first() {
        for (i, spec) in MOUNTS.iter().enumerate() {
            for later in MOUNTS.iter().skip(i + 1) {
                assert!(
                    !spec.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    spec.target,
                    later.target
                );
            }
        }
        assert_eq!(MOUNTS.first().map(|m| m.target), Some("/proc"));
    }
}
