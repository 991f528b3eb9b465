//! End-to-end: the guest is hostile (issue 10). One pod VM, 20 rounds of a container with a
//! read-write and a read-only volume (create, start, exec, stop, remove) while the pod's shared
//! directory is attacked the whole time. Needs a KVM that boots Linux; `make test-e2e` runs it
//! (in the test host here).
//!
//! Which attack is which:
//! - From inside the guest (the real threat): a privileged container of the same pod mounts the
//!   virtio-fs tag `carapace` itself (no host path involved) and, in an endless loop, plants
//!   symlinks to the host's sentinel paths (absolute, and relative ones climbing out of the
//!   share) at the names the host uses in each victim's dir (`etc/hostname`, `etc/resolv.conf`,
//!   `mounts`, `rootfs`, `etc`, names inside the rootfs), swaps those directories for symlinks
//!   and back, makes FIFOs, tries device nodes (`mknod`), makes setuid/setgid copies of
//!   busybox (in the share and in the read-write volume), and writes into the read-only volume.
//!   Victims are handed to it as soon as CreateContainer returns (running phase) and again
//!   when stopped (then their rootfs and etc dirs are swapped too), so removal always runs
//!   under attack; in the last round it moves a victim's volume mounts out of the victim's dir.
//! - From a host thread, for the races too narrow for the guest (it writes into the shared dir
//!   exactly as the VMM's virtio-fs server does on the guest's behalf, plain syscalls as root,
//!   nothing the guest could not ask for): every third round it learns the ID of the container
//!   being created from the staging dir (inotify; a guest that guessed the ID) and plants a
//!   symlink, a FIFO or a fake tree of symlinks at `shared/<id>` before the daemon exposes it;
//!   on odd rounds it swaps the victim's top-level dirs for symlinks and back as fast as it can
//!   while RemoveContainer runs.
//!
//! Checked every round: the sentinel files and dirs outside the pod keep their content, mode,
//! owner and link count and gain no entries; no mount appears outside the pod's dir
//! (/proc/self/mountinfo against the one taken before the pod); no device node and no
//! setuid/setgid file the guest made exists on the host; the read-only volume is unchanged;
//! the daemon answers; the attacker still runs; every container gets the right output or a
//! clear error. At the end, after the pod is removed: mountinfo as before, volumes intact.
//! Over 600 lines on purpose: one job (the hostile-guest scenario), its attacks and checks
//! share the one pod and the helpers of this file.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic;
use carapace_tests::cri::{
    container_config, e2e_dns, pod_config, pull_image, run_pod, runtime, with_log, Daemon,
    DaemonOptions,
};
use carapace_tests::registry::Registry;
use tonic::transport::Channel;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_HOSTILE_E2E_DAEMON";
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const ROUNDS: usize = 20;
const POD: &str = "hostile";

/// Not a test: the daemon process of the test below when `carapace serve` is not available.
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

