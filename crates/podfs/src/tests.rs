//! Each operation against a hostile guest: symlinks to sentinels outside the pod planted at
//! every name, directories swapped for symlinks, FIFOs and device nodes, and attacker threads
//! swapping names while the operation runs. Every test checks the sentinels outside the pod
//! (content, mode, no new entries, nothing mounted there). Mount tests need root (skipped
//! otherwise).

use super::*;
use rustix::fs::{self as rfs, Mode, OFlags};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A pod dir and, beside it, the sentinels a guest wants to reach.
struct Env {
    _t: tempfile::TempDir,
    pod: PathBuf,
    outside: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), "sentinel:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::write(outside.join("dir/keep"), "keep").unwrap();
        Env { _t: t, pod, outside }
    }

    fn shared(&self) -> PathBuf {
        let s = self.pod.join(SHARED);
        std::fs::create_dir_all(&s).unwrap();
        s
    }

    fn shared_fd(&self) -> OwnedFd {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rfs::open(self.shared(), flags, Mode::empty()).unwrap()
    }

    /// The sentinels are as made: not written, not chmod'ed, nothing added, nothing mounted.
    fn check_sentinels(&self) {
        let secret = self.outside.join("secret");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "sentinel:x:0:0::/:/bin/sh\n");
        let mode = std::fs::symlink_metadata(&secret).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the sentinel file was chmod'ed");
        let mut names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "secret"], "entries were added outside the pod");
        let names: Vec<_> = std::fs::read_dir(self.outside.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["keep"], "the sentinel dir was written");
        assert_eq!(std::fs::read_to_string(self.outside.join("dir/keep")).unwrap(), "keep");
        let m = mountinfo::mounts_under(&mountinfo::read().unwrap(), &self.outside);
        assert!(m.is_empty(), "something was mounted over a sentinel: {m:?}");
    }

    fn mounts_under_pod(&self) -> Vec<mountinfo::Mount> {
        mountinfo::mounts_under(&mountinfo::read().unwrap(), &self.pod)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if is_root() {
            let _ = unmount_tree(&self.pod);
        }
    }
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn mknod_null(p: &Path) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}

pub(crate) fn mount_tmpfs(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null())
    };
    assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
}

/// The options of the mount at `point` (mountinfo field 6).
fn mount_options(point: &Path) -> String {
    let info = mountinfo::read().unwrap();
    let m = mountinfo::mounts_under(&info, point);
    let m = m.iter().find(|m| m.point == point).expect("not mounted");
    info.lines()
        .find(|l| l.split(' ').next() == Some(&m.id.to_string()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap()
        .to_string()
}

/// Runs `f` on a thread and fails the test if it does not finish: a blocked daemon thread.
fn must_finish<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(300)).expect("the operation blocked")
}

#[test]
fn writes_refuse_planted_symlinks_at_every_name() {
    let env = Env::new();
    let shared = env.shared();
    let root = env.shared_fd();
    // The container dir, its etc dir and the file itself, each a symlink out of the pod.
    symlink(&env.outside, shared.join("c1")).unwrap();
    std::fs::create_dir(shared.join("c2")).unwrap();
    symlink(env.outside.join("dir"), shared.join("c2/etc")).unwrap();
    std::fs::create_dir_all(shared.join("c3/etc")).unwrap();
    symlink(env.outside.join("secret"), shared.join("c3/etc/hostname")).unwrap();
    for c in ["c1", "c2", "c3"] {
        let rel = PathBuf::from(c).join("etc/hostname");
        let r = write_file_beneath(root.as_fd(), &rel, b"evil\n", 0o644);
        assert!(r.is_err(), "{c}: wrote through a symlink");
    }
    assert!(write_file_beneath(root.as_fd(), Path::new("../x"), b"x", 0o644).is_err());
    assert!(write_file_beneath(root.as_fd(), Path::new("/x"), b"x", 0o644).is_err());
    env.check_sentinels();
    write_file_beneath(root.as_fd(), Path::new("c4/etc/hostname"), b"ok\n", 0o644).unwrap();
    assert_eq!(std::fs::read_to_string(shared.join("c4/etc/hostname")).unwrap(), "ok\n");
    let mode = std::fs::metadata(shared.join("c4/etc")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, DIR_MODE);
}

