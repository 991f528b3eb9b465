//! Volumes: a host directory (or file) of a CRI Mount is bind-mounted into the pod's shared dir,
//! which the VM sees live through virtio-fs; the agent then bind-mounts the guest side into the
//! container. Every bind mount under a directory is undone before that directory is deleted, so
//! deleting a container or a pod can never delete a volume's contents.
//!
//! The shared dir is the guest's: every operation here goes through carapace-podfs, beneath a
//! trusted directory and without following any name the guest could have planted (see the
//! trust boundary in ARCHITECTURE.md). New code makes a container's mounts in its staging dir
//! with [`carapace_podfs::Staged::bind`] instead; these path-taking functions remain for the
//! callers that still name the target by path.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Why a volume could not be mounted or unmounted, or a tree removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("mount target {0} is not <shared dir>/<container>/mounts/<n>")]
    Target(PathBuf),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] carapace_podfs::Error),
}

/// The mount points strictly below the host path `host` (whose symlinks are resolved first:
/// mountinfo names real paths), relative to it, shallowest first. A host path that cannot be
/// resolved or a mountinfo that cannot be read gives none (the volume is then one mount).
/// Equally deep ones come in name order.
pub fn submounts(host: &Path) -> Vec<PathBuf> {
    let Ok(real) = std::fs::canonicalize(host) else { return Vec::new() };
    let Ok(info) = carapace_podfs::mountinfo::read() else { return Vec::new() };
    submounts_in(&info, &real)
}

fn submounts_in(mountinfo: &str, real: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = carapace_podfs::mountinfo::mounts_under(mountinfo, real)
        .into_iter()
        .filter_map(|m| m.point.strip_prefix(real).ok().map(Path::to_path_buf))
        .filter(|rel| {
            rel.components().count() > 0
                && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        })
        .collect();
    out.sort_by(|a, b| a.components().count().cmp(&b.components().count()).then(a.cmp(b)));
    out.dedup();
    out
}

/// Bind-mounts `src` (created as a directory when missing, as containerd does) onto `target`
/// (created as a directory or an empty file to match), `nosuid,nodev`, recursively read-only
/// when asked. `target` is `<shared>/<cid>/mounts/<n>`: the shared dir (its third ancestor,
/// which the guest cannot replace) is the trusted root, and `<cid>/mounts/<n>` is made and
/// opened beneath it without following a symlink; the volume is attached to that descriptor.
pub fn bind(src: &Path, target: &Path, readonly: bool) -> Result<(), VolumeError> {
    let root = target.ancestors().nth(3).ok_or_else(|| VolumeError::Target(target.into()))?;
    let rel = target.strip_prefix(root).map_err(|_| VolumeError::Target(target.into()))?;
    let root = if root.as_os_str().is_empty() { Path::new(".") } else { root };
    let dir = std::fs::File::open(root)
        .map_err(|source| VolumeError::Open { path: root.to_path_buf(), source })?;
    carapace_podfs::bind_beneath(dir.as_fd(), rel, src, readonly)?;
    Ok(())
}

/// The mount points in `mountinfo` text at or below `dir`, deepest (longest) first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = carapace_podfs::mountinfo::mounts_under(mountinfo, dir)
        .into_iter()
        .map(|m| m.point)
        .collect();
    out.dedup();
    out
}

/// Unmounts everything mounted at or below `dir` (lazily: the VM may still have files open),
/// each through a descriptor opened beneath `dir`'s parent without following symlinks; then
/// checks nothing is left. `dir`'s parent is trusted.
pub fn unmount_all_under(dir: &Path) -> Result<(), VolumeError> {
    Ok(carapace_podfs::unmount_tree(dir)?)
}