/// The attacker's program (busybox sh). `$H` is the host's sentinel dir.
const ATTACKER: &str = r#"
b=busybox
S=/tmp/share
$b mkdir -p $S
$b mount -t virtiofs carapace $S || { echo "ATTACKER cannot mount the share"; exit 1; }
R=../../../../../../../../../../../../../..$H
: > /tmp/hot; : > /tmp/cold
echo "ATTACKER ready"
# swap PATH TARGET: a file or dir becomes a symlink to TARGET, and back on the next call.
swap() {
  if [ -L "$1" ]; then $b rm -f "$1"; [ -e "$1.real" ] && $b mv "$1.real" "$1"
  elif [ -e "$1" ] && [ ! -e "$1.real" ]; then $b mv "$1" "$1.real" && $b ln -s "$2" "$1"
  fi 2>/dev/null
}
devs() {
  $b mknod "$1/null" c 1 3 2>/dev/null && echo "ATTACKER MKNOD-OK $1/null"
  $b mknod "$1/sda" b 8 0 2>/dev/null && echo "ATTACKER MKNOD-OK $1/sda"
}
suid() {
  $b cp /bin/busybox "$1/suid" 2>/dev/null && $b chmod 6755 "$1/suid" 2>/dev/null
  $b touch "$1/sgid" 2>/dev/null && $b chmod 2755 "$1/sgid" 2>/dev/null
}
running() {
  d=$1
  swap $d/etc/hostname $H/file
  swap $d/etc/resolv.conf $R/file
  $b ln -sfn $H/file $d/etc/hosts 2>/dev/null
  [ -p $d/etc/fifo ] || $b mkfifo $d/etc/fifo 2>/dev/null
  devs $d/etc; suid $d
  for m in $d/mounts/0 $d/mounts.real/0; do
    [ -d $m ] && [ ! -L $m ] || continue
    suid $m; devs $m; $b ln -sfn $H/file $m/link 2>/dev/null
  done
  for m in $d/mounts/1 $d/mounts.real/1; do
    [ -d $m ] && [ ! -L $m ] || continue
    echo pwned > $m/pwned 2>/dev/null && echo "ATTACKER RO-WRITTEN $m"
    $b chmod 777 $m 2>/dev/null && echo "ATTACKER RO-CHMOD $m"
    $b rm -f $m/config 2>/dev/null && echo "ATTACKER RO-REMOVED $m"
  done
  swap $d/mounts $H/dir
  swap $d/rootfs/tmp $R/dir
  $b ln -sfn $H/dir $d/rootfs/mnt 2>/dev/null
}
stopped() {
  d=$1
  running $d
  swap $d/rootfs/etc $H/dir
  swap $d/rootfs/bin $R/dir
  swap $d/etc $R/dir
  swap $d/rootfs $H/dir
  [ -p $d/rootfs.fifo ] || $b mkfifo $d/rootfs.fifo 2>/dev/null
}
while :; do
  $b ln -sfn $H $S/decoy-abs 2>/dev/null; $b ln -sfn $R $S/decoy-rel 2>/dev/null
  [ -p $S/fifo ] || $b mkfifo $S/fifo 2>/dev/null
  devs $S; suid $S
  $b mkdir -p $S/decoy 2>/dev/null; swap $S/decoy $H/dir
  for t in $($b cat /tmp/hot); do [ -d $S/$t ] || continue; running $S/$t; : > $S/.hit-$t; done
  for t in $($b cat /tmp/cold); do [ -e $S/$t ] || continue; stopped $S/$t; : > $S/.cold-$t; done
  $b usleep 250000
done
"#;

/// What a victim prints for one check: the read-only volume's file, a file it wrote in the
/// read-write volume, whether the read-only volume took a write, the pod's hostname.
const CHECK: &str = "cat /ro/config; echo $1 > /rw/$1 && cat /rw/$1; \
                     touch /ro/x 2>/dev/null && echo RO-WRITABLE; cat /etc/hostname";

/// The test's private dirs: sentinels (outside the pod) and the two volumes.
struct Host {
    _dir: tempfile::TempDir,
    sentinel: PathBuf,
    rw: PathBuf,
    ro: PathBuf,
}

impl Host {
    fn new() -> Result<Host> {
        let dir = tempfile::Builder::new().prefix("hsent").tempdir_in("/tmp")?;
        let sentinel = dir.path().join("sentinel");
        std::fs::create_dir_all(sentinel.join("dir"))?;
        std::fs::write(sentinel.join("file"), "sentinel file\n")?;
        std::fs::write(sentinel.join("dir/keep"), "keep\n")?;
        std::fs::set_permissions(sentinel.join("file"), std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(sentinel.join("dir"), std::fs::Permissions::from_mode(0o700))?;
        let (rw, ro) = (dir.path().join("vol-rw"), dir.path().join("vol-ro"));
        std::fs::create_dir(&rw)?;
        std::fs::create_dir(&ro)?;
        std::fs::write(rw.join("hello"), "from the host\n")?;
        std::fs::write(ro.join("config"), "read me\n")?;
        Ok(Host { _dir: dir, sentinel, rw, ro })
    }
}

/// Everything about a tree a write, chmod, chown, link or mount over it would change.
fn fingerprint(root: &Path) -> Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let mut f = format!(
            "mode {:o} uid {} gid {} nlink {} dev {} ino {}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.nlink(),
            md.dev(),
            md.ino()
        );
        if md.file_type().is_file() {
            f += &format!(" data {:?}", std::fs::read(&p)?);
        } else if md.file_type().is_symlink() {
            f += &format!(" link {:?}", std::fs::read_link(&p)?);
        } else if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
        out.insert(p, f);
    }
    Ok(out)
}