#[test]
fn reads_refuse_symlinks_fifos_devices_and_huge_files() {
    let env = Env::new();
    let shared = env.shared();
    let root = env.shared_fd();
    // rootfs/etc swapped for a symlink to a host dir (the old code followed it).
    std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
    symlink(&env.outside, shared.join("c1/rootfs/etc")).unwrap();
    std::fs::create_dir(shared.join("c0")).unwrap();
    symlink(&env.outside, shared.join("c0/rootfs")).unwrap();
    std::fs::create_dir_all(shared.join("c2/rootfs/etc")).unwrap();
    symlink(env.outside.join("secret"), shared.join("c2/rootfs/etc/passwd")).unwrap();
    std::fs::create_dir_all(shared.join("c3/rootfs/etc")).unwrap();
    mkfifo(&shared.join("c3/rootfs/etc/passwd"));
    std::fs::create_dir_all(shared.join("c4/rootfs/etc")).unwrap();
    let dev = mknod_null(&shared.join("c4/rootfs/etc/passwd"));
    std::fs::create_dir_all(shared.join("c5/rootfs/etc")).unwrap();
    std::fs::write(shared.join("c5/rootfs/etc/passwd"), vec![b'a'; 4097]).unwrap();
    std::fs::create_dir_all(shared.join("c6/rootfs/etc")).unwrap();
    std::fs::write(shared.join("c6/rootfs/etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let read = move |c: &str| {
        let fd = rfs::open(&shared, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let file = match c {
            "c0" => "rootfs/secret",
            "c1" => "rootfs/etc/secret",
            _ => "rootfs/etc/passwd",
        };
        let rel = PathBuf::from(c).join(file);
        must_finish(move || read_file_beneath(fd.as_fd(), &rel, 4096))
    };
    assert!(read("c0").is_err(), "read through a symlinked rootfs");
    assert!(read("c1").is_err(), "read through a symlinked etc");
    assert!(read("c2").is_err(), "read through a symlinked passwd");
    assert!(matches!(read("c3"), Err(Error::NotRegular(_))), "FIFO");
    if dev {
        assert!(matches!(read("c4"), Err(Error::NotRegular(_))), "device node");
    }
    assert!(matches!(read("c5"), Err(Error::TooLarge { .. })));
    assert_eq!(read("c6").unwrap().unwrap(), b"root:x:0:0::/:/bin/sh\n");
    assert!(read("nothing").unwrap().is_none());
    assert!(read_file_beneath(root.as_fd(), Path::new("../outside/secret"), 4096).is_err());
    env.check_sentinels();
}

#[test]
fn a_concurrent_attacker_never_redirects_or_blocks_a_read() {
    let env = Env::new();
    let shared = env.shared();
    let etc = shared.join("c/rootfs/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("good"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, etc, secret) = (stop.clone(), etc.clone(), env.outside.join("secret"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = etc.join("tmp");
                let _ = std::fs::remove_file(&tmp);
                match i % 3 {
                    0 => drop(std::fs::copy(etc.join("good"), &tmp)),
                    1 => drop(symlink(&secret, &tmp)),
                    _ => mkfifo(&tmp),
                }
                let _ = std::fs::rename(&tmp, etc.join("passwd"));
                i += 1;
            }
        })
    };
    let fd = env.shared_fd();
    let results = must_finish(move || {
        let mut seen = (0, 0);
        for _ in 0..3000 {
            match read_file_beneath(fd.as_fd(), Path::new("c/rootfs/etc/passwd"), 1 << 20) {
                Ok(Some(b)) => {
                    assert_eq!(b, b"root:x:0:0::/:/bin/sh\n", "read another file");
                    seen.0 += 1;
                }
                _ => seen.1 += 1,
            }
        }
        seen
    });
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert_eq!(results.0 + results.1, 3000);
    env.check_sentinels();
}

#[test]
fn bind_refuses_symlinked_mount_points() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let shared = env.shared();
    let root = env.shared_fd();
    let vol = env._t.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::create_dir(shared.join("c1")).unwrap();
    symlink(env.outside.join("dir"), shared.join("c1/mounts")).unwrap();
    std::fs::create_dir_all(shared.join("c2/mounts")).unwrap();
    symlink(env.outside.join("dir"), shared.join("c2/mounts/0")).unwrap();
    symlink(&env.outside, shared.join("c3")).unwrap();
    for c in ["c1", "c2", "c3"] {
        let rel = PathBuf::from(c).join("mounts/0");
        assert!(bind_beneath(root.as_fd(), &rel, &vol, false).is_err(), "{c}");
    }
    env.check_sentinels();
    assert!(env.mounts_under_pod().is_empty());
}

