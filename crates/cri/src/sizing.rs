//! The size of a pod's VM, from what kubelet says the pod needs, and the checks that keep each
//! container within it.
//!
//! kubelet sends `PodSandboxConfig.linux.resources`: the sum of the pod's containers' limits.
//! The VM gets `ceil(cpu_quota / cpu_period)` vCPUs and `memory limit + guest_overhead_mib`
//! MiB, never less than the profile's `vcpus`/`mem_mib` and never more than its
//! `max_vcpus`/`max_mem_mib` (a pod asking more gets the maximum, and each container is then
//! checked against what the VM really holds). `linux.overhead` (the RuntimeClass overhead) is
//! what the node spends *outside* the guest for the pod (the VMM): it does not size the guest.
//! A running VM does not grow: UpdateContainerResources beyond its size is refused.

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::config::VmProfile;

const MIB: u64 = 1 << 20;

/// vCPUs and memory of one pod's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub vcpus: u8,
    pub mem_mib: u32,
}

/// A resource request that carapace cannot meet or cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    /// A negative value where CRI means a quantity (kubelet never sends one).
    #[error("{field} must not be negative, got {got}")]
    Negative { field: String, got: i64 },
    /// A container asks more memory than its pod's VM leaves to containers.
    #[error(
        "{what} asks for {asked_mib} MiB of memory, but its pod's VM has {vm_mib} MiB, of which \
         {usable_mib} MiB are left to containers (the guest keeps {overhead_mib} MiB); give the \
         pod resources (limits) that cover its containers so the VM is sized for them, or use a \
         runtime handler whose profile is larger"
    )]
    Memory { what: String, asked_mib: u64, vm_mib: u32, usable_mib: u32, overhead_mib: u32 },
    /// A container asks more CPU than its pod's VM has vCPUs.
    #[error(
        "{what} asks for {asked} CPUs, but its pod's VM has {vcpus} vCPU(s); give the pod \
         resources (limits) that cover its containers so the VM is sized for them, or use a \
         runtime handler whose profile is larger"
    )]
    Cpu { what: String, asked: String, vcpus: u8 },
}

impl VmProfile {
    /// The profile's own size (a pod that states no resources).
    pub fn default_size(&self) -> VmSize {
        VmSize { vcpus: self.vcpus, mem_mib: self.mem_mib }
    }
}

/// The VM size of a pod whose sandbox config is `linux` under `profile`.
pub fn pod_vm_size(
    profile: &VmProfile,
    linux: Option<&cri::LinuxPodSandboxConfig>,
) -> Result<VmSize, SizingError> {
    let mut size = profile.default_size();
    let Some(r) = linux.and_then(|l| l.resources.as_ref()) else { return Ok(size) };
    if let Some(cpus) = cpus_of(r, "config.linux.resources")? {
        let wanted = u8::try_from(cpus).unwrap_or(u8::MAX);
        size.vcpus = size.vcpus.max(wanted.min(profile.max_vcpus));
    }
    let mem =
        non_negative("config.linux.resources.memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    if mem > 0 {
        let wanted = u64::from(profile.guest_overhead_mib) + mib_ceil(mem);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).min(profile.max_mem_mib);
        size.mem_mib = size.mem_mib.max(wanted);
    }
    Ok(size)
}

/// Checks that a container with `r` fits a VM of `size` (CreateContainer and
/// UpdateContainerResources).
pub fn check_container_fits(
    what: &str,
    r: &cri::LinuxContainerResources,
    size: VmSize,
    profile: &VmProfile,
) -> Result<(), SizingError> {
    let mem = non_negative("linux.resources.memory_limit_in_bytes", r.memory_limit_in_bytes)?;
    let overhead = profile.guest_overhead_mib.min(size.mem_mib);
    let usable_mib = size.mem_mib - overhead;
    if mib_ceil(mem) > u64::from(usable_mib) {
        return Err(SizingError::Memory {
            what: what.to_string(),
            asked_mib: mib_ceil(mem),
            vm_mib: size.mem_mib,
            usable_mib,
            overhead_mib: overhead,
        });
    }
    if let Some(cpus) = cpus_of(r, "linux.resources")? {
        if cpus > u64::from(size.vcpus) {
            let asked = format!("{:.2}", r.cpu_quota as f64 / r.cpu_period as f64);
            return Err(SizingError::Cpu { what: what.to_string(), asked, vcpus: size.vcpus });
        }
    }
    Ok(())
}

