//! End-to-end: a malicious registry against the daemon. Debian's real `docker-registry` on
//! 127.0.0.1 serves images pushed by hand with the registry HTTP API (tests/src/push.rs) that
//! attack the puller: a gzip bomb layer, a huge PAX header, descriptors that lie (size 0, a
//! wrong size, a blob whose content the registry swapped), a manifest that is not the one its
//! digest names, an oversized config and manifest.
//! Each PullImage through the daemon's CRI socket must fail with the right gRPC code and a
//! message naming the problem; the daemon's peak RSS and the image store's disk use must stay
//! within bounds derived from the caps set below; the store must hold exactly what it held
//! before; and the daemon must still pull a good image afterwards. No VM is booted: the test
//! runs wherever the daemon starts (`make test-e2e` runs it, in the test host here).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::tonic::Code;
use carapace_tests::cri::{pull_image, runtime, with_log, Daemon, DaemonOptions};
use carapace_tests::push::{push_blob, push_manifest, sha256, tar_header, GzipMembers};
use carapace_tests::registry::Registry;
use tar::EntryType;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_HOSTILE_REGISTRY_E2E_DAEMON";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The caps of the test daemon (`[images.limits]`).
const MAX_MANIFEST: u64 = 64 * KIB;
const MAX_CONFIG: u64 = 64 * KIB;
const MAX_LAYER: u64 = 8 * MIB;
const MAX_UNPACKED: u64 = 16 * MIB;
const MAX_TAR_HEADER: u64 = 64 * KIB;
/// What the daemon may use beyond the caps: allocator arenas, thread stacks, HTTP and gzip
/// buffers. Every attack below is far larger (128 MiB of PAX header, 48 MiB of config, 1 GiB
/// unpacked), so reading any of them whole would break the bound.
const RSS_SLACK: u64 = 32 * MIB;
/// Directories and inodes of a half-unpacked layer beyond its file data.
const DISK_SLACK: u64 = 2 * MIB;

const REPO: &str = "evil/app";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Not a test: the daemon process of the test below when `carapace serve` is not available.
#[test]
#[ignore = "end-to-end: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

fn limits_toml() -> String {
    format!(
        "[images.limits]\nmax_manifest_bytes = {MAX_MANIFEST}\nmax_config_bytes = {MAX_CONFIG}\n\
         max_layer_bytes = {MAX_LAYER}\nmax_layer_unpacked_bytes = {MAX_UNPACKED}\n\
         max_tar_header_bytes = {MAX_TAR_HEADER}\n"
    )
}

/// One hostile image: its tag (or `@digest`), and what the failed pull must say.
struct Case {
    tag: String,
    code: Code,
    says: &'static str,
}

fn config_json(diff_id: &str, pad: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("PAD={}", "p".repeat(pad))], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap_or_default()
}

