//! A pod's disk: it bounds what the pod dir holds, is inert on the host, and neither success
//! nor any failure leaves a mount, a loop device or an image behind. Needs root and
//! /dev/loop-control (skipped otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::{mountinfo, remove_tree, PodDir};

fn can_loop() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    root && Path::new("/dev/loop-control").exists()
}

/// Loop devices whose backing file is `image`.
fn loops_of(image: &Path) -> Vec<String> {
    let want = image.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let back = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if name.starts_with("loop") && back.trim_end().starts_with(&want) {
            out.push(name);
        }
    }
    out
}

/// Waits (bounded) until no loop device is backed by `image`; the devices left, if any.
fn wait_detached(image: &Path) -> Vec<String> {
    for _ in 0..100 {
        let left = loops_of(image);
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    loops_of(image)
}

fn mounts_at(p: &Path) -> Vec<mountinfo::Mount> {
    mountinfo::mounts_under(&mountinfo::read().unwrap(), p)
}

struct Env {
    t: tempfile::TempDir,
    pod: PathBuf,
    image: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let image = t.path().join("disks/pod.img");
        std::fs::create_dir(t.path().join("disks")).unwrap();
        Env { t, pod, image }
    }

    /// Nothing of the disk is left: no image, no mount, no loop device.
    fn check_gone(&self) {
        assert!(!self.image.exists(), "image left behind");
        assert!(mounts_at(self.t.path()).is_empty(), "mount left behind");
        assert_eq!(wait_detached(&self.image), Vec::<String>::new(), "loop device left behind");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = crate::unmount_tree(&self.pod);
    }
}

#[test]
fn a_pod_disk_bounds_the_pod_dir_and_is_inert_and_goes_away_whole() {
    if !can_loop() {
        return;
    }
    let env = Env::new();
    let size = MIN_DISK_BYTES;
    attach_disk(&env.image, &env.pod, size).unwrap();
    let m = mounts_at(&env.pod);
    assert_eq!(m.len(), 1, "{m:?}");
    let line = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = line.lines().find(|l| l.split(' ').next() == Some(&m[0].id.to_string())).unwrap();
    let opts = line.split(' ').nth(5).unwrap();
    for want in ["nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == want), "{line}");
    }
    assert!(line.contains(" - ext4 "), "{line}");
    let meta = std::fs::metadata(&env.pod).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777, 0o700);
    assert_eq!(std::fs::read_dir(&env.pod).unwrap().count(), 0, "lost+found kept");
    // The image is sparse: an empty file system costs a small part of its size.
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&env.image).unwrap());
    assert!(used * 512 < size / 2, "{used} blocks used of a {size}-byte image");

    // Filling the shared dir ends with ENOSPC at about the bound.
    let pod = PodDir::open(&env.pod).unwrap();
    let mut f = std::fs::File::create(pod.shared_path().join("fill")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written <= size, "wrote {written} bytes into a {size}-byte disk");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written >= size / 2, "full after only {written} of {size} bytes");
    drop(f);
    drop(pod);

    remove_tree(&env.pod).unwrap();
    remove_image(&env.image).unwrap();
    remove_image(&env.image).unwrap();
    assert!(!env.pod.exists());
    env.check_gone();
}

#[test]
fn a_failed_disk_setup_leaves_nothing() {
    if !can_loop() {
        return;
    }
    let env = Env::new();
    // Too small: refused before anything is made.
    match attach_disk(&env.image, &env.pod, MIN_DISK_BYTES - 1) {
        Err(Error::DiskTooSmall { .. }) => {}
        other => panic!("{other:?}"),
    }
    env.check_gone();
    // The mount point is missing: the image is attached, the mount fails, all is undone.
    let missing = env.t.path().join("no-such-dir");
    let err = attach_disk(&env.image, &missing, MIN_DISK_BYTES).unwrap_err();
    assert!(err.to_string().contains("mount the pod disk"), "{err}");
    env.check_gone();
    // The image cannot be made (its dir is missing).
    let nowhere = env.t.path().join("missing/pod.img");
    assert!(attach_disk(&nowhere, &env.pod, MIN_DISK_BYTES).is_err());
    assert!(!nowhere.exists());
    env.check_gone();
    // A name already taken is never overwritten (O_EXCL) and stays as it was.
    std::fs::write(&env.image, "other").unwrap();
    assert!(attach_disk(&env.image, &env.pod, MIN_DISK_BYTES).is_err());
    assert_eq!(std::fs::read_to_string(&env.image).unwrap(), "other");
    assert!(mounts_at(env.t.path()).is_empty());
    std::fs::remove_file(&env.image).unwrap();
    // A file that is not a file system is not mounted (and nothing stays attached).
    std::fs::write(&env.image, vec![0u8; MIN_DISK_BYTES as usize]).unwrap();
    assert!(mount_image(&env.image, &env.pod).is_err());
    assert!(mounts_at(env.t.path()).is_empty());
    assert_eq!(wait_detached(&env.image), Vec::<String>::new());
    std::fs::remove_file(&env.image).unwrap();
    env.check_gone();
}

#[test]
fn images_in_lists_pod_ids() {
    let d = tempfile::tempdir().unwrap();
    assert!(images_in(&d.path().join("none")).unwrap().is_empty());
    for n in ["b.img", "a.img", "x.tmp", "c"] {
        std::fs::write(d.path().join(n), "").unwrap();
    }
    assert_eq!(images_in(d.path()).unwrap(), vec!["a".to_string(), "b".to_string()]);
}