/// The mounts (point, root, type, source, options) of mountinfo not at or below `pod`.
fn mounts_outside(pod: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let pod = pod.display().to_string();
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(point) = f.get(4) else { continue };
        if point == &pod || point.starts_with(&format!("{pod}/")) {
            continue;
        }
        let tail = l.split(" - ").nth(1).unwrap_or("");
        out.insert(format!("{point} {} {} | {tail}", f.get(3).unwrap_or(&""), f[5]));
    }
    Ok(out)
}

/// Files the guest could have given host meaning: device nodes anywhere below `dir`, and
/// setuid/setgid files (none are in the test images). Tolerates a tree that changes meanwhile;
/// never follows a symlink, never opens anything.
fn dangerous_files(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        let ft = md.mode() & libc::S_IFMT;
        if ft == libc::S_IFCHR || ft == libc::S_IFBLK {
            bad.push(format!("device node {} ({:o})", p.display(), md.mode()));
        } else if ft == libc::S_IFREG && md.mode() & (libc::S_ISUID | libc::S_ISGID) != 0 {
            bad.push(format!("setuid/setgid file {} ({:o})", p.display(), md.mode()));
        } else if ft == libc::S_IFDIR {
            if let Ok(rd) = std::fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    bad
}

/// What the host thread does next.
const IDLE: u8 = 0;
const PLANT_SYMLINK: u8 = 1;
const PLANT_FIFO: u8 = 2;
const PLANT_TREE: u8 = 3;

/// The host thread that plays the VMM for the narrow races (see the module doc).
struct HostAttacker {
    stop: Arc<AtomicBool>,
    /// One of the PLANT_* modes: plant at the next container ID seen in staging.
    plant: Arc<AtomicU8>,
    /// (container ID, whether the plant was made before the daemon exposed its dir).
    planted: Arc<Mutex<Vec<(String, bool)>>>,
    /// A container dir to keep swapping (top-level names for symlinks), while set.
    swap: Arc<Mutex<Option<PathBuf>>>,
    swaps: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn mkfifo(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: a NUL-terminated path.
    unsafe { libc::mkfifo(c.as_ptr(), 0o600) == 0 }
}

impl HostAttacker {
    fn start(staging: &Path, shared: &Path, sentinel: &Path) -> Result<HostAttacker> {
        // SAFETY: inotify_init1 has no memory effects.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        ensure!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        let c = CString::new(staging.as_os_str().as_bytes())?;
        // SAFETY: fd is ours, the path NUL-terminated.
        let w = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_CREATE) };
        ensure!(w >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
        let stop = Arc::new(AtomicBool::new(false));
        let plant = Arc::new(AtomicU8::new(IDLE));
        let planted = Arc::new(Mutex::new(Vec::new()));
        let swap = Arc::new(Mutex::new(None::<PathBuf>));
        let swaps = Arc::new(AtomicU64::new(0));
        let (stop1, plant1, planted1) = (stop.clone(), plant.clone(), planted.clone());
        let (shared2, sent) = (shared.to_path_buf(), sentinel.to_path_buf());
        let planter = std::thread::spawn(move || {
            let (stop, plant, planted) = (stop1, plant1, planted1);
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: reading into our buffer from our inotify fd.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                let mut off = 0usize;
                while n > 0 && off + 16 <= n as usize {
                    let len =
                        u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap_or([0; 4]))
                            as usize;
                    let raw = &buf[off + 16..(off + 16 + len).min(n as usize)];
                    off += 16 + len;
                    let name: String =
                        String::from_utf8_lossy(raw).trim_end_matches('\0').to_string();
                    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                        continue;
                    }
                    let mode = plant.swap(IDLE, Ordering::SeqCst);
                    let at = shared2.join(&name);
                    let ok = match mode {
                        PLANT_SYMLINK => std::os::unix::fs::symlink(sent.join("dir"), &at).is_ok(),
                        PLANT_FIFO => mkfifo(&at),
                        PLANT_TREE => {
                            let ok = std::fs::create_dir(&at).is_ok();
                            if ok {
                                let _ =
                                    std::os::unix::fs::symlink(sent.join("dir"), at.join("rootfs"));
                                let _ =
                                    std::os::unix::fs::symlink(sent.join("dir"), at.join("etc"));
                                let _ =
                                    std::os::unix::fs::symlink(sent.join("dir"), at.join("mounts"));
                                let _ = mkfifo(&at.join("staging"));
                            }
                            ok
                        }
                        _ => continue,
                    };
                    if let Ok(mut p) = planted.lock() {
                        p.push((name, ok));
                    }
                }
            }
            // SAFETY: closing our own fd once.
            unsafe { libc::close(fd) };
        });
        let target = CString::new(sentinel.join("dir").as_os_str().as_bytes())?;
        let (stop2, swap2, swaps2) = (stop.clone(), swap.clone(), swaps.clone());
        let swapper = std::thread::spawn(move || {
            let (stop, swap, swaps) = (stop2, swap2, swaps2);
            while !stop.load(Ordering::Relaxed) {
                let dir = swap.lock().ok().and_then(|g| g.clone());
                let Some(dir) = dir else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // Through a descriptor of the victim's dir, top-level names only: the thread
                // itself never walks through a symlink it or the guest planted.
                let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else { continue };
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                // SAFETY: a NUL-terminated path.
                let dfd = unsafe { libc::open(c.as_ptr(), flags) };
                if dfd < 0 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                for (name, real) in
                    [(c"mounts", c"mounts.h"), (c"etc", c"etc.h"), (c"rootfs", c"rootfs.h")]
                {
                    // SAFETY: dfd is open; the names are NUL-terminated.
                    unsafe {
                        if libc::renameat(dfd, name.as_ptr(), dfd, real.as_ptr()) == 0 {
                            libc::symlinkat(target.as_ptr(), dfd, name.as_ptr());
                            libc::sched_yield();
                            libc::unlinkat(dfd, name.as_ptr(), 0);
                            libc::renameat(dfd, real.as_ptr(), dfd, name.as_ptr());
                            swaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // SAFETY: closing our own fd once.
                unsafe { libc::close(dfd) };
            }
        });
        Ok(HostAttacker { stop, plant, planted, swap, swaps, threads: vec![planter, swapper] })
    }

    fn swapping(&self, dir: Option<PathBuf>) {
        if let Ok(mut g) = self.swap.lock() {
            *g = dir;
        }
    }
}

impl Drop for HostAttacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn create(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> std::result::Result<String, tonic::Status> {
    Ok(c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg.clone()),
    })
    .await?
    .into_inner()
    .container_id)
}

