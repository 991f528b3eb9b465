//! Each pod's own disk (`[pods]` in the config): a sparse ext4 image `<disk_dir>/<id>.img`
//! mounted on the pod's run dir (crates/podfs `attach_disk`), so that what the pod's guest
//! writes into its shared dir, and the daemon's staging and logs beside it, is bounded on disk
//! instead of filling the host's RAM (`/run`). A guest that fills it gets ENOSPC; a CRI call
//! that hits it fails with ResourceExhausted naming the key.

use std::path::{Path, PathBuf};

use carapace_vmm::config as vmm;
use serde::Deserialize;

/// Default size of a pod's disk (sparse: only what is written takes space).
pub const DEFAULT_DISK_MIB: u64 = 10 * 1024;
/// Largest size accepted (a typo guard).
pub const MAX_DISK_MIB: u64 = 16 << 20;
/// The config key of the size (named in errors).
pub const SIZE_KEY: &str = "pods.shared_dir_size_mib";

/// `pods.<key> = <got>` must be in `min..=max`.
fn in_range(key: &str, got: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&got) {
        return Ok(());
    }
    let why = if key.ends_with("_log_max_bytes") { " (an eighth of the pod disk)" } else { "" };
    Err(format!("pods.{key} = {got} must be between {min} and {max}{why}"))
}

/// `[pods]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPodsConfig {
    pub disk_dir: Option<PathBuf>,
    pub shared_dir_size_mib: Option<u64>,
    pub serial_log_max_bytes: Option<u64>,
    pub vmm_log_max_bytes: Option<u64>,
    pub guest_warnings_per_second: Option<u32>,
    pub shared_dir_max_open_files: Option<u64>,
}

/// Where the pods' disks are and how big each is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodsConfig {
    /// The image files (default `<state_dir>/pod-disks`: on disk, not in RAM).
    pub disk_dir: PathBuf,
    /// Size of each pod's disk in MiB.
    pub shared_dir_size_mib: u64,
    /// Cap of each pod's serial log (rotated once to `serial.log.1`), on that disk.
    pub serial_log_max_bytes: u64,
    /// Cap of each pod VMM's own log (`vmm.log`, rotated once to `vmm.log.1`), on that disk.
    pub vmm_log_max_bytes: u64,
    /// Guest-triggered warnings each VMM logs per second and call site.
    pub guest_warnings_per_second: u32,
    /// Open file limit of each VMM (bounds the host descriptors its guest can pin through
    /// virtio-fs; past it the guest's lookups fail with EMFILE and the VMM logs why).
    pub shared_dir_max_open_files: u64,
}

impl PodsConfig {
    pub fn defaults(state_dir: &Path) -> PodsConfig {
        PodsConfig {
            disk_dir: state_dir.join("pod-disks"),
            shared_dir_size_mib: DEFAULT_DISK_MIB,
            serial_log_max_bytes: carapace_vmm::DEFAULT_SERIAL_LOG_MAX_BYTES,
            vmm_log_max_bytes: vmm::DEFAULT_VMM_LOG_MAX_BYTES,
            guest_warnings_per_second: vmm::DEFAULT_GUEST_WARNINGS_PER_SECOND,
            shared_dir_max_open_files: vmm::DEFAULT_SHARED_DIR_MAX_OPEN_FILES,
        }
    }

    pub fn from_raw(raw: RawPodsConfig, state_dir: &Path) -> Result<PodsConfig, String> {
        let d = PodsConfig::defaults(state_dir);
        let disk_dir = raw.disk_dir.unwrap_or(d.disk_dir);
        if !disk_dir.is_absolute() {
            return Err(format!("pods.disk_dir = {:?} must be an absolute path", disk_dir));
        }
        let size = raw.shared_dir_size_mib.unwrap_or(d.shared_dir_size_mib);
        let min = carapace_podfs::MIN_DISK_BYTES >> 20;
        if !(min..=MAX_DISK_MIB).contains(&size) {
            return Err(format!("{SIZE_KEY} = {size} must be between {min} and {MAX_DISK_MIB}"));
        }
        // Both generations of each log fit in a quarter of the disk.
        let smax = (size << 20) / 8;
        let serial = raw.serial_log_max_bytes.unwrap_or(d.serial_log_max_bytes);
        in_range("serial_log_max_bytes", serial, carapace_vmm::MIN_SERIAL_LOG_MAX_BYTES, smax)?;
        let vmm_log = raw.vmm_log_max_bytes.unwrap_or(d.vmm_log_max_bytes);
        in_range("vmm_log_max_bytes", vmm_log, vmm::MIN_VMM_LOG_MAX_BYTES, smax)?;
        let rate = raw.guest_warnings_per_second.unwrap_or(d.guest_warnings_per_second);
        let max_rate = vmm::MAX_GUEST_WARNINGS_PER_SECOND;
        in_range("guest_warnings_per_second", u64::from(rate), 1, u64::from(max_rate))?;
        let files = raw.shared_dir_max_open_files.unwrap_or(d.shared_dir_max_open_files);
        let (fmin, fmax) = (vmm::MIN_SHARED_DIR_MAX_OPEN_FILES, vmm::MAX_SHARED_DIR_MAX_OPEN_FILES);
        in_range("shared_dir_max_open_files", files, fmin, fmax)?;
        Ok(PodsConfig {
            disk_dir,
            shared_dir_size_mib: size,
            serial_log_max_bytes: serial,
            vmm_log_max_bytes: vmm_log,
            guest_warnings_per_second: rate,
            shared_dir_max_open_files: files,
        })
    }