fn manifest_json(config: (&str, u64), layer: (&str, u64), pad: usize) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config.0, "size": config.1},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": layer.0, "size": layer.1}],
    });
    if pad > 0 {
        m["annotations"] = serde_json::json!({"pad": "m".repeat(pad)});
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

/// A gzip'ed tar of one regular file of `size` zero bytes: about a thousandth of `size`.
fn gzip_bomb(size: u64) -> Result<Vec<u8>> {
    let header = tar_header("zeros", EntryType::Regular, size)?;
    // The file's data, its padding (none: size is a multiple of 512) and the tar's end.
    Ok(GzipMembers::default().bytes(&header).repeat(0, size + 1024).finish())
}

/// A gzip'ed tar whose first entry is a PAX extended header of `len` bytes (one record).
fn huge_pax(len: u64) -> Result<Vec<u8>> {
    let prefix = format!("{len} comment=");
    let value = len - prefix.len() as u64 - 1;
    let mut tail = b"\n".to_vec();
    tail.resize(tail.len() + (512 - (len % 512) as usize) % 512, 0);
    tail.extend_from_slice(&tar_header("after", EntryType::Regular, 0)?);
    tail.resize(tail.len() + 1024, 0);
    let header = tar_header("PaxHeaders/big", EntryType::XHeader, len)?;
    let mut g = GzipMembers::default();
    Ok(g.bytes(&header).bytes(prefix.as_bytes()).repeat(b'a', value).bytes(&tail).finish())
}

/// A small valid gzip'ed layer (one file) and its diff_id.
fn small_layer(content: &[u8]) -> Result<(Vec<u8>, String)> {
    let mut tar = tar_header("hello", EntryType::Regular, content.len() as u64)?.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let diff = sha256(&tar);
    Ok((GzipMembers::default().bytes(&tar).finish(), diff))
}

/// Pushes the hostile images; returns the cases in the order they are pulled.
fn push_hostile(reg: &Registry) -> Result<Vec<Case>> {
    let addr = reg.addr.as_str();
    let push = |data: &[u8]| push_blob(addr, REPO, data);
    let manifest = |tag: &str, m: &[u8]| push_manifest(addr, REPO, tag, DOCKER_MANIFEST, m);
    let mut cases = Vec::new();
    let mut case = |tag: &str, code, says| cases.push(Case { tag: tag.into(), code, says });

    // The unpacker checks the diff_id only at the end of the stream: a bomb is a bomb
    // whatever its config says, so this one does not hash its GiB.
    let bomb = gzip_bomb(GIB)?;
    ensure!((bomb.len() as u64) < MAX_LAYER, "the bomb is {} bytes compressed", bomb.len());
    let bomb_d = push(&bomb)?;
    let cfg = config_json(&sha256(b"the bomb's diff_id is never reached"), 0);
    let cfg_d = push(&cfg)?;
    let cfg_desc = (cfg_d.as_str(), cfg.len() as u64);
    manifest("bomb", &manifest_json(cfg_desc, (&bomb_d, bomb.len() as u64), 0))?;
    case("bomb", Code::ResourceExhausted, "images.limits.max_layer_unpacked_bytes");
    // The bomb's descriptor saying 0 bytes (an unchecked read would fetch and unpack it all),
    // and saying more than max_layer_bytes (refused before anything is fetched).
    manifest("size0", &manifest_json(cfg_desc, (&bomb_d, 0), 0))?;
    case("size0", Code::DataLoss, "size 0 for a non-empty blob");
    manifest("layer-big", &manifest_json(cfg_desc, (&bomb_d, MAX_LAYER + 1), 0))?;
    case("layer-big", Code::ResourceExhausted, "images.limits.max_layer_bytes");

    let pax = huge_pax(128 * MIB)?;
    let pax_d = push(&pax)?;
    manifest("pax", &manifest_json(cfg_desc, (&pax_d, pax.len() as u64), 0))?;
    case("pax", Code::ResourceExhausted, "images.limits.max_tar_header_bytes");

    // A valid layer whose descriptor understates its size: never read past the stated size.
    let (good, good_diff) = small_layer(b"hello from a lying registry\n")?;
    let good_d = push(&good)?;
    let cfg = config_json(&good_diff, 0);
    let cfg_d = push(&cfg)?;
    let gcfg = (cfg_d.as_str(), cfg.len() as u64);
    manifest("size-lie", &manifest_json(gcfg, (&good_d, good.len() as u64 - 10), 0))?;
    case("size-lie", Code::DataLoss, "size mismatch");

    // A layer whose bytes the registry swapped after the upload (same length, other content).
    let (swapped, swapped_diff) = small_layer(b"the registry will swap this layer\n")?;
    let swapped_d = push(&swapped)?;
    let cfg = config_json(&swapped_diff, 0);
    let cfg_d = push(&cfg)?;
    let scfg = (cfg_d.as_str(), cfg.len() as u64);
    manifest("swapped", &manifest_json(scfg, (&swapped_d, swapped.len() as u64), 0))?;
    let file = reg.blob_file(&swapped_d);
    let mut bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes)?;
    case("swapped", Code::DataLoss, "content digest mismatch");

    // A 48 MiB config, described truthfully (over max_config_bytes) and as 1000 bytes.
    let big = config_json(&good_diff, 48 * MIB as usize);
    let big_d = push(&big)?;
    let layer = (good_d.as_str(), good.len() as u64);
    manifest("config-big", &manifest_json((&big_d, big.len() as u64), layer, 0))?;
    case("config-big", Code::ResourceExhausted, "images.limits.max_config_bytes");
    manifest("config-lie", &manifest_json((&big_d, 1000), layer, 0))?;
    case("config-lie", Code::DataLoss, "size mismatch");

    // A 1 MiB manifest (the registry takes up to 4 MiB).
    manifest("manifest-big", &manifest_json(gcfg, layer, MIB as usize))?;
    case("manifest-big", Code::ResourceExhausted, "images.limits.max_manifest_bytes");

    // Pulled by digest, the registry answers with another (valid) manifest than the digest's.
    // (An annotation keeps it apart from the manifests above: the registry stores each once.)
    let m = manifest_json(gcfg, layer, 16);
    let m_d = manifest("by-digest", &m)?;
    std::fs::write(reg.blob_file(&m_d), manifest_json(gcfg, layer, 0))?;
    case(&format!("@{m_d}"), Code::DataLoss, "content digest mismatch");
    Ok(cases)
}

