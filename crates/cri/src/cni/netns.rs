//! Named network namespaces for pods: `<netns_dir>/<sandbox id>` is a bind mount of a new
//! network namespace (like `ip netns add`), so it outlives the thread that made it and a daemon
//! restart finds it by name. The dir is root-only (0700), each file 0600.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::error::CniError;

/// The netns file of a sandbox (the ID is checked to be one path component by the caller).
pub fn netns_path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(sandbox_id)
}

fn ensure_dir(dir: &Path) -> Result<(), CniError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(CniError::io("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(CniError::io("chmod", dir))
}

/// Whether `path` is a mounted network namespace (its file system is nsfs).
pub fn is_netns(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Creates a new network namespace bound at `<dir>/<sandbox_id>`; an existing name is an error.
pub fn create(dir: &Path, sandbox_id: &str) -> Result<PathBuf, CniError> {
    ensure_dir(dir)?;
    let path = netns_path(dir, sandbox_id);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(CniError::io("create", &path))?;
    let target = path.clone();
    // A thread of its own: unshare changes the calling thread's namespace, and this thread
    // ends right after, so no other work ever runs in the new namespace by accident.
    let bound = std::thread::Builder::new()
        .name("cni-netns".into())
        .spawn(move || -> Result<(), CniError> {
            let err =
                |op: &'static str, source| CniError::Netns { op, path: target.clone(), source };
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| err("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| err("bind mount", e))
        })
        .map_err(CniError::io("start a thread for", &path))?
        .join()
        .unwrap_or_else(|_| {
            Err(CniError::Netns { op: "thread", path: path.clone(), source: nix::Error::EIO })
        });
    if let Err(e) = bound {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a sandbox's netns: unmount (detached) and delete the file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), CniError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => {}
        Err(source) => return Err(CniError::Netns { op: "unmount", path: path.into(), source }),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Unmounts what a failed assertion left, so no test leaves a netns mount behind.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = remove(&self.0);
        }
    }

    #[test]
    fn a_named_netns_is_created_private_and_removed_idempotently() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("netns");
        let p = create(&dir, "abc").unwrap();
        let _guard = Unmount(p.clone());
        assert!(is_netns(&p));
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // (The file itself, made 0600, now shows the nsfs inode mounted over it.)
        // A different namespace from this thread's.
        let ours = fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        assert_ne!(fs::metadata(&p).unwrap().ino(), ours);
        assert!(create(&dir, "abc").is_err(), "a name in use is refused");
        assert!(is_netns(&p), "the refused create left the first one alone");
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
        // A leftover plain file (a crash between create and mount) is removed too.
        fs::write(dir.join("stale"), b"").unwrap();
        remove(&dir.join("stale")).unwrap();
        assert!(!dir.join("stale").exists());
    }
}