    /// The image file of pod `id`'s disk.
    pub fn image(&self, id: &str) -> PathBuf {
        self.disk_dir.join(format!("{id}.img"))
    }

    /// Makes pod `id`'s disk and mounts it on `run_dir` (an empty dir the daemon made).
    /// Blocking (mkfs): call it off the async workers. On failure nothing is left.
    pub fn attach(&self, id: &str, run_dir: &Path) -> Result<(), carapace_podfs::Error> {
        std::fs::create_dir_all(&self.disk_dir).map_err(|source| carapace_podfs::Error::Io {
            op: "create",
            path: self.disk_dir.clone(),
            source,
        })?;
        carapace_podfs::attach_disk(&self.image(id), run_dir, self.shared_dir_size_mib << 20)
    }

    /// Deletes pod `id`'s disk image (its run dir must be unmounted first).
    pub fn remove(&self, id: &str) -> Result<(), carapace_podfs::Error> {
        carapace_podfs::remove_image(&self.image(id))
    }

    /// At daemon start: the disks of pods without a record (a RunPodSandbox or removal that
    /// died with the previous daemon) are unmounted from their run dir and deleted.
    pub fn remove_orphans(&self, run_pods_dir: &Path, known: &dyn Fn(&str) -> bool) {
        let ids = match carapace_podfs::images_in(&self.disk_dir) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the pod disks");
                return;
            }
        };
        for id in ids.into_iter().filter(|id| !known(id)) {
            tracing::warn!(%id, "removing the disk of a pod sandbox that no longer exists");
            let run_dir = run_pods_dir.join(&id);
            if crate::ids::is_id_or_prefix(&id) {
                if let Err(e) = carapace_podfs::remove_tree(&run_dir) {
                    tracing::error!(%id, error = %e, "cannot remove the run dir of a gone pod");
                    continue;
                }
            }
            if let Err(e) = self.remove(&id) {
                tracing::error!(%id, error = %e, "cannot delete the disk of a gone pod");
            }
        }
    }
}

/// Whether `e` or an error it was caused by is ENOSPC or EDQUOT (a full pod disk).
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let p = PodsConfig::from_raw(RawPodsConfig::default(), Path::new("/s")).unwrap();
        assert_eq!(p, PodsConfig::defaults(Path::new("/s")));
        assert_eq!(p.disk_dir, Path::new("/s/pod-disks"));
        assert_eq!(p.image("ab"), Path::new("/s/pod-disks/ab.img"));
        for bad in [0, 15, MAX_DISK_MIB + 1] {
            let raw = RawPodsConfig { shared_dir_size_mib: Some(bad), ..Default::default() };
            let e = PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err();
            assert!(e.contains(SIZE_KEY), "{e}");
        }
        for bad in [0, 4095, (16 << 20) / 8 + 1] {
            let raw = RawPodsConfig {
                shared_dir_size_mib: Some(16),
                serial_log_max_bytes: Some(bad),
                ..Default::default()
            };
            let e = PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err();
            assert!(e.contains("serial_log_max_bytes"), "{e}");
            let raw = RawPodsConfig {
                shared_dir_size_mib: Some(16),
                vmm_log_max_bytes: Some(bad),
                ..Default::default()
            };
            let e = PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err();
            assert!(e.contains("pods.vmm_log_max_bytes"), "{e}");
        }
        for bad in [0, 10_001] {
            let raw = RawPodsConfig { guest_warnings_per_second: Some(bad), ..Default::default() };
            let e = PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err();
            assert!(e.contains("pods.guest_warnings_per_second"), "{e}");
        }
        for bad in [1023, (1 << 20) + 1] {
            let raw = RawPodsConfig { shared_dir_max_open_files: Some(bad), ..Default::default() };
            let e = PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err();
            assert!(e.contains("pods.shared_dir_max_open_files"), "{e}");
        }
        let raw = RawPodsConfig {
            vmm_log_max_bytes: Some(8192),
            guest_warnings_per_second: Some(100),
            shared_dir_max_open_files: Some(4096),
            ..Default::default()
        };
        let p = PodsConfig::from_raw(raw, Path::new("/s")).unwrap();
        assert_eq!(
            (p.vmm_log_max_bytes, p.guest_warnings_per_second, p.shared_dir_max_open_files),
            (8192, 100, 4096)
        );
        let raw = RawPodsConfig { disk_dir: Some("rel".into()), ..Default::default() };
        assert!(PodsConfig::from_raw(raw, Path::new("/s")).unwrap_err().contains("disk_dir"));
    }

    #[test]
    fn a_full_disk_is_found_anywhere_in_the_chain() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = carapace_podfs::Error::Io { op: "write", path: "/x".into(), source: full };
        assert!(is_disk_full(&e));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = carapace_podfs::Error::Io { op: "write", path: "/x".into(), source: other };
        assert!(!is_disk_full(&e));
    }
}