#[test]
fn read_only_volumes_are_read_only_all_the_way_down_and_nosuid_nodev() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    let vol = env._t.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    mount_tmpfs(&vol.join("sub"));
    let staged = pod.stage("c1").unwrap();
    staged.bind(&vol, Path::new("mounts/0"), true).unwrap();
    let target = staged.path().join("mounts/0");
    assert!(std::fs::write(target.join("x"), "x").is_err(), "the top is writable");
    assert!(std::fs::write(target.join("sub/x"), "x").is_err(), "a submount is writable");
    for p in [target.clone(), target.join("sub")] {
        let o = mount_options(&p);
        for want in ["ro", "nosuid", "nodev"] {
            assert!(o.split(',').any(|x| x == want), "{}: {o}", p.display());
        }
    }
    // The volume itself stays writable on the host.
    std::fs::write(vol.join("sub/ok"), "ok").unwrap();
    staged.discard().unwrap();
    assert!(env.mounts_under_pod().is_empty());
    assert_eq!(std::fs::read_to_string(vol.join("sub/ok")).unwrap(), "ok");
    unmount_tree(&vol.join("sub")).unwrap();
    env.check_sentinels();
}

#[test]
fn binds_survive_the_rename_into_the_share_and_removal_keeps_the_volume() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    let vol = env._t.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("keep"), "data").unwrap();
    let file_vol = env._t.path().join("file-vol");
    std::fs::write(&file_vol, "one file").unwrap();
    let staged = pod.stage("c1").unwrap();
    staged.write_file(Path::new("etc/hostname"), b"pod\n", 0o644).unwrap();
    let id = staged.bind(&vol, Path::new("mounts/0"), false).unwrap();
    staged.bind(&file_vol, Path::new("mounts/1"), true).unwrap();
    staged.expose().unwrap();
    let c = pod.shared_path().join("c1");
    assert!(!pod.staging_path().join("c1").exists());
    assert_eq!(std::fs::read_to_string(c.join("etc/hostname")).unwrap(), "pod\n");
    assert_eq!(std::fs::read_to_string(c.join("mounts/0/keep")).unwrap(), "data");
    assert_eq!(std::fs::read_to_string(c.join("mounts/1")).unwrap(), "one file");
    let mounts = env.mounts_under_pod();
    assert!(mounts.iter().any(|m| m.id == id && m.point == c.join("mounts/0")), "{mounts:?}");
    std::fs::write(c.join("mounts/0/new"), "x").unwrap();
    pod.remove("c1").unwrap();
    assert!(!c.exists());
    assert!(env.mounts_under_pod().is_empty());
    assert_eq!(std::fs::read_to_string(vol.join("keep")).unwrap(), "data");
    assert_eq!(std::fs::read_to_string(vol.join("new")).unwrap(), "x");
    assert_eq!(std::fs::read_to_string(&file_vol).unwrap(), "one file");
    pod.remove("c1").unwrap();
    env.check_sentinels();
}

#[test]
fn expose_refuses_a_name_the_guest_planted() {
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    symlink(env.outside.join("dir"), pod.shared_path().join("c1")).unwrap();
    let staged = pod.stage("c1").unwrap();
    staged.write_file(Path::new("etc/hostname"), b"x\n", 0o644).unwrap();
    assert!(staged.expose().is_err());
    assert!(std::fs::symlink_metadata(pod.shared_path().join("c1")).unwrap().is_symlink());
    assert!(!pod.staging_path().join("c1").exists(), "the failed stage was not removed");
    assert!(pod.stage("../x").is_err());
    env.check_sentinels();
}

#[test]
fn pod_dirs_are_private() {
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    for p in [pod.shared_path(), pod.staging_path()] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_DIR_MODE, "{}", p.display());
    }
    let staged = pod.stage("c").unwrap();
    let mode = std::fs::metadata(staged.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, DIR_MODE);
}

/// A tree with a planted symlink at every kind of name, a FIFO, a device node and deep nesting.
fn hostile_tree(env: &Env, c: &Path) {
    std::fs::create_dir_all(c.join("rootfs/etc")).unwrap();
    symlink(&env.outside, c.join("rootfs/host")).unwrap();
    symlink(env.outside.join("secret"), c.join("rootfs/etc/passwd")).unwrap();
    symlink(env.outside.join("dir"), c.join("mounts")).unwrap();
    mkfifo(&c.join("rootfs/fifo"));
    mknod_null(&c.join("rootfs/null"));
    let mut deep = c.join("deep");
    for _ in 0..300 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), "x").unwrap();
    symlink(&env.outside, deep.join("up")).unwrap();
}

#[test]
fn removal_never_follows_symlinks_and_handles_deep_trees() {
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    let c = pod.shared_path().join("c1");
    hostile_tree(&env, &c);
    pod.remove("c1").unwrap();
    assert!(!c.exists());
    // The container dir itself swapped for a symlink out of the pod.
    symlink(env.outside.join("dir"), pod.shared_path().join("c2")).unwrap();
    pod.remove("c2").unwrap();
    assert!(std::fs::symlink_metadata(pod.shared_path().join("c2")).is_err());
    env.check_sentinels();
}