async fn exec(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> Result<cri::ExecSyncResponse> {
    Ok(c.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 60,
    })
    .await
    .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
    .into_inner())
}

async fn state(c: &mut RuntimeServiceClient<Channel>, id: &str) -> Result<i32> {
    Ok(c.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no status")?
        .state)
}

/// Waits until `path` exists (a marker the in-guest attacker writes in the share).
async fn wait_marker(path: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::fs::symlink_metadata(path).is_err() {
        ensure!(Instant::now() < deadline, "the in-guest attacker never {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A clear error: a code other than Unknown and a message that says what failed.
fn clear_error(e: &tonic::Status, what: &str) -> Result<()> {
    ensure!(
        e.code() != tonic::Code::Unknown && e.code() != tonic::Code::Ok && e.message().len() > 10,
        "{what}: unclear error {e:?}"
    );
    Ok(())
}

/// The checks of every round: nothing outside the pod changed, nothing dangerous inside.
struct Invariants<'a> {
    host: &'a Host,
    pod_dir: PathBuf,
    /// Mounts outside this dir (the daemon's pods dir) must not change.
    pods_dir: PathBuf,
    sentinel: BTreeMap<PathBuf, String>,
    ro: BTreeMap<PathBuf, String>,
    mounts: BTreeSet<String>,
}

impl Invariants<'_> {
    fn check(&self, when: &str) -> Result<()> {
        let s = fingerprint(&self.host.sentinel)?;
        ensure!(
            s == self.sentinel,
            "{when}: sentinels changed:\n{s:#?}\nwas\n{:#?}",
            self.sentinel
        );
        let ro = fingerprint(&self.host.ro)?;
        ensure!(ro == self.ro, "{when}: the read-only volume changed:\n{ro:#?}");
        let m = mounts_outside(&self.pods_dir)?;
        let new: Vec<_> = m.difference(&self.mounts).collect();
        let gone: Vec<_> = self.mounts.difference(&m).collect();
        ensure!(
            new.is_empty() && gone.is_empty(),
            "{when}: mounts outside the pod: +{new:?} -{gone:?}"
        );
        let mut bad = dangerous_files(&self.pod_dir);
        bad.extend(dangerous_files(&self.host.rw));
        ensure!(bad.is_empty(), "{when}: {bad:?}");
        Ok(())
    }
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn a_hostile_guest_cannot_reach_the_host_through_the_shared_dir() {
    let started = Instant::now();
    let reg = Registry::start("reg", "info").expect("test registry");
    let d = Daemon::start(DaemonOptions {
        dir_prefix: "crih",
        insecure_registry: Some(reg.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        ..Default::default()
    })
    .expect("daemon");
    let host = Host::new().expect("host dirs");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;
        let mounts_before = mounts_outside(&d.pods_dir())?;
        let mut pod_cfg = pod_config("e2e", POD, 0, &d.logs_dir(POD));
        pod_cfg.dns_config = Some(e2e_dns());
        let pod = run_pod(&mut c, &pod_cfg).await?;
        let pod_dir = d.pods_dir().join(&pod);
        let shared = pod_dir.join("shared");
        let inv = Invariants {
            host: &host,
            pod_dir: pod_dir.clone(),
            pods_dir: d.pods_dir(),
            sentinel: fingerprint(&host.sentinel)?,
            ro: fingerprint(&host.ro)?,
            mounts: mounts_before.clone(),
        };

        // The in-guest attacker: privileged, it mounts the virtio-fs tag itself.
        let mut acfg = container_config("attacker", &busybox, &["sh", "-c", ATTACKER]);
        acfg.envs =
            vec![cri::KeyValue { key: "H".into(), value: host.sentinel.display().to_string() }];
        acfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let attacker = create(&mut c, &pod, &pod_cfg, acfg).await.context("create the attacker")?;
        c.start_container(cri::StartContainerRequest { container_id: attacker.clone() }).await?;
        let alog = d.logs_dir(POD).join("attacker/0.log");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(&alog).unwrap_or_default();
            if text.contains("ATTACKER ready") {
                break;
            }
            ensure!(
                !text.contains("cannot mount") && Instant::now() < deadline,
                "the attacker did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let hostile = HostAttacker::start(&pod_dir.join("staging"), &shared, &host.sentinel)?;
        let hand = |list: &str, cid: &str| format!("echo {cid} >> /tmp/{list}");

        let mut planted_refused = 0;
        for round in 0..ROUNDS {
            let when = format!("round {round}");
            // Every third round: a container whose dir the host thread claims first.
            if round % 3 == 2 {
                let mode = [PLANT_SYMLINK, PLANT_FIFO, PLANT_TREE][(round / 3) % 3];
                if let Ok(mut p) = hostile.planted.lock() {
                    p.clear();
                }
                hostile.plant.store(mode, Ordering::SeqCst);
                let name = format!("trap-{round}");
                let r =
                    create(&mut c, &pod, &pod_cfg, container_config(&name, &busybox, &["true"]))
                        .await;
                hostile.plant.store(IDLE, Ordering::SeqCst);
                let planted = hostile.planted.lock().map(|p| p.last().cloned()).unwrap_or(None);
                match (r, planted) {
                    (Err(e), Some((cid, true))) => {
                        clear_error(&e, &when)?;
                        ensure!(
                            e.message().contains("expose") && e.message().contains(&cid),
                            "{when}: planted {cid}, CreateContainer failed otherwise: {e:?}"
                        );
                        planted_refused += 1;
                    }
                    (Ok(id), Some((cid, true))) => {
                        bail!("{when}: {cid} was planted in the share but {id} was created over it")
                    }
                    (Ok(id), _) => {
                        // The plant lost the race: an ordinary container.
                        c.remove_container(cri::RemoveContainerRequest { container_id: id })
                            .await?;
                    }
                    (Err(e), p) => bail!("{when}: CreateContainer failed ({p:?} planted): {e:?}"),
                }
                inv.check(&format!("{when} after the planted create"))?;
            }

            // The victim: a read-write and a read-only volume.
            let name = format!("victim-{round}");
            let mut cfg = container_config(
                &name,
                &busybox,
                &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
            );
            cfg.mounts = vec![
                cri::Mount {
                    container_path: "/rw".into(),
                    host_path: host.rw.display().to_string(),
                    ..Default::default()
                },
                cri::Mount {
                    container_path: "/ro".into(),
                    host_path: host.ro.display().to_string(),
                    readonly: true,
                    ..Default::default()
                },
            ];
            let id = create(&mut c, &pod, &pod_cfg, cfg)
                .await
                .with_context(|| format!("{when}: CreateContainer"))?;
            let cmd = hand("hot", &id);
            exec(&mut c, &attacker, &["sh", "-c", &cmd]).await?;
            c.start_container(cri::StartContainerRequest { container_id: id.clone() })
                .await
                .with_context(|| format!("{when}: StartContainer"))?;
            let want = format!("read me\nr{round}\n{POD}\n");
            let tag = format!("r{round}");
            let check = ["sh", "-c", CHECK, "check", tag.as_str()];
            let r = exec(&mut c, &id, &check).await?;
            ensure!(
                r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == want,
                "{when}: victim before the attack reached it: {r:?}"
            );
            wait_marker(&shared.join(format!(".hit-{id}")), "reached the victim").await?;
            let r = exec(&mut c, &id, &check).await?;
            ensure!(
                r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == want,
                "{when}: victim under attack: {r:?}"
            );
            ensure!(
                std::fs::read_to_string(host.rw.join(&tag))? == format!("{tag}\n"),
                "{when}: the read-write volume did not get the victim's file"
            );
            if round == ROUNDS - 1 {
                // Move the victim's volume mounts out of its dir: they stay mounted until the
                // pod goes (the documented limit); pod removal must unmount them first.
                let stash = format!(
                    "d=/tmp/share/{id}; for m in $d/mounts $d/mounts.real; do \
                     [ -d $m ] && [ ! -L $m ] && busybox mv $m /tmp/share/stash-{round}; done; \
                     [ -d /tmp/share/stash-{round}/0 ]"
                );
                let mut tries = 0;
                while exec(&mut c, &attacker, &["sh", "-c", &stash]).await?.exit_code != 0 {
                    tries += 1;
                    ensure!(tries < 10, "{when}: could not move the victim's mounts away");
                }
            }
            c.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 5 })
                .await
                .with_context(|| format!("{when}: StopContainer"))?;
            let cmd = hand("cold", &id);
            exec(&mut c, &attacker, &["sh", "-c", &cmd]).await?;
            wait_marker(&shared.join(format!(".cold-{id}")), "reached the stopped victim").await?;
            if round % 2 == 1 {
                hostile.swapping(Some(shared.join(&id)));
            }
            let removed =
                c.remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await;
            hostile.swapping(None);
            if let Err(e) = removed {
                // Removal may give up under a tree that keeps changing, with a clear error;
                // once the attack on it stops it must succeed.
                clear_error(&e, &when)?;
                eprintln!("{when}: RemoveContainer under attack: {}", e.message());
                let drop = format!(
                    "busybox grep -v {id} /tmp/cold > /tmp/c.n; busybox mv /tmp/c.n /tmp/cold; \
                     busybox grep -v {id} /tmp/hot > /tmp/h.n; busybox mv /tmp/h.n /tmp/hot"
                );
                exec(&mut c, &attacker, &["sh", "-c", &drop]).await?;
                let mut tries = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let req = cri::RemoveContainerRequest { container_id: id.clone() };
                    match c.remove_container(req).await {
                        Ok(_) => break,
                        Err(e) if tries < 3 => {
                            clear_error(&e, &when)?;
                            tries += 1;
                        }
                        Err(e) => bail!("{when}: RemoveContainer after the attack stopped: {e:?}"),
                    }
                }
            }
            let cdir = shared.join(&id);
            ensure!(std::fs::symlink_metadata(&cdir).is_err(), "{when}: {} left", cdir.display());
            // Volumes are mounted in the VMM's mount namespace (and must not be in ours).
            let mut info = std::fs::read_to_string("/proc/self/mountinfo")?;
            for pid in d.vmm_processes() {
                info +=
                    &std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            }
            ensure!(
                !info.lines().any(|l| l.contains(&cdir.display().to_string())),
                "{when}: mounts left under {}",
                cdir.display()
            );
            inv.check(&when)?;
            c.version(cri::VersionRequest { version: String::new() })
                .await
                .with_context(|| format!("{when}: the daemon stopped answering"))?;
            ensure!(state(&mut c, &attacker).await? == RUNNING, "{when}: the attacker stopped");
            eprintln!("{when}: done at {:.0} s", started.elapsed().as_secs_f64());
        }
        ensure!(planted_refused > 0, "the host thread never planted before an expose");
        let swaps = hostile.swaps.load(Ordering::Relaxed);
        ensure!(swaps > 0, "the host thread never swapped");
        let text = std::fs::read_to_string(&alog).unwrap_or_default();
        let reported: Vec<&str> =
            text.lines().filter(|l| l.contains("MKNOD-OK") || l.contains("RO-")).collect();
        ensure!(reported.is_empty(), "the guest got through: {reported:?}");
        drop(hostile);

        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        ensure!(std::fs::symlink_metadata(&pod_dir).is_err(), "pod dir left");
        let after = mounts_outside(&d.pods_dir())?;
        ensure!(after == mounts_before, "mounts changed: {after:#?}\nwas {mounts_before:#?}");
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        ensure!(!info.contains(&d.pods_dir().display().to_string()), "pod mounts left");
        ensure!(fingerprint(&host.sentinel)? == inv.sentinel, "sentinels changed");
        ensure!(fingerprint(&host.ro)? == inv.ro, "the read-only volume changed");
        ensure!(
            std::fs::read_to_string(host.rw.join("hello"))? == "from the host\n"
                && std::fs::read_to_string(host.rw.join(format!("r{}", ROUNDS - 1)))?
                    == format!("r{}\n", ROUNDS - 1),
            "the read-write volume lost files (removal reached into it)"
        );
        d.assert_clean()?;
        eprintln!(
            "hostile guest: {ROUNDS} rounds, {planted_refused} planted creates refused, {swaps} \
             host swaps, {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    with_log(&d, r);
}