/// Every name under the store, with the size of each file (what a failed pull must not change).
fn store_listing(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            out.push((p.strip_prefix(root).unwrap_or(&p).to_path_buf(), m.len()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Bytes the store occupies on disk (allocated blocks).
fn disk_use(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// A `/proc/<pid>/status` field in bytes (VmHWM, VmRSS).
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    let kib: u64 = line.split_whitespace().nth(1).context("field value")?.parse()?;
    Ok(kib * KIB)
}

/// Samples the store's disk use every 20 ms while it lives; `peak` keeps the largest.
struct DiskWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    fn start(root: PathBuf) -> DiskWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(disk_use(&root), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        DiskWatch { stop, peak, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn pull_request(image: &str) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        ..Default::default()
    }
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().is_some_and(|s| !s.trim_start().starts_with(['Z', 'X']))
        && !stat.is_empty()
}

#[test]
#[ignore = "end-to-end: run by `make test-e2e`"]
fn hostile_images_fail_clearly_within_the_caps_and_leave_nothing() {
    let reg = Registry::start("hreg", "warn").expect("registry");
    let cases = push_hostile(&reg).expect("pushing the hostile images");
    let d = Daemon::start(DaemonOptions {
        dir_prefix: "hreg",
        insecure_registry: Some(reg.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        extra_config: limits_toml(),
        ..Default::default()
    })
    .expect("daemon");
    let res = runtime().block_on(attack(&d, &reg, &cases));
    with_log(&d, res);
}

async fn attack(d: &Daemon, reg: &Registry, cases: &[Case]) -> Result<()> {
    let pid = d.pid().context("daemon pid")?;
    let store = d.dir().join("images");
    let mut images = d.image_client().await?;
    // A good pull first: the daemon's HTTP, TLS and unpack paths have run once.
    pull_image(&mut images, &reg.image("test/busybox:latest")).await?;
    let before = store_listing(&store);
    let disk_before = disk_use(&store);
    // Peak RSS from now on (clear_refs 5 resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("clear_refs")?;
    let rss_before = status_bytes(pid, "VmRSS:")?;
    let watch = DiskWatch::start(store.clone());
    let mut failures = Vec::new();
    for c in cases {
        let sep = if c.tag.starts_with('@') { "" } else { ":" };
        let image = format!("{}/{REPO}{sep}{}", reg.addr, c.tag);
        match images.pull_image(pull_request(&image)).await {
            Ok(r) => failures.push(format!("{}: pulled ({:?})", c.tag, r.into_inner())),
            Err(st) if st.code() != c.code || !st.message().contains(c.says) => failures
                .push(format!("{}: want {:?} saying {:?}, got {st:?}", c.tag, c.code, c.says)),
            Err(st) => eprintln!("{}: {:?}: {}", c.tag, st.code(), st.message()),
        }
        ensure!(alive(pid), "the daemon died pulling {}", c.tag);
        let after = store_listing(&store);
        if after != before {
            let left: Vec<_> = after.iter().filter(|e| !before.contains(e)).collect();
            let gone: Vec<_> = before.iter().filter(|e| !after.contains(e)).collect();
            failures.push(format!("{}: store changed: new {left:?}, gone {gone:?}", c.tag));
        }
    }
    let disk_peak = watch.finish();
    let hwm = status_bytes(pid, "VmHWM:")?;
    let grown = hwm.saturating_sub(rss_before);
    // In memory at once: a manifest, a config, one entry's tar metadata per layer in flight.
    let rss_bound = MAX_MANIFEST + MAX_CONFIG + 3 * (MAX_TAR_HEADER + 16 * KIB) + RSS_SLACK;
    eprintln!("peak RSS grew {} KiB (bound {} KiB)", grown / KIB, rss_bound / KIB);
    if grown > rss_bound {
        failures.push(format!("peak RSS grew by {} KiB > {} KiB", grown / KIB, rss_bound / KIB));
    }
    // On disk at once for a one-layer image: its compressed blob and its unpacked tree.
    let disk_bound = MAX_LAYER + MAX_UNPACKED + DISK_SLACK;
    let disk_grown = disk_peak.saturating_sub(disk_before);
    eprintln!("store peak grew {} KiB (bound {} KiB)", disk_grown / KIB, disk_bound / KIB);
    if disk_grown > disk_bound {
        failures.push(format!("store grew by {} KiB > {} KiB", disk_grown / KIB, disk_bound / KIB));
    }
    ensure!(failures.is_empty(), "hostile pulls:\n{}", failures.join("\n"));

    // Still serving: a good image it has not seen yet, with three layers.
    let good = reg.image("test/app:1.0");
    pull_image(&mut images, &good).await?;
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: good.clone(), ..Default::default() }),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(st.image.is_some(), "{good} pulled but not in the store");
    Ok(())
}