/// Whole CPUs a quota/period pair asks for (rounded up); None when it sets no CPU limit.
/// `prefix` names the message field in errors.
fn cpus_of(r: &cri::LinuxContainerResources, prefix: &str) -> Result<Option<u64>, SizingError> {
    let quota = non_negative(&format!("{prefix}.cpu_quota"), r.cpu_quota)?;
    let period = non_negative(&format!("{prefix}.cpu_period"), r.cpu_period)?;
    if quota == 0 || period == 0 {
        return Ok(None);
    }
    Ok(Some(quota.div_ceil(period)))
}

fn non_negative(field: &str, v: i64) -> Result<u64, SizingError> {
    u64::try_from(v).map_err(|_| SizingError::Negative { field: field.to_string(), got: v })
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> VmProfile {
        VmProfile { vcpus: 1, mem_mib: 256, max_vcpus: 4, max_mem_mib: 4096, ..Default::default() }
    }

    fn pod(quota: i64, period: i64, mem: i64) -> cri::LinuxPodSandboxConfig {
        cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_quota: quota,
                cpu_period: period,
                memory_limit_in_bytes: mem,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_without_resources_gets_the_profile_size() {
        let p = profile();
        assert_eq!(pod_vm_size(&p, None).unwrap(), VmSize { vcpus: 1, mem_mib: 256 });
        let none = cri::LinuxPodSandboxConfig::default();
        assert_eq!(pod_vm_size(&p, Some(&none)).unwrap(), VmSize { vcpus: 1, mem_mib: 256 });
        assert_eq!(pod_vm_size(&p, Some(&pod(0, 0, 0))).unwrap(), p.default_size());
    }

    #[test]
    fn limits_size_the_vm_with_the_guest_overhead() {
        let p = profile();
        // 2 CPUs and 1 GiB: 2 vCPUs, 1024 MiB + the guest's own overhead.
        let s = pod_vm_size(&p, Some(&pod(200_000, 100_000, 1 << 30))).unwrap();
        assert_eq!(s, VmSize { vcpus: 2, mem_mib: 1024 + p.guest_overhead_mib });
        // 1.5 CPUs round up; 1 byte over a MiB counts as the next MiB.
        let s = pod_vm_size(&p, Some(&pod(150_000, 100_000, (512 << 20) + 1))).unwrap();
        assert_eq!(s, VmSize { vcpus: 2, mem_mib: 513 + p.guest_overhead_mib });
    }

    #[test]
    fn the_profile_is_the_floor_and_its_maximum_the_ceiling() {
        let p = profile();
        // Small limits: never below the profile's size.
        let s = pod_vm_size(&p, Some(&pod(10_000, 100_000, 16 << 20))).unwrap();
        assert_eq!(s, VmSize { vcpus: 1, mem_mib: 256 });
        // Huge limits: capped.
        let s = pod_vm_size(&p, Some(&pod(64_000_000, 100_000, 1 << 40))).unwrap();
        assert_eq!(s, VmSize { vcpus: 4, mem_mib: 4096 });
        let s = pod_vm_size(&p, Some(&pod(i64::MAX, 1, i64::MAX))).unwrap();
        assert_eq!(s, VmSize { vcpus: 4, mem_mib: 4096 });
    }

    #[test]
    fn negative_values_are_refused_with_the_field() {
        let e = pod_vm_size(&profile(), Some(&pod(-1, 100_000, 0))).unwrap_err();
        assert_eq!(
            e,
            SizingError::Negative { field: "config.linux.resources.cpu_quota".into(), got: -1 }
        );
        let e = pod_vm_size(&profile(), Some(&pod(0, 0, -5))).unwrap_err();
        assert!(e.to_string().contains("memory_limit_in_bytes must not be negative"), "{e}");
    }

    #[test]
    fn a_container_must_fit_its_vm() {
        let p = profile();
        let size = VmSize { vcpus: 2, mem_mib: 1024 + p.guest_overhead_mib };
        let fits = cri::LinuxContainerResources {
            cpu_quota: 200_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        };
        check_container_fits("container a", &fits, size, &p).unwrap();
        check_container_fits("container a", &Default::default(), size, &p).unwrap();
        let big = cri::LinuxContainerResources { memory_limit_in_bytes: 2 << 30, ..fits.clone() };
        let e = check_container_fits("container b", &big, size, &p).unwrap_err();
        assert!(matches!(e, SizingError::Memory { asked_mib: 2048, usable_mib: 1024, .. }), "{e}");
        assert!(e.to_string().contains("container b asks for 2048 MiB"), "{e}");
        let cpus = cri::LinuxContainerResources { cpu_quota: 250_000, ..fits };
        let e = check_container_fits("container c", &cpus, size, &p).unwrap_err();
        assert_eq!(e.to_string().split(',').next().unwrap(), "container c asks for 2.50 CPUs");
    }
}
