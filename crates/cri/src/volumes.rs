//! Volumes: a host directory (or file) of a CRI Mount is bind-mounted into the pod's shared dir,
//! which the VM sees live through virtio-fs; the agent then bind-mounts the guest side into the
//! container. Every bind mount under a directory is undone before that directory is deleted, so
//! deleting a container or a pod can never delete a volume's contents.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Why a volume could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {src}: {source}")]
    Source { src: PathBuf, source: std::io::Error },
    #[error("cannot create the mount point {path}: {source}")]
    Target { path: PathBuf, source: std::io::Error },
    #[error("cannot bind-mount {src} onto {target}: {errno}")]
    Bind { src: PathBuf, target: PathBuf, errno: nix::Error },
    #[error("cannot make {target} read-only: {errno}")]
    ReadOnly { target: PathBuf, errno: nix::Error },
    #[error("cannot unmount {target}: {errno}")]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("{0} still has mounts under it after unmounting; not deleting it")]
    StillMounted(PathBuf),
}

/// Bind-mounts `src` (created as a directory when missing, as containerd does) onto `target`
/// (created as a directory or an empty file to match), read-only when asked.
pub fn bind(src: &Path, target: &Path, readonly: bool) -> Result<(), VolumeError> {
    let md = match std::fs::metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(src)
                .map_err(|source| VolumeError::Source { src: src.to_path_buf(), source })?;
            std::fs::metadata(src)
                .map_err(|source| VolumeError::Source { src: src.to_path_buf(), source })?
        }
        Err(source) => return Err(VolumeError::Source { src: src.to_path_buf(), source }),
    };
    let made = if md.is_dir() {
        std::fs::create_dir_all(target)
    } else {
        target.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map(drop)
        })
    };
    made.map_err(|source| VolumeError::Target { path: target.to_path_buf(), source })?;
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|errno| VolumeError::Bind {
            src: src.to_path_buf(),
            target: target.to_path_buf(),
            errno,
        })?;
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(VolumeError::ReadOnly { target: target.to_path_buf(), errno });
        }
    }
    Ok(())
}

/// Decodes the octal escapes (`\040` for space, ...) of a mountinfo path.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points in `mountinfo` text at or below `dir`, deepest (longest) first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|p| PathBuf::from(unescape(p))))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out.dedup();
    out
}

fn mountinfo() -> Result<String, VolumeError> {
    std::fs::read_to_string("/proc/self/mountinfo").map_err(VolumeError::MountInfo)
}

/// Unmounts `target` (lazily: the VM may still have files open); no error when nothing is
/// mounted there or it does not exist.
pub fn unmount(target: &Path) -> Result<(), VolumeError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(errno) => Err(VolumeError::Unmount { target: target.to_path_buf(), errno }),
    }
}

/// Unmounts everything mounted at or below `dir`, then checks nothing is left.
pub fn unmount_all_under(dir: &Path) -> Result<(), VolumeError> {
    // Stacked mounts on one point need one umount each: a few rounds.
    for _ in 0..8 {
        let points = mounts_under(&mountinfo()?, dir);
        if points.is_empty() {
            return Ok(());
        }
        for p in points {
            unmount(&p)?;
        }
    }
    if mounts_under(&mountinfo()?, dir).is_empty() {
        Ok(())
    } else {
        Err(VolumeError::StillMounted(dir.to_path_buf()))
    }
}

/// Deletes `dir` and everything in it after unmounting whatever is mounted below it; never
/// follows into a volume. No error when it does not exist.
pub fn remove_tree(dir: &Path) -> Result<(), VolumeError> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VolumeError::Target { path: dir.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 8:1 /data /run/carapace/pods/abc/shared/c1/mounts/0 rw shared:1 - ext4 /dev/sda1 rw
41 22 8:1 /x /run/carapace/pods/abc/shared/c1/mounts/1\\040sp rw - ext4 /dev/sda1 rw
42 40 0:5 / /run/carapace/pods/abc/shared/c1/mounts/0/sub rw - tmpfs t rw
43 22 8:1 /y /run/carapace/pods/abcd/shared rw - ext4 /dev/sda1 rw
";

    #[test]
    fn finds_mounts_below_a_dir_deepest_first() {
        let got = mounts_under(INFO, Path::new("/run/carapace/pods/abc"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/carapace/pods/abc/shared/c1/mounts/0/sub"),
                PathBuf::from("/run/carapace/pods/abc/shared/c1/mounts/1 sp"),
                PathBuf::from("/run/carapace/pods/abc/shared/c1/mounts/0"),
            ]
        );
        assert!(mounts_under(INFO, Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\\\"), "a b\tc\\\\");
    }

    #[test]
    fn remove_tree_without_mounts_and_of_nothing() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("c/rootfs/etc");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("f"), "x").unwrap();
        remove_tree(&d.path().join("c")).unwrap();
        assert!(!d.path().join("c").exists());
        remove_tree(&d.path().join("c")).unwrap();
    }

    /// Needs CAP_SYS_ADMIN (root); skipped otherwise.
    #[test]
    fn a_bound_volume_survives_removal_of_the_container_dir() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("keep"), "data").unwrap();
        let target = d.path().join("c/mounts/0");
        match bind(&vol, &target, true) {
            Err(VolumeError::Bind { errno: nix::Error::EPERM, .. }) => return,
            r => r.unwrap(),
        }
        assert_eq!(std::fs::read_to_string(target.join("keep")).unwrap(), "data");
        assert!(std::fs::write(target.join("new"), "x").is_err(), "read-only bind is writable");
        remove_tree(&d.path().join("c")).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("keep")).unwrap(), "data");
        assert!(!d.path().join("c").exists());
    }
}