#[test]
fn removal_unmounts_first_and_never_deletes_through_a_mount() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    let vol = env._t.path().join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("sub/keep"), "data").unwrap();
    let staged = pod.stage("c1").unwrap();
    staged.bind(&vol, Path::new("mounts/0"), false).unwrap();
    // A second mount stacked on the first, and one deeper inside.
    staged.bind(&vol, Path::new("mounts/0"), false).unwrap_err();
    staged.bind(&vol, Path::new("mounts/0/sub"), false).unwrap();
    staged.expose().unwrap();
    let c = pod.shared_path().join("c1");
    hostile_tree(&env, &c.join("x"));
    pod.remove("c1").unwrap();
    assert!(!c.exists());
    assert!(env.mounts_under_pod().is_empty());
    assert_eq!(std::fs::read_to_string(vol.join("sub/keep")).unwrap(), "data");
    env.check_sentinels();
}

/// The guest renames and swaps names in the container dir while the host mounts, unmounts and
/// removes: whatever the outcome of each step, nothing outside the pod is touched, the
/// volume keeps its data, and once the attacker stops, removal leaves no mount behind.
#[test]
fn a_concurrent_attacker_cannot_redirect_binds_unmounts_or_removal() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let pod = PodDir::open(&env.pod).unwrap();
    let vol = env._t.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("keep"), "data").unwrap();
    let c = pod.shared_path().join("c1");
    std::fs::create_dir_all(c.join("mounts")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, c, out) = (stop.clone(), c.clone(), env.outside.join("dir"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // The mounts dir (and the mount points in it) moved away and replaced by a
                // symlink out of the pod, then put back.
                let _ = std::fs::rename(c.join("mounts"), c.join("away"));
                let _ = symlink(&out, c.join("mounts"));
                std::thread::yield_now();
                let _ = std::fs::remove_file(c.join("mounts"));
                let _ = std::fs::rename(c.join("away"), c.join("mounts"));
                let _ = std::fs::create_dir_all(c.join("mounts"));
                let _ = symlink(&out, c.join("mounts/9"));
            }
        })
    };
    let root = env.shared_fd();
    for i in 0..200 {
        let rel = PathBuf::from(format!("c1/mounts/{}", i % 8));
        let _ = bind_beneath(root.as_fd(), &rel, &vol, i % 2 == 0);
        if i % 10 == 9 {
            let _ = unmount_beneath(root.as_fd(), &pod.shared_path(), Path::new("c1"));
        }
        let m = mountinfo::mounts_under(&mountinfo::read().unwrap(), &env.outside);
        assert!(m.is_empty(), "mounted outside the pod: {m:?}");
    }
    let _ = pod.remove("c1");
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    env.check_sentinels();
    pod.remove("c1").unwrap();
    assert!(env.mounts_under_pod().is_empty());
    assert_eq!(std::fs::read_to_string(vol.join("keep")).unwrap(), "data");
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 1);
}

#[test]
fn harden_makes_the_pod_dir_nosuid_nodev_noexec() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    harden(&env.pod).unwrap();
    let o = mount_options(&env.pod);
    for want in ["nosuid", "nodev", "noexec"] {
        assert!(o.split(',').any(|x| x == want), "{o}");
    }
    let pod = PodDir::open(&env.pod).unwrap();
    // A device node the guest makes in the share cannot be opened on the host.
    let null = pod.shared_path().join("null");
    if mknod_null(&null) {
        assert!(std::fs::File::open(&null).is_err(), "a device node opened on a nodev mount");
    }
    // Staging and shared stay on one mount: exposing works.
    let staged = pod.stage("c1").unwrap();
    staged.write_file(Path::new("f"), b"x", 0o644).unwrap();
    staged.expose().unwrap();
    pod.remove("c1").unwrap();
    remove_tree(&env.pod).unwrap();
    assert!(!env.pod.exists());
    assert!(env.mounts_under_pod().is_empty());
    env.check_sentinels();
}

#[test]
fn remove_tree_of_nothing_and_of_a_plain_tree() {
    let d = tempfile::tempdir().unwrap();
    remove_tree(&d.path().join("none")).unwrap();
    remove_tree(&d.path().join("none/deeper")).unwrap();
    std::fs::create_dir_all(d.path().join("c/a/b")).unwrap();
    std::fs::write(d.path().join("c/a/b/f"), "x").unwrap();
    remove_tree(&d.path().join("c")).unwrap();
    assert!(!d.path().join("c").exists());
}
