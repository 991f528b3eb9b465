//! Volumes attached in another process's mount namespace (a pod VMM's): seen there only, so
//! the host path's owner can unmount and remove what is below it while the pod uses it; a
//! staged dir that is another directory in that namespace is refused. Need root and util-linux's
//! `unshare` and `nsenter` (skipped otherwise).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{mountinfo, unmount_tree, Access, Error, MountNs, PodDir};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A process in a private mount namespace of its own (as a pod's VMM).
struct Other(Child);

impl Other {
    fn start() -> Option<Other> {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let other = Other(child);
        let ours = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        for _ in 0..1000 {
            let theirs = std::fs::metadata(format!("/proc/{}/ns/mnt", other.pid()));
            if theirs.is_ok_and(|m| m.ino() != ours) {
                return Some(other);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("unshare never entered a mount namespace of its own");
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn mounts_under(&self, dir: &Path) -> Vec<mountinfo::Mount> {
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap();
        mountinfo::mounts_under(&info, dir)
    }

    /// `cmd` run in this process's mount namespace.
    fn run(&self, cmd: &[&str]) {
        let st = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
            .args(cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd:?}: {st}");
    }
}

impl Drop for Other {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mount_tmpfs(p: &Path) {
    let st = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(p).status().unwrap();
    assert!(st.success());
}

fn here_under(dir: &Path) -> Vec<mountinfo::Mount> {
    mountinfo::mounts_under(&mountinfo::read().unwrap(), dir)
}

#[test]
fn a_volume_attached_in_the_vmm_namespace_pins_nothing_on_the_host() {
    if !is_root() {
        return;
    }
    let Some(other) = Other::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let (pod_dir, vol) = (t.path().join("pod"), t.path().join("vol"));
    std::fs::create_dir(&pod_dir).unwrap();
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    mount_tmpfs(&vol.join("sub"));
    std::fs::write(vol.join("sub/x"), "in the submount").unwrap();
    let pod = PodDir::open(&pod_dir).unwrap();
    let ns = MountNs::of_process(other.pid()).unwrap();
    assert!(!ns.is_current().unwrap());

    let staged = pod.stage("c1").unwrap();
    staged.bind_in(Some(&ns), &vol, Path::new("mounts/0"), Access::ReadOnlyTop).unwrap();
    staged.expose().unwrap();
    let point = pod.shared_path().join("c1/mounts/0");
    assert!(here_under(&pod_dir).is_empty(), "mounted in the daemon's namespace too");
    let theirs = other.mounts_under(&pod_dir);
    assert!(theirs.iter().any(|m| m.point == point), "not in the VMM's: {theirs:?}");
    assert!(theirs.iter().any(|m| m.point == point.join("sub")), "no submount: {theirs:?}");
    let through = format!("/proc/{}/root{}/sub/x", other.pid(), point.display());
    assert_eq!(std::fs::read_to_string(&through).unwrap(), "in the submount");

    // The host path's owner unmounts and removes its submount while the pod runs (critest's
    // non-recursive read-only mount): the rmdir works, and the VMM's copy goes with it.
    unmount_tree(&vol.join("sub")).unwrap();
    std::fs::remove_dir(vol.join("sub")).expect("rmdir of a mount point of the VMM only");
    let theirs = other.mounts_under(&pod_dir);
    assert!(!theirs.iter().any(|m| m.point == point.join("sub")), "{theirs:?}");

    // Removing the container detaches the volume there.
    pod.remove("c1").unwrap();
    assert!(other.mounts_under(&pod_dir).is_empty());
    assert!(vol.is_dir(), "removal reached into the volume");
}

#[test]
fn a_staged_dir_covered_in_the_vmm_namespace_is_refused() {
    if !is_root() {
        return;
    }
    let Some(other) = Other::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let (pod_dir, vol) = (t.path().join("pod"), t.path().join("vol"));
    std::fs::create_dir(&pod_dir).unwrap();
    std::fs::create_dir(&vol).unwrap();
    let pod = PodDir::open(&pod_dir).unwrap();
    let staged = pod.stage("c1").unwrap();
    // A compromised VMM mounts over the staged dir in its own namespace.
    other.run(&["mount", "-t", "tmpfs", "decoy", &staged.path().display().to_string()]);
    let ns = MountNs::of_process(other.pid()).unwrap();
    let err = staged.bind_in(Some(&ns), &vol, Path::new("mounts/0"), Access::ReadWrite);
    assert!(matches!(err, Err(Error::NotSameDir(_))), "{err:?}");
    assert!(here_under(&pod_dir).is_empty());
    staged.discard().unwrap();
}

#[test]
fn without_a_namespace_binds_stay_in_the_callers() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (pod_dir, vol) = (t.path().join("pod"), t.path().join("vol"));
    std::fs::create_dir(&pod_dir).unwrap();
    std::fs::create_dir(&vol).unwrap();
    let pod = PodDir::open(&pod_dir).unwrap();
    let staged = pod.stage("c1").unwrap();
    staged.bind_in(None, &vol, Path::new("mounts/0"), Access::ReadWrite).unwrap();
    assert_eq!(here_under(&pod_dir).len(), 1);
    staged.discard().unwrap();
    assert!(here_under(&pod_dir).is_empty());
}
