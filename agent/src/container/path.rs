//! Paths from requests: syntax checks and resolution inside a container
//! root filesystem.
//!
//! A container path is resolved one component at a time against the rootfs
//! on disk, the way the kernel would resolve it with the rootfs as `/`:
//! symlinks are followed (absolute targets restart at the rootfs, `..`
//! stops at the rootfs), so the result always lies inside the rootfs.
//! Request paths themselves must not contain `..` at all.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::ContainerError;

/// Symlinks followed in one resolution before giving up (like ELOOP).
const MAX_SYMLINKS: usize = 40;
/// Longest path accepted from a request.
pub const MAX_PATH_LEN: usize = 4096;

/// Checks a path from a request: absolute, no NUL, no `..` component, not
/// too long. `what` names the field in the error.
pub fn check_absolute(what: &str, p: &str) -> Result<(), ContainerError> {
    if p.is_empty() {
        return Err(ContainerError::invalid(format!("{what}: empty path")));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(ContainerError::invalid(format!("{what}: path too long")));
    }
    if p.contains('\0') {
        return Err(ContainerError::invalid(format!("{what}: NUL in path")));
    }
    if !p.starts_with('/') {
        return Err(ContainerError::invalid(format!("{what}: {p:?} is not absolute")));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(ContainerError::invalid(format!("{what}: {p:?} contains '..'")));
    }
    Ok(())
}

/// Resolves container path `p` inside `rootfs`. Returns the path relative to
/// the rootfs (always starting with `/`, never containing `..` or a symlink
/// that existed at resolution time). Components that do not exist are kept
/// as they are (a mount may create them).
pub fn resolve_in_root(rootfs: &Path, p: &str) -> Result<PathBuf, ContainerError> {
    check_absolute("path", p)?;
    // Components still to walk, in order (front = next).
    let mut todo: Vec<Vec<u8>> = split(p.as_bytes());
    todo.reverse();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0usize;
    while let Some(comp) = todo.pop() {
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let mut here = rootfs.to_path_buf();
        for d in &done {
            here.push(OsStr::from_bytes(d));
        }
        here.push(OsStr::from_bytes(&comp));
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ContainerError::invalid(format!(
                        "{p:?}: too many levels of symbolic links"
                    )));
                }
                let target = std::fs::read_link(&here)
                    .map_err(|e| ContainerError::io(format!("readlink {}", here.display()), e))?;
                let tb = target.as_os_str().as_bytes();
                if tb.starts_with(b"/") {
                    done.clear();
                }
                let mut parts = split(tb);
                parts.reverse();
                todo.extend(parts);
            }
            _ => done.push(comp),
        }
    }
    let mut out = PathBuf::from("/");
    for d in &done {
        out.push(OsStr::from_bytes(d));
    }
    Ok(out)
}

/// `rootfs` joined with a path [`resolve_in_root`] returned.
pub fn host_path(rootfs: &Path, resolved: &Path) -> PathBuf {
    match resolved.strip_prefix("/") {
        Ok(rel) => rootfs.join(rel),
        Err(_) => rootfs.join(resolved),
    }
}

fn split(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|b| *b == b'/').map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn syntax() {
        assert!(check_absolute("x", "/a/b").is_ok());
        assert!(check_absolute("x", "").is_err());
        assert!(check_absolute("x", "a/b").is_err());
        assert!(check_absolute("x", "/a/../b").is_err());
        assert!(check_absolute("x", "/..").is_err());
        assert!(check_absolute("x", "/a\0b").is_err());
        assert!(check_absolute("x", &format!("/{}", "a".repeat(5000))).is_err());
        // A name that merely contains dots is fine.
        assert!(check_absolute("x", "/a/..b/c..").is_ok());
    }

    #[test]
    fn symlinks_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data/real")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../../etc", root.join("data/up")).unwrap();
        symlink("real", root.join("data/rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        let r = |p: &str| resolve_in_root(root, p).unwrap();
        assert_eq!(r("/etc/hostname"), PathBuf::from("/etc/hostname"));
        // Absolute target: rootfs's /etc, not the guest's.
        assert_eq!(r("/abs/passwd"), PathBuf::from("/etc/passwd"));
        // `..` in a link target stops at the rootfs.
        assert_eq!(r("/data/up/shadow"), PathBuf::from("/etc/shadow"));
        assert_eq!(r("/data/rel/x"), PathBuf::from("/data/real/x"));
        assert_eq!(r("/new/dir"), PathBuf::from("/new/dir"));
        assert_eq!(r("/"), PathBuf::from("/"));
        assert!(resolve_in_root(root, "/loop1").is_err());
        assert!(resolve_in_root(root, "/data/../etc").is_err());
        assert_eq!(host_path(root, &r("/abs/passwd")), root.join("etc/passwd"));
    }
}