/// Deletes `dir` and everything in it after unmounting whatever is mounted below it; never
/// follows a symlink, never enters another mount, so never reaches into a volume or out of the
/// pod. No error when it does not exist. `dir`'s parent is trusted.
pub fn remove_tree(dir: &Path) -> Result<(), VolumeError> {
    Ok(carapace_podfs::remove_tree(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

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
    fn remove_tree_without_mounts_and_of_nothing() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("c/rootfs/etc");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("f"), "x").unwrap();
        remove_tree(&d.path().join("c")).unwrap();
        assert!(!d.path().join("c").exists());
        remove_tree(&d.path().join("c")).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Needs CAP_SYS_ADMIN (root); skipped otherwise.
    #[test]
    fn a_bound_volume_survives_removal_of_the_container_dir() {
        if !is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("keep"), "data").unwrap();
        let target = d.path().join("c/mounts/0");
        bind(&vol, &target, true).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("keep")).unwrap(), "data");
        assert!(std::fs::write(target.join("new"), "x").is_err(), "read-only bind is writable");
        remove_tree(&d.path().join("c")).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("keep")).unwrap(), "data");
        assert!(!d.path().join("c").exists());
    }

    /// A guest that replaced `<cid>/mounts` with a symlink to a host dir: the old code created
    /// the mount point and bind-mounted the volume there, over the host.
    #[test]
    fn bind_does_not_follow_a_planted_symlink() {
        if !is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (vol, host) = (d.path().join("vol"), d.path().join("host"));
        std::fs::create_dir(&vol).unwrap();
        std::fs::create_dir(&host).unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir_all(shared.join("c")).unwrap();
        std::os::unix::fs::symlink(&host, shared.join("c/mounts")).unwrap();
        assert!(bind(&vol, &shared.join("c/mounts/0"), false).is_err());
        assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0, "made a mount point outside");
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_under(&info, d.path()).is_empty(), "mounted something");
        remove_tree(&shared.join("c")).unwrap();
        assert!(host.exists());
    }

    #[test]
    fn submounts_are_listed_relative_and_shallowest_first() {
        let info = "\
            22 1 0:21 / / rw - ext4 /dev/root rw\n\
            30 22 0:30 / /vol/a/b rw - tmpfs t rw\n\
            31 22 0:31 / /vol rw - tmpfs t rw\n\
            32 22 0:32 / /vol/a rw - tmpfs t rw\n\
            33 22 0:33 / /volume rw - tmpfs t rw\n\
            34 22 0:34 / /vol/with\\040space rw - tmpfs t rw\n";
        let got = submounts_in(info, Path::new("/vol"));
        let want: Vec<PathBuf> = ["a", "with space", "a/b"].iter().map(PathBuf::from).collect();
        assert_eq!(got, want);
        assert!(submounts_in(info, Path::new("/nothing")).is_empty());
    }

    /// `<dir>/vol` with a tmpfs mounted at `vol/sub` (root only).
    fn volume_with_tmpfs_submount(dir: &Path) -> PathBuf {
        let vol = dir.join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        let sub = std::ffi::CString::new(vol.join("sub").into_os_string().into_vec()).unwrap();
        // SAFETY: NUL-terminated strings; no data argument.
        let r = unsafe {
            libc::mount(c"tmpfs".as_ptr(), sub.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null())
        };
        assert_eq!(r, 0);
        vol
    }

    /// The old code made only the top of a read-only volume read-only: `MS_REC` bind plus one
    /// `MS_RDONLY` remount left its submounts writable.
    #[test]
    fn read_only_volumes_are_read_only_in_submounts_too() {
        if !is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let vol = volume_with_tmpfs_submount(d.path());
        std::fs::create_dir(d.path().join("shared")).unwrap();
        let target = d.path().join("shared/c/mounts/0");
        bind(&vol, &target, true).unwrap();
        assert!(std::fs::write(target.join("sub/x"), "x").is_err(), "a submount is writable");
        std::fs::write(vol.join("sub/ok"), "ok").unwrap();
        remove_tree(&d.path().join("shared/c")).unwrap();
        unmount_all_under(&vol).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_under(&info, d.path()).is_empty());
    }

    /// `readonly` without `recursive_read_only` (critest's non-recursive read-only mount): the
    /// volume's own mount is read-only, a submount keeps its own flags, and the submount is
    /// listed so that the guest gets a writable bind of it.
    #[test]
    fn top_only_read_only_volumes_leave_submounts_writable() {
        if !is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let vol = volume_with_tmpfs_submount(d.path());
        assert_eq!(submounts(&vol), vec![PathBuf::from("sub")]);
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let dir = std::fs::File::open(&shared).unwrap();
        let rel = Path::new("c/mounts/0");
        carapace_podfs::bind_with(dir.as_fd(), rel, &vol, carapace_podfs::Access::ReadOnlyTop)
            .unwrap();
        let target = shared.join(rel);
        assert!(std::fs::write(target.join("top"), "x").is_err(), "the top is writable");
        std::fs::write(target.join("sub/x"), "x").unwrap();
        assert_eq!(std::fs::read(vol.join("sub/x")).unwrap(), b"x");
        remove_tree(&shared.join("c")).unwrap();
        unmount_all_under(&vol).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_under(&info, d.path()).is_empty());
    }
}
